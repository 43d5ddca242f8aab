"""Where prepared data lives: one cache shared by every research repo of a user.

<root>/data/<source-key>/        parquet shards with a `text` column (train_*, val_*)
<root>/prepared/<source-key>-<tokenizer>/
    tokenizer.json               the tokenizer, plain JSON
    train.npy, val.npy           flat token arrays, each document starting with BOS
    manifest.json                fingerprints and counts; written last, so its presence
                                 means the folder is complete
"""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.config import Config, DataSettings

CACHE_ENV = "AUTORESEARCH_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoresearch")


def dataset_dir(data: DataSettings) -> Path:
    from autoresearch.harness.sources import source_key

    return cache_root() / "data" / source_key(data)


def prepared_dir(config: Config) -> Path:
    from autoresearch.harness.sources import source_key

    tok = config.tokenizer
    name = "byte" if tok.kind == "byte" else f"bpe{tok.vocab_size}"
    return cache_root() / "prepared" / f"{source_key(config.data)}-{name}"
