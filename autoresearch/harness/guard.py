"""Runs a candidate's `train.py` under an audit hook that guards the harness's files.

    python -m autoresearch.harness.guard <sandbox spec> train.py

Before any candidate code runs, an audit hook (PEP 578, which cannot be
removed once added) refuses to open the validation data, the raw data, the
training split (the runner serves its rows) and the user's key files (a `.env`,
`~/.ssh`, ...: `runner.KEY_FILES`) for reading, and refuses to open,
rename, delete or change protected files for writing: the research repo, the
data cache and the harness itself, except the run's own folder. Each refusal is
also reported to the runner, which marks the experiment `invalid`, even if the
candidate catches the error.

This is a guard against Python code, not a wall: native code (ctypes, a C
extension, a subprocess) goes around it. The sandbox's namespaces are the
wall where the system allows them; docs/threat-model.md says what is where.
"""

from __future__ import annotations

import os
import runpy
import sys

from autoresearch.harness.events import emit
from autoresearch.harness.sandbox import SandboxSpec

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# Audit events that change files: (argument with a path, argument with its dir_fd or None).
# A relative path with a dir_fd (shutil.rmtree deletes that way) is relative to that folder.
CHANGING_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
    "os.truncate": ((0, None),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),), "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
    "shutil.copyfile": ((1, None),),
}  # fmt: skip
TRAIN_SPLIT = "train.npy"  # Manifest.train_path's name: hidden too, but not validation data


class Guard:
    def __init__(self, spec: SandboxSpec):
        self.hidden = tuple(os.path.realpath(p) for p in spec.hidden)
        self.keys = tuple(os.path.realpath(p) for p in spec.keys)
        self.readonly = tuple(os.path.realpath(p) for p in spec.readonly)
        self.writable = tuple(os.path.realpath(p) for p in spec.writable)
        # Hidden folders that hold a writable one (the state folder around the run folder).
        self.veiled = tuple(h for h in self.hidden if any(_under(w, (h,)) for w in self.writable))

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = bool(mode and set(str(mode)) & set("wax+")) or bool(
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            self._check(path, None, writes)
        elif event in CHANGING_EVENTS:
            for path_at, dir_fd_at in CHANGING_EVENTS[event]:
                if path_at < len(args):
                    has_fd = dir_fd_at is not None and dir_fd_at < len(args)
                    self._check(args[path_at], args[dir_fd_at] if has_fd else None, True)

    def _check(self, path: object, dir_fd: object, writes: bool) -> None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # a file descriptor: it was checked when it was opened
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and not os.path.isabs(path):
            path = os.path.join(_fd_path(dir_fd), path)
        real = os.path.realpath(path)
        if writes and _under(real, self.readonly) and not _under(real, self.writable):
            self._refuse(f"tried to change a protected file ({real})")
        if _under(real, self.keys):
            self._refuse(f"tried to read the user's key files ({real})")
        if _under(real, self.hidden) and not _under(real, self.writable):
            if _under(real, self.veiled):
                self._refuse(f"tried to read what is not its own run's ({real})")
            data = "the data" if os.path.basename(real) == TRAIN_SPLIT else "the validation data"
            self._refuse(f"tried to read {data} ({real})")

    @staticmethod
    def _refuse(what: str) -> None:
        emit("violation", reason=what)
        raise PermissionError(f"autoresearch: {what}: train.py may not do that")


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: resolve against the working folder, as for a relative path
        return os.getcwd()


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def main(spec_path: str, script: str) -> None:
    sys.addaudithook(Guard(SandboxSpec.load(spec_path)))
    sys.argv = [script]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
