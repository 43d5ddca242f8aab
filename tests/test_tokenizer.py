"""Tokenizer: byte and BPE round trips, byte accounting, file format and fingerprint."""

from __future__ import annotations

import base64
import json
import random
import sysconfig
from pathlib import Path

import pytest

from autoresearch.errors import UserError
from autoresearch.harness.tokenizer import BOS, Tokenizer, byte_tokenizer, train_bpe

TRAIN_CHARS = 300_000  # a few hundred KB of Python source: enough for 512 tokens, fast
BYTE_RANKS = [base64.b64encode(bytes([b])).decode() for b in range(256)]
SAMPLE = "Hello, wörld! 12345 naïve café 🎉🐍 <|bos|> déjà vu\n\tdef f(x): return x ** 2\n"


def _stdlib_texts(limit: int = TRAIN_CHARS) -> list[str]:
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= limit:
            break
    assert total >= limit, "not enough stdlib sources found to train on"
    return texts


def _random_unicode(rng: random.Random, n: int) -> str:
    # ASCII, Latin-1, CJK, emoji (astral plane) and a few joiners: every UTF-8 length.
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F), (0x200D, 0x200D)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _stdlib_texts()


@pytest.fixture(scope="module")
def bpe(texts: list[str]) -> Tokenizer:
    return train_bpe(texts[:-1], 512)  # texts[-1] is held out


def test_byte_round_trip_random_unicode():
    tok = byte_tokenizer()
    assert (tok.kind, tok.vocab_size, tok.bos_id) == ("byte", 257, 256)
    rng = random.Random(0)
    for _ in range(50):
        text = _random_unicode(rng, rng.randint(0, 200))
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_special_token_text_is_plain_text():
    tok = byte_tokenizer()
    ids = tok.encode(BOS)
    assert tok.bos_id not in ids
    assert tok.decode(ids) == BOS
    assert tok.decode([tok.bos_id]) == BOS


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_bytes_sum_to_utf8_length(kind: str, bpe: Tokenizer):
    tok = byte_tokenizer() if kind == "byte" else bpe
    lengths = tok.token_bytes()
    assert lengths.dtype.name == "int32" and lengths.shape == (tok.vocab_size,)
    assert lengths[tok.bos_id] == 0
    for text in [SAMPLE, _random_unicode(random.Random(1), 500), ""]:
        assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_bpe_round_trip_and_compression(bpe: Tokenizer, texts: list[str]):
    assert (bpe.kind, bpe.vocab_size, bpe.bos_id) == ("bpe", 512, 511)
    for text in [SAMPLE, texts[-1], _random_unicode(random.Random(2), 300)]:
        assert bpe.decode(bpe.encode(text)) == text
    held_out = texts[-1]
    assert len(bpe.encode(held_out)) < 0.7 * len(held_out.encode("utf-8"))


def test_encode_batch_matches_encode(bpe: Tokenizer, texts: list[str]):
    batch = texts[:5] + [SAMPLE, ""]
    assert bpe.encode_batch(batch, num_threads=2) == [bpe.encode(t) for t in batch]


def test_save_load_identical(bpe: Tokenizer, texts: list[str], tmp_path: Path):
    path = tmp_path / "sub" / "tokenizer.json"
    bpe.save(path)
    data = json.loads(path.read_bytes())  # plain JSON, no pickle
    assert data["format"] == "autoresearch-tokenizer" and data["version"] == 1
    assert data["special"] == {BOS: 511} and len(data["ranks"]) == 511
    loaded = Tokenizer.load(path)
    assert loaded.fingerprint == bpe.fingerprint
    assert (loaded.kind, loaded.vocab_size) == ("bpe", 512)
    for text in [SAMPLE, texts[0]]:
        assert loaded.encode(text) == bpe.encode(text)
    assert list(tmp_path.glob("sub/*.tmp")) == []  # atomic write left nothing behind


def test_fingerprint_tracks_vocab(bpe: Tokenizer, texts: list[str]):
    assert train_bpe(texts[:-1], 512).fingerprint == bpe.fingerprint  # training is deterministic
    assert train_bpe(texts[:-1], 400).fingerprint != bpe.fingerprint
    assert byte_tokenizer().fingerprint not in {bpe.fingerprint, ""}
    assert len(bpe.fingerprint) == 64


def test_byte_tokenizer_save_load(tmp_path: Path):
    tok = byte_tokenizer()
    tok.save(tmp_path / "t.json")
    loaded = Tokenizer.load(tmp_path / "t.json")
    assert loaded.kind == "byte" and loaded.fingerprint == tok.fingerprint
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)


def test_train_bpe_rejects_tiny_vocab(texts: list[str]):
    with pytest.raises(UserError, match="at least 257"):
        train_bpe(texts, 256)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x80\x04not json at all",
        b'{"format": "something-else"}',
        b'{"format": "autoresearch-tokenizer", "version": 1}',
        {"ranks": ["!!notbase64"] + BYTE_RANKS[1:]},
        {"ranks": BYTE_RANKS[:100]},  # not every byte is a token
        {"ranks": BYTE_RANKS + ["AA=="], "special": {BOS: 257}},  # duplicate token
        {"special": {BOS: 7}},
        {"special": {}},
        {"version": 2},
        {"kind": "wordpiece"},
        {"pattern": "(unclosed"},
        {"pattern": 5},
        {"ranks": None},
    ],
)
def test_load_corrupt_is_user_error(tmp_path: Path, content: bytes | dict):
    path = tmp_path / "tokenizer.json"
    if isinstance(content, dict):  # a valid byte tokenizer file with some fields broken
        good = {
            "format": "autoresearch-tokenizer",
            "version": 1,
            "kind": "byte",
            "pattern": "x",
            "ranks": BYTE_RANKS,
            "special": {BOS: 256},
        }
        Tokenizer.load(_write_json(path, good))  # the unbroken file loads
        content = json.dumps({**good, **content}).encode()
    path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt.*autoresearch prepare"):
        Tokenizer.load(path)


def test_load_missing_is_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="missing.*autoresearch prepare"):
        Tokenizer.load(tmp_path / "nope.json")


def test_load_truncated_file(bpe: Tokenizer, tmp_path: Path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError):
        Tokenizer.load(path)
