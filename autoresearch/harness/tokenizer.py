"""Tokenizers: raw bytes, or a byte-level BPE trained with rustbpe, both run by tiktoken.

Both kinds are one `Tokenizer` class around a `tiktoken.Encoding`: the byte
tokenizer is simply an encoding whose mergeable ranks are the 256 single bytes.
The last id is always the BOS token that starts every document.

A tokenizer is saved as plain JSON (never pickle, so loading a cache file can
not run code) and identified by the sha256 of that canonical JSON, which goes
into every result so scores from different tokenizers are never compared.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tiktoken

from autoresearch.atomic import atomic_write
from autoresearch.errors import UserError

BOS = "<|bos|>"
# GPT-4 style pre-tokenisation split, with numbers in groups of at most two
# digits (as nanochat does): it spends fewer of a small vocabulary on numbers.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
FORMAT = "autoresearch-tokenizer"
VERSION = 1
KINDS = ("bpe", "byte")
N_BYTES = 256
DEFAULT_THREADS = 8
PREPARE_HINT = "run `autoresearch prepare`"


class Tokenizer:
    """A tiktoken encoding plus BOS, with a stable fingerprint and a JSON file format."""

    def __init__(self, kind: str, pattern: str, ranks: list[bytes]) -> None:
        """Build from the token byte strings in rank order; BOS gets the id after them."""
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.pattern = pattern
        self._ranks = list(ranks)
        self.bos_id = len(self._ranks)
        self.vocab_size = self.bos_id + 1
        self._enc = tiktoken.Encoding(
            name=f"autoresearch-{kind}",
            pat_str=pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(self._ranks)},
            special_tokens={BOS: self.bos_id},
            explicit_n_vocab=self.vocab_size,
        )
        self.fingerprint = hashlib.sha256(_canonical_json(self._to_json())).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS; special-token text is encoded as plain text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = DEFAULT_THREADS) -> list[list[int]]:
        """`encode` for many texts, in parallel threads (tiktoken releases the GIL)."""
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self._enc.decode(list(ids))

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 byte length of each token, 0 for BOS (for bits per byte)."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        lengths[: self.bos_id] = [len(token) for token in self._ranks]
        return lengths

    def save(self, path: Path) -> None:
        """Write the canonical JSON atomically, so a crash never leaves half a file."""
        path = Path(path)
        with atomic_write(path) as f:
            f.write(_canonical_json(self._to_json()))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Read a file written by `save`; a missing or damaged file is a `UserError`."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"tokenizer {path} is missing; {PREPARE_HINT}") from None
        except (OSError, ValueError) as e:
            raise UserError(f"tokenizer {path} is corrupt ({e}); {PREPARE_HINT}") from None
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise UserError(f"tokenizer {path} is corrupt ({e}); {PREPARE_HINT}") from None

    def _to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "pattern": self.pattern,
            "ranks": [base64.b64encode(token).decode("ascii") for token in self._ranks],
            "special": {BOS: self.bos_id},
        }

    @classmethod
    def _from_json(cls, data: object) -> Tokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        ranks = [base64.b64decode(token, validate=True) for token in data["ranks"]]
        # Byte-level: every byte must be a token, or some texts could not be encoded.
        if ranks[:N_BYTES] != [bytes([b]) for b in range(N_BYTES)]:
            raise ValueError("the first 256 ranks must be the single bytes")
        if len(set(ranks)) != len(ranks):
            raise ValueError("duplicate tokens")
        if data["special"] != {BOS: len(ranks)}:
            raise ValueError(f"special tokens must be {{{BOS!r}: {len(ranks)}}}")
        if not isinstance(data["pattern"], str):
            raise ValueError("pattern must be a string")
        return cls(data["kind"], data["pattern"], ranks)


def byte_tokenizer() -> Tokenizer:
    """Ids 0..255 are the bytes themselves and 256 is BOS."""
    return Tokenizer("byte", SPLIT_PATTERN, [bytes([b]) for b in range(N_BYTES)])


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with rustbpe; `vocab_size` counts BOS, so it must be >= 257."""
    import rustbpe  # only training needs it; loading a saved tokenizer does not

    if vocab_size < N_BYTES + 1:
        raise UserError(f"bpe vocab_size must be at least {N_BYTES + 1} (256 bytes + BOS)")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    by_rank = sorted(trainer.get_mergeable_ranks(), key=lambda pair: pair[1])
    # tiktoken needs ranks 0..n-1 with no gaps, which is also what the file format stores.
    if [rank for _, rank in by_rank] != list(range(len(by_rank))):
        raise RuntimeError("rustbpe returned non-contiguous ranks")
    return Tokenizer("bpe", trainer.get_pattern(), [bytes(token) for token, _ in by_rank])


def _canonical_json(data: dict) -> bytes:
    """One byte string per tokenizer: sorted keys, no spaces, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
