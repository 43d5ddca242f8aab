"""val_bpb under two byte counts, on the same logits: ours and the original project's.

    python benchmarks/bpb_bytes.py [--tokens 6144]

Our evaluator counts a token's raw UTF-8 bytes. The original autoresearch counts the
bytes of the token's *decoded text*, where a token that is only part of a multi-byte
character decodes to U+FFFD, 3 bytes whatever its length. Both divide the same nats,
so the two val_bpb differ by the ratio of the byte totals of the validation targets.

Trains the tiny baseline (byte tokenizer) and the gpt baseline with its size
constants shrunk (8192-token BPE) on the offline stdlib corpus, each for a token
budget, then scores each hand-over twice with the real evaluator: once with the raw
byte table, once with the decoded one.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from common import autoresearch
from tabulate import tabulate

# The gpt baseline's CPU size (as in tests/test_baselines_train.py) at the tiny's data size.
GPT_ON_A_CPU = {
    "DEPTH": 2, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "DEVICE_BATCH_SIZE": 4,
    "TOTAL_BATCH_SIZE": 1024, "VE_GATE_CHANNELS": 8,
}  # fmt: skip
GPT_TOML = {"source": '"stdlib"', "sequence_len": "256", "tokens": "262144", "batch_size": "16"}
REPLACEMENT_BYTES = len("\ufffd".encode())  # 3


def decoded_token_bytes(tokenizer) -> list[int]:
    """The original's byte table: UTF-8 length of each token's decoded text, 0 for BOS."""
    return [
        0 if i == tokenizer.bos_id else len(tokenizer.decode([i]).encode())
        for i in range(tokenizer.vocab_size)
    ]


def research_repo(baseline: str) -> Path:
    repo = Path(tempfile.mkdtemp(prefix=f"bench-bytes-{baseline}-")) / "research"
    autoresearch("init", str(repo), "--baseline", baseline, cwd=repo.parent, quiet=True)
    if baseline == "gpt":
        toml = repo / "autoresearch.toml"
        text = toml.read_text()
        for key, value in GPT_TOML.items():
            text = re.sub(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
        toml.write_text(text)
    autoresearch("prepare", cwd=repo, quiet=True)
    return repo


def measure(baseline: str, tokens: int) -> list:
    import numpy as np
    import torch

    from autoresearch.config import load_config
    from autoresearch.constants import rewrite_constants
    from autoresearch.harness.evaluate import EvalData, EvalSpec, evaluate, load_data
    from autoresearch.harness.prepare import load_manifest
    from autoresearch.runner import HANDOVER_DIR, run_experiment

    repo = research_repo(baseline)
    if baseline == "gpt":
        train = repo / "train.py"
        train.write_text(rewrite_constants(train.read_text(), GPT_ON_A_CPU))
    config = load_config(repo, {"run.budget_tokens": tokens, "run.budget_seconds": 600})
    run_dir = repo / ".autoresearch/runs/bytes"
    out = run_experiment(repo / "train.py", config, run_dir)
    assert out.status == "keep", out.reason
    manifest = load_manifest(config)
    spec = EvalSpec(
        model_dir=str(run_dir / HANDOVER_DIR),
        tokenizer_path=str(manifest.tokenizer_path),
        val_tokens_path=str(manifest.val_path),
        sequence_len=config.data.sequence_len,
        eval_tokens=config.eval.tokens,
        batch_size=config.eval.batch_size,
        device="cpu",
    )
    raw = load_data(spec)
    decoded = torch.tensor(decoded_token_bytes(raw.tokenizer), dtype=torch.int64)
    original = EvalData(raw.tokenizer, decoded, raw.rows)
    ours, theirs = evaluate(spec, raw).val_bpb, evaluate(spec, original).val_bpb
    targets = raw.rows[:, 1:].reshape(-1)
    raw_total = int(raw.token_bytes[targets].sum())
    decoded_total = int(decoded[targets].sum())
    partial = int((raw.token_bytes != decoded).sum())
    partial_targets = np.asarray(raw.token_bytes[targets] != decoded[targets]).mean()
    return [
        f"{baseline} ({raw.tokenizer.kind}, vocab {raw.tokenizer.vocab_size})", out.val_bpb,
        ours, theirs, theirs - ours, 100 * (theirs / ours - 1), raw_total, decoded_total,
        partial, 100 * partial_targets,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6144, help="training token budget")
    args = parser.parse_args()
    rows = [measure(b, args.tokens) for b in ("tiny", "gpt")]
    headers = ["model", "run val_bpb", "raw bytes", "decoded bytes", "offset", "offset %",
               "raw total", "decoded total", "partial ids", "partial targets %"]  # fmt: skip
    print(tabulate(rows, headers=headers, floatfmt=".4f", intfmt=","))
    print(f"decoded: a token that is not whole UTF-8 counts {REPLACEMENT_BYTES} bytes (U+FFFD)")


if __name__ == "__main__":
    main()
