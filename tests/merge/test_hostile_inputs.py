"""Malformed inputs end in a named error that names the file or field, exit code 2 and nothing
written, never a traceback (issue 13, items 11 and 12)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from merge_helpers import assert_nothing_written
from mergezoo.cli import main
from mergezoo.errors import BadCheckpointError, RecipeError, UnsafeCheckpointError
from mergezoo.merge import MergeRecipe
from mergezoo.merge.recipe import MAX_MODELS, MAX_YAML_DEPTH, MAX_YAML_NODES
from mergezoo.merge.sources import open_source


def _folder(root: Path, name: str, raw: bytes) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "toy"}')
    (folder / "model.safetensors").write_bytes(raw)
    return folder


def _file(header, data: bytes = b"", length: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def _w(dtype, shape, offsets):
    return {"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


GOOD = _file(_w("F32", [4, 4], [0, 64]), b"\0" * 64)
MALFORMED = {
    "out-of-bounds": (_file(_w("F32", [4, 4], [0, 640]), b"\0" * 64), "data_offsets [0, 640]"),
    "overlapping": (_file({**_w("F32", [2, 2], [0, 16]),
                           "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
                          b"\0" * 24), "tensor 'v' overlaps"),
    "truncated": (GOOD[:-20], "run past the end"),
    "length-mismatch": (_file(_w("F32", [4, 4], [0, 32]), b"\0" * 32), "needs 64 bytes"),
    "duplicate-names": (_file(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                              b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
                        "the name 'w' appears twice"),
    "non-string-metadata": (_file({"__metadata__": {"a": 1}, **_w("F32", [4, 4], [0, 64])},
                                  b"\0" * 64), "__metadata__ must map strings to strings"),
    "U32": (_file(_w("U32", [4, 4], [0, 64]), b"\0" * 64), "dtype U32"),
    "F8_E8M0": (_file(_w("F8_E8M0", [4, 4], [0, 16]), b"\0" * 16), "dtype F8_E8M0"),
    "unknown-dtype": (_file(_w("Q7", [4], [0, 4]), b"\0" * 4), "unknown dtype 'Q7'"),
    "length-2**63": (_file(_w("F32", [4, 4], [0, 64]), b"\0" * 64, 2**63),
                     "header length 9223372036854775808"),
    "length-64GiB": (_file(_w("F32", [4, 4], [0, 64]), b"\0" * 64, 64 * 2**30),
                     "header length 68719476736"),
    "json-list": (_file([1, 2, 3]), "the header is a JSON list"),
    "deep-json": (_file(b"[" * 5000 + b"]" * 5000), "model.safetensors"),
    "three-bytes": (b"\1\2\3", "not a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_is_a_named_error_that_names_the_file(tmp_path, case):
    raw, fragment = MALFORMED[case]
    good = _folder(tmp_path, "good", GOOD)
    bad = _folder(tmp_path, "bad", raw)
    with pytest.raises(BadCheckpointError) as info:
        open_source(bad)
    assert "model.safetensors" in str(info.value) and fragment in str(info.value)
    out = tmp_path / "out"
    assert main(["merge", "--method", "average", str(good), str(bad), "--out", str(out),
                 "-q"]) == 2
    assert_nothing_written(out)


def test_the_cli_shows_no_traceback_for_a_malformed_header(tmp_path):
    good = _folder(tmp_path, "good", GOOD)
    bad = _folder(tmp_path, "bad", MALFORMED["length-2**63"][0])
    done = subprocess.run([sys.executable, "-m", "mergezoo.cli", "merge", "--method", "average",
                           str(good), str(bad), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "bad: model.safetensors: header length" in done.stderr


def test_a_pickle_refused_by_weights_only_is_named_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"w": torch.ones(2), "x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model.bin: torch.load\("
                       r"weights_only=True\) refused it.*unsupported GLOBAL"):
        open_source(folder, allow_pickle=True)
    out = tmp_path / "out"
    assert main(["merge", "--method", "average", str(folder), str(folder), "--allow-pickle",
                 "--out", str(out), "-q"]) == 2
    assert not marker.exists()
    assert_nothing_written(out)


def test_a_corrupt_pickle_checkpoint_is_named(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"PK\3\4 not really a zip")
    with pytest.raises(BadCheckpointError, match="pytorch_model.bin: not a readable checkpoint"):
        open_source(folder, allow_pickle=True)


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "merge_method: average\nmodels: [a, b]\nparameters:\n  " + "\n  ".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    text = _bomb()
    assert len(text) < 1200  # 9**9 = 387 million strings once expanded
    with pytest.raises(RecipeError, match=f"more than {MAX_YAML_NODES} values once its aliases"):
        MergeRecipe.from_yaml(text, "bomb.yaml")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    assert main(["merge", str(recipe), "--out", str(out)]) == 2
    assert_nothing_written(out)


def test_small_aliases_still_work():
    recipe = MergeRecipe.from_yaml("merge_method: average\nmodels:\n  - model: a\n"
                                   "    parameters: &p {weight: 0.5}\n  - model: b\n"
                                   "    parameters: *p\n")
    assert [m.parameters for m in recipe.models] == [{"weight": 0.5}] * 2


def test_5000_deep_yaml_is_refused_by_name(tmp_path):
    deep = "merge_method: average\nmodels: [a, b]\nparameters: {x: " + "[" * 5000 + "]" * 5000 + "}\n"
    with pytest.raises(RecipeError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
        MergeRecipe.from_yaml(deep, "deep.yaml")
    assert main(["merge", "--method", "average", "a", "b", "--out", str(tmp_path / "o"),
                 "--set", "x=" + "[" * 5000 + "]" * 5000]) == 2


def test_the_number_of_models_is_bounded():
    text = "merge_method: average\nmodels: [" + ",".join(["m"] * (MAX_MODELS + 1)) + "]\n"
    with pytest.raises(RecipeError, match=f"at most {MAX_MODELS}"):
        MergeRecipe.from_yaml(text)
