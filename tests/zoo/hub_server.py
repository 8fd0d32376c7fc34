"""A Hugging Face Hub-compatible HTTP server for tests (FastAPI + uvicorn on 127.0.0.1).

It speaks the parts of the Hub protocol that huggingface_hub 2.x, transformers, peft and diffusers
use: whoami, repo creation and deletion (models, datasets, spaces), model listing with
filter / search / author / pipeline_tag / cardData, repo info at a revision, tree, paths-info, refs,
commits, resolve (HEAD and ranged GET with the headers the client reads), preupload, the LFS batch
API and uploads, and NDJSON commits (with pull requests). Repos live in memory.

Tests can also seed repos without HTTP (`HubState.add_repo`), inject faults (`HubState.add_fault`:
a status code, a connection closed in the middle of a file, or a slow body) and read the request log
(`HubState.requests`) to assert what the client did or did not fetch.

Example:
    >>> with HubServer() as hub:                                   # doctest: +SKIP
    ...     hub.state.add_repo("org/a", {"config.json": b"{}"}, card={"tags": ["x"]})
    ...     os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy",
                ".npz", ".pkl", ".png", ".jpg", ".jpeg", ".gz", ".zip", ".tar", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
DEFAULT_TOKENS = {
    "hf_writer_token_0123456789": "tester",      # user "tester", member of "org" and "mergezoo"
    "hf_other_token_9876543210": "stranger",     # a valid user with access to nothing in particular
}
DEFAULT_ORGS = {"tester": ["org", "mergezoo"], "stranger": []}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    message: str = ""
    date: str = field(default_factory=_now)
    author: str = "tester"


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    gated: bool | str = False
    granted: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)
    commits: dict[str, Commit] = field(default_factory=dict)
    downloads: int = 0
    created_at: str = field(default_factory=_now)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str | None) -> Commit | None:
        revision = revision or "main"
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and 1 <= int(match.group(1)) <= len(self.prs):
            return self.commits[self.prs[int(match.group(1)) - 1]]
        if revision.startswith("refs/heads/") and revision[11:] in self.branches:
            return self.commits[self.branches[revision[11:]]]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return self.commits[revision]
        return None

    def new_commit(self, files: dict[str, Blob], title: str, parent: str | None,
                   message: str = "", author: str = "tester") -> Commit:
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        commit = Commit(oid=oid, parent=parent, files=files, title=title, message=message,
                        author=author)
        self.commits[oid] = commit
        return commit


@dataclass
class Fault:
    """A planned failure: requests whose decoded path matches `path` (a regex searched in it)."""

    path: str
    kind: str = "status"             # "status" | "close" (close the connection mid-body) | "slow"
    status: int = 500
    method: str | None = None        # e.g. "GET"; None: any method
    times: int | None = None         # how many requests it hits; None: all of them
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return re.search(self.path, path) is not None


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    authorized: bool
    status: int = 0

    @property
    def filename(self) -> str | None:
        match = re.search(r"/resolve/[^/]+/(.+)$", self.path)
        return match.group(1) if match else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None = None, message: str = "",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> Response:
        headers = dict(self.headers)
        if self.code:
            headers["X-Error-Code"] = self.code
        if self.message:
            headers["X-Error-Message"] = self.message
        return JSONResponse({"error": self.message or self.code or "error"}, status_code=self.status,
                            headers=headers)


def _is_lfs(path: str, data: bytes) -> bool:
    if path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE:
        return True
    try:
        data[:8000].decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def parse_card(data: bytes | None) -> dict:
    """Front matter of a README.md (the card metadata), or {}."""
    if not data:
        return {}
    text = data.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    loaded = yaml.safe_load(match.group(1))
    return loaded if isinstance(loaded, dict) else {}


class HubState:
    """Everything the server knows: repos, tokens, faults and the request log."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = dict(DEFAULT_TOKENS)
        self.orgs: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_ORGS.items()}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.lfs_store: dict[str, bytes] = {}
            self.faults: list[Fault] = []
            self.requests: list[RequestRecord] = []
            self.commit_posts: list[dict] = []  # every NDJSON commit received: repo, revision, ops

    # ----- seeding and inspection (no HTTP) -------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | str | Path | None = None, *,
                 card: dict | None = None, repo_type: str = "model", private: bool = False,
                 gated: bool | str = False, granted: tuple[str, ...] = (), downloads: int = 0,
                 branch: str = "main", title: str = "Initial upload") -> Repo:
        """Create (or add a commit to) a repo holding `files` (a dict, or a folder to copy)."""
        with self.lock:
            key = (repo_type, repo_id)
            repo = self.repos.get(key)
            if repo is None:
                repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private, gated=gated,
                            granted=set(granted), downloads=downloads)
                self.repos[key] = repo
                gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                first = repo.new_commit({".gitattributes": Blob(gitattributes, False)},
                                        "initial commit", None)
                repo.branches["main"] = first.oid
            payload = dict(_read_files(files))
            if card is not None:
                body = payload.pop("README.md", b"").decode() if "README.md" in payload else ""
                payload["README.md"] = ("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n"
                                        + body).encode()
            if payload:
                head = repo.resolve(branch) or repo.resolve("main")
                tree = dict(head.files)
                tree.update({p: Blob(d, _is_lfs(p, d)) for p, d in payload.items()})
                commit = repo.new_commit(tree, title, head.oid)
                repo.branches[branch] = commit.oid
            return repo

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def add_fault(self, path: str, kind: str = "status", status: int = 500,
                  method: str | None = None, times: int | None = None) -> Fault:
        fault = Fault(path=path, kind=kind, status=status, method=method, times=times)
        with self.lock:
            self.faults.append(fault)
        return fault

    def resolve_requests(self, method: str | None = None) -> list[RequestRecord]:
        """Requests of files (resolve endpoint), optionally of one HTTP method."""
        return [r for r in self.requests if r.filename is not None
                and (method is None or r.method == method)]

    def full_downloads(self) -> list[str]:
        """Files whose body was requested without a Range header (a real download)."""
        return [r.filename for r in self.resolve_requests("GET") if not r.range]

    # ----- views ---------------------------------------------------------------------------
    def user_for(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            if token not in self.tokens:
                raise HubError(401, None, "Invalid credentials in Authorization header")
            return self.tokens[token]
        return None

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.orgs.get(user, []))

    def repo_for_read(self, repo_type: str, repo_id: str, user: str | None,
                      files: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        if repo.private and not self.can_write(user, repo.namespace) and user not in repo.granted:
            # The Hub answers 401 for private repos, as for missing ones (no existence leak).
            raise HubError(401 if user is None else 404, "RepoNotFound", "Repository not found")
        if files and repo.gated and user is None:
            raise HubError(401, "GatedRepo", "Access to model is restricted. You must be "
                           "authenticated to access it.")
        if files and repo.gated and user not in repo.granted and not self.can_write(user, repo.namespace):
            raise HubError(403, "GatedRepo", "Access to model is restricted and you are not in "
                           "the authorized list.")
        return repo

    def model_json(self, repo: Repo, commit: Commit, *, full: bool = True, blobs: bool = False,
                   base_url: str = "") -> dict[str, Any]:
        card = parse_card(commit.files["README.md"].data if "README.md" in commit.files else None)
        names = list(commit.files)
        library = card.get("library_name")
        if library is None:
            if "adapter_config.json" in commit.files:
                library = "peft"
            elif "model_index.json" in commit.files or any(n.endswith("/config.json") and
                                                          n.split("/")[0] in ("unet", "transformer")
                                                          for n in names):
                library = "diffusers"
            elif "config.json" in commit.files:
                library = "transformers"
        config = _json_or_none(commit.files.get("config.json"))
        tags = [str(t) for t in (card.get("tags") or [])]
        extra = [library] if library else []
        if any(n.endswith(".safetensors") for n in names):
            extra.append("safetensors")
        if config and config.get("model_type"):
            extra.append(config["model_type"])
        if card.get("pipeline_tag"):
            extra.append(card["pipeline_tag"])
        bases = card.get("base_model") or []
        bases = [bases] if isinstance(bases, str) else list(bases)
        relation = card.get("base_model_relation") or (
            "adapter" if "adapter_config.json" in commit.files else "finetune")
        for base in bases:
            extra += [f"base_model:{base}", f"base_model:{relation}:{base}"]
        if card.get("license"):
            extra.append(f"license:{card['license']}")
        for item in extra + ["region:us"]:
            if item not in tags:
                tags.append(item)
        data: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.namespace,
            "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": repo.gated, "disabled": False,
            "downloads": repo.downloads, "likes": 0, "tags": tags,
            "pipeline_tag": card.get("pipeline_tag"), "library_name": library,
        }
        if full:
            data["siblings"] = [self._sibling(p, b, blobs) for p, b in sorted(commit.files.items())]
            data["cardData"] = card or None
            if config is not None:
                data["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
            data["spaces"] = []
            data["usedStorage"] = sum(len(b.data) for b in commit.files.values())
        return data

    @staticmethod
    def _sibling(path: str, blob: Blob, blobs: bool) -> dict:
        entry: dict[str, Any] = {"rfilename": path}
        if blobs:
            entry.update(size=len(blob.data), blobId=blob.git_oid)
            if blob.lfs:
                entry["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": 134}
        return entry

    @staticmethod
    def tree_entry(path: str, blob: Blob) -> dict:
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": len(blob.data),
                                 "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
        return entry


def _json_or_none(blob: Blob | None) -> dict | None:
    if blob is None:
        return None
    try:
        loaded = json.loads(blob.data)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _read_files(files: dict[str, bytes] | str | Path | None):
    if files is None:
        return
    if isinstance(files, dict):
        yield from files.items()
        return
    root = Path(files)
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".cache" not in path.relative_to(root).parts:
            yield path.relative_to(root).as_posix(), path.read_bytes()


# ----- the FastAPI app ----------------------------------------------------------------------
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPED = r"(?P<rtype>models|datasets|spaces)"
_PREFIX = r"(?:(?P<rprefix>datasets|spaces)/)?"
_ROUTES: list[tuple[set[str], re.Pattern, str]] = [
    ({"GET"}, re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ({"GET"}, re.compile(r"^/api/whoami-v2$"), "whoami"),
    ({"POST"}, re.compile(r"^/api/repos/create$"), "create_repo"),
    ({"DELETE"}, re.compile(r"^/api/repos/delete$"), "delete_repo"),
    ({"POST"}, re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}$"), "list_repos"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}/{_REPO}$"), "repo_info"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/revision/(?P<rev>[^/]+)$"), "repo_info"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ({"POST"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/refs$"), "refs"),
    ({"GET"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/commits/(?P<rev>[^/]+)$"), "commits"),
    ({"POST"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ({"POST"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ({"POST"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ({"POST"}, re.compile(rf"^/api/{_TYPED}/{_REPO}/tag/(?P<rev>[^/]+)$"), "create_tag"),
    ({"POST"}, re.compile(rf"^/{_PREFIX}{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ({"PUT"}, re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ({"POST"}, re.compile(r"^/lfs-verify$"), "lfs_verify"),
    ({"GET", "HEAD"}, re.compile(rf"^/{_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
     "resolve"),
]


def create_app(state: HubState) -> FastAPI:
    """The FastAPI application serving `state`."""
    app = FastAPI()
    handlers = _Handlers(state)

    @app.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def dispatch(request: Request, rest: str) -> Response:  # noqa: ARG001
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
        decoded = unquote(raw_path)
        method = request.method
        record = RequestRecord(method=method, path=decoded, range=request.headers.get("range"),
                               authorized="authorization" in request.headers)
        with state.lock:
            state.requests.append(record)
            fault = next((f for f in state.faults if f.matches(method, decoded)), None)
            if fault is not None:
                fault.hits += 1
        try:
            if fault is not None and fault.kind == "status":
                raise HubError(fault.status, None, f"injected fault {fault.status}")
            for methods, pattern, name in _ROUTES:
                match = pattern.match(raw_path)
                if match and method in methods:
                    params = {k: unquote(v) if v is not None else None
                              for k, v in match.groupdict().items()}
                    body = await request.body()
                    response = getattr(handlers, name)(request, body, **params)
                    if fault is not None and fault.kind == "close":
                        response = _close_mid_body(response, request.headers.get("range"))
                    if fault is not None and fault.kind == "slow":
                        response = _slow_body(response)
                    break
            else:
                raise HubError(404, None, f"no route for {method} {decoded}")
        except HubError as err:
            response = err.response()
        record.status = response.status_code
        return response

    return app


def _close_mid_body(response: Response, range_header: str | None) -> Response:
    """Send the headers and the first half of the file's body, then drop the connection."""
    if not isinstance(response, Response) or response.status_code not in (200, 206) \
            or not getattr(response, "body", b""):
        return response
    body = response.body
    headers = dict(response.headers)
    start = int(re.match(r"bytes=(\d+)", range_header).group(1)) if range_header else 0
    total = start + len(body)
    cut = max(0, total // 2 - start)  # the connection always drops at the middle of the file

    async def stream():
        if cut:
            yield body[:cut]
        raise ConnectionAbortedError("injected fault: connection closed in the middle of a file")

    return StreamingResponse(stream(), status_code=response.status_code, headers=headers)


SLOW_CHUNK, SLOW_PAUSE = 256 * 1024, 0.05  # a "slow" fault sends 5 MB/s


def _slow_body(response: Response) -> Response:
    """Send the body a little at a time (a slow link), to interrupt a download in the middle."""
    if not isinstance(response, Response) or response.status_code not in (200, 206) \
            or not getattr(response, "body", b""):
        return response
    body = response.body

    async def stream():
        import asyncio

        for i in range(0, len(body), SLOW_CHUNK):
            yield body[i:i + SLOW_CHUNK]
            await asyncio.sleep(SLOW_PAUSE)

    return StreamingResponse(stream(), status_code=response.status_code,
                             headers=dict(response.headers))


class _Handlers:
    def __init__(self, state: HubState):
        self.s = state

    @staticmethod
    def _rtype(rtype: str | None = None, rprefix: str | None = None) -> str:
        value = rtype or rprefix or "models"
        return value[:-1]

    def agent_harnesses(self, request, body):
        return JSONResponse({"standardEnvVars": [], "harnesses": {}})

    def whoami(self, request, body):
        user = self.s.user_for(request)
        if user is None:
            raise HubError(401, None, "Invalid username or password.")
        orgs = [{"name": o, "type": "org"} for o in self.s.orgs.get(user, [])]
        return JSONResponse({"type": "user", "name": user, "fullname": user, "orgs": orgs,
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "test", "role": "write"}}})

    def create_repo(self, request, body):
        user = self.s.user_for(request)
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if user is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        if not self.s.can_write(user, namespace):
            raise HubError(403, None, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{str(request.base_url).rstrip('/')}/{prefix}{repo_id}"
        with self.s.lock:
            if (repo_type, repo_id) in self.s.repos:
                return JSONResponse({"error": "You already created this repo", "url": url},
                                    status_code=409)
            visibility = payload.get("visibility")
            private = bool(payload.get("private")) or visibility == "private"
            repo = self.s.add_repo(repo_id, None, repo_type=repo_type, private=private)
            if repo_type == "space":
                sdk = payload.get("sdk", "gradio")
                self.s.add_repo(repo_id, {"README.md": f"---\nsdk: {sdk}\n---\n".encode()},
                                repo_type="space", title="initial space")
        return JSONResponse({"url": url, "name": repo_id, "id": repo.repo_id})

    def delete_repo(self, request, body):
        user = self.s.user_for(request)
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        key = (payload.get("type") or "model", repo_id)
        if not self.s.can_write(user, namespace):
            raise HubError(403, None, "forbidden")
        with self.s.lock:
            if key not in self.s.repos:
                raise HubError(404, "RepoNotFound", "Repository not found")
            del self.s.repos[key]
        return JSONResponse({})

    def validate_yaml(self, request, body):
        content = json.loads(body).get("content", "")
        try:
            parse_card(content.encode())
        except yaml.YAMLError as err:
            return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    def list_repos(self, request, body, rtype):
        user = self.s.user_for(request)
        params = request.query_params
        filters = params.getlist("filter")
        author, search = params.get("author"), params.get("search")
        pipeline_tag = params.get("pipeline_tag")
        limit = int(params["limit"]) if params.get("limit") else None
        full = params.get("full") in ("True", "true", "1") or params.get("cardData") in (
            "True", "true", "1")
        results = []
        with self.s.lock:
            repos = [r for (t, _), r in self.s.repos.items() if t == self._rtype(rtype)]
        for repo in repos:
            if repo.private and not self.s.can_write(user, repo.namespace):
                continue
            commit = repo.resolve("main")
            info = self.s.model_json(repo, commit, full=True)
            if author and repo.namespace != author:
                continue
            if search and search.lower() not in repo.repo_id.lower():
                continue
            if pipeline_tag and info.get("pipeline_tag") != pipeline_tag:
                continue
            if any(f not in info["tags"] and f != info.get("library_name") for f in filters):
                continue
            if not full:
                info = {k: v for k, v in info.items()
                        if k not in ("siblings", "cardData", "config", "spaces", "usedStorage")}
            results.append(info)
        if limit is not None:
            results = results[:limit]
        return JSONResponse(results)

    def _repo_commit(self, request, rtype, repo, rev, files=False) -> tuple[Repo, Commit, str | None]:
        user = self.s.user_for(request)
        repo_obj = self.s.repo_for_read(self._rtype(rtype), repo, user, files=files)
        commit = repo_obj.resolve(rev)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo_obj, commit, user

    def repo_info(self, request, body, rtype, repo, rev=None):
        repo_obj, commit, _ = self._repo_commit(request, rtype, repo, rev)
        blobs = request.query_params.get("blobs") in ("True", "true", "1")
        return JSONResponse(self.s.model_json(repo_obj, commit, blobs=blobs,
                                              base_url=str(request.base_url)))

    def tree(self, request, body, rtype, repo, rev, path=None):
        _, commit, _ = self._repo_commit(request, rtype, repo, rev)
        recursive = request.query_params.get("recursive") in ("True", "true", "1")
        prefix = (path or "").strip("/")
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rel = name[len(prefix) + 1:] if prefix else name
            parts = rel.split("/")
            base = f"{prefix}/" if prefix else ""
            if len(parts) > 1:
                depth = len(parts) - 1 if recursive else 1
                for i in range(1, depth + 1):
                    folders.add(base + "/".join(parts[:i]))
                if not recursive:
                    continue
            entries.append(self.s.tree_entry(name, blob))
        if prefix and not entries and not folders:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist")
        folder_entries = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(),
                           "size": 0, "path": f} for f in sorted(folders)]
        return JSONResponse(folder_entries + entries)

    def paths_info(self, request, body, rtype, repo, rev):
        _, commit, _ = self._repo_commit(request, rtype, repo, rev)
        form = _parse_form(body, request.headers.get("content-type", ""))
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self.s.tree_entry(path, commit.files[path]))
            elif any(name.startswith(path + "/") for name in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(),
                            "size": 0, "path": path})
        return JSONResponse(out)

    def refs(self, request, body, rtype, repo):
        repo_obj, _, _ = self._repo_commit(request, rtype, repo, None)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                    for n, o in repo_obj.branches.items()]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o}
                for n, o in repo_obj.tags.items()]
        prs = [{"name": f"refs/pr/{i + 1}", "ref": f"refs/pr/{i + 1}", "targetCommit": o}
               for i, o in enumerate(repo_obj.prs)]
        return JSONResponse({"branches": branches, "tags": tags, "converts": [],
                             "pullRequests": prs})

    def commits(self, request, body, rtype, repo, rev):
        repo_obj, commit, _ = self._repo_commit(request, rtype, repo, rev)
        out = []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                        "authors": [{"user": commit.author}], "date": commit.date})
            commit = repo_obj.commits.get(commit.parent) if commit.parent else None
        return JSONResponse(out)

    def _writable(self, request, rtype, repo) -> tuple[Repo, str]:
        user = self.s.user_for(request)
        repo_obj = self.s.repos.get((self._rtype(rtype), repo))
        if repo_obj is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        if user is None:
            raise HubError(401, "RepoNotFound", "Repository not found")
        if not self.s.can_write(user, repo_obj.namespace):
            raise HubError(403, None, "You don't have write access to this repo")
        return repo_obj, user

    def preupload(self, request, body, rtype, repo, rev):
        repo_obj, _ = self._writable(request, rtype, repo)
        commit = repo_obj.resolve(rev) if rev else None
        out = []
        for item in json.loads(body).get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = item["path"].endswith(LFS_SUFFIXES) or item.get("size", 0) >= LFS_MIN_SIZE \
                or not _is_utf8(sample)
            remote = commit.files.get(item["path"]) if commit is not None else None
            oid = None
            if remote is not None:
                oid = remote.sha256 if remote.lfs else remote.git_oid
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": out, "commitOid": commit.oid if commit else None})

    def lfs_batch(self, request, body, repo, rprefix=None):
        self._writable(request, self._rtype(None, rprefix) + "s", repo)
        payload = json.loads(body)
        base = str(request.base_url).rstrip("/")
        objects = []
        for obj in payload.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.s.lfs_store:
                entry["actions"] = {"upload": {"href": f"{base}/lfs-upload/{obj['oid']}"},
                                    "verify": {"href": f"{base}/lfs-verify"}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects},
                            headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, request, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, "sha256 of the uploaded content does not match its oid")
        with self.s.lock:
            self.s.lfs_store[oid] = body
        return Response(status_code=200)

    def lfs_verify(self, request, body):
        payload = json.loads(body)
        if payload.get("oid") not in self.s.lfs_store:
            raise HubError(404, None, "object not uploaded")
        return JSONResponse({"success": True})

    def commit(self, request, body, rtype, repo, rev):
        repo_obj, user = self._writable(request, rtype, repo)
        create_pr = request.query_params.get("create_pr") in ("1", "true", "True")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
        with self.s.lock:
            head = repo_obj.resolve(rev)
            if head is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            parent = header.get("parentCommit")
            if parent and not create_pr and not head.oid.startswith(parent):
                raise HubError(412, None, "parentCommit is not the head of the branch")
            tree = dict(head.files)
            ops = []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    tree[value["path"]] = Blob(data, False)
                elif key == "lfsFile":
                    if value["oid"] not in self.s.lfs_store:
                        raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                    tree[value["path"]] = Blob(self.s.lfs_store[value["oid"]], True)
                elif key == "deletedFile":
                    if value["path"] not in tree:
                        raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                    del tree[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for name in [n for n in tree if n.startswith(prefix)]:
                        del tree[name]
                else:
                    continue
                ops.append((key, value.get("path")))
            self.s.commit_posts.append({"repo": repo, "revision": rev, "create_pr": create_pr,
                                        "operations": ops, "summary": header.get("summary")})
            commit = repo_obj.new_commit(tree, header.get("summary", ""), head.oid,
                                         header.get("description", ""), author=user)
            base = str(request.base_url).rstrip("/")
            prefix = "" if repo_obj.repo_type == "model" else f"{repo_obj.repo_type}s/"
            answer = {"success": True, "commitOid": commit.oid,
                      "commitUrl": f"{base}/{prefix}{repo}/commit/{commit.oid}"}
            if create_pr:
                repo_obj.prs.append(commit.oid)
                answer["pullRequestUrl"] = f"{base}/{prefix}{repo}/discussions/{len(repo_obj.prs)}"
            else:
                branch = rev[11:] if rev.startswith("refs/heads/") else rev
                if branch in repo_obj.branches:
                    repo_obj.branches[branch] = commit.oid
                else:
                    raise HubError(400, None, f"cannot commit to {rev}: not a branch")
        return JSONResponse(answer)

    def create_branch(self, request, body, rtype, repo, rev):
        repo_obj, _ = self._writable(request, rtype, repo)
        payload = json.loads(body or b"{}")
        start = repo_obj.resolve(payload.get("startingPoint"))
        if rev in repo_obj.branches:
            raise HubError(409, None, "Branch already exists")
        repo_obj.branches[rev] = start.oid
        return JSONResponse({})

    def create_tag(self, request, body, rtype, repo, rev):
        repo_obj, _ = self._writable(request, rtype, repo)
        commit = repo_obj.resolve(rev)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        payload = json.loads(body or b"{}")
        repo_obj.tags[payload["tag"]] = commit.oid
        return JSONResponse({})

    def resolve(self, request, body, repo, rev, path, rprefix=None):
        repo_obj, commit, _ = self._repo_commit(request, self._rtype(None, rprefix) + "s", repo,
                                                rev, files=True)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist",
                           headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"',
                   "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{path.split("/")[-1]}"'}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        data = blob.data
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return Response(status_code=200, headers=headers)
        status = 200
        range_header = request.headers.get("range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data):
                    raise HubError(416, None, "Range Not Satisfiable",
                                   headers={"Content-Range": f"bytes */{len(data)}"})
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
        else:
            repo_obj.downloads += 1 if path.endswith(("config.json", "model_index.json")) else 0
        return Response(content=data, status_code=status, headers=headers,
                        media_type="application/octet-stream")


def _is_utf8(sample: bytes) -> bool:
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_form(body: bytes, content_type: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    if "json" in content_type:
        loaded = json.loads(body or b"{}")
        return {k: v if isinstance(v, list) else [v] for k, v in loaded.items()}
    return {k: v for k, v in parse_qs(body.decode()).items()}


class HubServer:
    """Run the app on 127.0.0.1 at a free port in a background thread (a context manager)."""

    def __init__(self, state: HubState | None = None):
        self.state = state or HubState()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> "HubServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.state), log_level="critical", access_log=False,
                                lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True, name="hub-server")
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test Hub server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def hub_environment(url: str, hf_home: str | Path, *, offline: bool = False) -> dict[str, Any]:
    """Point huggingface_hub (and the libraries built on it) at `url` with HF_HOME=`hf_home`.

    The clients read several settings at import time, so besides the environment variables this
    sets the module constants they cached. Returns {(module, name): old value} for `restore`.
    """
    import os
    import sys

    from huggingface_hub import constants

    hf_home = str(hf_home)
    cache = os.path.join(hf_home, "hub")
    env = {"HF_ENDPOINT": url, "HF_HOME": hf_home, "HF_HUB_CACHE": cache,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_TOKEN_PATH": os.path.join(hf_home, "token")}
    saved: dict[Any, Any] = {("env", k): os.environ.get(k) for k in env}
    os.environ.update(env)
    patches: dict[tuple[Any, str], Any] = {
        (constants, "ENDPOINT"): url,
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE"): url + "/{repo_id}/resolve/{revision}/{filename}",
        (constants, "HF_HOME"): hf_home,
        (constants, "HF_HUB_CACHE"): cache,
        (constants, "HUGGINGFACE_HUB_CACHE"): cache,
        (constants, "HF_HUB_OFFLINE"): offline,
        (constants, "HF_HUB_DISABLE_XET"): True,
        (constants, "HF_HUB_DISABLE_TELEMETRY"): True,
        (constants, "HF_HUB_DISABLE_UPDATE_CHECK"): True,
        (constants, "HF_TOKEN_PATH"): os.path.join(hf_home, "token"),
        (constants, "HF_STORED_TOKENS_PATH"): os.path.join(hf_home, "stored_tokens"),
        (constants, "HF_XET_CACHE"): os.path.join(hf_home, "xet"),
        (constants, "HF_ASSETS_CACHE"): os.path.join(hf_home, "assets"),
        (constants, "AGENT_HARNESSES_PATH"): os.path.join(hf_home, ".agent_harnesses.json"),
    }
    from huggingface_hub import hf_api

    patches[(hf_api.api, "endpoint")] = url  # the HfApi behind module-level helpers (file_exists)
    diffusers_constants = sys.modules.get("diffusers.utils.constants")
    if diffusers_constants is not None:
        patches[(diffusers_constants, "HUGGINGFACE_CO_RESOLVE_ENDPOINT")] = url
        patches[(diffusers_constants, "HF_HUB_OFFLINE")] = offline
    for (module, name), value in patches.items():
        if hasattr(module, name) or module is constants:
            saved[(module, name)] = getattr(module, name, None)
            setattr(module, name, value)
    _reset_http_session()
    return saved


def restore_environment(saved: dict[Any, Any]) -> None:
    """Undo `hub_environment`."""
    import os

    for (where, name), value in saved.items():
        if where == "env":
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        else:
            setattr(where, name, value)
    _reset_http_session()


def _reset_http_session() -> None:
    from huggingface_hub.utils import _http

    _http.close_session()
