"""The fault suite: the system survives every fault of issue 6 ("Trust").

Each fault is run for real and its outcome asserted:

Candidate faults, through the real runner (`run_experiment`): an exception, a hang with
no output, a NaN loss, out of memory (Python's and torch's), a process that ignores
SIGTERM, grandchildren, a daemon that leaves the process group, a flood of log output, an
exit with code 0 but no hand-over. Each becomes its status with a reason, within a bounded
time, leaves no process behind and leaves a bounded run.log.

Orchestrator faults: SIGKILL and SIGINT of a real `autoresearch evolve` at random
instants, each followed by `--resume` (tests/kill_resume.py has the trial and its checks).
AUTORESEARCH_KILL_TRIALS sets how many (default 2, alternating SIGKILL and SIGINT);
benchmarks/kill_trials.py runs the full twenty and prints a table. And what a stopped run
leaves of the proposals it was preparing: an agent's process and scratch folder, and
scratch files a resumed run must not take for its own.

Proposer faults, through the engine: a proposer that raises, one that hangs past
`evolve.proposal_timeout`, one that returns 5 MB of garbage, and the llm proposer whose
server returns 5 MB of garbage. Each is recorded `invalid` with a short reason, and the
run goes on.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import candidates
import pytest
from helpers import FROZEN, LEARNS, cli, committed, make_engine
from kill_resume import (
    describe,
    kill_all,
    kill_and_resume,
    make_trial_repo,
    plan_trials,
    processes_of,
    wait_gone,
)
from openai_stub import OpenAIStub

from autoresearch.config import load_config
from autoresearch.constants import rewrite_constants
from autoresearch.harness.context import CONTEXT_ENV
from autoresearch.ledger import Ledger
from autoresearch.proposal import Proposal
from autoresearch.runner import KILL_GRACE_SECONDS, run_experiment
from autoresearch.testing import ScriptedProposer, ScriptedRunner, make_request

# -- candidate faults ------------------------------------------------------------------------------

SHORT = {"run.budget_seconds": 1, "run.startup_seconds": 2}  # hard limit 3 s: a hang ends fast
LOG_LIMIT_BYTES = 20 * 2**20  # run.log stays this small whatever the candidate prints
OUT_OF_MEMORY = r"MemoryError|out of memory|can't allocate memory"  # Python, CUDA, CPU torch
HANDOVER_MISSING = "train.py exited without calling harness.handover"
# Under SHORT a candidate is stopped at 3 s; one that ignores SIGTERM costs two kill graces.
STOPPED_WITHIN = 3 + 2 * KILL_GRACE_SECONDS + 15  # generous: CI machines are shared


@dataclass(frozen=True)
class Fault:
    source: str
    status: str
    reason: str  # a regular expression the outcome's reason must match
    within: float  # seconds the whole experiment may take, evaluation included
    settings: dict = field(default_factory=dict)


CANDIDATE_FAULTS = {
    "exception": Fault(candidates.CRASH, "crash", "exit code 1: RuntimeError: boom", 30),
    "hang-no-output": Fault(candidates.HANG, "timeout", r"no hand-over within 3 s", 20, SHORT),
    # Stopped at the first NaN step, long before its 30 s budget is up.
    "nan-loss": Fault(
        candidates.NAN, "crash", r"loss diverged \(nan\)", 20, {"run.budget_seconds": 30}
    ),
    "oom-python": Fault(candidates.OOM_PYTHON, "crash", OUT_OF_MEMORY, 30),
    "oom-torch": Fault(candidates.OOM_TORCH, "crash", OUT_OF_MEMORY, 30),
    "ignores-sigterm": Fault(
        candidates.IGNORES_SIGTERM, "timeout", "no hand-over", STOPPED_WITHIN, SHORT
    ),
    "grandchildren": Fault(candidates.GRANDCHILD, "timeout", "no hand-over", 20, SHORT),
    "setsid-daemon": Fault(candidates.DAEMON, "crash", HANDOVER_MISSING, 30),
    # The flood is output, not a fault of the model: it trains, hands over and is scored.
    "log-flood": Fault(candidates.LOG_FLOOD, "keep", "trained and evaluated", 90),
    "exit-0-no-handover": Fault(candidates.NO_HANDOVER, "crash", HANDOVER_MISSING, 30),
}


@pytest.mark.parametrize("fault", CANDIDATE_FAULTS.values(), ids=list(CANDIDATE_FAULTS))
def test_a_candidate_fault_becomes_a_status_and_leaves_nothing_behind(research_repo, fault):
    # As the engine runs a candidate: train.py in its run folder, which is its working directory.
    run_dir = research_repo / ".autoresearch/runs/fault"
    run_dir.mkdir(parents=True)
    (run_dir / "train.py").write_text(fault.source)
    config = load_config(research_repo, fault.settings)
    t0 = time.monotonic()
    try:
        out = run_experiment(run_dir / "train.py", config, run_dir)
        elapsed = time.monotonic() - t0
        # The runner returns only once everything the candidate started is dead; the second
        # is for the kernel to reparent and reap what was killed.
        left = wait_gone(research_repo, seconds=1.0)
        log_bytes = (run_dir / "run.log").stat().st_size
    finally:
        kill_all(processes_of(research_repo))  # whatever the outcome, leave no process behind
        (run_dir / "run.log").unlink(missing_ok=True)  # the flood's, before pytest keeps it

    assert out.status == fault.status, out.reason
    assert re.search(fault.reason, out.reason), out.reason
    assert (out.val_bpb is not None) == (fault.status == "keep")
    assert elapsed < fault.within
    assert left == [], "processes outlived the experiment"
    assert not (run_dir / "pgid").exists()
    assert log_bytes < LOG_LIMIT_BYTES


def test_the_process_check_sees_a_process_that_only_its_environment_ties_to_the_run(tmp_path):
    """The check above must see what it checks for: a daemon with cwd /, another session,
    another name, but the environment the runner gave the candidate."""
    run_dir = tmp_path / "runs" / "e0001"
    env = os.environ | {CONTEXT_ENV: str(run_dir / "context.json")}
    daemon = subprocess.Popen(["sleep", "60"], cwd="/", env=env, start_new_session=True)
    try:
        assert processes_of(tmp_path) == [daemon.pid]
    finally:
        daemon.kill()
        daemon.wait()
    assert processes_of(tmp_path) == []


# -- orchestrator faults ---------------------------------------------------------------------------

# One SIGKILL and one SIGINT in CI; benchmarks/kill_trials.py runs many more.
KILL_TRIALS = int(os.environ.get("AUTORESEARCH_KILL_TRIALS", "2"))
SEED = int(os.environ.get("AUTORESEARCH_TEST_SEED", "1"))


@pytest.mark.parametrize(
    "plan", plan_trials(KILL_TRIALS, SEED), ids=lambda p: f"{p.signal}-at-{p.instant}s"
)
def test_evolve_survives_a_signal_at_a_random_instant_and_resumes(tmp_path, corpus, plan):
    repo = make_trial_repo(tmp_path / "research", corpus)
    trial = kill_and_resume(repo, plan)
    assert trial.problems() == []
    assert len(trial.after) > len(trial.before)  # the resume did real work


CTRL_C_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from autoresearch import workspace

repo, sha = Path(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, lambda *_: None)  # evolve's own handler: finish and record
workspace.read_train(repo, sha)  # a kept repo: its git cat-file processes now run
os.killpg(0, signal.SIGINT)  # Ctrl-C at the terminal: the whole foreground group
time.sleep(0.5)
workspace.read_train(repo, sha)
print(workspace.commit_result(repo, sha, "recorded after a Ctrl-C"))
"""


def test_a_ctrl_c_at_the_terminal_leaves_evolve_the_git_it_records_with(tmp_path, corpus):
    """A SIGINT to evolve's whole process group (what a terminal sends) must not end the git
    processes evolve keeps open and still needs to record its last results."""
    repo = make_trial_repo(tmp_path / "research", corpus)
    sha = committed(repo, FROZEN)
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(repo), sha], capture_output=True, text=True,
        start_new_session=True, timeout=60,  # a group of its own, as a terminal's job
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = done.stdout.strip()
    log = subprocess.run(["git", "log", "-1", "--format=%P %s", recorded], cwd=repo,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert log.stdout.split(" ", 1) == [sha, "recorded after a Ctrl-C\n"]


def test_an_agent_proposal_in_flight_ends_with_evolve(tmp_path, corpus):
    """The proposal being prepared when evolve stops (here: at its experiment limit, while the
    agent still works on the next proposal) must not leave the agent or its scratch behind."""
    repo = make_trial_repo(tmp_path / "research", corpus)
    agent = tmp_path / "slow_agent.py"
    agent.write_text("import time\ntime.sleep(600)\n")
    scratch = tmp_path / "agent-scratch"
    with open(repo / "autoresearch.toml", "a") as toml:
        toml.write(f'\n[proposers.agent]\nworkdir = "{scratch}"\n')
    agent_spec = f"agent:{sys.executable} {agent}"
    result = cli(
        "evolve", "--proposer", agent_spec, "--budget", "1", "--calibrate", "0",
        "--max-experiments", "1", cwd=repo,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    left = describe(wait_gone(tmp_path, seconds=2.0))
    kill_all(processes_of(tmp_path))
    assert left == []
    assert list(scratch.glob("*")) == []


def test_a_resumed_run_adopts_no_scratch_file_of_the_run_it_resumes(research_repo):
    """A killed run leaves the scratch folders of its proposals in flight (prompts, replies);
    the resumed run numbers its proposals from 1 again, and its first candidate must not
    take the killed run's files for its own."""
    stale = research_repo / ".autoresearch/proposals/p00001/reply_2.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("the killed run's reply")
    engine = make_engine(research_repo, ScriptedProposer(), max_experiments=1)
    engine.run(committed(research_repo, FROZEN))
    state = research_repo / ".autoresearch"
    assert list(state.rglob(stale.name)) == []


def test_files_a_candidate_writes_under_its_proposers_names_do_not_replace_them(research_repo):
    """The run folder is the candidate's to write while it runs; the proposer's prompts and
    replies join it in `proposal/` only after, in place of anything the candidate put there."""
    forge = (
        "\nimport pathlib\n"
        "pathlib.Path('reply_1.md').write_text('forged')\n"
        "pathlib.Path('proposal').mkdir(exist_ok=True)\n"
        "pathlib.Path('proposal', 'reply_1.md').write_text('forged')\n"
        "pathlib.Path('proposal', 'extra.md').write_text('forged')\n"
        "pathlib.Path('proposal', 'locked').mkdir()\n"
        "pathlib.Path('proposal', 'locked', 'reply_2.md').write_text('forged')\n"
        "pathlib.Path('proposal', 'locked').chmod(0)\n"
    )

    def propose(request):
        (request.work_dir / "reply_1.md").write_text("the proposer's reply")
        return rewrite_constants(FROZEN, {"LR": 0.1}) + forge

    engine = make_engine(research_repo, ScriptedProposer([propose]), max_experiments=2)
    engine.run(committed(research_repo, FROZEN))
    folder = research_repo / ".autoresearch" / "runs" / "e0002"
    assert (folder / "reply_1.md").read_text() == "forged"  # the candidate's file, as it left it
    assert [p.name for p in (folder / "proposal").iterdir()] == ["reply_1.md"]
    assert (folder / "proposal" / "reply_1.md").read_text() == "the proposer's reply"


@pytest.mark.parametrize("planted", ["link", "fifo", "file", "deep"])
def test_whatever_a_candidate_left_as_proposal_is_replaced(tmp_path, planted):
    from autoresearch.engine import _adopt

    run, scratch = tmp_path / "run", tmp_path / "scratch"
    run.mkdir()
    scratch.mkdir()
    (scratch / "reply_1.md").write_text("the proposer's reply")
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "link":  # the files must not land in (or the removal follow it to) outside
        (run / "proposal").symlink_to(outside)
    elif planted == "fifo":
        os.mkfifo(run / "proposal")
    elif planted == "deep":  # nested past the length of any path (made relative to each folder)
        folder = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
        name = "proposal"
        for _ in range(25):
            os.mkdir(name, dir_fd=folder)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder, name = inner, "d" * 200
        os.close(folder)
    else:
        (run / "proposal").write_text("forged")
    _adopt(scratch, run)
    assert (run / "proposal" / "reply_1.md").read_text() == "the proposer's reply"
    assert not (run / "proposal").is_symlink() and list(outside.iterdir()) == []


# -- proposer faults -------------------------------------------------------------------------------

GARBAGE_BYTES = 5 * 2**20
RECORD_LIMIT_BYTES = 64 * 2**10  # the whole ledger (and results.tsv) of these short runs
LINE_LIMIT_CHARS = 1000  # the line printed per experiment
KEPT_LIMIT_BYTES = 2 * 2**20  # what an invalid proposal leaves in its run folder


def garbage(text: bool = False, size: int = GARBAGE_BYTES) -> str:
    """`size` characters of garbage with a stray edit marker. Default: random bytes decoded as
    a careless proposer would (NULs, control characters, lone surrogates); `text`: random
    printable ASCII, as a model that will not stop talking sends."""
    rng = random.Random(0)
    if text:
        chunk = "".join(chr(rng.randrange(32, 127)) for _ in range(4096))
    else:
        chunk = bytes(rng.randrange(256) for _ in range(4096)).decode("utf-8", "surrogateescape")
    chunk += "\n<<<<<<< SEARCH\n"
    return (chunk * (size // len(chunk) + 1))[:size]


def proposer_faults(junk: str, released: threading.Event) -> dict[str, tuple[object, str]]:
    """Fault name -> (the scripted proposer's reply, a pattern for the recorded reason)."""

    def hang(request):
        released.wait(120)  # past evolve.proposal_timeout; released when the test ends

    def huge(**fields):
        return lambda request: Proposal(**({"source": junk, "description": junk} | fields))

    failed = "proposer failed: "
    return {
        "raises": (RuntimeError("model said nonsense"), failed + "RuntimeError: model said no"),
        "hangs": (hang, failed + "TimeoutError: no proposal after 1 s"),
        # The size limit is checked first: nothing of the 5 MB is parsed or kept.
        "5-mb-source": (huge(), r"^train\.py is 5\d{3} KB, over the 200 KB limit$"),
        "5-mb-not-a-proposal": (lambda request: junk.encode(errors="surrogateescape"),
                                "^proposer returned bytes, not a Proposal$"),
        "5-mb-bytes-source": (huge(source=junk.encode(errors="surrogateescape")),
                              "^the proposal's source is bytes, not str$"),
        "5-mb-usage": (huge(usage=junk), "over the 200 KB limit"),  # usage recorded as zeros
        # Small enough to be parsed, and not even text.
        "small-garbage-source": (huge(source="x = 1  # " + junk[:4000]), "does not compile"),
    }  # fmt: skip


def assert_recorded_briefly(repo: Path, lines: list[str]) -> None:
    """Whatever the proposers sent, the ledger, results.tsv, the printed lines and the run
    folders stay small, and what is printed is clean text."""
    state = repo / ".autoresearch"
    assert (state / "ledger.jsonl").stat().st_size < RECORD_LIMIT_BYTES
    assert (state / "results.tsv").stat().st_size < RECORD_LIMIT_BYTES
    for line in lines:
        assert len(line) < LINE_LIMIT_CHARS
        line.encode("utf-8")  # printable on any terminal: no lone surrogates
    for record in Ledger(state / "ledger.jsonl").records():
        if record.status == "invalid":
            kept = sum(p.stat().st_size for p in (state / "runs" / record.id).rglob("*"))
            assert kept < KEPT_LIMIT_BYTES, record.id
            assert all(isinstance(v, (int, float)) for v in record.usage.values())


def test_proposer_faults_are_recorded_invalid_and_the_run_goes_on(research_repo):
    released = threading.Event()
    faults = proposer_faults(garbage(), released)
    proposer = ScriptedProposer([reply for reply, _ in faults.values()] + [(LEARNS, "ok")])
    engine = make_engine(
        research_repo, proposer, max_experiments=2, proposal_timeout=1.0, max_invalid=99
    )
    try:
        records = engine.run(committed(research_repo, FROZEN))
    finally:
        released.set()
    # One experiment per reply, in order: every fault recorded, then the search went on.
    assert [r.status for r in records] == ["keep", *["invalid"] * len(faults), "keep"]
    for (name, (_, reason)), record in zip(faults.items(), records[1:-1], strict=True):
        assert re.search(reason, record.reason), (name, record.reason)
    # The hung proposal cost the device its 1 s timeout, never the proposer's whole hang.
    assert engine.idle_seconds < 5
    assert_recorded_briefly(research_repo, engine.lines)


LLM_EDIT = """\
DESCRIPTION: a learning rate that learns

train.py
```python
<<<<<<< SEARCH
LR = 0.0
=======
LR = 0.1
>>>>>>> REPLACE
```
"""
LLM_OPTIONS = {"model": "openai/stub", "timeout": 60.0, "retries": 0, "max_attempts": 2}


def llm_proposer(stub: OpenAIStub):
    from autoresearch.default_plugins.llm_proposer import LLMProposer, parse_options

    return LLMProposer(parse_options(LLM_OPTIONS | {"api_base": stub.base_url}))


def test_the_llm_proposer_re_asks_after_5_mb_of_garbage_then_fails_cleanly(research_repo):
    junk = garbage(text=True)
    with OpenAIStub() as stub:
        stub.reply(junk)  # the first answer
        stub.reply(junk)  # the answer to the re-ask: max_attempts 2 are used up
        stub.reply(LLM_EDIT)  # the next proposal: the run goes on
        # Serial (prefetch 0): no fourth request is made while the last proposal trains. The
        # proposer is under test, not training: scripted scores, the edit better.
        runner = ScriptedRunner(lambda source: 3.0 if source == FROZEN else 2.9)
        engine = make_engine(research_repo, llm_proposer(stub), max_experiments=2, prefetch=0,
                             runner=runner)  # fmt: skip
        records = engine.run(committed(research_repo, FROZEN))
    assert len(stub.requests) == 3
    assert junk in stub.requests[1].messages[-2]["content"]  # the re-ask quoted its reply
    assert [r.status for r in records] == ["keep", "invalid", "keep"]
    assert re.fullmatch(
        r"proposer failed: LLMError: openai/stub gave no usable edit in 2 attempts;"
        r" last problem: .{0,300}",
        records[1].reason,
    ), records[1].reason
    assert_recorded_briefly(research_repo, engine.lines)


def test_the_llm_proposer_re_asks_after_undecodable_garbage(tmp_path):
    from autoresearch.default_plugins.llm_proposer import LLMError

    with OpenAIStub() as stub:
        stub.reply(garbage())  # JSON allows "\\udc80": decoded, it is a lone surrogate
        stub.reply(garbage())
        with pytest.raises(LLMError, match="gave no usable edit in 2 attempts"):
            llm_proposer(stub).propose(make_request(FROZEN, work_dir=tmp_path / "p"))
    assert len(stub.requests) == 2
