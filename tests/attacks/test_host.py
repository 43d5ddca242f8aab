"""Host escapes: nothing a candidate writes outlives its run or lands outside its run folder,
and no candidate can take the machine down by memory, processes or disk.

A `~/.gitconfig` with `core.fsmonitor` written by a candidate would run its code in the
orchestrator's next git command, outside the sandbox and with the full environment; a file in
/tmp outlives the run; a memory hog, a fork bomb or a disk filler takes the machine with it.
Every candidate gets a private HOME and TMPDIR in its run folder; under isolation everything
else is read-only; memory, process count and disk are capped, and a candidate over a cap ends
as an ordinary `crash` that says which cap it hit. The caps here are tiny (a few hundred MB,
a hundred processes, a few MB): these tests never exhaust the machine.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import candidates
import git
import pytest
from attacking import TOKENS, attack, needs_isolation, same_score

from autoresearch.config import load_config
from autoresearch.engine import Engine
from autoresearch.testing import ScriptedProposer

GITCONFIG = "[core]\n\tfsmonitor = touch /tmp/pwned-by-candidate\n"
MEMORY_CAP = {"run.memory_gb": 0.75}  # torch alone is ~0.3 GB resident
PROCESS_CAP = {"run.max_processes": 100}
DISK_CAP = {"run.disk_gb": 0.005}  # 5 MB
BOTH = ["off", pytest.param("on", marks=needs_isolation)]
# The caps hold the same way with and without namespaces: CI runs each without them.
CAPS_BOTH = ["off", pytest.param("on", marks=[needs_isolation, pytest.mark.slow])]


@pytest.fixture
def orchestrator_home(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """The orchestrator's HOME and TMPDIR: real folders a candidate must not write."""
    home, tmp = tmp_path / "orchestrator-home", tmp_path / "orchestrator-tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return home, tmp


def last_run(repo: Path) -> Path:
    return max((repo / ".autoresearch" / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)


# --- 5a. HOME and TMPDIR are the run's own ---------------------------------------------


# Writes a ~/.gitconfig and a ~/.bashrc, and temporary files three ways: one candidate
# makes both attempts (they touch different folders), and the two tests below each assert
# what became of theirs; one run per isolation setting serves both.
HOME_AND_TMP = candidates.honest_with(
    at_start="    import pathlib\n"
    f"    (pathlib.Path.home() / '.gitconfig').write_text({GITCONFIG!r})\n"
    "    import os\n"
    f"    open(os.path.expanduser('~/.bashrc'), 'a').write('echo pwned\\n')\n"
    "    import tempfile\n"
    "    open(os.path.join(tempfile.gettempdir(), 'left-behind'), 'w').write('x')\n"
    "    tempfile.mkstemp(prefix='left-behind-')\n"
    "    open(os.path.join(os.environ['TMPDIR'], 'by-env'), 'w').write('x')\n"
)


@pytest.fixture(scope="module", params=BOTH)
def home_and_tmp_attack(request, tmp_path_factory, corpus):
    """(outcome, the orchestrator's HOME, its TMPDIR, the run folder) of HOME_AND_TMP."""
    from conftest import make_research_repo

    folder = tmp_path_factory.mktemp(f"home-and-tmp-{request.param}")
    repo = make_research_repo(folder / "research", corpus)
    home, tmp = folder / "orchestrator-home", folder / "orchestrator-tmp"
    home.mkdir()
    tmp.mkdir()
    with pytest.MonkeyPatch.context() as env:  # as orchestrator_home, for this module's run
        env.setenv("HOME", str(home))
        env.setenv("TMPDIR", str(tmp))
        out = attack(repo, HOME_AND_TMP, isolation=request.param)
    return out, home, tmp, last_run(repo)


def test_5_gitconfig_in_home_lands_in_the_run_folder(home_and_tmp_attack):
    out, home, _, run = home_and_tmp_attack
    assert out.status == "keep", out.reason
    assert list(home.iterdir()) == []
    assert (run / "home" / ".gitconfig").read_text() == GITCONFIG


def test_5_temporary_files_land_in_the_run_folder(home_and_tmp_attack):
    out, _, tmp, run = home_and_tmp_attack
    assert out.status == "keep", out.reason
    assert list(tmp.iterdir()) == []
    landed = {p.name for p in (run / "tmp").iterdir()}
    assert {"left-behind", "by-env"} <= landed


# --- 5a'. the user's key files are not the candidate's ---------------------------------

KEY_IN_A_FILE = "sk-in-a-file-0123456789abcdef"


def plant_key_files(home: Path, repo: Path) -> list[Path]:
    """A key in the research repo's .env, the user's ~/.netrc and ~/.ssh/id_test."""
    (home / ".ssh").mkdir()
    files = [repo / ".env", home / ".netrc", home / ".ssh" / "id_test"]
    for path in files:
        path.write_text(f"OPENAI_API_KEY={KEY_IN_A_FILE}\n")
    return files


def test_5_reading_the_users_key_files_from_python_is_invalid(research_repo, orchestrator_home):
    home, _ = orchestrator_home
    files = plant_key_files(home, research_repo)
    reads = candidates.honest_with(
        at_start=f"    for path in {[str(p) for p in files]!r}:\n"
        "        try:\n"
        "            print(open(path).read())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    out = attack(research_repo, reads)
    assert out.status == "invalid" and "tried to read the user's key files" in out.reason
    assert KEY_IN_A_FILE not in (last_run(research_repo) / "run.log").read_text()


@needs_isolation
def test_5_under_isolation_the_users_key_files_read_empty_from_a_shell(
    research_repo, orchestrator_home
):
    home, _ = orchestrator_home
    files = plant_key_files(home, research_repo)
    reads = candidates.honest_with(
        at_start="    import subprocess\n"
        f"    for path in {[str(p) for p in files]!r}:\n"
        "        subprocess.run(['sh', '-c', 'cat \"$1\"; ls \"$(dirname $1)\"', 'sh', path])\n"
    )
    out = attack(research_repo, reads, isolation="on")
    assert out.status == "keep", out.reason
    log = (last_run(research_repo) / "run.log").read_text()
    assert KEY_IN_A_FILE not in log
    assert "id_test: No such file" in log  # ~/.ssh is an empty folder to it
    assert all(p.read_text() == f"OPENAI_API_KEY={KEY_IN_A_FILE}\n" for p in files)  # untouched


# --- 5b. under isolation nothing outside the run folder is writable --------------------


def writes_everywhere(targets: list[str]) -> str:
    """An attack that writes each target from Python, and again from a shell (native code)."""
    return candidates.honest_with(
        at_start="    import subprocess\n"
        f"    for target in {targets!r}:\n"
        "        try:\n"
        "            open(target, 'w').write('escaped')\n"
        "        except OSError:\n"
        "            pass\n"
        "        subprocess.run(['sh', '-c', 'echo escaped > \"$1\".sh', 'sh', target])\n"
    )


@needs_isolation
def test_5_absolute_writes_outside_the_run_folder_fail(research_repo, orchestrator_home):
    home, tmp = orchestrator_home
    marker = f"autoresearch-attack-{uuid.uuid4().hex}"
    targets = [str(home / ".gitconfig"), str(tmp / marker), f"/tmp/{marker}", f"/var/tmp/{marker}"]
    out = attack(research_repo, writes_everywhere(targets), isolation="on")
    assert out.status == "keep", out.reason
    left = [t + s for t in targets for s in ("", ".sh") if os.path.exists(t + s)]
    assert left == []


@needs_isolation
def test_5_shared_memory_is_private_and_gone_after_the_run(research_repo):
    marker = f"/dev/shm/autoresearch-attack-{uuid.uuid4().hex}"
    source = writes_everywhere([marker]).replace(
        "    harness.handover(",
        f"    assert open({marker!r}).read() == 'escaped'\n    harness.handover(",
    )
    out = attack(research_repo, source, isolation="on")
    assert out.status == "keep", out.reason  # it could use /dev/shm (torch's workers do)...
    assert not os.path.exists(marker) and not os.path.exists(marker + ".sh")  # ...its own


# --- 5c. memory, processes and disk are capped -----------------------------------------

# Touches 50 MB blocks until 2 GB are resident: far past a 0.75 GB cap.
MEMORY_HOG = candidates.honest_with(
    at_start="    hog = [bytearray(50 << 20) for _ in range(40)]\n"
    "    for block in hog:\n"
    "        block[::4096] = b'x' * len(block[::4096])\n"
)
# The same from a child process: the cap is the whole run's, not one process's.
MEMORY_HOG_CHILD = candidates.honest_with(
    at_start="    import subprocess, sys\n"
    "    subprocess.run([sys.executable, '-c', 'import numpy; a = numpy.ones(200_000_000)'])\n"
)
# Forks until refused (at most 400), each child sleeping; catches the refusal and trains on.
FORK_BOMB = candidates.honest_with(
    at_start="    import os, time\n"
    "    for _ in range(400):\n"
    "        try:\n"
    "            if os.fork() == 0:\n"
    "                time.sleep(60)\n"
    "                os._exit(0)\n"
    "        except OSError:\n"
    "            break\n"
)
THREAD_BOMB = candidates.honest_with(
    at_start="    import threading, time\n"
    "    for _ in range(400):\n"
    "        try:\n"
    "            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "        except RuntimeError:\n"
    "            break\n"
)
# 20 MB in one file, then 20 files of 1 MB in the private temporary folder: past 5 MB both.
DISK_ONE_FILE = candidates.honest_with(
    at_start="    import time\n"
    "    with open('big.bin', 'wb') as f:\n"
    "        for _ in range(20):\n"
    "            f.write(b'x' * 2**20)\n"
    "    time.sleep(3)\n"
)
DISK_MANY_FILES = candidates.honest_with(
    at_start="    import tempfile, time\n"
    "    for _ in range(20):\n"
    "        with tempfile.NamedTemporaryFile(delete=False) as f:\n"
    "            f.write(b'x' * 2**20)\n"
    "    time.sleep(3)\n"
)


@pytest.mark.parametrize("isolation", CAPS_BOTH)
@pytest.mark.parametrize("source", [MEMORY_HOG, MEMORY_HOG_CHILD], ids=["python", "child"])
def test_5_memory_over_the_cap_is_a_crash(research_repo, source, isolation):
    out = attack(research_repo, source, isolation=isolation, **MEMORY_CAP)
    assert out.status == "crash", (out.status, out.reason)
    assert out.reason.startswith("out of memory") and "0.75 GB (run.memory_gb)" in out.reason


@pytest.mark.parametrize("isolation", CAPS_BOTH)
@pytest.mark.parametrize("source", [FORK_BOMB, THREAD_BOMB], ids=["forks", "threads"])
def test_5_processes_over_the_cap_are_a_crash(research_repo, source, isolation):
    out = attack(research_repo, source, isolation=isolation, **PROCESS_CAP)
    assert out.status == "crash", (out.status, out.reason)
    assert out.reason.startswith("too many processes"), out.reason
    assert "100 processes and threads (run.max_processes)" in out.reason


@pytest.mark.parametrize("isolation", CAPS_BOTH)
@pytest.mark.parametrize("source", [DISK_ONE_FILE, DISK_MANY_FILES], ids=["one-file", "many"])
def test_5_disk_over_the_cap_is_a_crash(research_repo, source, isolation):
    out = attack(research_repo, source, isolation=isolation, **DISK_CAP)
    assert out.status == "crash", (out.status, out.reason)
    assert out.reason.startswith("disk quota") and "0.005 GB (run.disk_gb)" in out.reason


def test_5_the_honest_candidate_runs_within_the_caps(research_repo, honest_bpb):
    out = attack(research_repo, candidates.HONEST, check=False, **MEMORY_CAP, **PROCESS_CAP)
    assert out.status == "keep" and same_score(out.val_bpb, honest_bpb), out.reason


@pytest.mark.slow
def test_5_the_search_goes_on_after_each_cap(research_repo):
    """A run over a cap is an ordinary crash: the next experiment of the search runs."""
    repo = research_repo
    (repo / "train.py").write_text(candidates.HONEST)
    base = git.Repo(repo).index
    base.add(["train.py"])
    base_sha = base.commit("baseline").hexsha
    hogs = [MEMORY_HOG, FORK_BOMB, DISK_ONE_FILE]
    proposer = ScriptedProposer([(h, f"hog {i}") for i, h in enumerate(hogs)])
    settings = {"run.budget_tokens": TOKENS, "run.budget_seconds": 30, "run.isolation": "off"}
    settings |= MEMORY_CAP | PROCESS_CAP | {"run.disk_gb": 0.01}
    evolve = {"evolve.calibrate": 0, "evolve.prefetch": 0, "evolve.fix_attempts": 0}
    config = load_config(repo, settings | evolve | {"evolve.max_experiments": 1 + len(hogs)})
    engine = Engine(repo, config, "hog", {proposer.name: (proposer, 1.0)}, say=lambda line: None)
    records = engine.run(base_sha)
    assert [r.status for r in records] == ["keep", "crash", "crash", "crash"]
    reasons = [r.reason.split(":")[0] for r in records[1:]]
    assert reasons == ["out of memory", "too many processes", "disk quota"]
