"""The evolve engine on real research repos with scripted proposers: its rules with a
scripted runner (an outcome computed from the source), one search with real tiny training."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time

import candidates
import git
import helpers
import pytest
from helpers import FROZEN, LEARNS, committed, rec

from autoresearch.constants import read_constants, rewrite_constants
from autoresearch.errors import UserError
from autoresearch.population import Rules, champion, judge, may_fix, parent_weights, population
from autoresearch.runner import Outcome, run_experiment
from autoresearch.status import RunLock
from autoresearch.testing import ScriptedProposer, ScriptedRunner
from autoresearch.workspace import candidate_branch, research_branch, state_dir

LEARNS_SLOWLY = rewrite_constants(candidates.HONEST, {"LR": 0.001})  # barely moves in 1.5 s


def by_learning_rate(source: str) -> float | Outcome:
    """The scripted runner's outcome: a higher LR scores better; a candidate that raises
    before its hand-over crashes with what it raised."""
    if "raise " in source:
        raised = source.split("raise ", 1)[1].splitlines()[0]
        return Outcome("crash", f"exit code 1: {raised}")
    return 3.0 - 5 * float(read_constants(source)["LR"])


def make_engine(repo, proposer, **settings):
    """`helpers.make_engine` with the scripted runner, unless a test names another."""
    return helpers.make_engine(
        repo, proposer, **({"runner": ScriptedRunner(by_learning_rate)} | settings)
    )


def test_greedy_loop_keeps_only_improvements(research_repo):
    base = committed(research_repo, FROZEN)
    proposer = ScriptedProposer(
        [
            (LEARNS, "LR 0 -> 0.2"),
            (FROZEN.replace("LR = 0.0", "LR = 0.0  # same code"), "comment only"),
            (LEARNS_SLOWLY, "LR 0.2 -> 0.001"),
            (
                LEARNS.replace(
                    "harness.handover(model",
                    "raise SystemExit('bad edit')\n    harness.handover(model",
                ),
                "break it",
            ),
        ]
    )
    engine = make_engine(
        research_repo, proposer, max_experiments=4, fix_attempts=0, max_invalid=3, prefetch=0,
        runner=run_experiment,
    )  # fmt: skip
    records = engine.run(base)

    assert [(r.proposer, r.status, r.promoted) for r in records] == [
        ("baseline", "keep", True),
        ("scripted", "keep", True),
        ("scripted", "invalid", False),
        ("scripted", "discard", False),
        ("scripted", "crash", False),
    ]
    baseline, better, dup, worse, crashed = records
    assert "duplicate" in dup.reason or "comment" in dup.reason
    assert better.val_bpb < baseline.val_bpb - 1.0  # learning beats a frozen table by far
    assert worse.val_bpb > better.val_bpb + 1.0  # a clear loss, not a coin flip
    # Greedy: every proposal after the improvement starts from the new champion.
    assert [rq.parent_id for rq in proposer.requests] == [
        baseline.id,
        better.id,
        better.id,
        better.id,
    ]
    repo = git.Repo(research_repo)
    # Each branch ends in a result commit (same tree, the score in its subject) on top of the
    # commit that trained; the research branch is the champion's.
    champion_tip = repo.heads[research_branch("t")].commit
    assert champion_tip.parents[0].hexsha == better.commit
    assert champion_tip.summary.startswith(f"{better.id} val_bpb {better.val_bpb:.4f} (")
    tips = {baseline.id: base, better.id: champion_tip.hexsha}
    for r in (better, worse, crashed):  # lineage is git ancestry; failed candidates keep a branch
        result = repo.heads[candidate_branch("t", r.id)].commit
        trained = result.parents[0]
        assert trained.hexsha == r.commit and result.tree == trained.tree
        assert trained.summary.startswith(f"{r.id}: ")
        assert trained.parents[0].hexsha == tips[r.parent]
    assert repo.heads[candidate_branch("t", crashed.id)].commit.summary.startswith(
        f"{crashed.id} crash: "
    )
    assert not repo.is_dirty()  # the user's checkout is never touched
    assert repo.active_branch.name == "main"
    assert (research_repo / ".autoresearch/results.tsv").read_text().count("\n") == 6
    assert any("promoted" in line for line in engine.lines)


def test_greedy_drops_a_proposal_prepared_for_a_previous_champion(research_repo):
    base = committed(research_repo, FROZEN)
    stale = rewrite_constants(LEARNS, {"BATCH_SIZE": 8})
    proposer = ScriptedProposer([(LEARNS, "better"), (stale, "stale"), (LEARNS_SLOWLY, "next")])
    engine = make_engine(research_repo, proposer, max_experiments=3, prefetch=1)
    records = engine.run(base)
    # "stale" was prepared while "better" trained; "better" was promoted, so it was dropped.
    assert [r.description for r in records] == ["baseline", "better", "next"]
    assert any(
        "dropped a proposal made for the previous champion e0001" in ln for ln in engine.lines
    )
    assert [rq.parent_id for rq in proposer.requests[:3]] == ["e0001", "e0001", "e0002"]


def test_selection_none_makes_every_candidate_a_change_of_the_baseline(research_repo):
    """Random search: results choose no parent, not even a promotion or a crash."""
    base = committed(research_repo, FROZEN)
    broken = LEARNS_SLOWLY.replace(
        "    harness.handover(", "    raise SystemExit(3)\n    harness.handover("
    )
    proposer = ScriptedProposer(
        [(LEARNS, "better"), (LEARNS_SLOWLY, "slower"), (broken, "broken"),
         (rewrite_constants(LEARNS, {"LR": 0.1}), "after the crash")]
    )  # fmt: skip
    engine = make_engine(
        research_repo, proposer, selection="none", max_experiments=5, fix_attempts=1
    )
    records = engine.run(base)
    baseline = records[0]
    assert [r.description for r in records] == [
        "baseline", "better", "slower", "broken", "after the crash"
    ]  # fmt: skip
    assert records[1].promoted and records[3].status == "crash"
    # "slower" was prepared while "better" trained, and is trained although "better" won.
    assert {rq.parent_id for rq in proposer.requests} == {baseline.id}
    assert all(rq.crash_log is None for rq in proposer.requests)  # no fix attempt
    assert all(r.parent == baseline.id for r in records[1:])
    assert not any("dropped" in line for line in engine.lines)


def test_crashed_candidate_is_handed_back_with_its_log(research_repo):
    base = committed(research_repo, FROZEN)
    broken = LEARNS.replace(
        "    harness.handover(",
        "    raise RuntimeError('shape mismatch 42')\n    harness.handover(",
    )
    proposer = ScriptedProposer([(broken, "bigger"), (LEARNS, "fixed")])
    # Serial, so the request right after the crash is the fix (with prefetch it comes one
    # proposal later: the next one was already being prepared while the crash trained).
    engine = make_engine(research_repo, proposer, max_experiments=3, fix_attempts=1, prefetch=0)
    records = engine.run(base)
    crashed, fixed = records[1], records[2]
    assert crashed.status == "crash"
    assert proposer.requests[1].parent_id == crashed.id
    assert "shape mismatch 42" in proposer.requests[1].crash_log
    assert fixed.parent == crashed.id and fixed.status == "keep"


def test_unusable_proposer_stops_with_its_message(research_repo):
    base = committed(research_repo, FROZEN)
    proposer = ScriptedProposer([UserError("OPENAI_API_KEY is not set: export it")])
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        make_engine(research_repo, proposer, max_experiments=3).run(base)
    assert len(make_engine(research_repo, proposer).records) == 1  # the baseline was kept


def test_prefetch_keeps_the_device_busy(research_repo):
    """A proposer almost as slow as an experiment: with prefetch the device barely waits."""
    base = committed(research_repo, FROZEN)
    sources = [rewrite_constants(LEARNS, {"LR": 0.05 + 0.05 * i}) for i in range(4)]

    def slow(source):
        def reply(request):
            time.sleep(1.0)
            return source, "slow proposal"

        return reply

    proposer = ScriptedProposer([slow(s) for s in sources] + [slow(LEARNS)] * 2)
    runner = ScriptedRunner(by_learning_rate, seconds=1.5)
    engine = make_engine(
        research_repo, proposer, population=4, prefetch=1, max_experiments=5, runner=runner
    )
    engine.run(base)
    # Each experiment takes 1.5 s, so the proposal prepared meanwhile is always ready, the
    # first one included (prepared while the baseline trained).
    assert len(runner.calls) == 5
    assert engine.idle_seconds < 1.0, engine.idle_seconds


def test_second_evolve_is_refused_while_one_runs(research_repo):
    state = state_dir(research_repo)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path;"
         " from autoresearch.status import RunLock\nwith RunLock(Path(sys.argv[1])):\n"
         " print('held', flush=True); time.sleep(60)", str(state)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"another `autoresearch evolve` .*pid {holder.pid}"):
            RunLock(state).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(state), RunLock(state):  # released by the OS on death; reentrant in a process
        pass
    with RunLock(state):  # and released on exit
        pass


def test_population_is_the_champion_plus_the_best_distinct():
    records = [
        rec(1, 3.0, promoted=True, proposer="baseline"),
        rec(2, 2.5),
        rec(3, 2.4, source="s2"),  # a second run of e0002's source: one candidate, mean 2.45
        rec(4, 2.9),
        rec(5, 2.0, status="crash"),
        rec(6, 2.7, status="discard"),
        rec(7, 2.6),
    ]
    members = population(records, 3)
    assert [m.id for m in members] == ["e0002", "e0007", "e0001"]  # champion kept (elitism)
    assert champion(records).id == "e0001"
    assert len({m.fingerprints["source"] for m in members}) == len(members)


def test_promotion_needs_more_than_the_noise(research_repo):
    engine = make_engine(research_repo, ScriptedProposer(), population=1, noise_k=2.0)
    engine.records = [
        rec(1, 3.00, promoted=True, proposer="baseline"),
        rec(2, 3.10, status="discard", proposer="calibrate", source="s1"),
        rec(3, 3.05, status="discard", proposer="calibrate", source="s1"),
    ]
    # Two standard errors of a single run against the baseline's mean of three (3.05).
    assert engine.threshold() == pytest.approx(2 * 0.05 * math.sqrt(1 + 1 / 3))
    within = rec(4, 2.95, proposer="scripted")  # 0.10 better
    beyond = rec(4, 2.85, proposer="scripted")  # 0.20 better
    assert engine._judge(within) == ("discard", False)
    assert engine._judge(beyond) == ("keep", True)
    engine.settings = dataclasses.replace(engine.settings, population=4)
    engine._rules_for = (-1, engine._rules_for[1])  # the settings changed under it
    assert engine._judge(within) == ("keep", False)  # enters the population only


def test_the_rules_are_functions_of_the_records_alone():
    """Judging, parent weights and the fix budget, without an engine (population.py)."""
    base = rec(1, 3.0, promoted=True, proposer="baseline")
    records = [base, rec(2, 2.5, parent="e0001"), rec(3, 2.8, parent="e0001")]
    new = rec(4, 2.9, parent="e0001", proposer="scripted")
    assert judge(records, new, Rules(1, 0.0, 0.2)) == ("discard", False)  # greedy: no gain
    assert judge(records, new, Rules(4, 0.0, 0.2)) == ("keep", False)  # enters the population
    worse = rec(4, 3.1, parent="e0001", proposer="scripted")
    assert judge(records, worse, Rules(3, 0.0)) == ("discard", False)  # it is full
    repeat = rec(4, 2.9, proposer="calibrate", source="s1")
    assert judge(records, repeat, Rules(4, 0.0)) == ("discard", False)  # a repeat is noise
    assert judge(records, new, Rules(1, 0.0, 0.05)) == ("keep", True)
    first = rec(1, 3.0, proposer="baseline")
    assert judge([], first, Rules(4, 0.0)) == ("keep", True)  # the first champion
    members = population(records, 3)  # e0002, e0003, e0001 (two children)
    assert parent_weights(records, members) == [3.0, 2.0, 1 / 3]
    assert parent_weights(records, members, in_flight=["e0002"]) == [1.5, 2.0, 1 / 3]
    first = rec(4, None, status="crash", parent="e0002")
    second = rec(5, None, status="timeout", parent="e0004")
    chain = records + [first, second]
    assert may_fix(chain, first, 1) and not may_fix(chain, second, 1) and may_fix(chain, second, 2)


def test_parent_selection_prefers_good_parents_with_few_children(research_repo):
    engine = make_engine(research_repo, ScriptedProposer(), population=3)
    engine.records = [rec(1, 3.0, promoted=True, proposer="baseline"), rec(2, 2.0), rec(3, 2.5)]
    picks = [engine._choose()[0].id for _ in range(3000)]
    share = {i: picks.count(i) / len(picks) for i in ("e0001", "e0002", "e0003")}
    assert share["e0002"] > share["e0003"] > share["e0001"]  # weights 3 : 2 : 1
    engine.records += [rec(10 + i, None, status="crash", parent="e0002") for i in range(5)]
    picks = [engine._choose()[0].id for _ in range(3000)]
    assert picks.count("e0002") < picks.count("e0003")  # 3/6 against 2/1


def test_a_cut_off_candidate_keeps_its_id(research_repo):
    """A candidate committed but never recorded is trained again under its own id."""
    from autoresearch.workspace import commit_candidate, set_branch

    base = committed(research_repo, FROZEN)
    engine = make_engine(research_repo, ScriptedProposer(), max_experiments=1)
    engine.run(base)  # the baseline, e0001
    message = "try LR 0.2\n\nParent: e0001\nProposer: scripted\nDescription: try LR 0.2\n"
    sha = commit_candidate(research_repo, base, LEARNS, message)
    set_branch(research_repo, candidate_branch("t", "e0002"), sha)  # as if killed mid-run
    records = make_engine(research_repo, ScriptedProposer(), max_experiments=3, calibrate=1).run(
        base
    )
    by_id = {r.id: r for r in records}
    assert by_id["e0002"].commit == sha and by_id["e0002"].description == "try LR 0.2"
    assert by_id["e0003"].proposer == "calibrate"  # calibration did not take e0002


@pytest.mark.parametrize("experiments", [2, 6])
def test_bookkeeping_reads_neither_the_ledger_nor_the_branches_per_experiment(
    research_repo, monkeypatch, experiments
):
    """What the engine reads of the history it reads once, when it starts: the cost of an
    experiment does not grow with the ledger (benchmarks/scale.py measures it)."""
    import autoresearch.workspace as workspace
    from autoresearch.ledger import Ledger

    reads = {"ledger": 0, "branches": 0}
    records, heads = Ledger.records, workspace._heads

    def counted(name, real):
        def call(*args, **kwargs):
            reads[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(Ledger, "records", counted("ledger", records))
    monkeypatch.setattr(workspace, "_heads", counted("branches", heads))
    base = committed(research_repo, FROZEN)
    worse = [rewrite_constants(LEARNS, {"LR": -0.01 * (i + 1)}) for i in range(experiments + 2)]
    engine = make_engine(research_repo, ScriptedProposer(worse), max_experiments=experiments + 1)
    assert len(engine.run(base)) == experiments + 1  # the baseline, then the candidates
    assert reads == {"ledger": 2, "branches": 2}  # the same for 2 and for 6 experiments
