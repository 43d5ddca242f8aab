"""Attacks on the trusted evaluator: it runs the candidate's exported graph, so the graph
is the attack surface. Each attack is a real `train.py` trained and scored by the runner.

1. Ops with side effects in the graph. torch.export traces any ATen op it has a fake
   (meta) implementation for, and a candidate may register one for `aten::from_file`
   itself: the evaluator would then read the validation tokens or map a protected file
   writable and copy over it, draw random numbers (a score that varies between runs), or
   write to its own buffers.
2. A blinded causality probe: a tolerance that scales with the model's own logits, opened
   wide by one huge (or infinite) logit on a token that is never scored (BOS), lets a model
   that reads the next input token through.

Every attack must end `invalid`, the files it aimed at unchanged.
"""

from __future__ import annotations

from pathlib import Path

import candidates
import pytest
from attacking import attack, in_repo, needs_isolation

# The candidate gives aten::from_file a fake implementation, so that torch.export can trace it.
FAKE_FROM_FILE = (
    "    @torch.library.register_fake('aten::from_file')\n"
    "    def _fake(filename, shared=None, size=0, *, dtype=None, layout=None, device=None,\n"
    "              pin_memory=None):\n"
    "        return torch.empty(size, dtype=dtype, device=device)\n"
)


def with_forward(setup: str, forward: str) -> str:
    """HONEST whose model, once trained, runs `forward` (lines of the evaluation-time
    forward, with `idx` and `logits` = the honest logits) and returns `logits`.
    `setup` runs at the start of main and may set attributes on the class `Bigram`."""
    source = candidates.honest_with(at_start=FAKE_FROM_FILE + setup)
    return source.replace(
        "        if targets is None:\n            return logits\n",
        "        if targets is None:\n" + forward + "            return logits\n",
    )


# --- 1. side effects in the graph --------------------------------------------------------

# The bigram of the validation split itself, counted inside the graph from the tokens on disk.
READ_VALIDATION = with_forward(
    "    import os\n"
    "    Bigram.val = os.path.join(os.path.dirname(ctx.tokenizer_path), 'va' + 'l.npy')\n"
    "    Bigram.n = os.path.getsize(Bigram.val) // 2  # uint16 tokens after a 128-byte header\n",
    "            raw = torch.from_file(self.val, shared=False, size=self.n, dtype=torch.int16)\n"
    "            toks = raw[64:].long()\n"
    "            V = logits.size(-1)\n"
    "            pairs = toks[:-1] * V + toks[1:]\n"
    "            counts = torch.zeros(V * V).index_add(0, pairs, torch.ones(pairs.size(0)))\n"
    "            logits = (counts.view(V, V) + 0.01).log()[idx] + 0 * logits\n",
)


def overwrite(name: str, old: str, new: str, known: bytes | None = None) -> str:
    """A model whose forward maps repo file `name` writable and puts `new` over `old`;
    `known`: the file's bytes, for a file the candidate may not read (the attacker knows
    the format, and where the score it wants changed is)."""
    find = (
        f"    Bigram.at, Bigram.size = {known.index(old.encode())}, {len(known)}\n"
        if known is not None
        else "    text = open(Bigram.path, 'rb').read()\n"
        f"    Bigram.at, Bigram.size = text.index({old.encode()!r}), len(text)\n"
    )
    return with_forward(
        f"    Bigram.path = str({in_repo(name)})\n" + find,
        "            f = torch.from_file(self.path, True, self.size, dtype=torch.uint8)\n"
        f"            new = torch.tensor({list(new.encode())}, dtype=torch.uint8)\n"
        f"            f[self.at : self.at + {len(new)}].copy_(new)\n"
        "            logits = logits + 0 * f[:1].float()\n",
    )


def test_graph_reading_the_validation_tokens_is_refused(research_repo):
    out = attack(research_repo, READ_VALIDATION, check=False)
    assert out.status == "invalid", (out.status, out.reason, out.val_bpb)
    assert "aten.from_file" in out.reason and "not allowed in the evaluator" in out.reason


@pytest.mark.parametrize("isolation", ["off", pytest.param("on", marks=needs_isolation)])
def test_graph_writing_program_md_is_refused(research_repo, isolation):
    before = (research_repo / "program.md").read_bytes()
    source = overwrite("program.md", before.decode()[:8], "PWNED!!!")
    out = attack(research_repo, source, isolation=isolation, check=False)
    assert (research_repo / "program.md").read_bytes() == before
    assert out.status == "invalid" and "aten.from_file" in out.reason, (out.status, out.reason)


def test_graph_rewriting_an_earlier_score_in_the_ledger_is_refused(research_repo):
    ledger = research_repo / ".autoresearch" / "ledger.jsonl"
    ledger.parent.mkdir(exist_ok=True)
    ledger.write_text('{"id": "r1", "status": "keep", "val_bpb": 4.170}\n')
    before = ledger.read_bytes()
    source = overwrite(".autoresearch/ledger.jsonl", "4.170", "0.170", known=before)
    out = attack(research_repo, source, check=False)
    assert ledger.read_bytes() == before
    assert out.status == "invalid" and "aten.from_file" in out.reason, (out.status, out.reason)


@pytest.mark.parametrize(
    "forward, op",
    [  # noise that lets a search re-evaluate until it draws a lucky score
        ("            logits = logits + 1e-3 * torch.rand(logits.shape)\n", "aten.rand"),
        (
            "            e = logits.unsqueeze(1)\n"
            "            logits = logits + 0 * torch.nn.functional.scaled_dot_product_attention(\n"
            "                e, e, e, dropout_p=0.5, is_causal=True).squeeze(1)\n",
            "dropout_p",
        ),
    ],
    ids=["rand", "attention-dropout"],
)
def test_graph_drawing_random_numbers_is_refused(research_repo, forward, op):
    out = attack(research_repo, with_forward("", forward), check=False)
    assert out.status == "invalid" and op in out.reason, (out.status, out.reason)


def test_graph_mutating_its_own_buffer_is_refused(research_repo):
    source = with_forward("", "            self.seen.add_(1)\n").replace(
        "        self.table = nn.Embedding(vocab, vocab)\n",
        "        self.table = nn.Embedding(vocab, vocab)\n"
        "        self.register_buffer('seen', torch.zeros(()))\n",
    )
    out = attack(research_repo, source, check=False)
    assert out.status == "invalid" and "aten.add_.Tensor, which writes" in out.reason, out.reason


# --- 2. a blinded causality probe --------------------------------------------------------


@pytest.mark.parametrize("blind", ["-1e6", "float('-inf')"], ids=["huge", "infinite"])
def test_blinding_the_causality_probe_with_a_bos_logit_is_refused(research_repo, blind):
    # Peeks at the next token (as candidates.PEEKING), and pushes the BOS logit far down: BOS
    # targets are never scored, so the score does not suffer; only the probe's margin moved.
    source = candidates.PEEKING.replace(
        "        if targets is None:\n            return logits\n",
        "        if targets is None:\n"
        "            bos = torch.arange(logits.size(-1)) == logits.size(-1) - 1\n"
        f"            return logits.masked_fill(bos, {blind})\n",
    )
    out = attack(research_repo, source, check=False)
    assert out.status == "invalid", (out.status, out.reason, out.val_bpb)
    assert "logit of magnitude" in out.reason, out.reason


# --- the evaluator's own confinement -----------------------------------------------------

CONFINED = """
import json, os, socket, sys
from autoresearch.harness.evaluate import confine
confine(sys.argv[1] == "isolated")
import torch
torch.set_num_threads(2)  # threads still start: no PID namespace
report = {"matmul": bool((torch.ones(64, 64) @ torch.ones(64, 64)).sum() > 0)}
try:
    open(sys.argv[2], "w").write("escaped")
    report["wrote"] = True
except OSError:
    report["wrote"] = False
status = open("/proc/self/status").read()
report["no_new_privs"] = "NoNewPrivs:\\t1" in status
report["no_capabilities"] = "CapEff:\\t0000000000000000" in status
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    report["network"] = True
except OSError as e:
    report["network"] = e.errno == 111  # refused: a loopback that is up, so a network
print(json.dumps(report))
"""


def confined(tmp_path: Path, isolated: bool) -> dict:
    import json
    import subprocess
    import sys

    target = tmp_path / "escape.txt"
    mode = "isolated" if isolated else "plain"
    done = subprocess.run(
        [sys.executable, "-c", CONFINED, mode, str(target)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"exists": target.exists()}


@needs_isolation
def test_the_isolated_evaluator_can_write_nothing_and_reach_nothing(tmp_path):
    report = confined(tmp_path, isolated=True)
    assert report["matmul"] and report["no_new_privs"] and report["no_capabilities"]
    assert not report["wrote"] and not report["exists"]
    assert not report["network"]


def test_the_evaluator_always_gives_up_new_privileges(tmp_path):
    report = confined(tmp_path, isolated=False)
    assert report["matmul"] and report["no_new_privs"]
