"""The run context: everything the harness tells a `train.py` about its run.

The runner writes it as JSON into the run folder and points the training
process at it through an environment variable. Run by hand (`python train.py`
in a research repo), the harness builds the same context from
`autoresearch.toml` and the prepared cache, so a candidate behaves the same
both ways; only the runner's evaluation gives it a score.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.config import Config, load_config

if TYPE_CHECKING:
    from autoresearch.harness.prepare import Manifest

CONTEXT_ENV = "AUTORESEARCH_CONTEXT"  # path of context.json, set by the runner
EVENTS_ENV = "AUTORESEARCH_EVENTS_FD"  # file descriptor for progress events, set by the runner
DATA_ENV = "AUTORESEARCH_DATA_FD"  # socket the runner serves the training rows on, set by it


@dataclass(frozen=True)
class RunContext:
    device: str  # resolved: cuda | cpu | mps
    seed: int
    budget_seconds: float
    budget_tokens: int  # 0: the budget is budget_seconds of training
    sequence_len: int
    vocab_size: int  # including BOS
    bos_id: int
    eval_batch_size: int  # the batch size the model is exported and evaluated at
    tokenizer_path: str
    # The training split, for a train.py run by hand; "" under the runner, which serves the
    # rows itself (the split is hidden from the candidate). The validation split is never named.
    train_tokens_path: str
    handover_dir: str  # where `harness.handover` puts the model for the evaluator

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def resolve_device(name: str) -> str:
    """Turn `auto` into the best device here; check that an explicit one exists."""
    if name == "cpu" or (name == "auto" and not _accelerator_possible()):
        return "cpu"  # known without importing torch (2 s, 200 MB in the orchestrator)
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return name


def _accelerator_possible() -> bool:
    """False when torch surely sees only the CPU: a CPU-only build, told by its version file
    read as text (importing torch to ask costs the orchestrator 2 s and 200 MB)."""
    import importlib.util
    import platform

    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True  # Apple silicon: mps
    spec = importlib.util.find_spec("torch")
    try:
        text = (Path(spec.origin).parent / "version.py").read_text() if spec and spec.origin else ""
    except OSError:
        return True  # cannot tell: ask torch itself
    return not all(re.search(rf"^{name}: .* = None$", text, re.M) for name in ("cuda", "hip"))


def build_context(
    config: Config, handover_dir: Path, manifest: Manifest | None = None, served: bool = False
) -> RunContext:
    """The context for one run of `config`; needs `autoresearch prepare` to have run
    (`manifest`, where the caller has loaded and checked it already). `served`: the runner
    serves the training rows, so the context names no training file."""
    from autoresearch.harness.prepare import load_manifest

    manifest = manifest or load_manifest(config)
    return RunContext(
        device=resolve_device(config.run.device),
        seed=config.run.seed,
        budget_seconds=config.run.budget_seconds,
        budget_tokens=config.run.budget_tokens,
        sequence_len=config.data.sequence_len,
        vocab_size=manifest.vocab_size,
        bos_id=manifest.bos_id,
        eval_batch_size=config.eval.batch_size,
        tokenizer_path=str(manifest.tokenizer_path),
        train_tokens_path="" if served else str(manifest.train_path),
        handover_dir=str(handover_dir),
    )


@functools.cache
def context() -> RunContext:
    """The current run's context (cached for the life of the process)."""
    path = os.environ.get(CONTEXT_ENV)
    if path:
        return RunContext(**json.loads(Path(path).read_text()))
    # Standalone: a hand-run train.py in a research repo trains for real but is not scored.
    handover_dir = Path(tempfile.mkdtemp(prefix="autoresearch-handover-"))
    return build_context(load_config(Path.cwd()), handover_dir)
