"""Token files and BOS-aligned best-fit packing: layout, invariants, determinism."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from autoresearch.errors import UserError
from autoresearch.harness.dataloader import (
    DOC_BUFFER,
    REQUEST,
    BatchServer,
    DataChannel,
    ServedLoader,
    TrainLoader,
    document_spans,
    eval_rows,
    load_token_file,
    pack_rows,
    write_token_file,
)

# Token ids name their document and position, so a packed row can be checked
# against its source: id = doc * POS_BASE + position (1-based; 0 is the BOS slot).
POS_BASE = 1024
N_DOCS = 3000
VOCAB = N_DOCS * POS_BASE + 1  # > 65536: stored as uint32
BOS = VOCAB - 1
B, T = 8, 128


def _doc_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly shorter than a row, with a tail of long documents (as web text has)."""
    return np.clip(rng.lognormal(3.2, 0.9, n).astype(int), 1, POS_BASE - 1)


def _docs(n: int = N_DOCS, seed: int = 0) -> list[list[int]]:
    lengths = _doc_lengths(np.random.default_rng(seed), n)
    return [[d * POS_BASE + p for p in range(1, k + 1)] for d, k in enumerate(lengths)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    docs = _docs()
    path = tmp_path_factory.mktemp("tokens") / "train.npy"
    assert write_token_file(docs, path, BOS, VOCAB) == sum(len(d) + 1 for d in docs)
    return path, docs


def _check_rows(rows: np.ndarray, docs: list[list[int]], row_len: int) -> tuple[int, int]:
    """Assert the packing invariants; return (pieces placed, tokens known cropped away).

    A document longer than a row is packed as pieces of up to row_len - 1 tokens,
    each behind a BOS, so piece k starts at document position 1 + k * (row_len - 1).
    """
    assert rows.shape[1] == row_len
    n_pieces, waste = 0, 0
    for row in rows:
        assert row[0] == BOS
        segments = np.split(row, np.flatnonzero(row == BOS)[1:])
        n_pieces += len(segments)
        for k, seg in enumerate(segments):
            body = seg[1:]
            if len(body) == 0:
                continue  # a bare BOS: which document it came from is unknowable
            # A segment is one piece of one document, in order, nothing skipped.
            first = int(body[0] % POS_BASE)
            assert (first - 1) % (row_len - 1) == 0, "pieces start at fixed offsets"
            assert np.array_equal(body % POS_BASE, np.arange(first, first + len(body)))
            doc = body // POS_BASE
            assert np.all(doc == doc[0])
            full = min(len(docs[doc[0]]) - first + 1, row_len - 1)
            if len(body) < full:
                assert k == len(segments) - 1, "only the last piece of a row may be cropped"
                waste += full - len(body)
    return n_pieces, waste


def test_document_spans():
    tokens = np.array([9, 1, 2, 9, 9, 3], dtype=np.uint16)
    assert document_spans(tokens, 9).tolist() == [[0, 3], [3, 4], [4, 6]]
    assert document_spans(np.array([], dtype=np.uint16), 9).shape == (0, 2)


@pytest.mark.parametrize(
    ("vocab", "dtype"), [(257, np.uint16), (65536, np.uint16), (65537, np.uint32)]
)
def test_token_file_dtype_and_layout(tmp_path: Path, vocab: int, dtype: type):
    bos = vocab - 1
    docs = [[0, 1, 2], [], [vocab - 2], [5] * 10]
    path = tmp_path / "t.npy"
    assert write_token_file(iter(docs), path, bos, vocab) == 4 + 2 + 11  # empty doc skipped
    tokens = load_token_file(path)
    assert tokens.dtype == dtype and isinstance(tokens, np.memmap)
    assert tokens.tolist() == [bos, 0, 1, 2, bos, vocab - 2, bos] + [5] * 10
    assert np.array_equal(np.load(path), tokens)  # a plain .npy that numpy reads back


def test_token_file_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import autoresearch.harness.dataloader as dl

    monkeypatch.setattr(dl, "CHUNK_TOKENS", 7)
    docs = [list(range(k)) for k in range(1, 30)]
    path = tmp_path / "t.npy"
    n = write_token_file(docs, path, 100, 101)
    expected = [t for d in docs for t in [100, *d]]
    assert n == len(expected) and load_token_file(path).tolist() == expected


def test_token_file_rejects_bad_ids_atomically(tmp_path: Path):
    path = tmp_path / "t.npy"
    write_token_file([[1, 2]], path, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        write_token_file([[1, 2], [4]], path, 3, 4)
    assert load_token_file(path).tolist() == [3, 1, 2]  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["t.npy"]


def test_load_token_file_errors(tmp_path: Path):
    with pytest.raises(UserError, match="missing.*autoresearch prepare"):
        load_token_file(tmp_path / "nope.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt.*autoresearch prepare"):
        load_token_file(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError):  # never unpickled
        load_token_file(tmp_path / "obj.npy")


def test_train_batches_invariants(data: tuple[Path, list[list[int]]]):
    path, docs = data
    loader = TrainLoader(path, B, T, BOS, "cpu", seed=1)
    used, waste = 0, 0
    for _ in range(40):
        x, y = next(loader)
        assert x.shape == y.shape == (B, T)
        assert x.dtype == y.dtype == torch.long and x.device.type == "cpu"
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        waste += _check_rows(rows, docs, T + 1)[1]
        used += rows.size
    assert used / (used + waste) >= 0.90
    # Bare-BOS crops hide their document, so the packer's own count of the waste is
    # the complete one; it must agree with what the rows show.
    packer = loader.stream._packer
    assert packer.tokens_used == used and packer.tokens_dropped >= waste
    assert used / (used + packer.tokens_dropped) >= 0.90
    assert loader.tokens_served == 40 * B * T
    assert loader.epoch == 0


def test_best_fit_choice(tmp_path: Path):
    # Documents of 6, 3, 5, 4, 12 and 11 tokens (with BOS) into rows of 10. The two long
    # ones are split into pieces behind a BOS (10 + 3 and 10 + 2 tokens); the largest
    # piece that fits goes first.
    bos, path = 99, tmp_path / "t.npy"
    bodies = [[10 * d + p for p in range(1, n)] for d, n in enumerate([6, 3, 5, 4], 1)]
    bodies += [[50 + p for p in range(11)], [70 + p for p in range(10)]]
    write_token_file(bodies, path, bos, 100)
    tokens = load_token_file(path)
    spans = document_spans(tokens, bos)
    rows = pack_rows(tokens, spans, np.arange(len(spans)), 10, 4)
    doc = {d: [bos, *body] for d, body in enumerate(bodies, 1)}
    assert rows[0].tolist() == doc[6][:10]
    assert rows[1].tolist() == doc[5][:10]
    assert rows[2].tolist() == doc[1] + doc[4]
    assert rows[3].tolist() == doc[3] + [bos, *bodies[4][9:]] + [bos, *bodies[5][9:]]
    with pytest.raises(ValueError, match="ran out"):
        pack_rows(tokens, spans, np.arange(len(spans)), 10, 5)


def test_no_document_repeats_within_an_epoch(data: tuple[Path, list[list[int]]]):
    path, docs = data
    rows = pack_rows(*_packing_inputs(path), np.arange(N_DOCS), T + 1, 200)
    starts = rows[:, 1:][(rows[:, :-1] == BOS) & (rows[:, 1:] != BOS)]
    assert np.all((starts % POS_BASE - 1) % T == 0)  # document starts, or piece starts
    assert len(np.unique(starts)) == len(starts)  # no piece of any document twice


def test_train_determinism(data: tuple[Path, list[list[int]]]):
    path, _ = data

    def batches(seed: int) -> list[torch.Tensor]:
        loader = TrainLoader(path, B, T, BOS, "cpu", seed=seed)
        return [torch.cat(next(loader)) for _ in range(5)]

    a, b, c = batches(7), batches(7), batches(8)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_train_loader_is_endless_and_counts_epochs(tmp_path: Path):
    docs = _docs(n=20)
    path = tmp_path / "small.npy"
    total = write_token_file(docs, path, BOS, VOCAB)
    loader = TrainLoader(path, 4, 32, BOS, "cpu", seed=0)
    n_batches = 3 * total // (4 * 33) + 2
    for _ in range(n_batches):
        x, y = next(loader)
        _check_rows(torch.cat([x, y[:, -1:]], dim=1).numpy(), docs, 33)
    assert loader.epoch >= 2
    assert loader.tokens_served == n_batches * 4 * 32


def test_eval_rows_deterministic_and_valid(data: tuple[Path, list[list[int]]]):
    path, docs = data
    rows = eval_rows(path, T, 50, BOS)
    assert rows.dtype == np.int64 and rows.shape == (50, T + 1)
    assert np.array_equal(rows, eval_rows(path, T, 50, BOS))
    n_placed, _ = _check_rows(rows, docs, T + 1)
    # Stored order, no shuffle: only the first buffer's worth of documents, plus one
    # refill per document placed, can have been drawn on.
    assert (rows[rows != BOS] // POS_BASE).max() < DOC_BUFFER + n_placed


def test_eval_rows_too_small(data: tuple[Path, list[list[int]]]):
    path, _ = data
    n_tokens = len(load_token_file(path))
    too_many = n_tokens // (T + 1) + 1
    with pytest.raises(UserError, match=f"has {n_tokens:,} tokens.*lower eval.tokens"):
        eval_rows(path, T, too_many, BOS)
    # Enough tokens in total, but not once cropped tails are dropped.
    with pytest.raises(UserError, match="lower eval.tokens"):
        eval_rows(path, T, too_many - 1, BOS)


def test_empty_split_is_user_error(tmp_path: Path):
    path = tmp_path / "empty.npy"
    write_token_file([], path, BOS, VOCAB)
    with pytest.raises(UserError, match="no documents"):
        TrainLoader(path, B, T, BOS, "cpu", seed=0)


@pytest.fixture
def served(data: tuple[Path, list[list[int]]]) -> Iterator:
    """serve(budget_tokens) -> (server, the candidate's channel), over a real socket pair."""
    path, _ = data
    servers: list[BatchServer] = []

    def serve(budget_tokens: int = 0) -> tuple[BatchServer, DataChannel]:
        ours, theirs = socket.socketpair()
        server = BatchServer(path, T, BOS, seed=3, budget_tokens=budget_tokens)
        server.serve(ours)
        servers.append(server)
        return server, DataChannel(theirs.detach())

    yield serve
    for server in servers:
        server.stop()


def test_served_batches_are_the_local_loaders(data: tuple[Path, list[list[int]]], served):
    path, _ = data
    server, channel = served()
    remote, local = ServedLoader(channel, B, T, "cpu"), TrainLoader(path, B, T, BOS, "cpu", seed=3)
    for _ in range(12):  # same seed, same rows in the same order, whoever reads the file
        (xs, ys), (xl, yl) = next(remote), next(local)
        assert xs.dtype == torch.long and torch.equal(xs, xl) and torch.equal(ys, yl)
    assert server.tokens_served == channel.tokens_served == 12 * B * T == local.tokens_served
    assert len(server.times) == 12 and server.times == sorted(server.times)
    assert server.batches_after(server.times[9]) == 2 and server.batches_after(0.0) == 12
    # Any batch size may be asked for: the rows go on where they left off.
    (x, _), (xl, _) = (
        next(ServedLoader(channel, 3, T, "cpu")),
        next(TrainLoader(path, 3, T, BOS, "cpu", seed=3)),
    )
    assert x.shape == (3, T) and server.tokens_served == (12 * B + 3) * T


def test_server_stops_at_the_token_budget(served):
    server, channel = served(budget_tokens=int(20.5 * B * T))
    batches = list(ServedLoader(channel, B, T, "cpu"))  # ends by itself
    assert len(batches) == 21  # the last one crosses the budget, whole: none after it
    assert server.tokens_served == channel.tokens_served == 21 * B * T
    assert server.refused == 1 and channel.rows(1, T + 1) is None and server.refused == 2


def test_a_batch_far_past_the_budget_is_cut_to_it(served):
    """A batch bigger than LAST_BATCH_SHARE of the budget gets only the rows it has left."""
    server, channel = served(budget_tokens=int(2.5 * B * T))
    sizes = [len(x) for x, _ in ServedLoader(channel, B, T, "cpu")]
    assert sizes == [B, B, B // 2] and server.tokens_served == int(2.5 * B * T)
    server, channel = served(budget_tokens=B * T)
    assert len(channel.rows(100 * B, T + 1)) == B  # one huge request: the budget, no more


def test_server_counts_what_was_drawn_before_the_start(served):
    server, channel = served()
    loader = ServedLoader(channel, B, T, "cpu")
    next(loader), next(loader)
    channel.start()
    next(loader)
    channel.start()  # only the first start counts
    next(loader)
    assert server.started is not None and server.tokens_before_start == 2 * B * T
    assert server.first_batch <= server.started <= server.times[-1]


@pytest.mark.parametrize("rows", [-1, 1 << 30])
def test_server_hangs_up_on_a_bad_request(served, rows: int):
    server, channel = served()
    channel._sock.sendall(REQUEST.pack(rows))
    with pytest.raises(RuntimeError, match="stopped serving"):
        channel.rows(B, T + 1)
    assert "rows of training data" in server.error and server.tokens_served == 0


def _packing_inputs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    tokens = load_token_file(path)
    return tokens, document_spans(tokens, BOS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(data: tuple[Path, list[list[int]]]):
    path, _ = data
    cpu = TrainLoader(path, B, T, BOS, "cpu", seed=3)
    gpu = TrainLoader(path, B, T, BOS, "cuda", seed=3)
    for _ in range(5):
        (xc, yc), (xg, yg) = next(cpu), next(gpu)
        assert xg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_served_batches_match_cpu(data: tuple[Path, list[list[int]]], served):
    path, _ = data
    _, channel = served()
    gpu, cpu = ServedLoader(channel, B, T, "cuda"), TrainLoader(path, B, T, BOS, "cpu", seed=3)
    for _ in range(5):
        (xg, yg), (xc, yc) = next(gpu), next(cpu)
        assert xg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
