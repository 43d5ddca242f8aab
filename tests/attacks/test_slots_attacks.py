"""Attacks that only work because several experiments run at once (`--slots N`).

An adversary's round against `evolve --slots`, knowing only README.md, docs/more-gpus.md,
docs/evolve.md and docs/threat-model.md. Each test is a candidate `train.py` that uses
the experiment running next to it, and fails while the attack works:

1. A candidate reads the other slot's run folder while both train, loads its handed-over
   weights and hands them over as its own: the score of a model it never trained, with
   the sandbox's namespaces on.
2. A candidate sets its CPU affinity back to every core: the "equal share of the cores"
   is only a `sched_setaffinity` the candidate may undo, so it trains on the other
   slot's cores too (and slows that slot's time-budgeted score).
3. Without namespaces, a candidate touches `program.md` and finishes after its neighbour:
   the honest neighbour is recorded `invalid` ("changed protected files while it ran")
   and the search stops, while the culprit is only cut off and trained again on resume.
4. Without namespaces, on a resumed tag, a candidate appends a forged record (its chain
   link computed, as the docs say it can be) before the orchestrator's first append of
   the session: that append checks nothing, and the run's own check then accepts the
   ledger because it equals the orchestrator's last write. The forged record loads.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import candidates
import pytest
from attacking import needs_isolation
from helpers import FROZEN, LEARNS, committed, make_engine

from autoresearch.config import load_config
from autoresearch.errors import UserError
from autoresearch.ledger import Ledger, Record
from autoresearch.runner import run_experiment
from autoresearch.slots import plan_slots
from autoresearch.testing import ScriptedProposer, ScriptedRunner
from autoresearch.validation import validate_proposal

TWO_CORES = len(os.sched_getaffinity(0)) >= 2
needs_two_cores = pytest.mark.skipif(not TWO_CORES, reason="needs 2 cores for 2 slots")


def two_slots():
    cores = sorted(os.sched_getaffinity(0))[:2]
    return plan_slots(2, cores, None)


def side_by_side(repo: Path, sources: dict[str, str], **overrides) -> dict:
    """Run each source through the real runner at the same time, one per slot, as
    `evolve --slots 2` does (each in a thread of its own); their outcomes by name."""
    config = load_config(repo, {"run.budget_seconds": 1.5} | overrides)
    slots = two_slots()
    outcomes: dict = {}

    def run(name: str, source: str, slot) -> None:
        folder = repo / ".autoresearch" / "runs" / name
        folder.mkdir(parents=True)
        (folder / "train.py").write_text(source)
        outcomes[name] = run_experiment(folder / "train.py", config, folder, slot=slot)

    threads = [
        threading.Thread(target=run, args=(name, source, slot))
        for (name, source), slot in zip(sources.items(), slots, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


# -- 1. the other slot's hand-over, copied -------------------------------------------------------

# Trains nothing: waits (in its start-up allowance) for the model that the experiment in
# the next slot hands over, loads its weights, and hands them over as its own. The test
# drops HANDED_OVER in its run folder once the neighbour has handed over: a look after that
# finds the neighbour's hand-over if it can be seen at all, so the copier need not wait on.
HANDED_OVER = "neighbour-handed-over"
COPIES_THE_NEIGHBOUR = (
    "import os\nimport time\nfrom safetensors.torch import load_file\n"
    + f"HANDED_OVER = {HANDED_OVER!r}\n"
    + candidates.HONEST.split("def main():")[0]  # the honest bigram, untrained
    + """
def neighbour(since):
    here = os.path.realpath(os.getcwd())
    runs = os.path.dirname(here)
    for name in sorted(os.listdir(runs)):
        folder = os.path.join(runs, name)
        notes = os.path.join(folder, "handover", "handover.json")
        try:
            if folder != here and os.path.getmtime(notes) > since:
                return folder
        except OSError:
            pass
    return None


def main():
    started = time.time()
    ctx = harness.context()
    model = Bigram(ctx.vocab_size).to(ctx.device)
    found = None
    while found is None and time.time() < started + 40:
        told = os.path.exists(HANDED_OVER)
        found = neighbour(started)
        if told:
            break
        time.sleep(0.05)
    print("copying the hand-over of", found, flush=True)
    time.sleep(0.5)  # its weights are written before its notes; give the disk a moment
    budget = harness.Budget()
    budget.start()
    weights = load_file(os.path.join(found, "handover", "weights.safetensors"))
    with torch.no_grad():
        model.table.weight.copy_(weights["p.table.weight"])
    harness.handover(model)


if __name__ == "__main__":
    main()
"""
)


def tell_when_handed_over(honest: Path, copier: Path, timeout: float = 300) -> None:
    """Drop HANDED_OVER in the copier's run folder once the honest run has handed over."""
    deadline = time.monotonic() + timeout
    while not (honest / "handover" / "handover.json").exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    (copier / HANDED_OVER).touch()


@needs_two_cores
@needs_isolation
def test_1_a_candidate_cannot_hand_over_the_other_slots_model(research_repo):
    """Observed: with `run.isolation = "auto"` (namespaces on), the copier drew 0 training
    tokens and was recorded `keep` with val_bpb 1.4755, exactly the honest
    neighbour's score to the last digit: `.autoresearch/runs/` is mounted read-only, not
    hidden, so the other slot's `handover/weights.safetensors` is readable while it runs.
    It passes the static checks, so a real proposal does this."""
    assert validate_proposal(FROZEN, COPIES_THE_NEIGHBOUR, ()) is None
    runs = research_repo / ".autoresearch" / "runs"
    watcher = threading.Thread(
        target=tell_when_handed_over, args=(runs / "honest", runs / "copier"), daemon=True
    )
    watcher.start()
    out = side_by_side(
        research_repo, {"honest": LEARNS, "copier": COPIES_THE_NEIGHBOUR},
        **{"run.isolation": "on"},
    )  # fmt: skip
    honest, copier = out["honest"], out["copier"]
    assert honest.status == "keep", honest.reason
    assert copier.isolated
    assert not (copier.status == "keep" and copier.val_bpb <= honest.val_bpb + 1e-6), (
        f"{copier.status} {copier.val_bpb} with {copier.tokens} tokens, honest {honest.val_bpb}"
    )


# -- 2. the slot's share of the cores, undone ----------------------------------------------------

TAKES_EVERY_CORE = candidates.honest_with(
    at_start="    import os\n"
    "    mine = sorted(os.sched_getaffinity(0))\n"
    "    try:\n"
    "        os.sched_setaffinity(0, range(os.cpu_count()))\n"
    "    except OSError as e:\n"
    "        print('refused', e, flush=True)\n"
    "    torch.set_num_threads(os.cpu_count())\n"
    "    print('AFFINITY', mine, '->', sorted(os.sched_getaffinity(0)), flush=True)\n"
)


@needs_two_cores
@pytest.mark.parametrize("isolation", ["off", pytest.param("on", marks=needs_isolation)])
def test_2_a_candidate_cannot_leave_its_slots_cores(research_repo, isolation):
    """Observed (isolation off and on): `AFFINITY [0] -> [0, 1]`: the slot's pinning is
    a `sched_setaffinity` that the candidate undoes with one call, then trains on the
    other slot's core as well (its own val_bpb gains, the neighbour's time-budgeted one
    loses), and nothing records it. docs/more-gpus.md: "Each slot gets an equal share of
    the cores. The candidate and its evaluator are pinned to them"."""
    out = side_by_side(
        research_repo, {"greedy": TAKES_EVERY_CORE, "honest": LEARNS},
        **{"run.isolation": isolation},
    )  # fmt: skip
    log = (research_repo / ".autoresearch/runs/greedy/run.log").read_text()
    line = next(ln for ln in log.splitlines() if ln.startswith("AFFINITY"))
    mine, _, now = line.removeprefix("AFFINITY ").partition(" -> ")
    escaped = out["greedy"].status == "keep" and now != mine
    assert not escaped, f"{line}; greedy {out['greedy'].status} {out['greedy'].val_bpb}"


# -- 3. a protected file touched: the neighbour takes the blame ----------------------------------

# Once the experiment next to it runs (its `pgid` file is there), touches program.md from a
# subprocess (the audit guard sees only Python), then waits in its start-up allowance until
# that experiment has ended and a record has followed, so that the neighbour finishes first.
BLAMES_THE_NEIGHBOUR = candidates.honest_with(
    at_start="    import os, pathlib, subprocess, time\n"
    "    here = pathlib.Path.cwd()\n"
    "    program = here.parents[2] / bytes.fromhex('70726f6772616d2e6d64').decode()\n"
    "    ledger = here.parents[1] / bytes.fromhex('6c65646765722e6a736f6e6c').decode()\n"
    "    deadline = time.time() + 40\n"
    "    def running():\n"
    "        return [f for f in here.parent.iterdir() if f != here and (f / 'pgid').exists()]\n"
    "    while not running() and time.time() < deadline:\n"
    "        time.sleep(0.02)\n"
    "    neighbour = (running() or [here])[0]\n"
    "    size = os.stat(ledger).st_size\n"
    "    subprocess.run(['touch', str(program)], check=True)\n"
    "    while (neighbour / 'pgid').exists() or os.stat(ledger).st_size == size:\n"
    "        if time.time() > deadline:\n"
    "            break\n"
    "        time.sleep(0.02)\n"
)


def without_namespaces(repo: Path) -> None:
    text = (repo / "autoresearch.toml").read_text()
    (repo / "autoresearch.toml").write_text(text.replace("[run]\n", '[run]\nisolation = "off"\n'))


@needs_two_cores
def test_3_a_protected_file_touched_by_one_slot_is_not_blamed_on_the_other(research_repo):
    """Observed (isolation off): the honest LEARNS candidate, which ran next to the
    culprit, was recorded `invalid` with "changed protected files while it ran:
    .../program.md" and the search stopped (`fatal`); the culprit, still running, was
    only "cut off" (no record, its branch kept) and `--resume` trains it again first,
    next to another honest candidate. The record blames the wrong candidate for good."""
    without_namespaces(research_repo)
    base = committed(research_repo, FROZEN)
    proposer = ScriptedProposer([BLAMES_THE_NEIGHBOUR, LEARNS])
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=2, max_experiments=3,
        slots=two_slots(),
    )  # fmt: skip
    with pytest.raises(UserError, match="changed protected files"):
        engine.run(base)
    from autoresearch.validation import source_hash

    honest = [r for r in engine.records if r.fingerprints.get("source") == source_hash(LEARNS)]
    blamed = [r for r in honest if r.status == "invalid"]
    assert not blamed, f"the honest candidate {blamed[0].id} was recorded: {blamed[0].reason}"


# -- 4. a forged record hidden by the orchestrator's own append ----------------------------------

FORGED_ID = "e0042"
FORGE_WAIT_SECONDS = 20  # for the other side's next step: each takes well under a second


def forged_line(ledger: Path, scratch: Path) -> bytes:
    """The line that appends FORGED_ID (kept, promoted, val_bpb 0.01) to `ledger` with its
    chain link computed, as the docs say it can be: written by the library itself, to a copy
    in `scratch`."""
    copy = scratch / "forged.jsonl"
    copy.write_bytes(ledger.read_bytes())
    forged = Record(FORGED_ID, "keep", val_bpb=0.01, tag="t", promoted=True,
                    description="a record nobody trained")  # fmt: skip
    Ledger(copy).append(forged)
    return copy.read_bytes().splitlines(keepends=True)[-1]


def forges(line: bytes) -> str:
    """A candidate that appends `line` to the ledger from a shell (the audit guard sees only
    Python, and the line is in its source: it never reads the ledger), waits until the
    orchestrator has appended a record after it, then trains honestly."""
    return candidates.honest_with(
        at_start="    import os, pathlib, subprocess, time\n"
        "    state = pathlib.Path.cwd().parents[1]\n"
        "    ledger = state / bytes.fromhex('6c65646765722e6a736f6e6c').decode()\n"
        f"    line = bytes.fromhex({line.hex()!r}).decode()\n"
        "    subprocess.run(['sh', '-c', 'printf %s \"$1\" >> \"$2\"', 'sh', line, str(ledger)],\n"
        "                   check=True)\n"
        "    forged = os.stat(ledger).st_size\n"
        f"    deadline = time.time() + {FORGE_WAIT_SECONDS}\n"
        "    while os.stat(ledger).st_size == forged and time.time() < deadline:\n"
        "        time.sleep(0.02)\n"
    )


@needs_two_cores
def test_4_a_ledger_forged_while_slots_run_on_a_resumed_tag_is_caught(research_repo, tmp_path):
    """Observed (isolation off): the forger was recorded `keep`, the search ended normally,
    and the ledger then loads with the forged e0042 (val_bpb 0.01, promoted) in it, no
    warning: it heads the population a resume picks parents from. How: in a resumed
    session the engine's `Ledger` has no last write yet, so its first append (here an
    invalid proposal's record, appended while the forger trained) checks nothing; that
    append becomes `own_write`, and the forger's own file-state check then takes the
    changed ledger for the orchestrator's. docs/more-gpus.md: "a candidate
    that edits the ledger is still caught"."""
    without_namespaces(research_repo)
    base = committed(research_repo, FROZEN)
    first = make_engine(
        research_repo, ScriptedProposer(), max_experiments=1, runner=ScriptedRunner(lambda s: 3.0)
    )
    first.run(base)  # the tag's baseline; what follows is `evolve --resume`
    ledger_path = research_repo / ".autoresearch" / "ledger.jsonl"
    line = forged_line(ledger_path, tmp_path)

    def invalid_after_the_forgery(request):
        deadline = time.monotonic() + FORGE_WAIT_SECONDS
        while line not in ledger_path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        return "this is not python ("  # an ordinary invalid proposal, recorded at once

    proposer = ScriptedProposer([forges(line), invalid_after_the_forgery, LEARNS])
    resumed = make_engine(
        research_repo, proposer, population=4, prefetch=1, max_experiments=3, slots=two_slots()
    )
    error = None
    try:
        resumed.run(base)
    except UserError as e:
        error = e
    written = ledger_path.read_bytes()
    assert line in written, "the forger did not write the ledger: the attack did not happen"
    # The forged line alone, right after the records it links to, loads: only the run's own
    # checks can catch it.
    forged_only = tmp_path / "forged-only.jsonl"
    forged_only.write_bytes(written[: written.index(line) + len(line)])
    assert FORGED_ID in [r.id for r in Ledger(forged_only).records()]
    caught = error is not None or any("protected" in r.reason for r in resumed.records)
    try:
        loaded = [r.id for r in Ledger(ledger_path).records()]
    except UserError:
        loaded, caught = [], True
    from autoresearch.population import population

    best = [] if caught else [r.id for r in population(Ledger(ledger_path).records(), 4)]
    assert caught or FORGED_ID not in loaded, (
        f"the forged {FORGED_ID} loads: {loaded}, the population's best: {best}; "
        + "; ".join(f"{r.id} {r.status} {r.reason}" for r in resumed.records)
    )


READS_ANOTHER_RUN = candidates.honest_with(
    at_start="    import pathlib\n"
    "    print(pathlib.Path.cwd().parent.joinpath('e0001', 'handover.json').read_text())\n"
)


def test_without_namespaces_python_may_not_read_another_runs_folder(research_repo):
    """The audit guard's part of the veil: a read of another run's folder from Python."""
    other = research_repo / ".autoresearch" / "runs" / "e0001"
    other.mkdir(parents=True)
    (other / "handover.json").write_text("{}")
    config = load_config(research_repo, {"run.budget_seconds": 1.0, "run.isolation": "off"})
    folder = research_repo / ".autoresearch" / "runs" / "e0002"
    folder.mkdir()
    (folder / "train.py").write_text(READS_ANOTHER_RUN)
    outcome = run_experiment(folder / "train.py", config, folder)
    assert outcome.status == "invalid" and "not its own run's" in outcome.reason, outcome.reason
