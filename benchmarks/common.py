"""Helpers shared by the benchmark scripts: fresh research repos of the tiny baseline."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def autoresearch(*args: str, cwd: Path, quiet: bool = False) -> None:
    """Run the `autoresearch` CLI of this interpreter; raise if it fails."""
    out = subprocess.DEVNULL if quiet else None
    subprocess.run(
        [sys.executable, "-m", "autoresearch", *args], cwd=cwd, check=True, stdout=out, stderr=out
    )


def tiny_repo(prefix: str, quiet: bool = True) -> Path:
    """A fresh research repo of the tiny baseline in a temporary folder, its data prepared
    (into the normal cache: a no-op after the first time)."""
    repo = Path(tempfile.mkdtemp(prefix=prefix)) / "research"
    autoresearch("init", str(repo), "--baseline", "tiny", cwd=repo.parent, quiet=quiet)
    autoresearch("prepare", cwd=repo, quiet=quiet)
    return repo
