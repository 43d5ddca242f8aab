"""The research repo: a normal git repo holding train.py, program.md and autoresearch.toml.

Run state lives in the git-ignored `.autoresearch/` folder inside it. This
module creates research repos and answers questions about them; it never
leaves the user's checkout dirty.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoresearch.config import CONFIG_FILE
from autoresearch.errors import UserError

if TYPE_CHECKING:
    import git

STATE_DIR = ".autoresearch"
LEDGER_FILE = "ledger.jsonl"  # inside STATE_DIR
RESULTS_FILE = "results.tsv"  # inside STATE_DIR: the original project's five columns
LOCK_FILE = "evolve.lock"  # inside STATE_DIR: flock'ed for as long as `evolve` runs
STATUS_FILE = "status.json"  # inside STATE_DIR: what `evolve` is doing, rewritten atomically
PLOT_FILE = "progress.png"  # inside STATE_DIR: `autoresearch plot` by default
EXPORTS_DIR = "exports"  # inside STATE_DIR: `autoresearch export` by default
RUNS_DIR = "runs"  # inside STATE_DIR: one folder per experiment, see `run_dir`
RUN_LOG = "run.log"  # inside a run folder: the candidate's output
PROPOSALS_DIR = "proposals"  # inside STATE_DIR: proposers' scratch, moved into run folders later
# Inside a run folder: the proposer's files (prompts, replies, agent.log), moved there only
# once the candidate has stopped: the run folder is the candidate's to write while it runs.
PROPOSAL_DIR = "proposal"
TRAIN_FILE = "train.py"
PROGRAM_FILE = "program.md"
PROTECTED_FILES = (PROGRAM_FILE, CONFIG_FILE)  # proposers may change train.py only
BASELINES = ("gpt", "tiny")
FALLBACK_AUTHOR = ("autoresearch", "autoresearch@localhost")  # when git has no identity set
# Repos kept open for the commits and reads of a search (`_kept_repo`): an open repo keeps its
# `git cat-file` processes, which otherwise start anew for every commit, read and branch move
# (a third of the engine's time on a fast runner). Per thread (a repo is not thread-safe);
# the least recently used beyond this many are closed.
KEPT_REPOS = 8
# Every git the orchestrator starts, plain (`git_command`) or GitPython's (`open_repo`), runs
# with these settings. A candidate could have written ~/.gitconfig (HOME is writable) or,
# without namespaces, the research repo's .git/config, and a config there can make git run
# any program, outside the sandbox, with the user's environment: so global and system config
# are ignored, and the settings below, passed as `git -c` settings through the environment
# (they win over every config file, .git/config included), switch off what runs programs.
# Not here: uploadpack.packObjectsHook (git takes it only from -c, global or system config:
# setting it would enable it), and the filter and diff drivers a .gitattributes names (one
# key per driver name; no git command of ours applies them: see `current_commit`, and
# report.git_diff's --no-textconv).
GIT_SAFE_CONFIG = (
    ("core.hooksPath", os.devnull),  # hooks: post-commit, reference-transaction, ...
    ("core.fsmonitor", "false"),  # a program every index refresh (git status, add) runs
    ("core.attributesFile", os.devnull),  # ~/.config/git/attributes: drivers for any file
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("core.sshCommand", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),  # the empty value clears the list of helpers
    ("protocol.allow", "never"),  # no transport at all: `ext::` remotes run commands
    ("commit.gpgSign", "false"),  # gpg.program would run on commit
    ("tag.gpgSign", "false"),
    ("gc.auto", "0"),  # no background gc (hooks, and git processes outliving ours)
    ("maintenance.auto", "false"),
)


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
    git_command(folder, "init", "-q", "--initial-branch=main")
    with open_repo(folder) as repo:
        repo.index.add([TRAIN_FILE, CONFIG_FILE, PROGRAM_FILE, ".gitignore"])
        author = None
        with repo.config_reader() as cfg:  # reads the user's identity; runs nothing
            if not cfg.has_option("user", "email"):
                author = git.Actor(*FALLBACK_AUTHOR)
        repo.index.commit(  # GitPython runs hooks itself, from the core.hooksPath it reads
            f"autoresearch: start from the {baseline} baseline",
            author=author,
            committer=author,
            skip_hooks=True,
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


def run_dir(state: Path, experiment_id: str) -> Path:
    """An experiment's folder in the state folder: its train.py, run.log, prompts and replies."""
    return state / RUNS_DIR / experiment_id


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
    """HEAD of the research repo, and whether train.py has uncommitted changes.

    The file is compared with the committed blob here, not by `git status`: that refreshes
    the index, which runs the clean filter a .gitattributes names for train.py."""
    import git

    try:
        with open_repo(repo) as r:
            head = r.head.commit
            try:
                committed = (head.tree / TRAIN_FILE).data_stream.read()
            except KeyError:
                committed = None
            sha, subject = head.hexsha, head.summary
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return Commit(sha="", dirty=True)  # not a git repo, or no commit yet
    try:
        dirty = (repo / TRAIN_FILE).read_bytes() != committed
    except FileNotFoundError:
        dirty = committed is not None
    return Commit(sha=sha, dirty=dirty, subject=subject)


# Candidates. The research branch is autoresearch/<tag>; candidates cannot live
# under autoresearch/<tag>/ too (git refs cannot be a file and a folder at once).
def research_branch(tag: str) -> str:
    return f"autoresearch/{tag}"


def candidate_branch(tag: str, candidate_id: str) -> str:
    return f"autoresearch/{tag}-candidates/{candidate_id}"


@dataclass(frozen=True)
class CandidateTrailers:
    """What a candidate commit's message says of it, below its subject (a resumed run reads
    it back for a candidate cut off before its record)."""

    parent: str | None = None  # the parent candidate's id
    proposer: str = "?"
    description: str = ""


def candidate_message(candidate_id: str, description: str, parent_id: str, proposer: str) -> str:
    """The message of the commit a candidate trains: its subject, then its trailers."""
    return (
        f"{candidate_id}: {description}\n\nParent: {parent_id}\nProposer: {proposer}\n"
        f"Description: {description}\n"
    )


def parse_trailers(message: str) -> CandidateTrailers:
    """The trailers `candidate_message` wrote; a missing one reads as its default."""
    found = {}
    for line in message.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Parent", "Proposer", "Description"):
            found[key.lower()] = value.strip()
    return CandidateTrailers(**found)


def result_message(subject: str, status: str, reason: str) -> str:
    """The message of a result commit: `subject` (the score), then its status and reason."""
    return f"{subject}\n\nResult: {status}\n" + (f"Reason: {reason}\n" if reason else "")


def commit_candidate(repo: Path, parent_sha: str, source: str, message: str) -> str:
    """Commit `source` as train.py on top of `parent_sha`, leaving the user's index and files."""
    from io import BytesIO

    import git
    from gitdb.base import IStream

    with _kept_repo(repo) as r:
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
    with _kept_repo(repo) as r:
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

    with _kept_repo(repo) as r:
        trained = r.commit(sha)
        commit = git.Commit.create_from_tree(
            r, trained.tree, message, parent_commits=[trained], head=False
        )
        return commit.hexsha


def git_environment() -> dict[str, str]:
    """What every git of the orchestrator gets on top of its environment: no global or system
    config, and `GIT_SAFE_CONFIG` as `-c` settings (replacing any the environment carries)."""
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    env["GIT_CONFIG_PARAMETERS"] = ""  # what `git -c` leaves to child processes
    env["GIT_CONFIG_COUNT"] = str(len(GIT_SAFE_CONFIG))
    for i, (key, value) in enumerate(GIT_SAFE_CONFIG):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def git_config_files(repo: Path | None) -> list[Path]:
    """The files through which git can be made to run programs: the research repo's config,
    hooks and attributes (a candidate without namespaces can write them), and the user's own
    config, which `git_environment` ignores but the user's git in a shell does not."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    files = [home / ".gitconfig", xdg / "config", xdg / "attributes"]
    common = _common_git_dir(repo) if repo else None
    if common:
        hooks = common / "hooks"
        files += [common / "config", common / "info" / "attributes", hooks]
        files += sorted(hooks.iterdir()) if hooks.is_dir() else []
    if repo:
        files.append(repo / ".gitattributes")
    return files


def _common_git_dir(repo: Path) -> Path | None:
    """`repo/.git`, or for a linked worktree (a `.git` file) the main repo's git folder."""
    dot_git = repo / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        text = dot_git.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    linked = (repo / text.removeprefix("gitdir:").strip()).resolve()
    try:  # a worktree's folder names the shared one in `commondir`
        return (linked / (linked / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except (OSError, UnicodeDecodeError):
        return linked


def open_repo(repo: Path) -> git.Repo:
    """GitPython's repo at `repo`, its git processes started with `git_environment()` in a
    session of their own (`_session_repo_class`): the only way the orchestrator opens one."""
    r = _session_repo_class()(repo)
    r.git.update_environment(**git_environment())
    return r


@functools.cache
def _session_repo_class() -> type[git.Repo]:
    """`git.Repo` whose git processes start in a session of their own. A Ctrl-C at the
    terminal sends SIGINT to the whole foreground process group: evolve takes it as "finish
    and record", and needs its git (a kept repo's `git cat-file`, a commit under way) alive
    to do so. A git that outlives a killed evolve ends too: its stdin closes."""
    import git

    class SessionGit(git.Git):
        def execute(self, command: Any, *args: Any, **kwargs: Any) -> Any:
            return super().execute(command, *args, start_new_session=True, **kwargs)

    class SessionRepo(git.Repo):
        GitCommandWrapperType = SessionGit

    return SessionRepo


_kept: OrderedDict[tuple[str, int, int, int], git.Repo] = OrderedDict()
_kept_lock = threading.Lock()


@contextlib.contextmanager
def _kept_repo(repo: Path) -> Iterator[git.Repo]:
    """`open_repo(repo)`, kept open for this thread's next use (KEPT_REPOS). A repo is known
    by its path and its git folder's inode, so one made anew at the same path is opened anew,
    and by process, so a forked child never writes to its parent's git processes."""
    try:
        inode = (Path(repo) / ".git").stat().st_ino
    except OSError:  # not a repo's top folder (a worktree's .git file, a bare repo): as usual
        with open_repo(repo) as r:
            yield r
        return
    key = (str(Path(repo).resolve()), inode, os.getpid(), threading.get_ident())
    with _kept_lock:
        r = _kept.pop(key, None)
    if r is None:
        r = open_repo(repo)
    try:
        yield r
    except BaseException:
        r.close()  # a failed git process may leave its pipe mid-answer
        raise
    with _kept_lock:
        _kept[key] = r
        evicted = [_kept.popitem(last=False)[1] for _ in range(len(_kept) - KEPT_REPOS)]
    for old in evicted:
        old.close()


def git_command(repo: Path, *args: str) -> str:
    """Plain `git ARGS` in `repo`, with `git_environment()`, output as text."""
    import subprocess

    env = {**os.environ, **git_environment()}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False,
        start_new_session=True,  # not stopped by a Ctrl-C meant for evolve: `_session_repo_class`
    )  # fmt: skip
    if done.returncode != 0:
        raise UserError(f"git {args[0]} failed in {repo}: {done.stderr.strip()[:300]}")
    return done.stdout


def read_train(repo: Path, sha: str) -> str:
    """train.py as committed in `sha`; a `UserError` when that commit has no readable one."""
    # The blob streams from the repo's cat-file process: keep the repo open while reading.
    with _kept_repo(repo) as r:
        try:
            return (r.commit(sha).tree / TRAIN_FILE).data_stream.read().decode("utf-8")
        except KeyError:
            problem = f"commit {sha[:12]} has no {TRAIN_FILE}"
        except UnicodeDecodeError:
            problem = f"{TRAIN_FILE} in commit {sha[:12]} is not UTF-8 text"
    raise UserError(f"{problem}: commit a {TRAIN_FILE}, then run again")


def commit_message(repo: Path, sha: str) -> str:
    with _kept_repo(repo) as r:
        return r.commit(sha).message
