"""Shared Hub plumbing: one `HfApi` per call site, and Hub errors turned into mergezoo errors.

Every Hub call in mergezoo goes through huggingface_hub and is wrapped in `hub_errors`, which
turns the client's exceptions into `MergezooError`s that name the repo and, when access is the
problem, which token is missing. Token values are never put in a message.

Example:
    >>> with hub_errors("org/expert"):                      # doctest: +SKIP
    ...     info = hub_api().model_info("org/expert")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import httpx2
from huggingface_hub import HfApi, constants, get_token
from huggingface_hub import errors as hf_errors

from mergezoo.errors import (
    GatedRepoError,
    HubAccessError,
    HubUnavailableError,
    IncompatibleModelsError,
    MergezooError,
    ModelNotFoundError,
)


def hub_api(token: str | None = None) -> HfApi:
    """An `HfApi` on the configured endpoint (HF_ENDPOINT), using `token` or the stored one."""
    return HfApi(token=token, library_name="mergezoo")


def endpoint() -> str:
    return constants.ENDPOINT


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE is set: only the local cache may be used."""
    return bool(constants.HF_HUB_OFFLINE)


def token_source(token: str | None = None) -> str | None:
    """Where the token in use comes from, in words (never the token itself), or None."""
    if token:
        return "the token passed to mergezoo"
    if os.environ.get("HF_TOKEN"):
        return "the HF_TOKEN environment variable"
    if get_token():
        return "the token stored by `hf auth login`"
    return None


def _missing_token_hint(repo_id: str, token: str | None) -> str:
    source = token_source(token)
    if source is None:
        return (f"no Hub token was found: set the HF_TOKEN environment variable (or run "
                f"`hf auth login`) to a token with read access to {repo_id}")
    return f"{source} does not grant read access to {repo_id}"


def redact(text: str, token: str | None = None) -> str:
    """Remove any token (given, or from the environment / login) from `text`."""
    for secret in {token, os.environ.get("HF_TOKEN"), get_token()}:
        if secret:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def hub_errors(repo_id: str, *, revision: str | None = None, token: str | None = None,
               what: str = "", label: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub / HTTP exceptions raised inside into mergezoo errors.

    Messages name the model as `label` (default: repo_id@revision).
    """
    where = label or (f"{repo_id}@{revision}" if revision else repo_id)
    doing = f" ({what})" if what else ""
    try:
        yield
    except MergezooError:
        raise
    except hf_errors.GatedRepoError as err:
        raise GatedRepoError(
            f"{where}: the repo is gated{doing}. Accept its conditions on the Hub, then "
            f"{_missing_token_hint(repo_id, token)}.") from err
    except hf_errors.RevisionNotFoundError as err:
        raise ModelNotFoundError(f"{where}: the revision {revision or 'main'!r} does not exist in "
                                 f"{repo_id}{doing}") from err
    except hf_errors.RepositoryNotFoundError as err:
        status = err.response.status_code if err.response is not None else 404
        if status in (401, 403):
            raise HubAccessError(
                f"{where}: the Hub at {endpoint()} refused access (HTTP {status}){doing}: the repo "
                f"is private or gated, and {_missing_token_hint(repo_id, token)}.") from err
        raise ModelNotFoundError(
            f"{where}: no such model repo on the Hub at {endpoint()}{doing}. Check the name; if it "
            f"is private, {_missing_token_hint(repo_id, token)}.") from err
    except hf_errors.RemoteEntryNotFoundError as err:
        raise ModelNotFoundError(f"{where}: a file is missing from the repo{doing}: "
                                 f"{_url_path(err)}") from err
    except (hf_errors.LocalEntryNotFoundError, hf_errors.IncompleteSnapshotError,
            hf_errors.RevisionResolutionError) as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, hf_errors.OfflineModeIsEnabled):
            with hub_errors(repo_id, revision=revision, token=token, what=what, label=label):
                raise cause from None
        if is_offline():
            raise ModelNotFoundError(
                f"{where}: HF_HUB_OFFLINE is set and the files are not (all) in the local Hub "
                f"cache{doing}; pull it once while online.") from err
        raise HubUnavailableError(f"{where}: the Hub at {endpoint()} could not be reached and the "
                                  f"cache does not hold the files{doing}.") from err
    except hf_errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise HubAccessError(f"{where}: the Hub refused access (HTTP {status}){doing}: "
                                 f"{_missing_token_hint(repo_id, token)}.") from err
        if status is not None and status >= 500:
            raise HubUnavailableError(f"{where}: the Hub at {endpoint()} answered HTTP {status} "
                                      f"(a server error){doing}; try again later.") from err
        raise HubAccessError(f"{where}: the Hub answered HTTP {status}{doing}: "
                             f"{redact(_first_line(err), token)}") from err
    except hf_errors.OfflineModeIsEnabled as err:
        raise ModelNotFoundError(f"{where}: HF_HUB_OFFLINE is set and this needs the Hub{doing}."
                                 ) from err
    except (httpx2.TransportError, ConnectionError, TimeoutError) as err:
        raise HubUnavailableError(f"{where}: the connection to the Hub at {endpoint()} failed{doing}"
                                  f" ({type(err).__name__}); nothing was kept in the cache for the "
                                  "unfinished file.") from err
    except OSError as err:
        if "Consistency check failed" in str(err):
            raise HubUnavailableError(f"{where}: a download was cut short{doing}; the incomplete "
                                      "file was discarded. Try again.") from err
        raise
    except RuntimeError as err:  # e.g. "Error while uploading 'x' to the Hub." around an HTTP error
        cause = err.__cause__
        if isinstance(cause, (hf_errors.HfHubHTTPError, httpx2.TransportError, OSError)):
            detail = f"{what}: {_first_line(err)}" if what else _first_line(err)
            with hub_errors(repo_id, revision=revision, token=token, what=detail, label=label):
                raise cause from None
        raise
    except hf_errors.HFValidationError as err:
        raise ModelNotFoundError(f"{where}: not a valid Hub repo ID or revision ({err})") from err
    except hf_errors.SafetensorsParsingError as err:
        raise IncompatibleModelsError(f"{where}: a safetensors header cannot be read{doing}: "
                                      f"{_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _url_path(err: Exception) -> str:
    response = getattr(err, "response", None)
    if response is not None and response.request is not None:
        return str(response.request.url.path)
    return _first_line(err)
