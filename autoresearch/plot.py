"""The progress figure: what a night of research looks like, readable at a glance.

Top panel: val_bpb of every experiment in ledger order, coloured by
proposer; kept candidates drawn larger and labelled with their descriptions;
the running best as a step line; the baseline as a dashed line. Points far
above the rest (a candidate that barely learned) are pinned to the top edge
so they do not squash the interesting range. Experiments without a score
(crash, timeout, invalid) get a strip of their own below. Where proposers
spent money, a bottom panel shows the cumulative spend and the throughput.

Drawn with matplotlib's Agg canvas directly (no pyplot): no display needed,
no global state.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.errors import UserError
from autoresearch.ledger import FAILED_STATUSES, Record
from autoresearch.population import baseline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (13.0, 7.5)  # inches; with DPI, the PNG is 1560 x 900 pixels
DPI = 120
FAILED_MARKERS = {"crash": "X", "timeout": "v", "invalid": "s"}
MANUAL_COLOR = "#4d4d4d"  # `autoresearch run` experiments: neutral, they are not a proposer
PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b", "#2ca02c")
BEST_COLOR = "#2e7d32"
LABEL_CHARS = 38  # a description label longer than this is cut
LABEL_FONTSIZE = 7.5
LABEL_ROTATION = 28  # degrees: long labels of neighbouring points overlap less when slanted
AXES_WIDTH_FRACTION = 0.88  # of the figure's width, to estimate where a label ends
MAX_LABELS = 30  # beyond this many kept points, label only new bests and promotions
OUTLIER_SPREAD = 1.5  # a score beyond this many core ranges above the core is off scale
MIN_SCORES_FOR_OUTLIERS = 5  # fewer scores than this are all drawn to scale
MIN_RELATIVE_RANGE = 0.005  # the y range spans at least 0.5% of the best score
THROUGHPUT_WINDOW = 8  # experiments per rolling throughput estimate


def plot_progress(records: list[Record], path: Path, title: str = "") -> None:
    """Draw `records` (in ledger order) to `path`; the format follows the suffix (png, svg, pdf)."""
    _check_path(Path(path))  # a bad path fails at once, not after the drawing
    _save(progress_figure(records, title), path)


def progress_figure(records: list[Record], title: str = "") -> Figure:
    """The figure of `plot_progress`, for a caller that wants to add to it or embed it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise UserError("no experiments to plot: run `autoresearch run` or choose another --tag")
    colors = proposer_colors(records)
    failed = [i for i, r in enumerate(records) if r.val_bpb is None]
    spend = [float(r.usage.get("cost_usd", 0.0) or 0.0) for r in records]
    has_spend = any(spend)

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ratios = [5.0] + ([0.9] if failed else []) + ([1.8] if has_spend else [])
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    axes = list(axes) if len(ratios) > 1 else [axes]
    main = axes[0]
    _draw_scores(main, records, colors)
    if failed:
        _draw_failures(axes[1], records, failed, colors)
    if has_spend:
        _draw_spend(axes[-1], records, spend)
    for ax in axes:
        _style(ax)
    axes[-1].set_xlabel("experiment #  (ledger order)")
    main.set_xlim(0.3, len(records) + 0.7)
    fig.suptitle(title or summary_title(records), fontsize=13, fontweight="bold", x=0.01, ha="left")
    return fig


def proposer_colors(records: list[Record]) -> dict[str, str]:
    """A stable colour per proposer, in order of first appearance; manual runs in grey."""
    colors: dict[str, str] = {}
    for r in records:
        name = r.proposer or "manual"
        if name not in colors:
            automatic = [c for c in colors if c != "manual"]
            colors[name] = (
                MANUAL_COLOR if name == "manual" else PALETTE[len(automatic) % len(PALETTE)]
            )
    return colors


def summary_title(records: list[Record]) -> str:
    tags = {r.tag for r in records}
    name = "every tag" if len(tags) > 1 else (next(iter(tags)) or "autoresearch run")
    kept = sum(r.status == "keep" for r in records)
    failed = sum(r.status in FAILED_STATUSES for r in records)
    title = f"{name}: {len(records)} experiments, {kept} kept, {failed} failed"
    scored = [r for r in records if r.val_bpb is not None]
    if scored:
        best = min(scored, key=lambda r: r.val_bpb)
        base = baseline(records) or scored[0]
        title += f"  ·  best {best.val_bpb:.6f} ({best.id})"
        if best is not base and base.val_bpb:
            change = best.val_bpb - base.val_bpb
            title += f", {change:+.6f} ({change / base.val_bpb:+.2%}) vs {base.id}"
    return title


# --------------------------------------------------------------------------- panels


def _draw_scores(ax, records: list[Record], colors: dict[str, str]) -> None:
    xs = [i + 1 for i, r in enumerate(records) if r.val_bpb is not None]
    scored = [r for r in records if r.val_bpb is not None]
    if not scored:
        ax.text(
            0.5,
            0.5,
            "no experiment has a val_bpb yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
        ax.set_ylabel("val_bpb (lower is better)")
        return
    values = [r.val_bpb for r in scored]
    base = baseline(records)
    low, high, top = y_range(values, base.val_bpb if base is not None else values[0])
    ax.set_ylim(low, top)

    # The running best: the frontier the search has reached after each experiment.
    best_x, best_y, best = [], [], float("inf")
    for x, v in zip(xs, values, strict=True):
        best = min(best, v)
        best_x.append(x)
        best_y.append(best)
    best_x.append(len(records) + 0.7)
    best_y.append(best)
    ax.step(
        best_x,
        best_y,
        where="post",
        color=BEST_COLOR,
        lw=2.2,
        alpha=0.85,
        zorder=2,
        label="running best",
    )
    if base is not None:
        ax.axhline(
            base.val_bpb,
            color="0.55",
            lw=1,
            ls=(0, (5, 4)),
            zorder=1,
            label=f"baseline {base.id}: {base.val_bpb:.4f}",
        )

    for name, color in colors.items():
        for kept in (False, True):
            pts = [
                (x, min(r.val_bpb, high))
                for x, r in zip(xs, scored, strict=True)
                if (r.proposer or "manual") == name
                and (r.status == "keep") == kept
                and r.val_bpb <= high
            ]
            if not pts:
                continue
            px, py = [p[0] for p in pts], [p[1] for p in pts]
            if kept:
                ax.scatter(px, py, s=62, color=color, edgecolor="black", linewidth=0.9, zorder=4)
            else:
                ax.scatter(px, py, s=24, color=color, alpha=0.55, linewidth=0, zorder=3)

    off = [(x, r) for x, r in zip(xs, scored, strict=True) if r.val_bpb > high]
    off_y = top - (top - high) * 0.35
    for x, r in off:  # pinned to the edge, so say how bad it really was
        ax.annotate(
            f"{r.val_bpb:.3f}",
            (x, off_y),
            xytext=(5, -3),
            textcoords="offset points",
            fontsize=6.5,
            color="0.35",
        )
    if off:
        ax.scatter(
            [x for x, _ in off],
            [off_y] * len(off),
            marker="^",
            s=40,
            color=[colors[r.proposer or "manual"] for _, r in off],
            edgecolor="0.3",
            linewidth=0.6,
            zorder=4,
            clip_on=False,
        )
    champions = [(x, r) for x, r in zip(xs, scored, strict=True) if r.promoted]
    if champions:
        x, r = champions[-1]
        ax.scatter(
            [x],
            [r.val_bpb],
            marker="*",
            s=340,
            color="#ffd54f",
            edgecolor="black",
            linewidth=0.9,
            zorder=5,
        )
    _label_kept(ax, records, high)
    statuses = {r.status for r in scored}
    _legend(
        ax,
        colors,
        kept="keep" in statuses,
        discarded="discard" in statuses,
        off_scale=bool(off),
        champion=bool(champions),
    )
    ax.set_ylabel("val_bpb (lower is better)")


def y_range(values: list[float], anchor: float) -> tuple[float, float, float]:
    """(bottom, highest value drawn to scale, top): outliers must not flatten the frontier.

    The core is the best 90% of the scores plus `anchor` (the baseline, which
    must stay on the scale, however bad). With a handful of scores there is no
    telling an outlier from the data: all of them are drawn to scale.
    """
    ordered = sorted(values)
    low = ordered[0]
    if len(ordered) >= MIN_SCORES_FOR_OUTLIERS:
        core_high = max(anchor, ordered[int(0.9 * (len(ordered) - 1))])
    else:
        core_high = max(anchor, ordered[-1])
    # Equal scores still get a readable range instead of a microscope on one value.
    spread = max(core_high - low, MIN_RELATIVE_RANGE * max(abs(low), 1.0))
    high = ordered[-1] if ordered[-1] <= core_high + OUTLIER_SPREAD * spread else core_high
    spread = max(high - low, spread)
    top = high + 0.30 * spread  # room for the labels above the points and the off-scale row
    return low - 0.08 * spread, high, top


def _label_kept(ax, records: list[Record], high: float) -> None:
    kept = [
        (i + 1, r) for i, r in enumerate(records) if r.status == "keep" and r.val_bpb is not None
    ]
    if len(kept) > MAX_LABELS:  # too many to read: keep the ones that moved the frontier
        best, chosen = float("inf"), []
        for x, r in kept:
            if r.val_bpb < best or r.promoted:
                chosen.append((x, r))
            best = min(best, r.val_bpb)
        kept = chosen[-MAX_LABELS:]
    # A label runs up and to the right of its point; one that would run off the right edge
    # is mirrored to end at its point instead. Its width is estimated from its length.
    axes_px = FIGSIZE[0] * DPI * AXES_WIDTH_FRACTION
    units_per_px = (len(records) + 0.4) / axes_px
    char_px = LABEL_FONTSIZE / 72 * DPI * 0.55 * math.cos(math.radians(LABEL_ROTATION))
    for x, r in kept:
        if r.val_bpb > high:
            continue
        text = " ".join((r.description or r.id).split())
        text = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
        mirrored = x + (len(text) * char_px + 10) * units_per_px > len(records) + 0.7
        ax.annotate(
            text,
            (x, r.val_bpb),
            xytext=(-5, 7) if mirrored else (5, 7),
            textcoords="offset points",
            rotation=-LABEL_ROTATION if mirrored else LABEL_ROTATION,
            rotation_mode="anchor",
            fontsize=LABEL_FONTSIZE,
            color="0.2",
            zorder=6,
            ha="right" if mirrored else "left",
            va="bottom",
            annotation_clip=True,
        )


def _legend(ax, colors: dict[str, str], **present: bool) -> None:
    from matplotlib.lines import Line2D

    def dot(**kw):
        return Line2D([], [], ls="", marker=kw.pop("marker", "o"), **kw)

    handles, labels = ax.get_legend_handles_labels()
    for name, color in colors.items():
        handles.append(dot(color=color, markersize=7))
        labels.append(name if len(name) <= 28 else name[:27] + "…")
    extras = {
        "kept": (dict(color="white", markeredgecolor="black", markersize=8), "kept (labelled)"),
        "discarded": (dict(color="0.6", alpha=0.5, markersize=5), "discarded"),
        "champion": (
            dict(marker="*", color="#ffd54f", markeredgecolor="black", markersize=14),
            "champion",
        ),
        "off_scale": (
            dict(marker="^", color="0.6", markeredgecolor="0.3", markersize=7),
            "off scale (worse)",
        ),
    }
    for key, (style, label) in extras.items():
        if present.get(key):
            handles.append(dot(**style))
            labels.append(label)
    ax.legend(
        handles,
        labels,
        loc="best",
        fontsize=8,
        framealpha=0.92,
        ncol=2,
        borderpad=0.6,
        handletextpad=0.4,
        columnspacing=1.0,
    )


def _draw_failures(ax, records: list[Record], failed: list[int], colors: dict[str, str]) -> None:
    rows = {status: n for n, status in enumerate(reversed(FAILED_STATUSES))}
    for status, marker in FAILED_MARKERS.items():
        pts = [i for i in failed if records[i].status == status]
        if pts:
            ax.scatter(
                [i + 1 for i in pts],
                [rows[status]] * len(pts),
                marker=marker,
                s=46,
                color=[colors[records[i].proposer or "manual"] for i in pts],
                edgecolor="0.2",
                linewidth=0.5,
                zorder=3,
            )
    ax.set_yticks(
        list(rows.values()), [f"{s} ({sum(records[i].status == s for i in failed)})" for s in rows]
    )
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.tick_params(axis="y", labelsize=8, length=0)
    ax.set_ylabel("no score", fontsize=9)


def _draw_spend(ax, records: list[Record], spend: list[float]) -> None:
    xs = list(range(1, len(records) + 1))
    total, cumulative = 0.0, []
    for cost in spend:
        total += cost
        cumulative.append(total)
    ax.fill_between(xs, cumulative, step="post", color="#ef6c00", alpha=0.18, lw=0)
    ax.step(xs, cumulative, where="post", color="#ef6c00", lw=1.8)
    ax.set_ylabel("LLM spend (USD)", fontsize=9, color="#bf5600")
    ax.set_ylim(0, total * 1.15 or 1.0)
    ax.annotate(
        f"${total:,.2f}",
        (xs[-1], total),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8,
        color="#bf5600",
    )
    rate = _throughput(records)
    if rate:
        twin = ax.twinx()
        twin.plot([x for x, _ in rate], [v for _, v in rate], color="#455a64", lw=1.3, alpha=0.9)
        twin.set_ylabel("experiments / hour", fontsize=9, color="#455a64")
        twin.set_ylim(0, max(v for _, v in rate) * 1.2)
        twin.tick_params(labelsize=8)
        for side in ("top", "left"):
            twin.spines[side].set_visible(False)


def _throughput(records: list[Record]) -> list[tuple[int, float]]:
    """Experiments per hour over a rolling window of finished experiments."""
    times = [r.created for r in records]
    out = []
    for i in range(1, len(times)):
        j = max(0, i - THROUGHPUT_WINDOW)
        span = times[i] - times[j]
        if span > 1.0:  # seconds; shorter spans are bookkeeping, not a rate
            out.append((i + 1, (i - j) / span * 3600.0))
    return out


def _style(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)


def _check_path(path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = path.suffix.lstrip(".").lower()
    if suffix not in FigureCanvasAgg.get_supported_filetypes():
        raise UserError(f"cannot write {path}: unknown image type: use a .png, .svg or .pdf name")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(
            f"cannot write {path}: {folder} is not a folder: choose another path with -o"
        )
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: {folder} is read-only: choose another path with -o")


def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {e.strerror or e}: choose another path with -o"
        ) from None
