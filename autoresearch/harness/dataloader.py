"""Token files and the BOS-aligned best-fit packing loader for training and evaluation.

A split is one flat `.npy` array: the documents' tokens concatenated, each
document starting with BOS. Rows of `seq_len + 1` tokens are packed from whole
documents, as in nanochat's bos_bestfit loader: every row starts at a
document's BOS (so no token ever attends across a document it did not see
begin), and the row is topped up with the largest buffered document that still
fits. When none fits, the shortest one is cropped to fill the row exactly and
its remainder is dropped. Rows are never padded, so every position trains.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoresearch.atomic import atomic_write
from autoresearch.errors import UserError

DOC_BUFFER = 1000  # documents the packer chooses from; more packs tighter but costs per row
CHUNK_TOKENS = 1 << 20  # tokens written to disk per chunk by write_token_file
CHUNK_DOCS = 4096  # documents whose offsets are turned into Python ints at a time
SPANS_CHUNK = 1 << 26  # tokens scanned for BOS at a time, to bound the temporary mask
UINT16_LIMIT = 1 << 16
PREPARE_HINT = "run `autoresearch prepare`"

if TYPE_CHECKING:  # torch is imported where batches are made: checking the token files
    import torch  # (the orchestrator, before every run) must not pay 2 s and 200 MB for it


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= UINT16_LIMIT else np.dtype("<u4")


def write_token_file(docs: Iterable[list[int]], path: Path, bos_id: int, vocab_size: int) -> int:
    """Write documents, each prefixed by BOS, as one flat `.npy`; return the tokens written.

    Streams chunk by chunk, so only one chunk is ever in memory besides the
    caller's documents, and replaces `path` atomically at the end. Empty
    documents are skipped: a lone BOS would only waste a training position.
    """
    dtype = token_dtype(vocab_size)
    with atomic_write(path) as f:
        # numpy pads 1-D headers so their length does not depend on the shape:
        # reserve it now, stream the data, and fill in the real length at the end.
        placeholder = _npy_header(dtype, 0)
        f.write(placeholder)
        n_written = 0
        chunk: list[int] = []
        for doc in docs:
            if len(doc) == 0:
                continue
            chunk.append(bos_id)
            chunk.extend(doc)
            if len(chunk) >= CHUNK_TOKENS:
                n_written += _write_chunk(f, chunk, dtype, vocab_size)
                chunk = []
        n_written += _write_chunk(f, chunk, dtype, vocab_size)
        header = _npy_header(dtype, n_written)
        if len(header) != len(placeholder):
            raise RuntimeError("numpy .npy header length changed with the array length")
        f.seek(0)
        f.write(header)
    return n_written


def load_token_file(path: Path) -> np.ndarray:
    """Memory-map a token file read-only; a missing or damaged file is a `UserError`."""
    path = Path(path)
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"token file {path} is missing; {PREPARE_HINT}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"token file {path} is corrupt ({e}); {PREPARE_HINT}") from None
    if tokens.ndim != 1 or tokens.dtype.kind != "u":
        raise UserError(f"token file {path} is not a flat token array; {PREPARE_HINT}")
    return tokens


def document_spans(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """int64 [n_docs, 2]: start (at the BOS) and end offsets of each document."""
    starts = [
        np.flatnonzero(tokens[i : i + SPANS_CHUNK] == bos_id) + i
        for i in range(0, len(tokens), SPANS_CHUNK)
    ]
    spans = np.empty((sum(len(s) for s in starts), 2), dtype=np.int64)
    spans[:, 0] = np.concatenate(starts) if starts else []
    spans[:-1, 1] = spans[1:, 0]
    if len(spans):
        spans[-1, 1] = len(tokens)
    return spans


class BestFitPacker:
    """Packs BOS-aligned rows from documents drawn in the order given by `orders`.

    `orders` yields arrays of document indices (one per epoch, say); the packer
    moves to the next when one runs out and stops once all are used up.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        spans: np.ndarray,
        row_len: int,
        orders: Iterator[np.ndarray],
        buffer_size: int = DOC_BUFFER,
    ) -> None:
        self.tokens = tokens
        self.spans = spans
        self.row_len = row_len
        self.buffer_size = buffer_size
        self._orders = orders
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._order_pos = 0
        self._pending: list[tuple[int, int, bool]] = []  # (start, length, continued), next last
        # The buffer, sorted by length; `_starts` and `_continued` run parallel to `_lens`.
        self._lens: list[int] = []
        self._starts: list[int] = []
        self._continued: list[bool] = []
        self.bos_id = int(tokens[spans[0, 0]]) if len(spans) else 0
        self.tokens_used = 0  # document tokens placed in rows
        self.tokens_dropped = 0  # remainders of cropped documents

    def fill(self, out: np.ndarray) -> int:
        """Fill the rows of `out` ([n, row_len]); return how many were filled (< n when out)."""
        for r in range(len(out)):
            if not self._fill_row(out[r]):
                return r
        return len(out)

    def _fill_row(self, row: np.ndarray) -> bool:
        self._refill()
        lens, starts, continued, tokens = self._lens, self._starts, self._continued, self.tokens
        pos = 0
        while pos < self.row_len:
            if not lens:
                return False
            room = self.row_len - pos
            # The largest document that fits; if none does, crop the shortest.
            i = max(bisect_right(lens, room) - 1, 0)
            n, start, cont = lens.pop(i), starts.pop(i), continued.pop(i)
            take = min(n, room)
            if cont:  # a later piece of a long document: BOS, then the document goes on
                row[pos] = self.bos_id
                row[pos + 1 : pos + take] = tokens[start : start + take - 1]
            else:
                row[pos : pos + take] = tokens[start : start + take]
            pos += take
            self.tokens_used += take
            self.tokens_dropped += n - take
        return True

    def _refill(self) -> None:
        while len(self._lens) < self.buffer_size:
            if not self._pending and not self._load_pending():
                return
            start, n, cont = self._pending.pop()
            i = bisect_right(self._lens, n)
            self._lens.insert(i, n)
            self._starts.insert(i, start)
            self._continued.insert(i, cont)

    def _load_pending(self) -> bool:
        """Turn the next few documents of the order into Python ints; False when out."""
        while self._order_pos >= len(self._order):
            try:
                self._order = np.asarray(next(self._orders), dtype=np.int64)
            except StopIteration:
                return False
            self._order_pos = 0
        ids = self._order[self._order_pos : self._order_pos + CHUNK_DOCS]
        self._order_pos += len(ids)
        starts = self.spans[ids, 0]
        lens = self.spans[ids, 1] - starts
        self._pending = self._pieces(starts.tolist(), lens.tolist())[::-1]
        return True

    def _pieces(self, starts: list[int], lens: list[int]) -> list[tuple[int, int, bool]]:
        """Split documents longer than a row into row-sized pieces, each to start with BOS.

        Cropping a long document to one row would throw away nearly all of it (a
        standard-library file is ~40 rows of 256 tokens); instead every further
        piece is packed as if it were a document of its own, behind a BOS.
        """
        row = self.row_len
        pieces = []
        for start, n in zip(starts, lens, strict=True):
            pieces.append((start, min(n, row), False))
            at, left = start + row, n - row
            while left > 0:
                take = min(left, row - 1)
                pieces.append((at, take + 1, True))
                at, left = at + take, left - take
        return pieces


def pack_rows(
    tokens: np.ndarray, spans: np.ndarray, order: np.ndarray, row_len: int, n_rows: int
) -> np.ndarray:
    """int64 [n_rows, row_len] packed from documents in `order`; ValueError if they run out."""
    out = np.empty((n_rows, row_len), dtype=np.int64)
    filled = BestFitPacker(tokens, spans, row_len, iter([order])).fill(out)
    if filled < n_rows:
        raise ValueError(f"documents ran out after {filled} of {n_rows} rows")
    return out


class TrainLoader:
    """Endless (x, y) batches of torch.long [batch_size, seq_len] on `device`.

    Documents are reshuffled each epoch with `np.random.default_rng(seed + epoch)`,
    so a run is reproducible from its seed. y is x shifted left by one token.
    """

    def __init__(
        self, tokens_path: Path, batch_size: int, seq_len: int, bos_id: int, device: str, seed: int
    ) -> None:
        self.tokens = load_token_file(tokens_path)
        self.spans = document_spans(self.tokens, bos_id)
        if len(self.spans) == 0:
            raise UserError(f"token file {tokens_path} holds no documents; {PREPARE_HINT}")
        import torch

        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = 0
        self.tokens_served = 0
        # Pinned host memory lets the copy to the GPU run asynchronously; the caching
        # host allocator keeps a block alive until its copy is done, so a fresh
        # pinned tensor per batch is both cheap and safe.
        self._pin = self.device.type == "cuda"
        self._rows = np.empty((batch_size, seq_len + 1), dtype=self.tokens.dtype)
        self._packer = BestFitPacker(self.tokens, self.spans, seq_len + 1, self._epoch_orders())

    def _epoch_orders(self) -> Iterator[np.ndarray]:
        epoch = 0
        while True:
            self.epoch = epoch
            yield np.random.default_rng(self.seed + epoch).permutation(len(self.spans))
            epoch += 1

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch  # already loaded by __init__: a dictionary lookup

        self._packer.fill(self._rows)  # endless orders: always fills every row
        B, T = self.batch_size, self.seq_len
        host = torch.empty((2, B, T), dtype=torch.long, pin_memory=self._pin)
        xy = host.numpy()
        xy[0] = self._rows[:, :-1]
        xy[1] = self._rows[:, 1:]
        if self.device.type != "cpu":
            host = host.to(self.device, non_blocking=True)
        self.tokens_served += B * T
        return host[0], host[1]


def eval_rows(tokens_path: Path, seq_len: int, n_rows: int, bos_id: int) -> np.ndarray:
    """int64 [n_rows, seq_len + 1] packed from documents in stored order: the same every time."""
    tokens = load_token_file(tokens_path)
    needed = n_rows * (seq_len + 1)
    shortage = (
        f"{tokens_path} has {len(tokens):,} tokens but evaluation needs {needed:,} "
        f"({n_rows} rows of {seq_len + 1}); lower eval.tokens or use more data"
    )
    if len(tokens) < needed:
        raise UserError(shortage)
    spans = document_spans(tokens, bos_id)
    try:
        return pack_rows(tokens, spans, np.arange(len(spans)), seq_len + 1, n_rows)
    except ValueError:
        # Enough tokens in total, but cropped document tails are not scored.
        raise UserError(shortage + " (cropped document tails are not used)") from None


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    buf = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (length,),
    }
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _write_chunk(f: io.BufferedWriter, chunk: list[int], dtype: np.dtype, vocab_size: int) -> int:
    if not chunk:
        return 0
    arr = np.asarray(chunk, dtype=np.int64)
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise ValueError(f"token id out of range for vocab_size {vocab_size}")
    f.write(arr.astype(dtype).tobytes())
    return len(arr)
