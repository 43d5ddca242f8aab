"""Attacks on the clock and the token budget: training outside the measured window, or on
tokens the runner did not count.

The candidate holds the events pipe (`AUTORESEARCH_EVENTS_FD`) and can write any event
to it, so events cannot be what the window rests on. The runner serves the training rows
itself (`dataloader.BatchServer`): it counts and stamps every batch, stops serving at the
token budget, and the training split is hidden from the candidate. Around the window the
start-up and the export are bounded by the runner's clock. Each attack here gets a
`keep` on the code before that design.
"""

from __future__ import annotations

import os
import subprocess
import sys

import candidates
import pytest
from attacking import TOKENS, attack, needs_isolation, same_score

from autoresearch import runner
from autoresearch.harness.context import EVENTS_ENV


@pytest.fixture
def true_bpb(request) -> float:
    """The honest bigram's score: test_metric_integrity's `honest_bpb`, computed once."""
    return request.getfixturevalue("honest_bpb")


TIME_BUDGET = {"run.budget_tokens": 0, "run.budget_seconds": 1}

# Writes an event line straight onto the runner's pipe, as the harness would.
FORGE = (
    "    import importlib, json, os\n"
    "    def forge(kind, **fields):\n"
    f"        line = json.dumps({{'event': kind, **fields}}) + '\\n'\n"
    f"        os.write(int(os.environ[{EVENTS_ENV!r}]), line.encode())\n"
)


def trains_on(seconds: float, draws: bool) -> str:
    """Lines that train the bigram on for `seconds` more: on new batches, or on the last one."""
    batch = "x, y = next(loader)" if draws else "pass"
    return (
        "        import time as _t\n"
        f"        _until = _t.monotonic() + {seconds}\n"
        "        while _t.monotonic() < _until:\n"
        f"            {batch}\n"
        "            loss = model(x, y)\n"
        "            opt.zero_grad()\n"
        "            loss.backward()\n"
        "            opt.step()\n"
    )


# --- a forged `handover` stops the runner's clock while training goes on ---------------


def test_forged_handover_then_new_batches_is_invalid(research_repo):
    source = candidates.honest_with(
        at_start=FORGE,
        in_loop="        if step == 1:\n            forge('handover')\n"
        "            budget = harness.Budget(seconds=1)\n            budget.start()\n",
    )
    out = attack(research_repo, source, **TIME_BUDGET)
    assert out.status == "invalid" and "after harness.handover()" in out.reason, (
        out.status, out.reason, out.training_seconds
    )  # fmt: skip


def test_forged_handover_then_replayed_batches_is_invalid(research_repo, monkeypatch):
    # No new batch after the forged hand-over: only the export's bound sees the extra time.
    # The bound is lowered from 10 s to 3 s (the honest export takes under 1 s), so that the
    # test does not wait 10 s for it; the bound, not its size, is what is tested.
    monkeypatch.setattr(runner, "EXPORT_SECONDS", 3.0)
    source = candidates.honest_with(
        at_start=FORGE,
        before_handover="    forge('handover')\n    if True:\n" + trains_on(30, draws=False),
    )
    out = attack(research_repo, source, **TIME_BUDGET)
    assert out.status == "invalid" and "export's bound" in out.reason, (out.status, out.reason)
    assert out.training_seconds < 5 and out.total_seconds < 30  # stopped at the bound


# --- training inside the export: the harness's own hand-over, stretched ----------------


def test_training_inside_the_export_is_invalid(research_repo):
    source = candidates.honest_with(
        before_handover="    import importlib\n"
        "    h = importlib.import_module('autoresearch.harness.hand' + 'over')\n"
        "    real_export = h.export\n"
        "    def export(*args):\n"
        "        model.train()\n" + trains_on(1, draws=True) + "        model.eval()\n"
        "        return real_export(*args)\n"
        "    h.export = export\n"
    )
    out = attack(research_repo, source, **TIME_BUDGET)
    assert out.status == "invalid" and "after harness.handover()" in out.reason, out.reason


# --- tokens the runner never counted ---------------------------------------------------

# Its own loader over the training split, beside the file the runner serves from: three
# times the token budget, none of it drawn through harness.train_loader.
OWN_LOADER = candidates.HONEST.replace(
    "    loader = harness.train_loader(BATCH_SIZE)\n",
    "    import importlib, pathlib\n"
    "    dl = importlib.import_module('autoresearch.harness.data' + 'loader')\n"
    "    split = pathlib.Path(ctx.tokenizer_path).with_name('tr' + 'ain.npy')\n"
    "    loader = dl.TrainLoader(split, BATCH_SIZE, ctx.sequence_len, ctx.bos_id, 'cpu', 1)\n",
).replace("    while not budget.done:\n", "    while step < 36:\n")


def test_own_loader_over_the_training_split_is_refused(research_repo):
    out = attack(research_repo, OWN_LOADER)
    assert out.status == "invalid" and "tried to read the data" in out.reason, out.reason
    assert "validation" not in out.reason


# The same through native code, which the audit hook does not see: only the namespaces
# stop it, where the split is an empty file.
NATIVE_TRAIN_COPY = candidates.honest_with(
    at_start="    import subprocess, pathlib\n"
    "    split = pathlib.Path(ctx.tokenizer_path).with_name('tr' + 'ain.npy')\n"
    "    subprocess.run(['cp', str(split), 'copy.bin'])\n"
    "    got = open('copy.bin', 'rb').read() if __import__('os').path.exists('copy.bin') else b''\n"
    "    assert not got, f'read {len(got)} bytes of the training split'\n"
)


@needs_isolation
def test_training_split_through_native_code_is_hidden_by_isolation(research_repo, true_bpb):
    out = attack(research_repo, NATIVE_TRAIN_COPY, isolation="on")
    assert out.status == "keep" and same_score(out.val_bpb, true_bpb), out.reason


def test_uncounted_batches_cannot_pass_the_token_budget(research_repo):
    # Its own count of the tokens stays 0, and it trains on three times the budget.
    source = candidates.honest_with(
        at_start="    import importlib\n"
        "    ev = importlib.import_module('autoresearch.harness.ev' + 'ents')\n"
        "    ev.count_tokens = lambda n: None\n"
    ).replace("    while not budget.done:\n", "    while step < 36:\n")
    out = attack(research_repo, source)
    assert out.status == "timeout" and "token budget" in out.reason, (out.status, out.reason)
    assert out.tokens == TOKENS  # what the runner served: not a batch more


def test_tokens_are_the_runners_count(research_repo, true_bpb):
    # It tells the runner (events, hand-over notes) it trained on nothing: the count stands.
    source = candidates.honest_with(
        at_start=FORGE,
        before_handover="    ev = importlib.import_module('autoresearch.harness.ev' + 'ents')\n"
        "    getattr(ev, '_St' + 'ate').tokens = 0\n"
        "    forge('step', step=0, loss=1.0, tokens=0)\n",
    )
    out = attack(research_repo, source)
    assert out.status == "keep" and same_score(out.val_bpb, true_bpb), out.reason
    assert out.tokens == TOKENS, out.tokens


# --- work before the window ------------------------------------------------------------


def test_startup_over_its_allowance_is_invalid(research_repo):
    source = candidates.honest_with(at_start="    __import__('time').sleep(5)\n")
    out = attack(research_repo, source, **{"run.startup_seconds": 3})
    assert out.status == "invalid" and "start-up allowance" in out.reason, (out.status, out.reason)


# --- the honest paths ------------------------------------------------------------------


def test_honest_run_is_timed_and_counted_by_the_runner(honest_outcome):
    out = honest_outcome  # the run the attacks' true score comes from (tests/conftest.py)
    assert out.status == "keep"
    assert out.tokens == TOKENS and out.num_steps == TOKENS // (16 * 64)
    assert 0 < out.timings["export"] < 10 and out.timings["startup"] > 0


def test_run_by_hand_reads_the_split_itself(research_repo):
    """`python train.py` without the runner: the loader reads the training file here."""
    source = candidates.honest_with(
        before_handover="    print('trained', budget.tokens_trained, ctx.train_tokens_path)\n"
    )
    (research_repo / "train.py").write_text(source)
    toml = research_repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("[run]\n", f"[run]\nbudget_tokens = {TOKENS}\n"))
    # No run context, events pipe or data channel: only the cache is the test session's.
    env = {
        k: v for k, v in os.environ.items() if k == "AUTORESEARCH_CACHE" or "AUTORESEARCH_" not in k
    }
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=research_repo, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"trained {TOKENS} " in done.stdout.decode()
    assert "train.npy" in done.stdout.decode()
