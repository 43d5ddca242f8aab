"""The research repo: a normal git repo holding train.py, program.md and autoresearch.toml.

Run state lives in the git-ignored `.autoresearch/` folder inside it. This
module creates research repos and answers questions about them; it never
leaves the user's checkout dirty.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from autoresearch.config import CONFIG_FILE
from autoresearch.errors import UserError

STATE_DIR = ".autoresearch"
LEDGER_FILE = "ledger.jsonl"  # inside STATE_DIR
RESULTS_FILE = "results.tsv"  # inside STATE_DIR: the original project's five columns
LOCK_FILE = "evolve.lock"  # inside STATE_DIR: flock'ed for as long as `evolve` runs
STATUS_FILE = "status.json"  # inside STATE_DIR: what `evolve` is doing, rewritten atomically
PLOT_FILE = "progress.png"  # inside STATE_DIR: `autoresearch plot` by default
EXPORTS_DIR = "exports"  # inside STATE_DIR: `autoresearch export` by default
TRAIN_FILE = "train.py"
PROGRAM_FILE = "program.md"
PROTECTED_FILES = (PROGRAM_FILE, CONFIG_FILE)  # proposers may change train.py only
BASELINES = ("gpt", "tiny")
FALLBACK_AUTHOR = ("autoresearch", "autoresearch@localhost")  # when git has no identity set


@dataclass(frozen=True)
class Commit:
    sha: str
    dirty: bool  # train.py differs from the commit
    subject: str = ""  # first line of the commit message


def default_baseline() -> str:
    """gpt where a CUDA GPU is present, else the CPU-sized tiny baseline."""
    import torch

    return "gpt" if torch.cuda.is_available() else "tiny"


def init_repo(folder: Path, baseline: str) -> Path:
    """Make a new research repo in `folder` (absent or empty) from a baseline; one commit."""
    import git

    if baseline not in BASELINES:
        raise UserError(f"unknown baseline '{baseline}': choose one of {', '.join(BASELINES)}")
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty: choose a new folder name")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        git.Repo(existing, search_parent_directories=True)
        raise UserError(f"{folder} is inside an existing git repo: choose a folder outside it")
    except git.InvalidGitRepositoryError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    files = resources.files("autoresearch.baselines")
    for name, source in (
        (TRAIN_FILE, files / baseline / TRAIN_FILE),
        (CONFIG_FILE, files / baseline / CONFIG_FILE),
        (PROGRAM_FILE, files / PROGRAM_FILE),
    ):
        with resources.as_file(source) as path:
            shutil.copyfile(path, folder / name)
    (folder / ".gitignore").write_text(f"{STATE_DIR}/\n__pycache__/\n")
    repo = git.Repo.init(folder, initial_branch="main")
    repo.index.add([TRAIN_FILE, CONFIG_FILE, PROGRAM_FILE, ".gitignore"])
    author = None
    with repo.config_reader() as cfg:
        if not cfg.has_option("user", "email"):
            author = git.Actor(*FALLBACK_AUTHOR)
    repo.index.commit(
        f"autoresearch: start from the {baseline} baseline", author=author, committer=author
    )
    return folder


def find_repo(start: Path | None = None) -> Path:
    """The research repo containing `start` (default: the current folder)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise UserError(
        f"not inside a research repo (no {CONFIG_FILE} in {here} or above):"
        " cd into one, or create one with `autoresearch init DIR`"
    )


def state_dir(repo: Path) -> Path:
    """`.autoresearch/` in `repo`, created if need be; a `UserError` unless it can be written."""
    path = repo / STATE_DIR
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path} is not a folder: move it away, then run again") from None
    except PermissionError:
        raise UserError(f"cannot create {path}: make {repo} writable, then run again") from None
    # Checked before anything starts: the first failing write could come mid-experiment.
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {path}: make it writable (chmod u+w), then run again")
    ignore = path / ".gitignore"  # the run state stays out of git in any repo, not only ours
    if not ignore.exists():
        ignore.write_text("# autoresearch run state: ledger, runs, plots, exports\n*\n")
    return path


def current_commit(repo: Path) -> Commit:
    """HEAD of the research repo, and whether train.py has uncommitted changes."""
    import git

    try:
        r = git.Repo(repo)
        head = r.head.commit
    except (git.InvalidGitRepositoryError, ValueError):
        return Commit(sha="", dirty=True)  # not a git repo, or no commit yet
    dirty = bool(r.git.status("--porcelain", "--", TRAIN_FILE))
    return Commit(sha=head.hexsha, dirty=dirty, subject=head.summary)


# Candidates. The research branch is autoresearch/<tag>; candidates cannot live
# under autoresearch/<tag>/ too (git refs cannot be a file and a folder at once).
def research_branch(tag: str) -> str:
    return f"autoresearch/{tag}"


def candidate_branch(tag: str, candidate_id: str) -> str:
    return f"autoresearch/{tag}-candidates/{candidate_id}"


def commit_candidate(repo: Path, parent_sha: str, source: str, message: str) -> str:
    """Commit `source` as train.py on top of `parent_sha`, leaving the user's index and files."""
    from io import BytesIO

    import git
    from gitdb.base import IStream

    with git.Repo(repo) as r:
        parent = r.commit(parent_sha)
        data = source.encode("utf-8")
        blob = r.odb.store(IStream(git.Blob.type, len(data), BytesIO(data)))
        index = git.IndexFile.from_tree(r, parent.tree)  # a temporary index, not the repo's
        index.add([git.BaseIndexEntry((0o100644, blob.binsha, 0, TRAIN_FILE))])
        tree = index.write_tree()
        commit = git.Commit.create_from_tree(r, tree, message, parent_commits=[parent], head=False)
        return commit.hexsha


def set_branch(repo: Path, name: str, sha: str) -> None:
    """Point branch `name` at `sha` (creating it); the previous tip stays in the reflog."""
    import git

    with git.Repo(repo) as r:
        r.create_head(name, sha, force=True)


def branches(repo: Path, prefix: str) -> dict[str, str]:
    """Branch name -> commit sha for every branch under `prefix/`."""
    return _heads(repo, f"{prefix}/")


def branch_sha(repo: Path, name: str) -> str | None:
    """The commit branch `name` points at, or None when there is no such branch."""
    return _heads(repo, name).get(name)  # the pattern also matches `name/...`: exact key only


def _heads(repo: Path, pattern: str) -> dict[str, str]:
    """Branch name -> sha for the branches `refs/heads/<pattern>` matches, in one
    `git for-each-ref` (GitPython resolves refs one by one: slow with thousands packed)."""
    out = git_command(
        repo, "for-each-ref", "--format=%(objectname) %(refname)", f"refs/heads/{pattern}"
    )
    found = {}
    for line in out.splitlines():
        sha, _, ref = line.partition(" ")
        found[ref.removeprefix("refs/heads/")] = sha
    return found


def commit_result(repo: Path, sha: str, message: str) -> str:
    """A commit on top of `sha` with the same tree: it carries a result in its message, so
    `git log --oneline` reads as a lineage with scores, and nothing already referenced changes."""
    import git

    with git.Repo(repo) as r:
        trained = r.commit(sha)
        commit = git.Commit.create_from_tree(
            r, trained.tree, message, parent_commits=[trained], head=False
        )
        return commit.hexsha


def git_command(repo: Path, *args: str) -> str:
    """Plain `git ARGS` in `repo`, with the user's global and system config ignored (a
    config there could run programs), output as text."""
    import subprocess

    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise UserError(f"git {args[0]} failed in {repo}: {done.stderr.strip()[:300]}")
    return done.stdout


def read_train(repo: Path, sha: str) -> str:
    """train.py as committed in `sha`; a `UserError` when that commit has no readable one."""
    import git

    # The blob streams from the repo's cat-file process: keep the repo open while reading.
    with git.Repo(repo) as r:
        try:
            return (r.commit(sha).tree / TRAIN_FILE).data_stream.read().decode("utf-8")
        except KeyError:
            problem = f"commit {sha[:12]} has no {TRAIN_FILE}"
        except UnicodeDecodeError:
            problem = f"{TRAIN_FILE} in commit {sha[:12]} is not UTF-8 text"
    raise UserError(f"{problem}: commit a {TRAIN_FILE}, then run again")


def commit_message(repo: Path, sha: str) -> str:
    import git

    with git.Repo(repo) as r:
        return r.commit(sha).message
