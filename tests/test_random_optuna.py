"""The `random` and `optuna` proposers, and the optuna-beats-random benchmark."""

from __future__ import annotations

import math
import random
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from autoresearch.constants import read_constants
from autoresearch.default_plugins.optuna_proposer import OptunaProposer, parse_description
from autoresearch.default_plugins.random_proposer import RandomProposer
from autoresearch.errors import UserError
from autoresearch.plugins import build_plugin_manager, make_proposer
from autoresearch.proposal import HistoryEntry, Proposal, ProposalRequest, Proposer
from autoresearch.testing import make_request
from autoresearch.validation import source_hash, validate_proposal

SOURCE = '''\
"""A train.py-like file for the proposers."""
from autoresearch import harness

LR = 0.04  # learning rate
DEPTH = 8  # transformer blocks
WARMUP_RATIO = 0.1  # fraction of the budget spent warming up
DEVICE_BATCH_SIZE = 32  # rows per step
USE_BIAS = False
ACTIVATION = "relu"
SEED = 42

harness.handover(None)
'''

TRIALS = 40
SEEDS = range(6)
# The optimum is a few times away from the baseline in every dimension that
# matters, as for a baseline tuned on other hardware; USE_BIAS is irrelevant.
OPTIMUM = {"LR": 0.015, "DEPTH": 11, "WARMUP_RATIO": 0.25, "DEVICE_BATCH_SIZE": 64}


def objective(source: str) -> float:
    """A bowl in log-LR, DEPTH, WARMUP_RATIO and log-batch size: a stand-in for val_bpb."""
    c = read_constants(source)
    return (
        math.log(c["LR"] / OPTIMUM["LR"]) ** 2
        + 0.05 * (c["DEPTH"] - OPTIMUM["DEPTH"]) ** 2
        + 4 * (c["WARMUP_RATIO"] - OPTIMUM["WARMUP_RATIO"]) ** 2
        + 0.3 * math.log2(c["DEVICE_BATCH_SIZE"] / OPTIMUM["DEVICE_BATCH_SIZE"]) ** 2
    )


def search(proposer: Proposer, seed: int, trials: int = TRIALS) -> tuple[float, list[HistoryEntry]]:
    """The one-lineage loop of `evolve --population 1`: keep a proposal if it improves.

    Every proposal is validated and recorded in the history the next request
    carries, as the engine does; returns the best objective and the history.
    """
    best_id, best_source, best = "c0000", SOURCE, objective(SOURCE)
    history = [HistoryEntry("c0000", None, "keep", best, None, "baseline", "baseline")]
    seen = {source_hash(SOURCE)}
    for i in range(1, trials + 1):
        request = ProposalRequest(
            parent_id=best_id, parent_source=best_source, program="", history=tuple(history),
            rng=random.Random(seed * 1000 + i),
        )
        proposal = proposer.propose(request)
        cid = f"c{i:04d}"
        reason = validate_proposal(best_source, proposal.source, seen)
        if reason:
            history.append(HistoryEntry(cid, best_id, "invalid", None, None,
                                        proposal.description, proposer.name))
            continue
        seen.add(source_hash(proposal.source))
        value = objective(proposal.source)
        status = "keep" if value < best else "discard"
        history.append(HistoryEntry(cid, best_id, status, value, value - best,
                                    proposal.description, proposer.name))
        if status == "keep":
            best_id, best_source, best = cid, proposal.source, value
    return best, history


# ---------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------

CHANGE = re.compile(r"^([A-Z_]+) (\S+) -> (\S+)$")


def test_random_changes_one_to_three_numeric_constants_and_says_which():
    old = read_constants(SOURCE)
    counts = set()
    for seed in range(60):
        proposal = RandomProposer().propose(make_request(SOURCE, seed=seed))
        new = read_constants(proposal.source)
        diff = {k for k in old if old[k] != new[k]}
        counts.add(len(diff))
        assert "SEED" not in diff and "ACTIVATION" not in diff
        parts = [CHANGE.match(part) for part in proposal.description.split(", ")]
        assert all(parts), proposal.description
        assert {m.group(1) for m in parts} == diff
        for m in parts:
            assert repr(old[m.group(1)]) == m.group(2)
            assert read_constants(f"X = {m.group(3)}")["X"] == new[m.group(1)]
        assert new["DEPTH"] >= 1 and new["DEVICE_BATCH_SIZE"] in (16, 32, 64)
        assert 0 < new["WARMUP_RATIO"] < 1 and new["LR"] > 0
        assert validate_proposal(SOURCE, proposal.source, {source_hash(SOURCE)}) is None
    assert counts == {1, 2, 3}


def test_random_is_deterministic_for_a_seed_and_thread_safe():
    proposer = RandomProposer()
    serial = [proposer.propose(make_request(SOURCE, seed=s)) for s in range(32)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda s: proposer.propose(make_request(SOURCE, seed=s)),
                                 range(32)))
    assert serial == parallel
    assert len({p.source for p in serial}) > 20


def test_random_options_are_checked():
    pm = build_plugin_manager(allowed="")
    assert make_proposer("random", {"max_changes": 1}, pm).max_changes == 1
    with pytest.raises(UserError, match="unknown option 'max_change'.*did you mean 'max_changes'"):
        make_proposer("random", {"max_change": 1}, pm)
    with pytest.raises(UserError, match="sigma"):
        make_proposer("random", {"sigma": -1}, pm)


def test_random_refuses_a_file_without_constants():
    with pytest.raises(UserError, match="no numeric or bool constants"):
        RandomProposer().propose(make_request("from autoresearch import harness\nNAME = 'x'\n"))


def test_random_changes_only_what_include_and_exclude_allow():
    old = read_constants(SOURCE)
    limited = {
        RandomProposer(include=["LR", "DEPTH", "NOT_THERE"]): {"LR", "DEPTH"},
        RandomProposer(exclude=["LR", "DEPTH", "USE_BIAS"]): {"WARMUP_RATIO", "DEVICE_BATCH_SIZE"},
    }
    for proposer, allowed in limited.items():
        changed = set()
        for seed in range(30):
            new = read_constants(proposer.propose(make_request(SOURCE, seed=seed)).source)
            changed |= {k for k in old if old[k] != new[k]}
        assert changed == allowed
    pm = build_plugin_manager(allowed="")
    assert make_proposer("random", {"include": ["LR"]}, pm).include == {"LR"}
    with pytest.raises(UserError, match="include must be a list of constant names"):
        make_proposer("random", {"include": "LR"}, pm)
    with pytest.raises(UserError, match="among those its include and exclude options allow"):
        RandomProposer(include=["ACTIVATION", "SEED"]).propose(make_request(SOURCE))


# ---------------------------------------------------------------------------
# optuna
# ---------------------------------------------------------------------------


def test_optuna_is_imported_only_when_the_proposer_is_made():
    code = (
        "import sys\n"
        "from autoresearch.plugins import build_plugin_manager, proposers\n"
        "pm = build_plugin_manager(allowed='')\n"
        "assert 'optuna' in proposers(pm)\n"
        "print('optuna' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_optuna_descriptions_are_unique_and_parseable():
    proposer = make_proposer("optuna", {}, build_plugin_manager(allowed=""))
    assert isinstance(proposer, Proposer)
    proposals = [proposer.propose(make_request(SOURCE, seed=i)) for i in range(10)]
    assert len({p.description for p in proposals}) == 10
    for number, proposal in enumerate(proposals):
        assert proposal.description.startswith(f"optuna trial {number}: ")
        params = parse_description(proposal.description)
        assert set(params) == {"LR", "DEPTH", "WARMUP_RATIO", "DEVICE_BATCH_SIZE", "USE_BIAS"}
        constants = read_constants(proposal.source)
        assert {k: constants[k] for k in params} == params
        assert constants["SEED"] == 42 and constants["ACTIVATION"] == "relu"
        assert constants["DEVICE_BATCH_SIZE"] in (8, 16, 32, 64, 128)


def test_optuna_choices_include_and_exclude_options():
    choices = {"ACTIVATION": ["relu", "gelu"]}
    proposer = OptunaProposer(include=["LR", "ACTIVATION"], choices=choices)
    seen = set()
    for i in range(12):
        params = parse_description(proposer.propose(make_request(SOURCE, seed=i)).description)
        assert set(params) == {"LR", "ACTIVATION"}
        seen.add(params["ACTIVATION"])
    assert seen == {"relu", "gelu"}
    with pytest.raises(UserError, match="unknown option 'exclud'"):
        OptunaProposer.from_options({"exclud": ["LR"]})


def test_optuna_tells_results_and_failures_to_its_trials():
    proposer = OptunaProposer()
    first = proposer.propose(make_request(SOURCE, seed=1))
    second = proposer.propose(make_request(SOURCE, seed=2))
    history = [
        HistoryEntry("c0001", "c0000", "discard", 1.25, 0.1, first.description, "optuna"),
        HistoryEntry("c0002", "c0000", "crash", None, None, second.description, "optuna"),
    ]
    proposer.propose(make_request(SOURCE, history=history, seed=3))
    trials = proposer._study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "RUNNING"]
    assert trials[0].value == 1.25
    # Telling happens once: the same history again adds nothing.
    proposer.propose(make_request(SOURCE, history=history, seed=4))
    assert len(proposer._study.trials) == 4


def test_optuna_learns_from_the_ledger_across_restarts():
    _, history = search(OptunaProposer(), seed=0, trials=15)
    fresh = OptunaProposer()
    fresh.propose(make_request(SOURCE, history=history, parent_id="c0000", seed=0))
    finished = [t for t in fresh._study.trials if t.state.name == "COMPLETE"]
    evaluated = [h for h in history if h.val_bpb is not None]
    assert len(finished) == len(evaluated)  # every trial, plus the baseline parent
    assert min(t.value for t in finished) == min(h.val_bpb for h in evaluated)


def test_optuna_learns_from_other_proposers_parents():
    proposer = OptunaProposer()
    llm_source = SOURCE.replace("LR = 0.04", "LR = 0.02")
    history = [HistoryEntry("c0003", "c0000", "keep", 0.5, -0.2, "halve LR", "llm")]
    proposer.propose(make_request(SOURCE, history=history, parent_id="c0000", seed=0))
    assert [t.state.name for t in proposer._study.trials] == ["RUNNING"]  # not yet a parent
    proposer.propose(make_request(llm_source, history=history, parent_id="c0003", seed=1))
    finished = [t for t in proposer._study.trials if t.state.name == "COMPLETE"]
    assert [(t.params["LR"], t.value) for t in finished] == [(0.02, 0.5)]


def test_optuna_is_thread_safe():
    proposer = OptunaProposer()
    with ThreadPoolExecutor(8) as pool:
        proposals = list(pool.map(lambda s: proposer.propose(make_request(SOURCE, seed=s)),
                                  range(24)))
    numbers = sorted(int(p.description.split(":")[0].split()[-1]) for p in proposals)
    assert numbers == list(range(24))
    assert all(isinstance(p, Proposal) for p in proposals)


def test_optuna_beats_random_on_a_synthetic_objective():
    optuna_best = [search(OptunaProposer(), seed)[0] for seed in SEEDS]
    random_best = [search(RandomProposer(), seed)[0] for seed in SEEDS]
    start = objective(SOURCE)
    assert max(optuna_best + random_best) < start  # both make progress: a fair race
    assert statistics.mean(optuna_best) < statistics.mean(random_best)
    assert statistics.median(optuna_best) < statistics.median(random_best)
    assert sum(o < r for o, r in zip(optuna_best, random_best, strict=True)) > len(SEEDS) / 2
