"""The sandbox's mount primitives, run in a real child process with real namespaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from attacking import needs_isolation

# Enters the namespaces, makes everything read-only but one folder, then tries to write.
PROBE = """
import os, sys
from autoresearch.harness import sandbox
keep, outside = sys.argv[1], sys.argv[2]
sandbox.enter_namespaces(sandbox.SandboxSpec([], "/", {}, "", isolate=True, network=False))
sandbox.remount_everything_readonly([keep])
sandbox.drop_capabilities()
for path in (os.path.join(keep, "inside"), os.path.join(outside, "outside"), "/dev/shm/x"):
    try:
        with open(path, "w") as f:
            f.write("written")
        print(path, "written", sep="\t")
    except OSError as e:
        print(path, e.strerror, sep="\t")
"""


@needs_isolation
def test_everything_but_the_writable_folder_is_read_only(tmp_path: Path):
    keep, outside = tmp_path / "keep", tmp_path / "outside"
    keep.mkdir()
    outside.mkdir()
    probe = [sys.executable, "-c", PROBE, str(keep), str(outside)]
    out = subprocess.run(probe, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = dict(line.split("\t") for line in out.stdout.splitlines())
    assert result[str(keep / "inside")] == "written"
    assert (keep / "inside").read_text() == "written"
    assert result[str(outside / "outside")] == "Read-only file system"
    assert result["/dev/shm/x"] == "Read-only file system"
    assert not (outside / "outside").exists()
