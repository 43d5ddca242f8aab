"""How fast `autoresearch serve` answers with a big history: a 10,000-experiment ledger.

    python benchmarks/serve.py [--experiments 10000] [--repeats 3] [--repo PATH]

The history is scale.py's synthetic one (real commits on their own branches, packed
refs, a ledger record each) shaped like a night of search: three proposers, a lineage
that follows the champion, promotions, calibration repeats of the baseline (a noise
band), crashes, timeouts and rejected proposals. A real `autoresearch serve` process
answers; each endpoint is timed cold (the first request after the ledger changed: the
ledger read and verified, the answer computed) and warm (answered from its cache). With
Chromium and Playwright here, the overview and lineage pages are also timed in the
browser, from navigation to drawn. Target: the overview in under 2 s. The server's CPU
seconds per request are read from /proc: on a busy machine they say what the wall time
would be on an idle one. `--repo`: time a history built before (its path is printed;
building 10,000 records with an fsync each takes a while).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from scale import TAG, synthetic_history
from tabulate import tabulate

from autoresearch.ledger import Ledger, Record
from autoresearch.validation import source_hash
from autoresearch.workspace import LEDGER_FILE, init_repo, read_train

PROPOSERS = ("llm:openai/gpt-4.1", "optuna", "random")
CALIBRATE = 3  # repeats of the baseline right after it
FAILURES = {"crash": 0.06, "timeout": 0.02, "invalid": 0.03}
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [  # as tests/test_serve_browser.py launches it
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def night(base_source: str, seed: int = 0):
    """`shape` for scale.synthetic_history: candidate i of a greedy-ish night of search."""
    rng = random.Random(seed)
    state = {"best": 3.0, "champion": "e0001", "kept": ["e0001"]}
    base = source_hash(base_source)

    def shape(i: int, fields: dict[str, Any]) -> Record:
        fields["proposer"] = PROPOSERS[i % len(PROPOSERS)]
        fields["created"] = 1_700_000_000 + 330.0 * i
        if i <= 1 + CALIBRATE:
            fields.update(proposer="calibrate", val_bpb=3.0 + rng.gauss(0, 0.004),
                          description="baseline again", fingerprints={"source": base})  # fmt: skip
            return Record(**fields)
        fields["parent"] = rng.choice(state["kept"][-4:])
        fields["description"] = f"MATRIX_LR -> {0.01 + i * 1e-6:.6f} and a longer note {i}"
        roll = rng.random()
        for status, share in FAILURES.items():
            if roll < share:
                fields.update(status=status, val_bpb=None, reason=f"{status}: synthetic")
                return Record(**fields)
            roll -= share
        score = state["best"] + rng.gauss(0.004, 0.006)
        fields["val_bpb"] = score
        if score < state["best"] - 0.002:
            state.update(best=score, champion=fields["id"])
            state["kept"].append(fields["id"])
            fields.update(status="keep", promoted=True)
        elif score < state["best"] + 0.003:
            state["kept"].append(fields["id"])
            fields["status"] = "keep"
        return Record(**fields)

    return shape


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(url: str, pid: int) -> tuple[float, float, int]:
    """(wall seconds, the server's CPU seconds, bytes) of one GET."""
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    with urllib.request.urlopen(url, timeout=300) as response:
        size = len(response.read())
    return time.perf_counter() - t0, cpu_seconds(pid) - cpu0, size


def touch_ledger(repo: Path) -> None:
    """One more record: what every experiment of a live run does to the server's cache."""
    ledger = Ledger(repo / ".autoresearch" / LEDGER_FILE)
    n = len(ledger.records())
    ledger.append(Record(id=f"e{n + 1:05d}", status="crash", reason="one more", tag=TAG))


def browser_times(base: str, repo: Path, repeats: int) -> list[list]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("(no playwright: browser timings skipped)", file=sys.stderr)
        return []
    if not CHROMIUM.is_file():
        print(f"(no {CHROMIUM}: browser timings skipped)", file=sys.stderr)
        return []
    rows = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="bench-serve-profile-"), executable_path=str(CHROMIUM),
            headless=True, args=BROWSER_ARGS, viewport={"width": 1400, "height": 1000},
        )  # fmt: skip
        page = context.new_page()
        for path, selector in (("/", "svg.plot"), ("/lineage", "div.tree")):
            cold, warm = [], []
            for _ in range(repeats):
                touch_ledger(repo)
                for times in (cold, warm):
                    t0 = time.perf_counter()
                    page.goto(base + path)
                    page.wait_for_selector(f"body[data-drawn] {selector}")
                    times.append(time.perf_counter() - t0)
            rows.append([f"page {path} (Chromium, drawn)", min(cold), "", min(warm), "", ""])
        context.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repo", type=Path, help="A research repo this script built before.")
    args = parser.parse_args()

    repo = args.repo
    if repo is None:
        repo = init_repo(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "research", "tiny")
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        t0 = time.perf_counter()
        synthetic_history(repo, args.experiments, night(read_train(repo, head)))
        print(f"built {args.experiments} experiments in {time.perf_counter() - t0:.1f} s: {repo}")

    server = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "serve", "--port", "0"],
        cwd=repo, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = server.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
        middle = f"e{args.experiments // 2:04d}"
        endpoints = [
            "/api/overview", "/api/leaderboard", "/api/leaderboard?all=1", "/api/lineage",
            f"/api/experiment?id={middle}", f"/api/compare?a=e0001&b={middle}", "/api/status", "/",
        ]  # fmt: skip
        rows = []
        for path in endpoints:
            cold, warm = [], []
            for _ in range(args.repeats):
                touch_ledger(repo)
                cold.append(timed(url + path, server.pid))
                warm.append(timed(url + path, server.pid))
            (wall, cpu, _), (warm_wall, warm_cpu, size) = min(cold), min(warm)
            rows.append([path, wall, cpu, warm_wall, warm_cpu, f"{size:,}"])
        overview = json.loads(urllib.request.urlopen(url + "/api/overview").read())
        assert len(overview["experiments"]) >= args.experiments
        rows += browser_times(url, repo, args.repeats)
    finally:
        server.terminate()
        server.wait()
    print(
        tabulate(
            rows,
            headers=[
                "endpoint",
                "cold s (ledger changed)",
                "server CPU s",
                "warm s (cached)",
                "server CPU s",
                "bytes",
            ],  # fmt: skip
            floatfmt=".3f",
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
