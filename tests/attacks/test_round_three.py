"""Attacks an adversary found against the defences of test_evaluator, test_clock and
test_host, knowing only the docs: each beat them once, and must not any more.

1. The causality probe's cuts came from a fixed seed, so a model could replay them and
   peek at the next token everywhere the probe does not look.
2. The token budget stopped only the requests after it: one request for a huge batch
   trained on a hundred times the budget.
3. The orchestrator read files of the run folder that the candidate had replaced: a
   `run.log` linked to `/proc/self/environ` put the orchestrator's own environment (API
   keys) into the crash reason, one linked to a FIFO hung it, one linked to `/dev/zero`
   (or a `handover.json` linked there) took all its memory. (The tests use FIFOs: a
   regression must fail, not fill the machine.)
"""

from __future__ import annotations

import os
import signal

import candidates
import pytest
from attacking import attack, needs_isolation, same_score

SECRET = "sk-PLANTED-SECRET-123"
BOTH = ["off", pytest.param("auto", marks=needs_isolation)]
HANG_SECONDS = 120  # a run that takes longer has hung the orchestrator


@pytest.fixture
def no_hang():
    """Fail, rather than hang for ever, if the orchestrator blocks."""

    def hung(signum, frame):
        raise TimeoutError(f"the orchestrator hung for {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# The honest bigram, plus a peek at the next token wherever the probe's cuts, replayed from
# a seed the candidate guesses, do not look in that row of the batch.
REPLAYED_PROBE = candidates.HONEST.replace(
    "class Bigram(nn.Module):\n    def __init__(self, vocab):\n        super().__init__()\n"
    "        self.table = nn.Embedding(vocab, vocab)\n",
    """def probe_cuts(rows, length, vocab, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.ones(rows, length)
    passes = -(-(length - 1) // rows)
    every = torch.randperm(length - 1, generator=g) + 1
    spare = torch.randint(1, length, (passes * rows - len(every),), generator=g)
    for cuts in torch.cat([every, spare]).view(passes, rows):
        torch.randint(0, vocab - 1, (rows, length), generator=g)
        for r in range(rows):
            mask[r, int(cuts[r]) - 1] = 0.0
    mask[:, -1] = 0.0
    return mask


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        ctx = harness.context()
        self.register_buffer("eye", torch.eye(vocab))
        self.register_buffer("mask", probe_cuts(ctx.eval_batch_size, ctx.sequence_len, vocab, 1234))
""",
).replace(
    "        if targets is None:\n            return logits\n",
    "        if targets is None:\n"
    "            nxt = torch.cat([idx[:, 1:], idx[:, :1]], dim=1)\n"
    "            return logits + F.embedding(nxt, self.eye) * 30.0 * self.mask.unsqueeze(-1)\n",
)


def test_1_a_replayed_probe_seed_cannot_hide_a_peek(research_repo, honest_bpb):
    out = attack(research_repo, REPLAYED_PROBE, check=False)
    assert out.status == "invalid" and "causal" in out.reason, (out.status, out.val_bpb)


# One request for far more rows than the budget holds, then training on all of them.
ONE_BIG_REQUEST = candidates.HONEST.replace(
    "    loader = harness.train_loader(BATCH_SIZE)\n", ""
).replace(
    "    while not budget.done:\n        x, y = next(loader)\n",
    "    X, Y = next(iter(harness.train_loader(2000)))\n"
    "    for i in range(0, len(X), BATCH_SIZE):\n"
    "        x, y = X[i : i + BATCH_SIZE], Y[i : i + BATCH_SIZE]\n",
)


@pytest.mark.parametrize("isolation", BOTH)
def test_2_one_huge_batch_cannot_pass_the_token_budget(research_repo, honest_bpb, isolation):
    out = attack(research_repo, ONE_BIG_REQUEST, isolation=isolation)
    budget = 12 * 16 * 64
    assert out.tokens <= budget + 64, out.tokens  # the budget, to the row
    assert out.status != "keep" or out.val_bpb >= honest_bpb - 0.05, (out.status, out.val_bpb)


def test_2_the_honest_last_batch_is_served_whole(research_repo):
    """A budget that is not a whole number of batches: the last batch crosses it, whole."""
    out = attack(research_repo, candidates.HONEST, check=False, **{"run.budget_tokens": 11_000})
    assert out.status == "keep" and out.tokens == 11 * 16 * 64, (out.status, out.tokens)


def replaced(name: str, target: str, then: str = "    raise SystemExit(1)\n") -> str:
    """A candidate that puts a link to `target` where the runner reads `name`, then `then`."""
    return candidates.honest_with(
        at_start="    import os\n"
        "    run = os.path.dirname(ctx.handover_dir)\n"
        f"    path = os.path.join(run, {name!r})\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    if os.path.lexists(path):\n        os.unlink(path)\n"
        f"    target = {target}\n"
        "    if target == 'fifo':\n"
        "        target = os.path.join(run, 'fifo')\n        os.mkfifo(target)\n"
        "        held = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # so writes get through\n"
        "    os.symlink(target, path)\n" + then
    )


@pytest.mark.parametrize("isolation", BOTH)
def test_3_a_log_linked_to_the_orchestrators_environment_reads_nothing(
    research_repo, monkeypatch, isolation
):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = attack(research_repo, replaced("run.log", "'/proc/self/environ'"), isolation=isolation)
    assert out.status == "crash" and SECRET not in out.reason, out.reason
    quoted = [name for name, value in os.environ.items() if f"{name}={value}" in out.reason]
    assert not quoted, out.reason  # not one variable of the orchestrator's environment


def test_3_a_log_linked_to_a_fifo_does_not_hang_the_orchestrator(research_repo, no_hang):
    out = attack(research_repo, replaced("run.log", "'fifo'"))
    assert out.status == "crash", out.reason
    assert len(out.reason) < 300


def test_3_hand_over_notes_linked_to_a_fifo_are_not_read(research_repo, honest_bpb, no_hang):
    out = attack(research_repo, replaced("handover/handover.json", "'fifo'", then=""))
    assert out.status == "keep" and same_score(out.val_bpb, honest_bpb), (out.status, out.reason)
