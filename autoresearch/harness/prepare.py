"""`autoresearch prepare`: shards, tokenizer and token files, once per data source.

Each step is skipped when its output is already complete, so an interrupted
prepare resumes and a second one is instant. The manifest is written last:
its presence is what tells a run that the data is ready.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from autoresearch.atomic import write_text
from autoresearch.config import Config
from autoresearch.errors import UserError
from autoresearch.harness.cache import dataset_dir, prepared_dir
from autoresearch.harness.fingerprint import sha256_files

BPE_TRAINING_CHARS = 2_000_000_000  # the tokenizer sees at most this much training text
ENCODE_BATCH_DOCS = 1024  # documents per tokenizer call: large enough to use every core
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    version: int
    source: str
    data_fingerprint: str
    tokenizer_fingerprint: str
    vocab_size: int
    bos_id: int
    train_tokens: int
    val_tokens: int
    folder: str

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.folder) / "tokenizer.json"

    @property
    def train_path(self) -> Path:
        return Path(self.folder) / "train.npy"

    @property
    def val_path(self) -> Path:
        return Path(self.folder) / "val.npy"


def load_manifest(config: Config) -> Manifest:
    """The prepared data for `config`, or a clear error saying how to make it."""
    from autoresearch.harness.sources import get_source

    get_source(config.data.source)  # an unknown source is the error to report, not missing data
    path = prepared_dir(config) / MANIFEST
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(
            f"no prepared data for source '{config.data.source}' with a {config.tokenizer.kind}"
            " tokenizer: run `autoresearch prepare`"
        ) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} is corrupt ({e}): run `autoresearch prepare` again") from None
    check_prepared(manifest)
    return manifest


def check_prepared(manifest: Manifest) -> None:
    """Raise a `UserError` unless the tokenizer and token files of `manifest` are intact.

    Damaged data must stop a run before it starts: found inside the candidate's
    process, it would be recorded as the candidate's crash.
    """
    from autoresearch.harness.dataloader import load_token_file
    from autoresearch.harness.tokenizer import Tokenizer

    hint = "run `autoresearch prepare`"
    tokenizer = Tokenizer.load(manifest.tokenizer_path)  # missing or corrupt: a UserError
    if tokenizer.fingerprint != manifest.tokenizer_fingerprint:
        raise UserError(f"tokenizer {manifest.tokenizer_path} is not the prepared one; {hint}")
    for path, count in (
        (manifest.train_path, manifest.train_tokens),
        (manifest.val_path, manifest.val_tokens),
    ):
        found = len(load_token_file(path))  # missing or corrupt: a UserError
        if found != count:
            raise UserError(f"token file {path} holds {found:,} tokens, not {count:,}; {hint}")


def prepare(config: Config, log: Callable[[str], None]) -> Manifest:
    from autoresearch.harness.sources import get_source

    source = get_source(config.data.source)
    shards = dataset_dir(config.data)
    shards.mkdir(parents=True, exist_ok=True)
    log(f"data: {source.name} -> {shards}")
    source.fetch(config.data, shards, log)
    train_shards = sorted(shards.glob("train_*.parquet"))
    val_shards = sorted(shards.glob("val_*.parquet"))
    if not train_shards or not val_shards:
        raise UserError(
            f"source '{source.name}' made no train or no val shards in {shards}: delete that"
            " folder and run `autoresearch prepare` again"
        )
    data_fp = sha256_files(train_shards + val_shards)

    out = prepared_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = Manifest(**json.loads((out / MANIFEST).read_text()))
        if manifest.data_fingerprint == data_fp:
            check_prepared(manifest)
            log(f"prepared already: {out}")
            return manifest
    except (FileNotFoundError, ValueError, TypeError):
        pass
    except UserError as e:  # a damaged tokenizer or token file: make them again
        log(f"damaged: {e}")
    (out / MANIFEST).unlink(missing_ok=True)  # the data changed: nothing here is valid any more

    tokenizer = _make_tokenizer(config, train_shards, out / "tokenizer.json", log)
    counts = {}
    for split, split_shards in (("train", train_shards), ("val", val_shards)):
        from autoresearch.harness.dataloader import write_token_file

        log(f"tokenizing {split} ({len(split_shards)} shards)")
        docs = _encoded_docs(tokenizer, split_shards)
        counts[split] = write_token_file(
            docs, out / f"{split}.npy", tokenizer.bos_id, tokenizer.vocab_size
        )
        log(f"{split}: {counts[split]:,} tokens")
    manifest = Manifest(
        version=MANIFEST_VERSION,
        source=source.name,
        data_fingerprint=data_fp,
        tokenizer_fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        bos_id=tokenizer.bos_id,
        train_tokens=counts["train"],
        val_tokens=counts["val"],
        folder=str(out),
    )
    write_text(out / MANIFEST, json.dumps(asdict(manifest), indent=2) + "\n")
    log(f"ready: {out}")
    return manifest


def _make_tokenizer(config: Config, train_shards: list[Path], path: Path, log):
    from autoresearch.harness.tokenizer import Tokenizer, byte_tokenizer, train_bpe

    if config.tokenizer.kind == "byte":
        tokenizer = byte_tokenizer()
    else:
        log(f"training a BPE tokenizer, vocab {config.tokenizer.vocab_size}")
        tokenizer = train_bpe(_texts(train_shards, BPE_TRAINING_CHARS), config.tokenizer.vocab_size)
    tokenizer.save(path)
    return Tokenizer.load(path)


def _texts(shards: list[Path], max_chars: int | None = None) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen = 0
    for shard in shards:
        try:
            for batch in pq.ParquetFile(shard).iter_batches(
                columns=["text"], batch_size=ENCODE_BATCH_DOCS
            ):
                for text in batch.column(0).to_pylist():
                    if max_chars is not None and seen >= max_chars:
                        return
                    seen += len(text)
                    yield text
        except (OSError, pa.ArrowException) as e:  # arrow reports bad compressed data as OSError
            if isinstance(e, OSError) and e.errno is not None:
                raise  # the machine's error (permissions, I/O), not the file's content
            # Deleting the folder works for every source: each rebuilds or fetches what is missing.
            raise UserError(
                f"data shard {shard} is damaged ({' '.join(str(e).split())}): delete the folder"
                f" {shard.parent} and run `autoresearch prepare` again"
            ) from None


def _encoded_docs(tokenizer, shards: list[Path]) -> Iterator[list[int]]:
    batch: list[str] = []
    for text in _texts(shards):
        batch.append(text)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)
