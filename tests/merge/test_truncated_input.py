"""An input re-saved in place while a merge reads it (issue 13, item 10): reading a mapped page
past the file's new end would kill the process with SIGBUS, so each read first checks that the
file is still what its header described, and a changed file is a named error, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from merge_helpers import assert_nothing_written
from mergezoo.errors import BadCheckpointError
from mergezoo.merge import merge_models
from mergezoo.merge.sources import SafetensorsSource, open_source


def test_a_file_truncated_after_opening_is_refused_naming_it(toy_zoo):
    src = open_source(toy_zoo["experts"][1], "expert 'b'")
    key = src.keys()[-1]
    src.get(key)
    path = toy_zoo["experts"][1] / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(BadCheckpointError, match=r"expert 'b': .*expert1/model.safetensors "
                       r"changed while the merge was reading it \(now \d+ bytes, was \d+\)"):
        src.get(key)


def test_a_merge_whose_input_is_truncated_midway_stops_with_a_named_error(toy_zoo, monkeypatch):
    path = toy_zoo["experts"][2] / "model.safetensors"
    real_get = SafetensorsSource.get
    reads = []

    def get(self, key):
        reads.append(key)
        if len(reads) == 4:  # a few tensors in: the file is re-saved shorter
            os.truncate(path, 200)
        return real_get(self, key)

    monkeypatch.setattr(SafetensorsSource, "get", get)
    out = toy_zoo["root"] / "out"
    with pytest.raises(BadCheckpointError, match="expert2/model.safetensors changed while"):
        merge_models("ties", toy_zoo["experts"], base=toy_zoo["base"], out_dir=out,
                     progress=False)
    assert_nothing_written(out)


def test_without_the_check_the_same_truncation_is_a_sigbus(toy_zoo):
    """What the check prevents: the same read, unchecked, kills the process."""
    path = toy_zoo["experts"][0] / "model.safetensors"
    script = ("import os, sys; from mergezoo.merge.sources import open_source; "
              f"s = open_source({str(toy_zoo['experts'][0])!r}); k = max(s.keys(), key=lambda "
              "k: s._meta[k][0]); i = s._where[k]; "
              f"os.truncate({str(path)!r}, 0); t = s._handles[i].get_tensor(k); print(t.sum())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -7  # SIGBUS
