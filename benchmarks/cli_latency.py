"""How fast the command line answers when nothing needs training.

    python benchmarks/cli_latency.py [--repeats 5]

Times (median of `--repeats`) the answers a user waits for at a prompt, each in
a fresh process, and says which heavy libraries each one imported:

- `autoresearch --help` (target: under 0.5 s on an idle machine);
- `autoresearch evolve --proposer llm:openai/gpt-4o` with no OPENAI_API_KEY: the
  missing key is said before litellm is imported (target: under 2 s);
- the data check every `run` and `evolve` does first, on prepared data,
  without torch in the orchestrator (torch alone costs about 2 s and 200 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import tiny_repo
from tabulate import tabulate

HEAVY = ("torch", "litellm", "optuna")
PROBE = (
    "import sys, atexit\n"
    "atexit.register(lambda: print('HEAVY', *[m for m in {heavy!r} if m in sys.modules],"
    " file=sys.stderr))\n"
    "sys.argv = ['autoresearch', *sys.argv[1:]]\n"
    "{body}\n"
)
MAIN = "from autoresearch.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
DATA_CHECK = (
    "from autoresearch import cli\nfrom autoresearch.config import load_config\n"
    "cli._check_ready(load_config(cli.find_repo()))"
)


def measure(body: str, args: tuple[str, ...], cwd: Path, env: dict) -> tuple[float, str]:
    code = PROBE.format(heavy=HEAVY, body=body)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    heavy = next((ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY")), "HEAVY ?")
    return seconds, heavy.removeprefix("HEAVY").strip() or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repo = tiny_repo("autoresearch-latency-")
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    cases = [
        ("autoresearch --help", MAIN, ("--help",), 0.5),
        ("evolve --proposer llm:openai/gpt-4o, no key", MAIN,
         ("evolve", "--proposer", "llm:openai/gpt-4o"), 2.0),
        ("the data check of run and evolve", DATA_CHECK, (), None),
    ]  # fmt: skip
    rows = []
    for name, body, argv, target in cases:
        runs = [measure(body, argv, repo, env) for _ in range(args.repeats)]
        median = statistics.median(seconds for seconds, _ in runs)
        rows.append(
            [name, f"{median:.2f}", f"{target:.1f}" if target else "-", runs[-1][1]]
        )
    print(tabulate(rows, headers=["command", "median s", "target s", "heavy imports"]))


if __name__ == "__main__":
    main()
