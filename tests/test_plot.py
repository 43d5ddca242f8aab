"""The progress figure: a real PNG of a fixed size whose pixels follow the data."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from autoresearch.errors import UserError
from autoresearch.ledger import FAILED_STATUSES, Record
from autoresearch.plot import DPI, FIGSIZE, MAX_LABELS, plot_progress, progress_figure

WIDTH, HEIGHT = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


def night(n: int = 24, shift: float = 0.0, spend: bool = True) -> list[Record]:
    """An evolve run: a baseline, improvements, discards, a few failures, LLM spend."""
    records = [
        Record(id="c0001", status="keep", val_bpb=1.5 + shift, promoted=True, tag="t",
               proposer="baseline", description="baseline", created=0.0)
    ]  # fmt: skip
    best = 1.5 + shift
    for i in range(2, n + 1):
        proposer = ("llm:test/model", "optuna", "random")[i % 3]
        usage = {"cost_usd": 0.03} if spend and proposer.startswith("llm") else {}
        if i % 7 == 0:
            status, bpb = FAILED_STATUSES[i % 3], None
        elif i % 4 == 0:
            best -= 0.01
            status, bpb = "keep", best
        else:
            status, bpb = "discard", best + 0.005 * (i % 5 + 1)
        records.append(
            Record(id=f"c{i:04d}", status=status, val_bpb=bpb, proposer=proposer, tag="t",
                   promoted=status == "keep", usage=usage, description=f"idea number {i}",
                   created=600.0 * i)
        )  # fmt: skip
    return records


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.verify()
    return Image.open(path).convert("RGB")


def test_a_valid_png_of_the_expected_size(tmp_path):
    path = tmp_path / "progress.png"
    plot_progress(night(), path)
    assert png_size(path) == (WIDTH, HEIGHT)
    image = pixels(path)
    assert image.size == (WIDTH, HEIGHT)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50  # a drawing, not a blank page


def test_the_pixels_follow_the_data(tmp_path):
    paths = [tmp_path / f"{name}.png" for name in ("a", "again", "shifted")]
    plot_progress(night(), paths[0])
    plot_progress(night(), paths[1])
    plot_progress(night(shift=0.2), paths[2])
    same = ImageChops.difference(pixels(paths[0]), pixels(paths[1])).getbbox()
    assert same is None  # the same ledger draws the same picture
    assert ImageChops.difference(pixels(paths[0]), pixels(paths[2])).getbbox() is not None


def test_kept_points_are_labelled_with_their_descriptions():
    records = night()
    fig = progress_figure(records)
    texts = {t.get_text() for t in fig.axes[0].texts}
    kept = {r.description for r in records if r.status == "keep"}
    assert kept <= texts
    assert not {r.description for r in records if r.status == "discard"} & texts


def test_many_kept_points_label_only_the_frontier():
    records = night(n=4 * (MAX_LABELS + 10))
    labels = [t for t in progress_figure(records).axes[0].texts]
    assert 0 < len(labels) <= MAX_LABELS


def test_panels_for_failures_and_spend_only_when_there_are_some():
    clean = [r for r in night(spend=False) if r.val_bpb is not None]
    assert len(progress_figure(clean).axes) == 1
    assert len(progress_figure(night(spend=False)).axes) == 2  # + the failure strip
    spend_axes = progress_figure(night()).axes  # + spend, with its throughput twin
    assert len(spend_axes) == 4 and spend_axes[2].get_ylabel() == "LLM spend (USD)"


def test_a_far_outlier_is_pinned_instead_of_squashing_the_scale():
    records = night()
    records.append(Record(id="c0099", status="discard", val_bpb=9.0, proposer="random", tag="t"))
    low, high = progress_figure(records).axes[0].get_ylim()
    assert high < 2.0 and low < 1.5


def test_title_says_what_won_by_how_much():
    title = progress_figure(night()).get_suptitle()
    assert title.startswith("t: 24 experiments, 7 kept, 3 failed")
    assert "best 1.440000 (c0024), -0.060000 (-4.00%) vs c0001" in title


def test_unwritable_path_and_unknown_suffix_are_user_errors(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write .*a-file/progress.png: .* not a folder"):
        plot_progress(night(), blocker / "progress.png")
    with pytest.raises(UserError, match=r"use a \.png, \.svg or \.pdf name"):
        plot_progress(night(), tmp_path / "progress.nope")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(UserError, match="cannot write .*folder.png"):  # savefig's own OSError
        plot_progress(night(), folder)


def test_nothing_to_plot_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no experiments to plot"):
        plot_progress([], tmp_path / "progress.png")
