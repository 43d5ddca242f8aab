"""Data sources: where the training and validation text comes from.

Every source ends as parquet shards with one string column `text` in a
destination folder: `train_00000.parquet`, `train_00001.parquet`, ... and
`val_00000.parquet`, ... `fetch` is idempotent and resumable: shards appear
atomically (temporary name, then `os.replace`), complete ones are kept and
interrupted work is redone.

Sources that convert local text (stdlib, folder, and tinystories after its
download) record a fingerprint of their input in `.source.json`; when the
input changes, the old shards are deleted and rebuilt, so a cache never mixes
two versions of a corpus.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from autoresearch.atomic import atomic_write, write_text
from autoresearch.config import DataSettings
from autoresearch.errors import UserError, did_you_mean
from autoresearch.harness.download import download, human_bytes

SHARD_TEXT_BYTES = 8 * 2**20  # text per shard (counted in characters, ~bytes for most text)
ROW_GROUP_ROWS = 1024  # documents per parquet row group: small reads for the dataloader
COMPRESSION = "zstd"
VAL_MODULUS = 20  # a document goes to validation when hash(key) % 20 == 0 (about 5%)
STAMP_FILE = ".source.json"
FORMAT_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt
TRAIN, VAL = "train", "val"

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542  # the last shard, pinned as validation by the original project
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES_FILES = {TRAIN: "TinyStoriesV2-GPT4-train.txt", VAL: "TinyStoriesV2-GPT4-valid.txt"}
TINYSTORIES_SEPARATOR = "<|endoftext|>"
STDLIB_MIN_BYTES = 2**20  # less than this means a Python install without its .py sources
# The stdlib source's validation text: whole packages that no training run imports (IDLE, the
# editor, and pydoc's help texts), so the runner can hide them from every candidate without
# breaking one; a public rule over visible files (a hash of the path) let candidates rebuild
# the exact validation set. Debian and Ubuntu leave idlelib out; pydoc_data is everywhere.
# About 6% of a full library.
STDLIB_VAL_PACKAGES = ("idlelib", "pydoc_data")
# Where other Python installations keep their libraries, besides next to ours: their copies
# of the validation packages differ from ours in a few files, so they are hidden too (best
# effort; docs/threat-model.md says what is left).
OTHER_LIBRARIES = ("/usr/lib/python*", "/usr/local/lib/python*")
FOLDER_SUFFIXES = (".txt", ".jsonl", ".parquet")
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

Log = Callable[[str], None]


class DataSource(Protocol):
    """Turns into `train_*.parquet` / `val_*.parquet` shards with a `text` column."""

    name: str
    description: str  # one line, shown in help and error messages

    def fetch(self, settings: DataSettings, dest: Path, log: Log) -> None:
        """Create or complete the shards in `dest`; safe to call again."""
        ...


# The one registry of data sources, by name. It holds the built-ins (`BUILTIN_SOURCES`, at the
# end of this module) from the start; the sources of plugins are handed to it by the processes
# that load plugins (`autoresearch.plugins.load_data_sources`). The harness never loads a
# plugin itself: it resolves the cache paths of a run where no third-party code may run.
SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource) -> None:
    """Make `source` selectable as `data.source = "<source.name>"` (a later one replaces)."""
    SOURCES[source.name] = source


def get_source(name: str) -> DataSource:
    """The registered source called `name`, or a `UserError` listing the valid ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise UserError(
            f"unknown data source {name!r}{did_you_mean(name, SOURCES)}; set data.source to one"
            f" of: {', '.join(SOURCES)}"
        ) from None


def source_key(settings: DataSettings) -> str:
    """The cache sub-folder for `settings`: the source name, or `folder-<hash of the path>`."""
    source = get_source(settings.source)
    if source.name == "folder":
        resolved = str(_folder_path(settings).resolve())
        return f"folder-{hashlib.sha256(resolved.encode('utf-8')).hexdigest()[:8]}"
    return source.name


def hash_split(key: str) -> str:
    """The pinned split of a document: 'val' for about 1 key in 20, else 'train'."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return VAL if int.from_bytes(digest, "big") % VAL_MODULUS == 0 else TRAIN


def shard_paths(dest: Path, split: str) -> list[Path]:
    """The complete shards of one split in `dest`, in order."""
    return sorted(dest.glob(f"{split}_[0-9][0-9][0-9][0-9][0-9].parquet"))


# ---------------------------------------------------------------------------
# Shard writing shared by the converting sources
# ---------------------------------------------------------------------------


class _ShardWriter:
    """Collects documents of one split and writes them as numbered shards."""

    def __init__(self, dest: Path, split: str, log: Log) -> None:
        self.dest, self.split, self.log = dest, split, log
        self.docs: list[str] = []
        self.chars = 0
        self.shards = 0
        self.total_docs = 0

    def add(self, text: str) -> None:
        self.docs.append(text)
        self.chars += len(text)
        self.total_docs += 1
        if self.chars >= SHARD_TEXT_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.docs:
            return
        path = self.dest / f"{self.split}_{self.shards:05d}.parquet"
        # The input is unchanged (the fingerprint matched), so an existing shard
        # from an interrupted run has exactly this content.
        if not path.exists():
            write_text_parquet(path, self.docs)
            self.log(f"wrote {path.name} ({len(self.docs)} documents, {human_bytes(self.chars)})")
        self.shards += 1
        self.docs, self.chars = [], 0


def write_text_parquet(path: Path, texts: list[str]) -> None:
    """Write `texts` as a one-column (`text`) parquet file, atomically."""
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    with atomic_write(path) as f:
        pq.write_table(table, f, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)


def _convert(
    dest: Path,
    name: str,
    fingerprint: str,
    documents: Callable[[], Iterable[tuple[str, str]]],
    log: Log,
    empty_hint: str,
) -> None:
    """Write the `(split, text)` pairs of `documents()` as shards, unless already done.

    `empty_hint` completes the error message when a split gets no documents.
    """
    dest.mkdir(parents=True, exist_ok=True)
    stamp = dest / STAMP_FILE
    previous = _read_stamp(stamp)
    if previous.get("fingerprint") == fingerprint and previous.get("complete"):
        log(f"{name}: shards in {dest} are up to date")
        return
    if previous.get("fingerprint") != fingerprint:
        for path in [*dest.glob("train_*.parquet*"), *dest.glob("val_*.parquet*")]:
            path.unlink()
    _write_stamp(stamp, {"source": name, "fingerprint": fingerprint, "complete": False})
    writers = {split: _ShardWriter(dest, split, log) for split in (TRAIN, VAL)}
    for split, text in documents():
        if text.strip():
            writers[split].add(text)
    for writer in writers.values():
        writer.flush()
    for split, writer in writers.items():
        if writer.total_docs == 0:
            raise UserError(f"data source {name!r} gave no {split} documents; {empty_hint}")
    _write_stamp(stamp, {"source": name, "fingerprint": fingerprint, "complete": True})
    log(
        f"{name}: {writers[TRAIN].total_docs} train documents in {writers[TRAIN].shards} shards,"
        f" {writers[VAL].total_docs} val documents in {writers[VAL].shards} shards"
    )


def _read_stamp(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamp(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def _fingerprint(*parts: object) -> str:
    """A short hash of the conversion settings and the input files' identities."""
    text = json.dumps([FORMAT_VERSION, SHARD_TEXT_BYTES, VAL_MODULUS, *parts], default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_ids(root: Path, files: list[Path]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of each file: cheap change detection."""
    ids = []
    for path in files:
        stat = path.stat()
        ids.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return ids


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `root` with one of `suffixes`, sorted by relative path.

    os.walk does not follow directory symlinks, so a link loop cannot hang us.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found.extend(Path(folder, f) for f in files if f.endswith(suffixes))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# ---------------------------------------------------------------------------
# stdlib: the embedded offline default
# ---------------------------------------------------------------------------


class StdlibSource:
    """The running Python's standard-library sources: always there, no network.

    Validation is the files of `STDLIB_VAL_PACKAGES`, everything else is training; the
    runner hides those packages from candidates (`stdlib_val_folders`).
    """

    name = "stdlib"
    description = "Python standard-library sources (offline, ~30 MB of code; the default)"

    def fetch(self, settings: DataSettings, dest: Path, log: Log) -> None:
        root = stdlib_root()
        files = _walk(root, (".py",)) if root.is_dir() else []
        if sum(path.stat().st_size for path in files) < STDLIB_MIN_BYTES:
            raise UserError(
                f"the Python standard library at {root} has almost no .py sources (this"
                " install ships only bytecode); install the full standard library or set"
                " data.source to 'tinystories', 'climbmix' or 'folder'"
            )
        version = f"{sys.implementation.name}-{sys.version}"
        fingerprint = _fingerprint("stdlib", version, STDLIB_VAL_PACKAGES, _file_ids(root, files))
        _convert(
            dest, self.name, fingerprint, lambda: _stdlib_documents(root, files), log,
            f"{root} has none of {', '.join(STDLIB_VAL_PACKAGES)}, which hold the validation"
            " text; choose another data.source",
        )


def stdlib_root() -> Path:
    """The running Python's standard library (a virtual environment's base library)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_split(key: str) -> str:
    """The split of the library file at `key`, its path relative to the library."""
    return VAL if key.split("/", 1)[0] in STDLIB_VAL_PACKAGES else TRAIN


def stdlib_val_folders() -> list[Path]:
    """The validation packages of this Python's library and of the other installations
    found beside it (other versions of a version manager, the system's): what candidates
    must not read."""
    root = stdlib_root()
    patterns = [
        root.parent / "python*",  # other versions under the same prefix: /usr/lib/python3.12
        # pyenv's versions/*, uv's python/*, conda's envs/*, a CI tool cache's <version>/<arch>
        Path(sys.base_prefix).parent.parent / "*" / "*" / "lib" / "python*",
        *map(Path, OTHER_LIBRARIES),
    ]
    libraries = {root, *(Path(found) for p in patterns for found in glob.glob(str(p)))}
    folders = (library / name for library in libraries for name in STDLIB_VAL_PACKAGES)
    return sorted(folder for folder in folders if folder.is_dir())


def _stdlib_documents(root: Path, files: list[Path]) -> Iterator[tuple[str, str]]:
    for path in files:
        key = path.relative_to(root).as_posix()
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few test files are deliberately not UTF-8
        yield stdlib_split(key), text


# ---------------------------------------------------------------------------
# climbmix: the original project's data
# ---------------------------------------------------------------------------


class ClimbMixSource:
    """Parquet shards of karpathy/climbmix-400b-shuffle, already with a `text` column."""

    name = "climbmix"
    description = "the original autoresearch web text (~100 MB per shard, needs network)"

    def fetch(self, settings: DataSettings, dest: Path, log: Log) -> None:
        count = settings.train_shards
        if not 0 < count < CLIMBMIX_VAL_SHARD:
            raise UserError(
                f"data.train_shards = {count} is out of range for climbmix; use 1 to"
                f" {CLIMBMIX_VAL_SHARD - 1}"
            )
        base = (settings.url or CLIMBMIX_URL).rstrip("/")
        jobs = [(f"{base}/shard_{i:05d}.parquet", dest / f"train_{i:05d}.parquet")
                for i in range(count)]
        jobs.append((f"{base}/shard_{CLIMBMIX_VAL_SHARD:05d}.parquet", dest / "val_00000.parquet"))
        dest.mkdir(parents=True, exist_ok=True)
        download(jobs, validate=check_text_parquet, log=log)


def check_text_parquet(path: Path) -> None:
    """Raise ValueError unless `path` is a readable parquet file with a string `text` column."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"not a readable parquet file: {e}") from None
    if "text" not in schema.names:
        raise ValueError(f"no 'text' column (columns: {', '.join(schema.names)})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"the 'text' column holds {kind}, not strings")


# ---------------------------------------------------------------------------
# tinystories: small, clean English; learns fast on small models
# ---------------------------------------------------------------------------


class TinyStoriesSource:
    """TinyStories V2 (GPT-4 generated short stories), converted to shards."""

    name = "tinystories"
    description = "TinyStories V2 short stories (~2.2 GB download, needs network)"

    def fetch(self, settings: DataSettings, dest: Path, log: Log) -> None:
        base = (settings.url or TINYSTORIES_URL).rstrip("/")
        texts = {split: dest / file for split, file in TINYSTORIES_FILES.items()}
        dest.mkdir(parents=True, exist_ok=True)
        download([(f"{base}/{path.name}", path) for path in texts.values()], log=log)
        fingerprint = _fingerprint("tinystories", _file_ids(dest, list(texts.values())))

        def documents() -> Iterator[tuple[str, str]]:
            for split, path in texts.items():
                for text in split_stream(path, TINYSTORIES_SEPARATOR):
                    yield split, text.strip()

        _convert(
            dest, self.name, fingerprint, documents, log,
            f"the downloaded files in {dest} look empty; delete them and re-run",
        )


def split_stream(path: Path, separator: str) -> Iterator[str]:
    """The pieces of a (possibly huge) text file between `separator`s, streamed."""
    pieces: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if separator not in line:
                pieces.append(line)
                continue
            head, *middle, tail = line.split(separator)
            pieces.append(head)
            yield "".join(pieces)
            yield from middle
            pieces = [tail]
    yield "".join(pieces)


# ---------------------------------------------------------------------------
# folder: the user's own text
# ---------------------------------------------------------------------------


class FolderSource:
    """A local folder of .txt, .jsonl and .parquet files (searched recursively)."""

    name = "folder"
    description = "your own .txt/.jsonl/.parquet files under data.path (offline)"

    def fetch(self, settings: DataSettings, dest: Path, log: Log) -> None:
        root = _folder_path(settings)
        files = _walk(root, FOLDER_SUFFIXES)
        if not files:
            raise UserError(
                f"data.path {root} holds no .txt, .jsonl or .parquet files; add some (searched"
                " recursively) or point data.path elsewhere"
            )
        for path in files:
            if path.suffix == ".parquet":
                try:
                    check_text_parquet(path)
                except ValueError as e:
                    raise UserError(f"{path}: {e}; give it a string 'text' column") from None
        fingerprint = _fingerprint("folder", str(root.resolve()), _file_ids(root, files))
        _convert(
            dest, self.name, fingerprint, lambda: _folder_documents(root, files), log,
            f"add documents under {root} (each .txt file, .jsonl line or parquet row is one,"
            f" and about 1 in {VAL_MODULUS} goes to validation)",
        )


def _folder_path(settings: DataSettings) -> Path:
    """The checked `data.path` of a folder source."""
    if not settings.path:
        raise UserError("data.source = 'folder' needs data.path = '/path/to/your/text/folder'")
    root = Path(settings.path).expanduser()
    if not root.is_dir():
        raise UserError(f"data.path {root} is not a folder; set data.path to an existing folder")
    return root


def _folder_documents(root: Path, files: list[Path]) -> Iterator[tuple[str, str]]:
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".txt":
            text = path.read_bytes().decode("utf-8", errors="replace")
            yield hash_split(rel), text
        elif path.suffix == ".jsonl":
            for number, text in _jsonl_texts(path):
                yield hash_split(f"{rel}#{number}"), text
        else:
            row = 0
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                for text in batch.column(0).to_pylist():
                    if text is not None:
                        yield hash_split(f"{rel}#{row}"), text
                    row += 1


def _jsonl_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each non-blank line of a .jsonl file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise UserError(
                    f"{path}:{number} is not valid JSON; each line must be an object like"
                    ' {"text": "..."}'
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(
                    f"{path}:{number} has no string 'text' field; each line must be an object"
                    ' like {"text": "..."}'
                )
            yield number, record["text"]


# ---------------------------------------------------------------------------
# The built-ins, registered from the start
# ---------------------------------------------------------------------------

BUILTIN_SOURCES: tuple[DataSource, ...] = (
    StdlibSource(),
    ClimbMixSource(),
    TinyStoriesSource(),
    FolderSource(),
)
SOURCES.update((source.name, source) for source in BUILTIN_SOURCES)
