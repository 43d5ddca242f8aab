"""Slots: experiments side by side, on their own share of the machine, with every promise kept.

The engine's concurrency is tested with the scripted runner (sleeps of chosen lengths, so
results arrive out of order); the slots' pinning and a search with two real slots, killed
and resumed, with the real runner.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import candidates
import pytest
from helpers import FROZEN, LEARNS, committed, make_engine
from kill_resume import Plan, kill_and_resume, make_trial_repo

from autoresearch.config import load_config
from autoresearch.constants import read_constants, rewrite_constants
from autoresearch.errors import UserError
from autoresearch.harness.evaluate import EvalSpec
from autoresearch.runner import Evaluator, Outcome, run_experiment
from autoresearch.slots import WHOLE_MACHINE, Slot, plan_slots
from autoresearch.testing import ScriptedProposer, ScriptedRunner
from autoresearch.workspace import RUN_LOG, branches, candidate_branch

TWO = plan_slots(2, [0, 1], None)
FOUR = plan_slots(4, [0, 1, 2, 3], None)


def lr(source: str) -> float:
    return float(read_constants(source)["LR"])


def score(source: str) -> float | Outcome:
    """A higher learning rate scores better (the rule the engine tests use)."""
    if "raise " in source:
        return Outcome("crash", "exit code 1")
    return 3.0 - 5 * lr(source)


def with_lr(value: float) -> str:
    return rewrite_constants(LEARNS, {"LR": value})


def unrecorded_branches(repo, records) -> list[str]:
    prefix = candidate_branch("t", "")
    recorded = {r.id for r in records}
    return sorted(b for b in branches(repo, prefix.rstrip("/")) if b[len(prefix) :] not in recorded)


# -- the plan: which part of the machine each slot gets --------------------------------------------


def test_one_slot_is_the_whole_machine_as_before():
    assert plan_slots(1, [0, 1, 2, 3], ["0", "1"]) == [WHOLE_MACHINE]
    assert WHOLE_MACHINE.env == {} and WHOLE_MACHINE.cpus == ()


def test_each_slot_gets_its_gpu_and_an_equal_share_of_the_cores():
    slots = plan_slots(2, list(range(8)), ["3", "5"])
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "5"]
    assert [s.cpus for s in slots] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert all(s.env["OMP_NUM_THREADS"] == "4" for s in slots)  # never more threads than cores
    assert [s.label for s in slots] == ["slot 0 (GPU 3)", "slot 1 (GPU 5)"]
    assert all(s.share == 0.5 for s in slots)  # of the memory and disk the caps derive from
    three = plan_slots(3, list(range(8)), None)  # a CPU machine: cores only, 2 of 8 unused
    assert [len(s.cpus) for s in three] == [2, 2, 2] and "CUDA_VISIBLE_DEVICES" not in three[0].env
    assert len({c for s in three for c in s.cpus}) == 6  # no core is shared


@pytest.mark.parametrize(
    ("count", "cores", "gpus", "message"),
    [(3, list(range(8)), ["0", "1"], "3 slots, but 2 GPUs visible: .* --slots 2 or fewer"),
     (3, [0, 1], None, "3 slots, but 2 cores to share: use --slots 2 or fewer")],
)  # fmt: skip
def test_more_slots_than_the_machine_has_is_an_error_with_what_fits(count, cores, gpus, message):
    with pytest.raises(UserError, match=message):
        plan_slots(count, cores, gpus)


# -- the engine with several slots (scripted runner) -----------------------------------------------


def test_slots_train_side_by_side_and_results_are_judged_as_they_arrive(research_repo):
    base = committed(research_repo, FROZEN)
    slow, fast = with_lr(0.3), with_lr(0.1)
    runner = ScriptedRunner(score, seconds=lambda source: 1.5 if lr(source) == 0.3 else 0.1)
    engine = make_engine(
        research_repo, ScriptedProposer([slow, fast]), population=4, prefetch=2,
        max_experiments=3, runner=runner, slots=TWO,
    )  # fmt: skip
    records = engine.run(base)
    assert [r.id for r in records] == ["e0001", "e0003", "e0002"]  # the fast one first
    by_id = {r.id: r for r in records}
    assert {by_id["e0002"].ran_on, by_id["e0003"].ran_on} == {"slot 0", "slot 1"}
    a, b = runner.calls[1], runner.calls[2]
    assert a.started < b.ended and b.started < a.ended  # they overlapped
    # Judged in arrival order: the fast one beat the baseline, then the slow one beat it.
    assert by_id["e0003"].promoted and by_id["e0002"].promoted
    assert engine.champion().id == "e0002"
    assert unrecorded_branches(research_repo, records) == []


def test_a_source_in_flight_is_not_trained_twice(research_repo):
    base = committed(research_repo, FROZEN)
    same, other = with_lr(0.2), with_lr(0.1)
    runner = ScriptedRunner(score, seconds=0.5)
    proposer = ScriptedProposer([same, same, other])
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=3, max_experiments=3,
        runner=runner, slots=TWO,
    )  # fmt: skip
    records = engine.run(base)
    trained = [c.source for c in runner.calls]
    assert trained.count(same) == 1 and other in trained
    duplicate = next(r for r in records if r.status == "invalid")
    assert "duplicate" in duplicate.reason


def test_limits_count_what_is_in_flight_and_repeats_run_side_by_side(research_repo):
    base = committed(research_repo, FROZEN)
    runner = ScriptedRunner(score, seconds=0.4)
    proposer = ScriptedProposer([with_lr(0.01 * i) for i in range(1, 12)])
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=2, calibrate=2, max_experiments=6,
        runner=runner, slots=FOUR,
    )  # fmt: skip
    records = engine.run(base)
    assert len(runner.calls) == 6 and len(records) == 6  # not one more than the limit
    first, second = runner.calls[1], runner.calls[2]  # the two repeats of the baseline
    assert first.started < second.ended and second.started < first.ended
    assert [r.proposer for r in records[:3]] == ["baseline", "calibrate", "calibrate"]
    assert engine.noise() is not None  # measured before any candidate was judged
    assert len({c.slot.index for c in runner.calls[3:]}) == 3  # the candidates ran at once
    assert unrecorded_branches(research_repo, records) == []


def test_repeats_side_by_side_stay_within_the_limit(research_repo):
    base = committed(research_repo, FROZEN)
    runner = ScriptedRunner(score, seconds=0.2)
    engine = make_engine(
        research_repo, ScriptedProposer(), calibrate=3, max_experiments=2, runner=runner,
        slots=FOUR,
    )  # fmt: skip
    records = engine.run(base)
    assert [r.proposer for r in records] == ["baseline", "calibrate"]  # not 3 repeats at once
    assert engine.stop_reason == "reached 2 experiments"


def test_the_first_ctrl_c_records_what_is_in_flight_and_starts_nothing(research_repo):
    base = committed(research_repo, FROZEN)
    holder = {}

    def score_and_interrupt(source):
        if lr(source) == 0.1:  # the short one: Ctrl-C comes while the long one trains
            holder["engine"].stop_requested = True
        return score(source)

    runner = ScriptedRunner(score_and_interrupt, seconds=lambda s: 1.2 if lr(s) == 0.3 else 0.2)
    proposer = ScriptedProposer([with_lr(0.3), with_lr(0.1), with_lr(0.05), with_lr(0.04)])
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=2, runner=runner, slots=TWO
    )
    holder["engine"] = engine
    records = engine.run(base)
    assert sorted(lr(c.source) for c in runner.calls[1:]) == [0.1, 0.3]  # nothing after Ctrl-C
    assert {r.id for r in records} == {"e0001", "e0002", "e0003"}  # both recorded
    assert engine.stop_reason == "stopped by Ctrl-C"
    assert unrecorded_branches(research_repo, records) == []


def test_a_machine_fault_in_one_slot_cuts_the_other_off_and_resume_retrains_it(research_repo):
    base = committed(research_repo, FROZEN)

    def disk_full(source):
        if lr(source) == 0.1:
            raise UserError("disk full while e0003 ran: free space, then resume")
        return score(source)

    runner = ScriptedRunner(disk_full, seconds=lambda s: 2.0 if lr(s) == 0.3 else 0.2)
    proposer = ScriptedProposer([with_lr(0.3), with_lr(0.1)])
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=2, runner=runner, slots=TWO
    )
    with pytest.raises(UserError, match="disk full"):
        engine.run(base)
    assert unrecorded_branches(research_repo, engine.records) == [
        candidate_branch("t", "e0002"), candidate_branch("t", "e0003")
    ]  # fmt: skip
    assert any(line.startswith("cut off e0002:") for line in engine.lines)  # e0003 failed
    again = ScriptedRunner(score, seconds=0.1)
    resumed = make_engine(
        research_repo, ScriptedProposer(), population=4, prefetch=0, max_experiments=3,
        runner=again, slots=TWO,
    )  # fmt: skip
    records = resumed.run(base)
    assert sorted(lr(c.source) for c in again.calls) == [0.1, 0.3]  # each once, under its id
    assert {r.id for r in records} == {"e0001", "e0002", "e0003"}
    assert unrecorded_branches(research_repo, records) == []


# -- the real runner on a slot ---------------------------------------------------------------------

SHOWS_ITS_SLOT = candidates.honest_with(
    at_start="    import os\n"
    "    print('slot cores', sorted(os.sched_getaffinity(0)), 'threads', torch.get_num_threads(),"
    " flush=True)\n"
)


def test_a_candidate_runs_on_its_slots_cores_and_threads(research_repo, tmp_path):
    config = load_config(research_repo, {"run.budget_seconds": 1.0})
    core = max(os.sched_getaffinity(0))
    slot = Slot(1, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, (core,), "slot 1")
    train_py = tmp_path / "train.py"
    train_py.write_text(SHOWS_ITS_SLOT)
    outcome = run_experiment(train_py, config, research_repo / ".autoresearch/runs/s1", slot=slot)
    log = (research_repo / ".autoresearch/runs/s1" / RUN_LOG).read_text()
    assert f"slot cores [{core}] threads 1" in log
    assert outcome.status == "keep", outcome.reason


def test_the_evaluator_runs_on_its_slots_cores(tmp_path):
    core = max(os.sched_getaffinity(0))
    spec = EvalSpec(str(tmp_path), "tok", "val", 8, 8, 1, "cpu")  # it waits for a signal first
    evaluator = Evaluator(spec, tmp_path / "eval.log", Slot(0, {"OMP_NUM_THREADS": "1"}, (core,)))
    try:
        assert os.sched_getaffinity(evaluator.proc.pid) == {core}
        environ = Path(f"/proc/{evaluator.proc.pid}/environ").read_bytes().split(b"\0")
        assert b"OMP_NUM_THREADS=1" in environ
    finally:
        evaluator.cancel()


def test_two_real_slots_killed_with_both_in_flight_resume_with_nothing_lost(tmp_path, corpus):
    """`evolve --slots 2`, SIGKILLed while two experiments train: no record lost, no orphan,
    no stale branch; the resume retrains both cut-off candidates, each once."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores for 2 slots")
    repo = make_trial_repo(tmp_path, corpus)
    plan = Plan(1, "SIGKILL", 0.5, when_training=2)
    trial = kill_and_resume(repo, plan, extra=2, options=("--slots", "2"))
    assert not trial.problems(), trial.problems()
    assert len(trial.training_at_signal) == 2, trial.training_at_signal
    after = {r["id"]: r for r in trial.after}
    assert all(after[cid]["status"] != "invalid" for cid in trial.training_at_signal)
    assert {r["ran_on"] for r in trial.after} >= {"slot 0", "slot 1"}
    status = json.loads((repo / ".autoresearch/status.json").read_text())
    assert status["slots"] == 2 and status["training"] == {}


def test_a_resume_runs_where_the_tag_ran_unless_told_otherwise():
    """Slots and the executor are remembered: a Ray search resumed without --executor must
    not quietly train on this machine instead."""
    from autoresearch import tags
    from autoresearch.config import load_config

    started = tags.settings_of(
        load_config(None, {"run.slots": 4, "run.executor": "ray", "run.ray_address": "auto"})
    )
    remembered = tags.TagState(started, tags.settings_of(load_config(None)))
    overrides, _ = tags.resume_overrides(remembered, tags.settings_of(load_config(None)), {}, "t")
    assert (overrides["run.slots"], overrides["run.executor"]) == (4, "ray")
    fewer, _ = tags.resume_overrides(remembered, {}, {"run.slots": 2}, "t")
    assert "run.slots" not in fewer  # given anew: this command line's 2 goes
