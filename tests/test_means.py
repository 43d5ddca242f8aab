"""Judging on means over repeated runs: seeds per repeat, a pooled noise, a bar that shrinks
with repeats, confirmation, the final re-measurement, `auto` settings and the simplicity rule.

The rules are pure functions of records (population.py), tested on records alone; the
engine's use of them with the scripted runner, whose scores are scripted per run.
"""

from __future__ import annotations

import math
import os
import signal
from collections import defaultdict

import pytest
from helpers import FROZEN, LEARNS, committed, make_engine, rec

from autoresearch.constants import code_lines, read_constants, rewrite_constants
from autoresearch.population import (
    BASELINE,
    CALIBRATE,
    FINISH_RUNS,
    REPEAT,
    Rules,
    bar,
    champion,
    finalist_to_repeat,
    judge,
    means,
    needs_confirming,
    noise,
    population,
    remeasure_runs,
    strategy,
)
from autoresearch.testing import ScriptedProposer, ScriptedRunner


def lr(source: str) -> float:
    return float(read_constants(source)["LR"])


def lr_of(runner: ScriptedRunner, record) -> float:
    """The LR of the source a record's run trained (experiments are numbered in call order)."""
    return lr(runner.calls[int(record.id[1:]) - 1].source)


def with_lr(value: float) -> str:
    return rewrite_constants(LEARNS, {"LR": value})


class PerRun:
    """Scores scripted per run of each learning rate: the n-th run of LR x scores
    runs[x][n] (the last one again when they run out), as seeds would differ."""

    def __init__(self, runs: dict[float, list[float]]):
        self.runs, self.count = runs, defaultdict(int)

    def __call__(self, source: str) -> float:
        values = self.runs[lr(source)]
        n = self.count[lr(source)]
        self.count[lr(source)] += 1
        return values[min(n, len(values) - 1)]


# -- the rules, on records ---------------------------------------------------------------------


def test_runs_of_one_source_make_one_mean_and_the_noise_is_pooled():
    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE),
        rec(2, 3.2, status="discard", proposer=CALIBRATE, source="s1"),
        rec(3, 2.5, parent="e0001"),
        rec(4, 2.7, status="discard", proposer=REPEAT, parent="e0003", source="s3"),
        rec(5, None, status="crash"),
    ]
    table = means(records)
    assert table["s1"].value == pytest.approx(3.1) and table["s1"].runs == 2
    assert table["s3"].value == pytest.approx(2.6) and table["s3"].runs == 2
    assert "s5" not in table  # a crash has no score
    # Pooled: (0.1² + 0.1² + 0.1² + 0.1²) / (1 + 1) degrees of freedom.
    assert noise(records) == pytest.approx(math.sqrt(0.04 / 2))
    assert noise(records[:1]) is None  # nothing repeated yet


def test_a_first_run_is_compared_with_the_baseline_at_its_own_seed():
    # The baseline's first seed was unlucky: over three seeds its mean is 4.01, at seed 42
    # 4.17. A candidate's first run, at seed 42, beats the baseline there by 0.07; an
    # unpaired mean would call it 0.09 worse.
    records = [
        rec(1, 4.17, promoted=True, proposer=BASELINE, source="b", seed=42),
        rec(2, 3.89, status="discard", proposer=CALIBRATE, parent="e0001", source="b", seed=43),
        rec(3, 3.97, status="discard", proposer=CALIBRATE, parent="e0001", source="b", seed=44),
    ]
    candidate = rec(4, 4.10, parent="e0001", seed=42)
    table = means([*records, candidate])
    assert table["b"].value == pytest.approx(4.17) and table["b"].runs == 3
    assert table["s4"].value == pytest.approx(4.10)
    assert judge(records, candidate, Rules(1, 0.0)) == ("keep", True)
    # Until a second source has a second seed, the noise is the unadjusted runs' (all of the
    # seed's effect): sd of 4.17, 3.89, 3.97.
    assert noise(records) == pytest.approx(0.1442, abs=1e-4)


def test_seed_effects_come_from_every_source_run_at_both_seeds_and_pair_repeats():
    # Seed 43 scores 0.3 higher for the baseline and 0.1 higher for the candidate: its effect
    # is 0.2, and each source's seed-43 run counts 0.2 lower.
    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE, source="b", seed=42),
        rec(2, 3.3, status="discard", proposer=CALIBRATE, parent="e0001", source="b", seed=43),
        rec(3, 2.8, parent="e0001", seed=42),
        rec(4, 2.9, status="discard", proposer=REPEAT, parent="e0003", source="s3", seed=43),
    ]
    table = means(records)
    assert table["b"].value == pytest.approx((3.0 + 3.1) / 2)
    assert table["s3"].value == pytest.approx((2.8 + 2.7) / 2)
    assert table["b"].value - table["s3"].value == pytest.approx(0.3)  # paired: (0.2 + 0.4) / 2
    # Residuals about the adjusted means: ±0.05 four times; 2 degrees of freedom, 1 effect.
    # Under MIN_NOISE_FREEDOM (2) left, so the unadjusted runs' noise is still used.
    assert noise(records) == pytest.approx(math.sqrt((0.15**2 * 2 + 0.05**2 * 2) / 2))
    # A third source at both seeds leaves 2 degrees of freedom: the adjusted runs' noise.
    more = [*records, rec(5, 2.9, parent="e0001", seed=42),
            rec(6, 3.2, proposer=REPEAT, parent="e0005", source="s5", seed=43)]  # fmt: skip
    effect = (0.3 + 0.1 + 0.3) / 3
    adjusted = {"b": [3.0, 3.3 - effect], "s3": [2.8, 2.9 - effect], "s5": [2.9, 3.2 - effect]}
    squares = sum((x - sum(v) / 2) ** 2 for v in adjusted.values() for x in v)
    assert noise(more) == pytest.approx(math.sqrt(squares / (3 - 1)))


def test_the_bar_is_standard_errors_of_the_difference_so_repeats_lower_it():
    one_against_three = bar(0.1, 1, 3, 0.0, 2.0)
    assert one_against_three == pytest.approx(2 * 0.1 * math.sqrt(1 + 1 / 3))
    assert bar(0.1, 3, 3, 0.0, 2.0) < one_against_three
    assert bar(0.1, 1, 3, 0.5, 2.0) == 0.5  # min_improvement still holds
    assert bar(None, 1, 1, 0.0, 2.0) == 0.0  # noise not measured


def test_a_repeat_that_moves_a_mean_past_the_champion_promotes_the_candidate_it_repeats():
    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE),
        rec(2, 2.7, parent="e0001", promoted=True),  # lucky first run
        rec(3, 2.8, parent="e0001"),
        rec(4, 3.0, status="discard", proposer=REPEAT, parent="e0002", source="s2"),
    ]
    assert champion(records).id == "e0002"  # mean 2.85 now
    repeat = rec(5, 2.7, proposer=REPEAT, parent="e0003", source="s3")  # e0003: mean 2.75
    assert judge(records, repeat, Rules(4, 0.0)) == ("keep", True)
    promoted = [*records, rec(5, 2.7, proposer=REPEAT, parent="e0003", source="s3",
                              promoted=True)]  # fmt: skip
    assert champion(promoted).id == "e0003"  # the repeat stands for the candidate
    of_champion = rec(6, 2.0, proposer=REPEAT, parent="e0003", source="s3")
    assert judge(promoted, of_champion, Rules(4, 0.0)) == ("discard", False)  # its mean only


def test_confirm_promotes_only_after_the_repeats_and_only_while_the_mean_stays_ahead():
    records = [rec(1, 3.0, promoted=True, proposer=BASELINE)]
    first = rec(2, 2.8, parent="e0001")
    rules = Rules(4, 0.0, confirm=1)
    assert judge(records, first, rules) == ("keep", False)  # ahead, not yet confirmed
    after_first = [*records, first]
    assert needs_confirming(after_first, first, rules)
    holds = rec(3, 2.9, proposer=REPEAT, parent="e0002", source="s2")
    assert judge(after_first, holds, rules) == ("keep", True)
    fails = rec(3, 3.4, proposer=REPEAT, parent="e0002", source="s2")  # mean 3.1
    assert judge(after_first, fails, rules) == ("discard", False)
    assert not needs_confirming([*after_first, fails], fails, rules)  # stops as soon as it loses
    assert not needs_confirming(after_first, first, Rules(4, 0.0))  # confirm 0: never


def test_the_final_re_measurement_repeats_the_fewest_run_of_the_best_three():
    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE),
        rec(2, 3.0, status="discard", proposer=CALIBRATE, source="s1"),
        rec(3, 2.6, parent="e0001", promoted=True),
        rec(4, 2.7, parent="e0001"),
        rec(5, 2.9, parent="e0001"),
        rec(6, 2.95, parent="e0001"),
    ]
    assert finalist_to_repeat(records).id == "e0003"  # the champion first among equals
    assert finalist_to_repeat(records, in_flight=["s3"]).id == "e0004"
    assert finalist_to_repeat(records, in_flight=["s3", "s4"]).id == "e0005"  # third best
    assert finalist_to_repeat(records, in_flight=["s3", "s4", "s5"]).id == "e0003"
    assert remeasure_runs(100, 0.06) == 6 and remeasure_runs(6, 0.06) == 0


def test_auto_is_greedy_when_noise_is_small_against_the_gains_and_a_population_otherwise():
    def calibrated(spread: float) -> list:
        return [
            rec(1, 3.0, promoted=True, proposer=BASELINE),
            rec(2, 3.0 + spread, status="discard", proposer=CALIBRATE, source="s1"),
        ]

    # A typical gain: 0.3% of the baseline, 0.009 here; greedy under 2 of them.
    quiet, loud = calibrated(0.02), calibrated(0.04)
    assert strategy(quiet, "auto", "auto").population == 1
    assert "noise 0.0141 is 1.57 typical gains" in strategy(quiet, "auto", "auto").why
    assert strategy(loud, "auto", "auto").population == 4
    assert strategy(loud, "auto", "auto").noise_k == 0.0
    assert strategy(quiet, 3, 2.0).population == 3  # an explicit setting wins
    assert strategy(quiet, 3, 2.0).noise_k == 2.0
    # Promotions' gains, chosen for their luck too, do not make the noise look small.
    promotions = [rec(i, 3.0 - 0.1 * (i - 2), parent="e0001", promoted=True) for i in (3, 4, 5)]
    assert strategy(loud + promotions, "auto", "auto").population == 4


def test_at_an_equal_score_less_code_is_preferred_as_a_parent_and_takes_a_members_place():
    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE, code_lines=100),
        rec(2, 3.1, status="discard", proposer=CALIBRATE, source="s1"),  # noise 0.071
        rec(3, 2.50, parent="e0001", code_lines=120),
        rec(4, 2.55, parent="e0001", code_lines=90),  # within noise of e0003, less code
        rec(5, 2.80, parent="e0001", code_lines=130),
        rec(6, 2.82, parent="e0001", code_lines=80),  # within noise of the worst member
        rec(7, 2.70, parent="e0001", code_lines=70),
    ]
    members = population(records, 5)  # the champion (the baseline) and four
    assert [m.id for m in members][:2] == ["e0004", "e0003"]  # the simpler one ranks first
    assert "e0006" in [m.id for m in members] and "e0005" not in [m.id for m in members]
    assert code_lines("x = 1\n\n# a comment\n  # another\ny = 2\n") == 2


# -- the engine ------------------------------------------------------------------------------


def test_each_repeat_trains_with_a_seed_of_its_own(research_repo):
    base = committed(research_repo, FROZEN)
    runner = ScriptedRunner(lambda source: 3.0)
    engine = make_engine(research_repo, ScriptedProposer(), calibrate=2, max_experiments=3,
                         runner=runner)  # fmt: skip
    records = engine.run(base)
    seed = engine.config.run.seed
    assert [c.seed for c in runner.calls] == [seed, seed + 1, seed + 2]
    assert [r.seed for r in records] == [seed, seed + 1, seed + 2]


def test_the_last_experiments_re_measure_the_best_and_the_best_mean_wins(research_repo):
    """The winner's curse, undone: a lucky first run is promoted, the final repeats show it
    was luck, and the candidate that is really better ends as the champion."""
    base = committed(research_repo, FROZEN)
    runner = ScriptedRunner(PerRun({
        0.0: [3.00, 3.02, 2.98],  # the baseline (FROZEN's LR) and its repeats
        0.3: [2.70, 3.00, 3.00, 3.00],  # lucky once
        0.2: [2.85, 2.86, 2.84, 2.85],  # really better
        0.1: [3.10],
    }))  # fmt: skip
    proposer = ScriptedProposer([with_lr(0.3), with_lr(0.2), with_lr(0.1)])
    engine = make_engine(
        research_repo, proposer, population=4, noise_k=0.0, calibrate=2, max_experiments=12,
        remeasure=0.5, prefetch=0, runner=runner,
    )  # fmt: skip
    records = engine.run(base)
    assert [r.proposer for r in records[-6:]] == [REPEAT] * 6  # half of 12, no proposals
    assert sum(r.proposer == "scripted" for r in records) == 3
    assert champion(records).id == "e0005"  # LR 0.2
    first_promoted = next(r for r in records if r.promoted and r.proposer == "scripted")
    assert lr_of(runner, first_promoted) == 0.3
    assert means(records)[champion(records).fingerprints["source"]].runs >= 3
    summary_inputs = [r.seed for r in records if r.fingerprints == records[3].fingerprints]
    assert len(set(summary_inputs)) == len(summary_inputs)  # every run of e0004 its own seed
    # What each line says a repeat measured: a calibration run the noise (its seed-adjusted
    # mean is the baseline's first run), a candidate's repeat its mean.
    lines = {line.split()[0]: line for line in engine.lines if line.startswith("e0")}
    assert "discard (noise so far: sd 0.0" in lines["e0003"]
    assert "(seed-adjusted mean " in lines["e0012"] and "mean 3.0" not in lines["e0002"]
    worse = next(r.id for r in records if r.proposer == "scripted" and lr_of(runner, r) == 0.1)
    assert "keep (in the population, worse than the baseline)" in lines[worse]


def test_confirm_re_runs_a_would_be_champion_before_promoting_it(research_repo):
    base = committed(research_repo, FROZEN)
    # The second seed scores about 0.2 higher: paired by seed, LR 0.3 loses its first seed's
    # lead, LR 0.2 keeps it. The champion (not calibrated) is run at the second seed first.
    runner = ScriptedRunner(PerRun({0.0: [3.0, 3.2], 0.3: [2.7, 3.6], 0.2: [2.8, 3.0]}))
    proposer = ScriptedProposer([with_lr(0.3), with_lr(0.2)])
    engine = make_engine(
        research_repo, proposer, population=4, noise_k=0.0, confirm=1, calibrate=0,
        max_experiments=6, prefetch=0, runner=runner,
    )  # fmt: skip
    records = engine.run(base)
    assert [(r.proposer, r.promoted) for r in records] == [
        (BASELINE, True), ("scripted", False),
        (REPEAT, False), (REPEAT, False),  # the champion at the second seed, then LR 0.3: lost
        ("scripted", False), (REPEAT, True),  # LR 0.2: held, then promoted
    ]
    first = records[0].seed
    assert [r.seed - first for r in records] == [0, 0, 1, 1, 0, 1]
    assert records[2].parent == records[0].id and records[3].parent == records[1].id
    assert champion(records).id == "e0005" and lr(runner.calls[4].source) == 0.2


def test_a_resumed_run_finishes_its_re_measurement_and_no_more(research_repo):
    base = committed(research_repo, FROZEN)
    scores = {0.0: [3.0, 3.01], 0.3: [2.9], 0.2: [2.8], 0.1: [3.1]}

    def fault_at_the_second_repeat(source: str) -> float:
        if sum(c.source == source for c in runner.calls) and lr(source) == 0.2:
            raise OSError(28, "No space left on device")  # a machine fault: nothing recorded
        return PerRun(scores)(source)

    runner = ScriptedRunner(fault_at_the_second_repeat)
    proposer = ScriptedProposer([with_lr(0.3), with_lr(0.2), with_lr(0.1)])
    settings = dict(population=4, noise_k=0.0, calibrate=1, max_experiments=9, remeasure=0.4,
                    prefetch=0)  # fmt: skip  (4 of 9 re-measure)
    with pytest.raises(OSError):
        make_engine(research_repo, proposer, runner=runner, **settings).run(base)
    again = ScriptedRunner(PerRun(scores))
    records = make_engine(research_repo, ScriptedProposer(), runner=again, **settings).run(base)
    assert len(records) == 9 and sum(r.proposer == REPEAT for r in records) == 4
    assert all(r.proposer == REPEAT for r in records[5:])


def test_finish_re_measures_after_the_first_ctrl_c_then_stops(research_repo):
    base = committed(research_repo, FROZEN)
    holder = {}

    def interrupt_once(source: str) -> float:
        if lr(source) == 0.2 and not holder.get("sent"):
            holder["sent"] = True  # Ctrl-C while it trains: the one slot is busy with it
            os.kill(os.getpid(), signal.SIGINT)
        return 3.0 - lr(source)

    runner = ScriptedRunner(interrupt_once, seconds=0.3)
    proposer = ScriptedProposer([with_lr(v) for v in (0.3, 0.2, 0.1, 0.05, 0.04, 0.03)])
    engine = make_engine(research_repo, proposer, population=4, calibrate=1, prefetch=0,
                         runner=runner)  # fmt: skip
    engine.finish = True
    records = engine.run(base)
    assert [r.proposer for r in records[-FINISH_RUNS:]] == [REPEAT] * FINISH_RUNS
    assert sum(r.proposer == "scripted" for r in records) == 2  # nothing proposed after
    assert engine.stop_reason == "stopped by Ctrl-C, after re-measuring the best candidates"
    assert any("re-measuring the best candidates" in line for line in engine.lines)


def test_auto_says_what_it_chose_and_why(research_repo):
    base = committed(research_repo, FROZEN)
    runner = ScriptedRunner(PerRun({0.0: [3.0, 3.0001], 0.3: [2.9]}))
    engine = make_engine(research_repo, ScriptedProposer([with_lr(0.3)]), population="auto",
                         noise_k="auto", calibrate=1, max_experiments=3, runner=runner)  # fmt: skip
    engine.run(base)
    said = [line for line in engine.lines if line.startswith("population 1 (auto)")]
    assert said and "noise_k 0 (auto)" in said[0] and "under 2" in said[0]


def test_the_leaderboard_ranks_by_mean_and_counts_the_runs():
    from autoresearch.report import leaderboard_rows, select

    records = [
        rec(1, 3.0, promoted=True, proposer=BASELINE),
        rec(2, 3.1, status="discard", proposer=CALIBRATE, parent="e0001", source="s1"),
        rec(3, 2.6, parent="e0001", promoted=True),  # lucky: its repeats say 2.9
        rec(4, 2.8, parent="e0001"),
        rec(5, 3.2, status="discard", proposer=REPEAT, parent="e0003", source="s3"),
    ]
    chosen = select(records, tag="t", population_size=4).records
    rows = leaderboard_rows(records, chosen)
    assert [(r["id"], r["runs"]) for r in rows] == [("e0004", 1), ("e0003", 2), ("e0001", 2)]
    assert rows[1]["mean"] == pytest.approx(2.9) and rows[1]["val_bpb"] == 2.6
    assert rows[1]["delta"] == pytest.approx(2.9 - 3.05) and rows[1]["champion"]
