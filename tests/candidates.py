"""Small `train.py` candidates for runner tests: one honest, the rest misbehaving.

HONEST is a bigram model that really trains through the harness in a couple
of seconds on CPU; each other candidate breaks one rule the runner enforces,
or is one of the faults of tests/test_faults.py.
"""

HONEST = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from autoresearch import harness

LR = 0.2
BATCH_SIZE = 16
DEPTH = 1


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ctx = harness.context()
    torch.manual_seed(ctx.seed)
    model = Bigram(ctx.vocab_size).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = harness.train_loader(BATCH_SIZE)
    budget = harness.Budget()
    budget.start()
    step = 0
    while not budget.done:
        x, y = next(loader)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        harness.report(step, loss.item())
        step += 1
    harness.handover(model, flops_per_token=6 * ctx.vocab_size**2)


if __name__ == "__main__":
    main()
"""


def honest_with(before_handover: str = "", in_loop: str = "", at_start: str = "") -> str:
    """HONEST with extra lines injected (indented for main's body)."""
    src = HONEST.replace(
        "    ctx = harness.context()\n", "    ctx = harness.context()\n" + at_start
    )
    src = src.replace("        step += 1\n", "        step += 1\n" + in_loop)
    return src.replace("    harness.handover(", before_handover + "    harness.handover(")


FAKE_SCORE = 'print("val_bpb: 0.000001")\nprint("---")\nprint("val_bpb:          0.000001")\n'

CRASH = "raise RuntimeError('boom: the candidate is broken')\n"

HANG = "import time\ntime.sleep(3600)\n"

NO_HANDOVER = "print('trained nothing')\n"

# Starts a grandchild that would outlive the candidate, then hangs.
GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
time.sleep(3600)
"""

# Ignores SIGTERM, and so does the child it starts: only SIGKILL ends them.
IGNORES_SIGTERM = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
child = subprocess.Popen([sys.executable, "-c", stubborn])
time.sleep(3600)
"""

# The classic daemon: fork, setsid (a session and process group of its own, out of the
# candidate's), fork again, chdir to /. Killing the candidate's process group misses it.
# The candidate exits once the daemon runs, without handing anything over.
DAEMON = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        time.sleep(3600)
    os._exit(0)
os.wait()
"""

# About 200 MB of output as fast as it can, then honest training and a hand-over.
LOG_FLOOD = honest_with(
    at_start="    block = ('flood ' * 16 + '\\n') * 10_000\n"
    "    for _ in range(200):\n"
    "        print(block, end='')\n"
)

# An allocation no machine can satisfy (1 PiB), as a model far too big for the device makes:
# Python's MemoryError, and torch's on the run device (torch.OutOfMemoryError on CUDA).
OOM_PYTHON = "weights = bytearray(1 << 50)\n"
OOM_TORCH = honest_with(at_start="    torch.empty(1 << 50, dtype=torch.uint8, device=ctx.device)\n")

NAN = honest_with(in_loop="        harness.report(step, float('nan'))\n")

OVER_BUDGET = honest_with(
    at_start="    harness.Budget.done = property(lambda self: self.elapsed > 3 * self.seconds)\n"
)

# Attention to the next token: a perfect score if the evaluator did not probe causality.
PEEKING = HONEST.replace(
    "        logits = self.table(idx)\n",
    "        logits = self.table(torch.roll(idx, -1, dims=1))\n",
)

SECRET_SNOOP = honest_with(
    at_start="    import os\n    print('ENV', sorted(os.environ))\n"
    "    print('SECRET', os.environ.get('OPENAI_API_KEY', 'absent'))\n"
)
