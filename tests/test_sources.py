"""Data sources end to end: real files, real parquet, a real loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.config import DataSettings
from autoresearch.errors import UserError
from autoresearch.harness import sources
from autoresearch.harness.sources import (
    STAMP_FILE,
    get_source,
    hash_split,
    register_source,
    shard_paths,
    source_key,
    split_stream,
    stdlib_split,
    stdlib_val_folders,
)


def texts(paths: list[Path]) -> list[str]:
    """Every document in `paths`, in order, checking the one-column schema on the way."""
    out: list[str] = []
    for path in paths:
        table = pq.read_table(path)
        assert table.schema.names == ["text"]
        assert pa.types.is_string(table.schema.field("text").type)
        out.extend(table.column("text").to_pylist())
    return out


def write_parquet(path: Path, columns: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def expected_split(key: str) -> str:
    """The documented rule, written out independently of the module under test."""
    return "val" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 20 == 0 else "train"


# ---------------------------------------------------------------------------
# A static loopback server for the download sources
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


class StaticServer:
    """Serves the files of `root` on 127.0.0.1 and records the requested paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )


@pytest.fixture
def static(tmp_path: Path) -> StaticServer:
    root = tmp_path / "www"
    (root / "mirror").mkdir(parents=True)
    srv = StaticServer(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# ---------------------------------------------------------------------------
# climbmix
# ---------------------------------------------------------------------------


def test_climbmix_downloads_train_and_pinned_val(static: StaticServer, tmp_path: Path) -> None:
    mirror = static.root / "mirror"
    shards = {i: [f"doc {j} of shard {i}" for j in range(5)] for i in (0, 1, 2, 6542)}
    for i, docs in shards.items():
        write_parquet(mirror / f"shard_{i:05d}.parquet", {"text": docs})
    settings = DataSettings(source="climbmix", url=static.url + "/", train_shards=2)
    dest = tmp_path / "cache" / source_key(settings)
    lines: list[str] = []
    get_source("climbmix").fetch(settings, dest, lines.append)

    assert dest.name == "climbmix"
    assert texts(shard_paths(dest, "train")) == shards[0] + shards[1]  # shard 2 not asked for
    assert texts(shard_paths(dest, "val")) == shards[6542]
    assert sorted(static.requests) == [
        "/mirror/shard_00000.parquet", "/mirror/shard_00001.parquet", "/mirror/shard_06542.parquet",
    ]
    assert sum("downloaded" in line for line in lines) == 3

    static.requests.clear()
    get_source("climbmix").fetch(settings, dest, lines.append)  # resume: nothing left to do
    assert static.requests == []


def test_climbmix_rejects_a_mirror_without_text(static: StaticServer, tmp_path: Path) -> None:
    mirror = static.root / "mirror"
    write_parquet(mirror / "shard_00000.parquet", {"content": ["no text column here"]})
    write_parquet(mirror / "shard_06542.parquet", {"text": ["fine"]})
    settings = DataSettings(source="climbmix", url=static.url, train_shards=1)
    with pytest.raises(UserError, match="'text' column"):
        get_source("climbmix").fetch(settings, tmp_path / "d", lambda _: None)
    assert not (tmp_path / "d" / "train_00000.parquet").exists()


def test_climbmix_missing_shard_is_a_user_error(static: StaticServer, tmp_path: Path) -> None:
    settings = DataSettings(source="climbmix", url=static.url, train_shards=1)
    with pytest.raises(UserError, match="404"):
        get_source("climbmix").fetch(settings, tmp_path / "d", lambda _: None)


def test_climbmix_shard_count_is_checked(tmp_path: Path) -> None:
    settings = DataSettings(source="climbmix", train_shards=7000)
    with pytest.raises(UserError, match="train_shards"):
        get_source("climbmix").fetch(settings, tmp_path, lambda _: None)


# ---------------------------------------------------------------------------
# tinystories
# ---------------------------------------------------------------------------


def test_tinystories_downloads_and_converts(static: StaticServer, tmp_path: Path) -> None:
    mirror = static.root / "mirror"
    train = [f"Once upon a time, story {i} happened.\nThe end." for i in range(30)]
    val = ["Lily had a red ball.", "Tom saw a dog.\n\nIt was big."]
    sep = "<|endoftext|>"
    # Separators on their own lines, inline, doubled (an empty story) and at both ends.
    train_text = sep + "\n" + f"\n{sep}\n".join(train[:20]) + f"\n{sep}\n{sep}"
    train_text += sep.join(train[20:]) + sep + "\n"
    (mirror / "TinyStoriesV2-GPT4-train.txt").write_text(train_text, encoding="utf-8")
    (mirror / "TinyStoriesV2-GPT4-valid.txt").write_text(f"\n{sep}\n".join(val), encoding="utf-8")

    settings = DataSettings(source="tinystories", url=static.url)
    dest = tmp_path / "cache" / source_key(settings)
    get_source("tinystories").fetch(settings, dest, lambda _: None)
    assert dest.name == "tinystories"
    assert texts(shard_paths(dest, "train")) == train
    assert texts(shard_paths(dest, "val")) == val

    static.requests.clear()
    lines: list[str] = []
    get_source("tinystories").fetch(settings, dest, lines.append)
    assert static.requests == []
    assert any("up to date" in line for line in lines)


def test_split_stream_handles_separators_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("a\nb|c|\nd||e\n", encoding="utf-8")
    assert list(split_stream(path, "|")) == ["a\nb", "c", "\nd", "", "e\n"]


# ---------------------------------------------------------------------------
# stdlib
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_dest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("stdlib")
    get_source("stdlib").fetch(DataSettings(), dest, lambda _: None)
    return dest


def stdlib_reference() -> dict[str, Counter[str]]:
    """The stdlib documents per split, recomputed from the documented rule: validation is
    every file under idlelib/ and pydoc_data/, training everything else."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages")]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = Path(folder, name)
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
            top = path.relative_to(root).parts[0]
            if text.strip():
                out["val" if top in ("idlelib", "pydoc_data") else "train"][text] += 1
    return out


def test_stdlib_is_big_and_split_by_package(stdlib_dest: Path) -> None:
    train = texts(shard_paths(stdlib_dest, "train"))
    val = texts(shard_paths(stdlib_dest, "val"))
    assert sum(len(t.encode()) for t in train + val) >= 10 * 2**20
    assert len(shard_paths(stdlib_dest, "train")) >= 2  # ~8 MB shards, not one blob
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.09
    # The tiny baseline scores 262,144 byte tokens: validation holds them several times over.
    assert sum(len(t.encode()) for t in val) > 2 * 262_144
    # Exactly the documented partition: nothing lost, nothing in both splits.
    reference = stdlib_reference()
    assert Counter(train) == reference["train"]
    assert Counter(val) == reference["val"]


def test_stdlib_validation_lies_in_the_folders_hidden_from_candidates(stdlib_dest: Path) -> None:
    """What the runner hides (`stdlib_val_folders`) covers every validation document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    ours = [folder for folder in stdlib_val_folders() if folder.parent == root]
    assert ours == [root / name for name in ("idlelib", "pydoc_data") if (root / name).is_dir()]
    inside: Counter[str] = Counter()
    for path in (path for folder in ours for path in folder.rglob("*.py")):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip() and "__pycache__" not in path.parts:
            inside[text] += 1
    assert ours and Counter(texts(shard_paths(stdlib_dest, "val"))) == inside


def test_stdlib_val_folders_include_other_installations(tmp_path: Path, monkeypatch) -> None:
    """The copies of a version manager's other Pythons are hidden too: they differ from
    ours in a few files."""
    versions = tmp_path / "pyenv" / "versions"
    ours = versions / "3.11.7" / "lib" / "python3.11"
    other = versions / "3.12.1" / "lib" / "python3.12"
    for library in (ours, other):
        (library / "idlelib").mkdir(parents=True)
        (library / "json").mkdir()
    (ours / "pydoc_data").mkdir()
    monkeypatch.setattr(sources, "stdlib_root", lambda: ours)
    monkeypatch.setattr(sys, "base_prefix", str(versions / "3.11.7"))
    found = [path for path in stdlib_val_folders() if tmp_path in path.parents]
    assert found == [ours / "idlelib", ours / "pydoc_data", other / "idlelib"]


def test_stdlib_split_is_by_top_package() -> None:
    assert stdlib_split("idlelib/idle_test/test_calltip.py") == "val"
    assert stdlib_split("pydoc_data/topics.py") == "val"
    assert stdlib_split("json/__init__.py") == "train"
    assert stdlib_split("test/test_idle.py") == "train"
    assert stdlib_split("idlelib_extra.py") == "train"


def test_stdlib_rebuilds_when_the_validation_packages_change(
    stdlib_dest: Path, tmp_path: Path, monkeypatch
) -> None:
    """A cache made under another rule (as every cache before this rule) is rebuilt."""
    dest = tmp_path / "stdlib"
    shutil.copytree(stdlib_dest, dest)
    monkeypatch.setattr(sources, "STDLIB_VAL_PACKAGES", ("pydoc_data",))
    get_source("stdlib").fetch(DataSettings(), dest, lambda _: None)
    val = texts(shard_paths(dest, "val"))
    assert len(val) == 1 and "topics" in val[0]


def test_stdlib_is_deterministic(stdlib_dest: Path, tmp_path: Path) -> None:
    get_source("stdlib").fetch(DataSettings(), tmp_path, lambda _: None)
    assert texts(shard_paths(tmp_path, "val")) == texts(shard_paths(stdlib_dest, "val"))
    pairs = zip(shard_paths(tmp_path, "train"), shard_paths(stdlib_dest, "train"), strict=True)
    for first, second in pairs:
        assert pq.read_table(first).equals(pq.read_table(second))


# ---------------------------------------------------------------------------
# folder
# ---------------------------------------------------------------------------


def make_corpus(root: Path) -> dict[str, str]:
    """A mixed corpus; returns key -> text for every non-empty document."""
    docs: dict[str, str] = {}
    for i in range(40):
        rel = f"notes/n{i:02d}.txt"
        text = f"note number {i}\nwith two lines ü"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        docs[rel] = text
    (root / "notes" / "empty.txt").write_text("  \n", encoding="utf-8")  # skipped: no text
    lines = []
    for i in range(60):
        lines.append(json.dumps({"text": f"json doc {i}", "id": i}))
        docs[f"data/docs.jsonl#{len(lines)}"] = f"json doc {i}"
        if i % 10 == 0:
            lines.append("")  # blank lines are allowed and still counted
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"parquet row {i}" for i in range(60)]
    write_parquet(root / "data" / "deep" / "rows.parquet", {"text": rows, "n": list(range(60))})
    docs.update({f"data/deep/rows.parquet#{i}": text for i, text in enumerate(rows)})
    (root / "README.md").write_text("not a corpus file", encoding="utf-8")
    return docs


def folder_settings(root: Path) -> DataSettings:
    return DataSettings(source="folder", path=str(root))


def test_folder_reads_txt_jsonl_parquet(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    docs = make_corpus(root)
    dest = tmp_path / "cache"
    get_source("folder").fetch(folder_settings(root), dest, lambda _: None)
    want = {"train": [], "val": []}
    for key in sorted(docs, key=lambda k: k.split("#")[0]):  # files sorted, rows in order
        want[expected_split(key)].append(docs[key])
    assert want["val"], "the fixture must put some documents in validation"
    assert texts(shard_paths(dest, "train")) == want["train"]
    assert texts(shard_paths(dest, "val")) == want["val"]


def test_folder_rebuilds_when_input_changes(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    dest = tmp_path / "cache"
    get_source("folder").fetch(folder_settings(root), dest, lambda _: None)
    before = texts(shard_paths(dest, "train"))
    (root / "notes" / "n00.txt").write_text("changed text", encoding="utf-8")
    os.utime(root / "notes" / "n00.txt", ns=(1, 1))  # a sure change even on coarse clocks
    get_source("folder").fetch(folder_settings(root), dest, lambda _: None)
    after = texts(shard_paths(dest, "train")) + texts(shard_paths(dest, "val"))
    assert "changed text" in after and "changed text" not in before


def test_folder_resumes_interrupted_conversion(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    dest = tmp_path / "cache"
    get_source("folder").fetch(folder_settings(root), dest, lambda _: None)
    val = pq.read_table(dest / "val_00000.parquet")
    # Simulate a kill after the train shards were written and before val was.
    stamp = json.loads((dest / STAMP_FILE).read_text())
    (dest / STAMP_FILE).write_text(json.dumps({**stamp, "complete": False}))
    (dest / "val_00000.parquet").unlink()
    mtime = (dest / "train_00000.parquet").stat().st_mtime_ns
    get_source("folder").fetch(folder_settings(root), dest, lambda _: None)
    assert pq.read_table(dest / "val_00000.parquet").equals(val)
    assert (dest / "train_00000.parquet").stat().st_mtime_ns == mtime  # complete shard kept
    assert json.loads((dest / STAMP_FILE).read_text())["complete"] is True


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "needs data.path"),
        (lambda root: root / "nowhere", "is not a folder"),
        (lambda root: root, "no .txt, .jsonl or .parquet"),
    ],
)
def test_folder_path_errors(tmp_path: Path, setup, message: str) -> None:
    (tmp_path / "only.md").write_text("ignored", encoding="utf-8")
    where = setup(tmp_path)
    settings = DataSettings(source="folder", path="" if where is None else str(where))
    with pytest.raises(UserError, match=message):
        get_source("folder").fetch(settings, tmp_path / "cache", lambda _: None)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"body": 1}\n', r"bad\.jsonl:2 has no string 'text'"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": 5}\n', r"bad\.jsonl:2 has no string 'text'"),
        ("bad.jsonl", '{"text": "ok"}\nnot json\n', r"bad\.jsonl:2 is not valid JSON"),
        ("bad.parquet", None, r"bad\.parquet: no 'text' column"),
        ("bad.parquet", b"PAR1 garbage", r"bad\.parquet: not a readable parquet"),
    ],
)
def test_folder_bad_files_are_named(tmp_path: Path, name: str, content, message: str) -> None:
    root = tmp_path / "corpus"
    make_corpus(root)
    path = root / name
    if content is None:
        write_parquet(path, {"body": ["x"]})
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        get_source("folder").fetch(folder_settings(root), tmp_path / "cache", lambda _: None)


def test_folder_without_validation_documents(tmp_path: Path) -> None:
    name = next(f"t{i}.txt" for i in range(100) if hash_split(f"t{i}.txt") == "train")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / name).write_text("one lonely document", encoding="utf-8")
    with pytest.raises(UserError, match="no val documents"):
        get_source("folder").fetch(folder_settings(tmp_path / "c"), tmp_path / "d", lambda _: None)


# ---------------------------------------------------------------------------
# registry and cache keys
# ---------------------------------------------------------------------------


def test_builtin_sources_are_registered() -> None:
    assert {"stdlib", "climbmix", "tinystories", "folder"} <= set(sources.SOURCES)
    for source in sources.SOURCES.values():
        assert source.description and "\n" not in source.description


def test_the_harness_resolves_a_run_s_data_without_loading_plugins(tmp_path: Path) -> None:
    """The cache folders and the manifest of a built-in source are found where no plugin may
    run (a fresh process, as the runner's and a hand-run train.py's are)."""
    code = """
import sys
from autoresearch.config import Config
from autoresearch.errors import UserError
from autoresearch.harness.cache import dataset_dir, prepared_dir
from autoresearch.harness.prepare import load_manifest

config = Config()
print(dataset_dir(config.data).name, prepared_dir(config).name)
try:
    load_manifest(config)
except UserError as e:
    print(e)
print(sorted(m for m in sys.modules if m.startswith("autoresearch.") and "plugins" in m))
"""
    env = os.environ | {"AUTORESEARCH_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    folders, missing, plugins = result.stdout.splitlines()
    assert folders == "stdlib stdlib-bpe8192"
    assert missing.startswith("no prepared data for source 'stdlib'")
    assert plugins == "[]"


def test_unknown_source_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as info:
        get_source("tinystory")
    message = str(info.value)
    assert "did you mean 'tinystories'" in message
    assert all(name in message for name in ("stdlib", "climbmix", "folder"))


def test_source_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert source_key(DataSettings()) == "stdlib"
    assert source_key(DataSettings(source="climbmix")) == "climbmix"
    assert source_key(DataSettings(source="tinystories")) == "tinystories"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    key = source_key(folder_settings(tmp_path / "a"))
    assert re.fullmatch(r"folder-[0-9a-f]{8}", key)
    monkeypatch.chdir(tmp_path / "b")
    assert source_key(DataSettings(source="folder", path="../a")) == key  # same folder
    assert source_key(folder_settings(tmp_path / "b")) != key
    with pytest.raises(UserError):
        source_key(DataSettings(source="nope"))


def test_register_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))

    class Fixed:
        name = "fixed"
        description = "two documents, for tests"

        def fetch(self, settings: DataSettings, dest: Path, log) -> None:
            sources.write_text_parquet(dest / "train_00000.parquet", ["a"])

    register_source(Fixed())
    assert get_source("fixed").name == "fixed"
    assert source_key(DataSettings(source="fixed")) == "fixed"
    get_source("fixed").fetch(DataSettings(), tmp_path, lambda _: None)
    assert texts(shard_paths(tmp_path, "train")) == ["a"]
