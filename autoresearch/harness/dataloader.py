"""Token files and the BOS-aligned best-fit packing loader for training and evaluation.

A split is one flat `.npy` array: the documents' tokens concatenated, each
document starting with BOS. Rows of `seq_len + 1` tokens are packed from whole
documents, as in nanochat's bos_bestfit loader: every row starts at a
document's BOS (so no token ever attends across a document it did not see
begin), and the row is topped up with the largest buffered document that still
fits. When none fits, the shortest one is cropped to fill the row exactly and
its remainder is dropped. Rows are never padded, so every position trains.

Under the runner the training rows are served, not read: the candidate cannot open
the training split (the sandbox hides it, the audit guard refuses it). A thread of
the runner (`BatchServer`, numpy only) packs the rows and writes them over a socket
whose other end the candidate inherits (`AUTORESEARCH_DATA_FD`); `harness.train_loader`
asks it for one batch at a time (`ServedLoader`). So the tokens a run trained on are
the tokens the runner served, counted and timed by the runner, and the token budget
is the server's: past it, it serves nothing more. Run by hand, `TrainLoader` reads the
file itself; both give the same rows in the same order for the same seed.

    candidate --rows wanted (int32; 0: budget.start())--> runner
    candidate <--tokens served so far, rows, bytes per token; then the rows-- runner
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import socket
import struct
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoresearch.atomic import atomic_write
from autoresearch.errors import UserError
from autoresearch.harness.context import DATA_ENV

DOC_BUFFER = 1000  # documents the packer chooses from; more packs tighter but costs per row
CHUNK_TOKENS = 1 << 20  # tokens written to disk per chunk by write_token_file
CHUNK_DOCS = 4096  # documents whose offsets are turned into Python ints at a time
SPANS_CHUNK = 1 << 26  # tokens scanned for BOS at a time, to bound the temporary mask
UINT16_LIMIT = 1 << 16
PREPARE_HINT = "run `autoresearch prepare`"
# The data channel's messages. A request is the number of rows wanted, or START when the
# candidate's budget starts; a reply is its header, then rows * (seq_len + 1) tokens.
REQUEST = struct.Struct("<i")
START = 0
REPLY = struct.Struct("<QII")  # tokens served so far, rows that follow (0: none, budget spent),
# bytes per token
# The batch that crosses a token budget is served whole if it is at most this share of the
# budget (an honest loop's last batch), else cut to the budget: training stays within 10%.
LAST_BATCH_SHARE = 0.10
MAX_REQUEST_TOKENS = 1 << 26  # 128 MiB of uint16 in one reply: a bigger request is garbage

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


class RowStream:
    """Endless BOS-aligned rows of `seq_len + 1` tokens from a token file (numpy only).

    Documents are reshuffled each epoch with `np.random.default_rng(seed + epoch)`,
    so the rows are reproducible from the seed, whoever reads them.
    """

    def __init__(self, tokens_path: Path, seq_len: int, bos_id: int, seed: int) -> None:
        self.tokens = load_token_file(tokens_path)
        self.spans = document_spans(self.tokens, bos_id)
        if len(self.spans) == 0:
            raise UserError(f"token file {tokens_path} holds no documents; {PREPARE_HINT}")
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        self._packer = BestFitPacker(self.tokens, self.spans, seq_len + 1, self._epoch_orders())

    def _epoch_orders(self) -> Iterator[np.ndarray]:
        epoch = 0
        while True:
            self.epoch = epoch
            yield np.random.default_rng(self.seed + epoch).permutation(len(self.spans))
            epoch += 1

    def fill(self, rows: np.ndarray) -> None:
        """Fill every row of `rows` ([n, seq_len + 1]): the orders are endless."""
        self._packer.fill(rows)


class TrainLoader:
    """Endless (x, y) batches of torch.long [batch_size, seq_len] on `device`, read from the
    token file by this process (a train.py run by hand; under the runner, `ServedLoader`).
    y is x shifted left by one token."""

    def __init__(
        self, tokens_path: Path, batch_size: int, seq_len: int, bos_id: int, device: str, seed: int
    ) -> None:
        self.stream = RowStream(tokens_path, seq_len, bos_id, seed)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = device
        self.tokens_served = 0
        self._rows = np.empty((batch_size, seq_len + 1), dtype=self.stream.tokens.dtype)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.stream.fill(self._rows)
        self.tokens_served += self.batch_size * self.seq_len
        return to_batch(self._rows, self.device)


def to_batch(rows: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) torch.long [n, seq_len] on `device` from rows [n, seq_len + 1]."""
    import torch

    # Pinned host memory lets the copy to the GPU run asynchronously; the caching host
    # allocator keeps a block alive until its copy is done, so a fresh pinned tensor per
    # batch is both cheap and safe.
    kind = torch.device(device).type
    n, row_len = rows.shape
    host = torch.empty((2, n, row_len - 1), dtype=torch.long, pin_memory=kind == "cuda")
    xy = host.numpy()
    xy[0] = rows[:, :-1]
    xy[1] = rows[:, 1:]
    if kind != "cpu":
        host = host.to(device, non_blocking=True)
    return host[0], host[1]


class BatchServer:
    """The runner's end of the data channel: serves training rows, counts and times them.

    A thread answers the candidate's requests in order, so what it counts before the
    START message is exactly what the candidate drew before `budget.start()`. With a
    token budget it serves while fewer tokens than the budget have gone out (the last
    batch may cross it by LAST_BATCH_SHARE of the budget, see `_allowed_rows`) and answers
    every later request with no rows.
    """

    def __init__(
        self, tokens_path: Path, seq_len: int, bos_id: int, seed: int, budget_tokens: int = 0
    ) -> None:
        self._args = (tokens_path, seq_len, bos_id, seed)
        self.seq_len = seq_len
        self.budget_tokens = budget_tokens
        self.tokens_served = 0
        self.times: list[float] = []  # time.monotonic() when each batch was served
        self.started: float | None = None  # the first START: the candidate's budget.start()
        self.tokens_before_start = 0
        self.refused = 0  # requests past the token budget
        self.error: str | None = None  # why serving stopped early, if it did
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def first_batch(self) -> float | None:
        return self.times[0] if self.times else None

    def batches_after(self, t: float) -> int:
        """How many batches were served after time `t` (a `time.monotonic()`)."""
        return len(self.times) - bisect_right(self.times, t)

    def serve(self, sock: socket.socket) -> None:
        """Answer requests on `sock` in a thread until the other end closes or `stop()`."""
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; the counts are final once this returns."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread:
            self._thread.join(timeout)
        self._sock.close()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._answer(sock)
        except UserError as e:
            self.error = str(e)
        except OSError:
            pass  # the candidate is gone, or stop() hung up
        finally:  # the candidate's next read ends instead of waiting for ever
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _answer(self, sock: socket.socket) -> None:
        stream = RowStream(*self._args)  # loads while the candidate starts up
        dtype = stream.tokens.dtype
        row_len = self.seq_len + 1
        while request := _recv_exact(sock, REQUEST.size):
            (n_rows,) = REQUEST.unpack(request)
            now = time.monotonic()
            if n_rows == START:
                if self.started is None:
                    self.started, self.tokens_before_start = now, self.tokens_served
                continue
            if not 0 < n_rows * row_len <= MAX_REQUEST_TOKENS:
                self.error = f"asked for {n_rows} rows of training data in one batch"
                return
            if self.budget_tokens and self.tokens_served >= self.budget_tokens:
                self.refused += 1
                sock.sendall(REPLY.pack(self.tokens_served, 0, dtype.itemsize))
                continue
            n_rows = self._allowed_rows(n_rows)
            rows = np.empty((n_rows, row_len), dtype=dtype)
            stream.fill(rows)
            self.tokens_served += n_rows * self.seq_len
            self.times.append(now)
            sock.sendall(REPLY.pack(self.tokens_served, n_rows, dtype.itemsize))
            sock.sendall(rows.data)

    def _allowed_rows(self, n_rows: int) -> int:
        """How many of `n_rows` requested rows to serve under the token budget: all of them,
        unless the batch crosses the budget by more than LAST_BATCH_SHARE of it; then the
        rows the budget has left (one request for a huge batch buys no training past it)."""
        left = self.budget_tokens - self.tokens_served
        wanted = n_rows * self.seq_len
        budget = self.budget_tokens
        if not budget or wanted <= left or wanted <= LAST_BATCH_SHARE * budget:
            return n_rows
        return -(-left // self.seq_len)  # the rows left, the last one crossing the budget


class DataChannel:
    """The candidate's end of the data channel (one per process, shared by its loaders)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()
        self.tokens_served = 0  # as the runner counted them, in its last reply

    def start(self) -> None:
        """Tell the runner that the budget starts now."""
        with self._lock:
            self._sock.sendall(REQUEST.pack(START))

    def rows(self, n_rows: int, row_len: int) -> np.ndarray | None:
        """The next `n_rows` rows from the runner, or None once the token budget is spent."""
        with self._lock:
            self._sock.sendall(REQUEST.pack(n_rows))
            header = _recv_exact(self._sock, REPLY.size)
            if header:
                self.tokens_served, n, itemsize = REPLY.unpack(header)
                if n == 0:
                    return None
                data = _recv_exact(self._sock, n * row_len * itemsize)
            if not header or not data:
                raise RuntimeError("autoresearch: the runner stopped serving training data")
        dtype = np.dtype("<u2") if itemsize == 2 else np.dtype("<u4")
        return np.frombuffer(data, dtype=dtype).reshape(n, row_len)


@functools.cache
def data_channel() -> DataChannel | None:
    """This process's data channel to the runner; None when run by hand."""
    fd = os.environ.get(DATA_ENV)
    return DataChannel(int(fd)) if fd else None


class ServedLoader:
    """(x, y) batches of rows served by the runner; ends when the token budget is spent."""

    def __init__(self, channel: DataChannel, batch_size: int, seq_len: int, device: str) -> None:
        self.channel = channel
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = device

    def __iter__(self) -> ServedLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.channel.rows(self.batch_size, self.seq_len + 1)
        if rows is None:
            raise StopIteration
        return to_batch(rows, self.device)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """`n` bytes from `sock`, or none if it closed first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return bytearray()
        got += k
    return buf


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
