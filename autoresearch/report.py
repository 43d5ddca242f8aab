"""Reading the research back: leaderboard rows, `show`, exports and the status of a live run.

Everything here is read-only and derived from the append-only ledger (and the
run folders, git and `status.json` beside it), so it is safe to use while
`autoresearch evolve` is writing: a reader sees a consistent prefix of the
ledger, at worst minus a torn last line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch.errors import UserError, did_you_mean
from autoresearch.ledger import STATUSES, Ledger, Record
from autoresearch.population import (
    AUTO,
    BASELINE,
    CALIBRATE,
    REPEAT,
    baseline,
    champion,
    lineage,
    means,
    noise,
    parent_finder,
    population,
    source_of,
    spent_usd,
    strategy,
    tag_records,
    trained,
)
from autoresearch.redact import redactor
from autoresearch.runner import log_tail
from autoresearch.status import EvolveStatus, RunStatus
from autoresearch.workspace import PROPOSAL_DIR, RUN_LOG, TRAIN_FILE, open_repo, run_dir

EMPTY_LEDGER = "no experiments yet: run `autoresearch run`"
DELTA_DIGITS = 9  # rounds away float noise (1.4 - 1.5 = -0.10000000000000009) in JSON
DESCRIPTION_WIDTH = 60  # characters of a description in a table; JSON keeps it whole
LOG_TAIL_LINES = 20
# The llm proposer's saved exchange: prompt_<n>.md and reply_<n>.md for each attempt; more
# than any proposer's attempts are not listed.
PROPOSAL_FILE_RE = re.compile(r"(?P<kind>prompt|reply)_(?P<attempt>[0-9]{1,4})\.md")
MAX_PROPOSAL_FILES = 32
EXPORT_FORMATS = ("tsv", "parquet", "jsonl")
DEFAULT_EXPORT_NAMES = {"tsv": "results.tsv", "parquet": "ledger.parquet", "jsonl": "ledger.jsonl"}
# Parquet columns holding dicts are stored as JSON text: exact round trips, whatever the keys.
PARQUET_JSON_COLUMNS_KEY = b"autoresearch.json_columns"

# The columns of the leaderboard table: (header, key of a row, right-aligned?).
TABLE_COLUMNS = (
    ("rank", "rank", True),
    ("candidate", "id", False),
    ("val_bpb", "mean", True),
    ("runs", "runs", True),
    ("delta", "delta", True),
    ("mem GB", "memory_gb", True),
    ("status", "status", False),
    ("proposer", "proposer", False),
    ("lineage depth", "lineage_depth", True),
    ("description", "description", False),
)


# --------------------------------------------------------------------------- loading


def load_records(ledger: Ledger) -> list[Record]:
    """Every readable record; one clear line when there are none."""
    records = ledger.records()
    if not records:
        raise UserError(EMPTY_LEDGER)
    return records


def latest_tag(records: Iterable[Record]) -> str:
    """The tag of the newest evolve record; "" (the `autoresearch run` records) when none."""
    tags = [r.tag for r in records if r.tag]
    return tags[-1] if tags else ""


# --------------------------------------------------------------------------- leaderboard


@dataclass(frozen=True)
class Selection:
    """Which records a leaderboard or a plot shows."""

    records: list[Record]  # in ledger order
    tag: str | None  # None: every tag
    what: str  # a caption: "population of mar5 (4 of 37 experiments)"


def select(
    records: list[Record],
    *,
    tag: str | None = None,
    everything: bool = False,
    statuses: Iterable[str] = (),
    population_size: int | str = AUTO,
) -> Selection:
    """The population of `tag` (default: the latest), or with `everything`/`statuses` all of it.
    `population_size` "auto": the size the search chooses from these records.

    `everything` without a tag spans every tag. `autoresearch run` records
    (tag "") have no population: all of them are shown.
    """
    statuses = tuple(statuses)
    tags = list(dict.fromkeys(r.tag for r in records))
    if tag is not None and tag not in tags:
        shown = ", ".join(repr(t) for t in tags)
        raise UserError(f"no experiments with tag {tag!r}{did_you_mean(tag, tags)}; tags: {shown}")
    if everything and tag is None:
        chosen, name = records, "every tag"
    else:
        tag = latest_tag(records) if tag is None else tag
        chosen = tag_records(records, tag)
        name = repr(tag) if tag else "`autoresearch run`"
    if statuses:
        chosen = [r for r in chosen if r.status in statuses]
        what = f"{'/'.join(statuses)} experiments of {name}"
    elif everything or not tag:
        what = f"every experiment of {name}"
    else:
        size = strategy(chosen, population_size, 0.0).population
        members = {id(r) for r in population(chosen, size)}
        total = len(chosen)
        chosen = [r for r in chosen if id(r) in members]
        what = f"population of {name} ({len(chosen)} of {total} experiments; --all for every one)"
    return Selection(records=chosen, tag=tag, what=what)


def leaderboard_rows(
    all_records: list[Record], selected: list[Record], limit: int | None = None
) -> list[dict[str, Any]]:
    """The JSON rows of the leaderboard, best mean first (schema in docs/report.md)."""
    parent = parent_finder(all_records)
    baselines: dict[str, Record | None] = {}
    champions: dict[str, Record | None] = {}
    tag_means = {tag: means(tag_records(all_records, tag)) for tag in {r.tag for r in selected}}

    def mean(record: Record) -> float | None:
        found = tag_means[record.tag].get(source_of(record))
        return found.value if found and record.val_bpb is not None else None

    depths: dict[int, int] = {}

    def depth(record: Record) -> int:
        chain = []
        node: Record | None = record
        while node is not None and id(node) not in depths and len(chain) <= len(all_records):
            chain.append(node)
            node = parent(node)
        known = depths.get(id(node), -1) if node is not None else -1
        for i, r in enumerate(reversed(chain)):
            depths[id(r)] = known + 1 + i
        return depths[id(record)]

    order = sorted(
        range(len(selected)),
        key=lambda i: (mean(selected[i]) is None, mean(selected[i]) or 0.0, i),
    )
    rows = []
    for position, i in enumerate(order[:limit] if limit else order, 1):
        r = selected[i]
        if r.tag not in baselines:
            same_tag = tag_records(all_records, r.tag)
            baselines[r.tag] = baseline(same_tag)
            champions[r.tag] = champion(same_tag)
        base = baselines[r.tag]
        score = mean(r)
        base_score = mean(base) if base is not None else None
        delta = (
            round(score - base_score, DELTA_DIGITS)
            if score is not None and base_score is not None
            else None
        )
        found = tag_means[r.tag].get(source_of(r))
        rows.append(
            {
                "rank": position if r.val_bpb is not None else None,
                "id": r.id,
                "tag": r.tag,
                "status": r.status,
                "reason": r.reason,
                "val_bpb": r.val_bpb,
                "mean": score,
                "runs": found.runs if found and score is not None else 0,
                "delta": delta,
                "baseline": base.id if base is not None else None,
                "memory_gb": r.memory_gb,
                "proposer": r.proposer,
                "parent": r.parent,
                "lineage_depth": depth(r),
                "description": r.description,
                "commit": r.commit,
                "promoted": r.promoted,
                "champion": champions[r.tag] is r,
                "worse_than_baseline": bool(delta and delta > 0)
                and r.proposer not in (BASELINE, CALIBRATE, REPEAT),
                "cost_usd": float(r.usage.get("cost_usd", 0.0) or 0.0),
                "training_seconds": r.training_seconds,
                "created": r.created,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], fmt: str = "simple") -> str:
    """The leaderboard as text in any tabulate format; `*` marks the champion."""
    from tabulate import tabulate, tabulate_formats

    if fmt not in tabulate_formats:
        raise UserError(
            f"unknown table format {fmt!r}{did_you_mean(fmt, tabulate_formats)};"
            f" choose one of {', '.join(tabulate_formats)}"
        )
    several_tags = len({row["tag"] for row in rows}) > 1
    cells = []
    for row in rows:
        candidate = f"{row['tag']}/{row['id']}" if several_tags and row["tag"] else row["id"]
        cells.append(
            [
                "" if row["rank"] is None else str(row["rank"]),
                candidate + ("*" if row["champion"] else ""),
                "-" if row["mean"] is None else f"{row['mean']:.6f}",
                str(row["runs"] or ""),
                _format_delta(row),
                f"{row['memory_gb']:.1f}",
                row["status"],
                row["proposer"],
                str(row["lineage_depth"]),
                _shorten(row["description"] or row["reason"], DESCRIPTION_WIDTH),
            ]
        )
    return tabulate(
        cells,
        headers=[header for header, _, _ in TABLE_COLUMNS],
        tablefmt=fmt,
        disable_numparse=True,  # keep our number formats (6 decimals, signed deltas)
        colalign=["right" if right else "left" for _, _, right in TABLE_COLUMNS],
    )


def _format_delta(row: dict[str, Any]) -> str:
    if row["delta"] is None:
        return "-"
    if row["id"] == row["baseline"]:
        return "baseline"
    # A kept candidate worse than the baseline must not read as a success.
    return f"{row['delta']:+.6f}" + (" worse" if row["worse_than_baseline"] else "")


def evolve_summary(
    records: list[Record],
    *,
    threshold: float,
    stop_reason: str,
    resume: str,
    interrupted: bool = False,
    raise_with: str = "--max-experiments N",
    idle_seconds: float = 0.0,
    slots: int = 1,
) -> str:
    """The end of an evolve in plain words: what was tried, what won, where, what next.
    `records`: one tag's, with a baseline; `resume`: the command that continues the tag;
    `interrupted`: stopped by a signal, not a limit; `raise_with`: the option that raises
    the limit it stopped at; `idle_seconds`: how long slots waited for proposals, summed
    over the `slots`."""
    base, best = baseline(records), champion(records)
    assert base is not None and best is not None, "a summary needs a recorded baseline"
    tag = base.tag
    repeats = sum(r.proposer == CALIBRATE for r in records)
    remeasured = sum(r.proposer == REPEAT for r in records)
    tried = [r for r in records if r.proposer not in (BASELINE, CALIBRATE, REPEAT)]
    counts = {s: sum(r.status == s for r in tried) for s in STATUSES}
    rejected = counts.pop("invalid")  # said apart: most never trained
    outcomes = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    candidates = len(tried) - rejected
    why = stop_reason or "done"
    plural = "s" * (rejected != 1)
    lines = [
        f"{why[:1].upper()}{why[1:]}: {trained(records)} experiments trained, the baseline,"
        f" {repeats} noise repeat{'s' * (repeats != 1)}, {candidates}"
        f" candidate{'s' * (candidates != 1)} ({outcomes})"
        f" and {remeasured} repeat{'s' * (remeasured != 1)} of candidates"
        + (f"; {rejected} proposal{plural} rejected before training" if rejected else "")
        + f"; in this session {'the device' if slots == 1 else f'the {slots} slots'} waited"
        f" {idle_seconds:.0f} s{' (summed)' if slots > 1 else ''} for proposals."
    ]
    sd, table = noise(records), means(records)
    if sd is not None:
        bar = (
            f"a new candidate's first run needs a gain over {threshold:.4f} to be promoted"
            if threshold
            else "a better mean is promoted (no bar: the final re-measurement guards the result)"
            if remeasured
            else "a better mean is promoted (no bar), and nothing was re-measured: the champion"
            " may be one lucky run (evolve.remeasure, docs/evolve.md)"
        )
        lines.append(
            f"Noise: runs of the same train.py differ by {sd:.4f} val_bpb (pooled standard"
            f" deviation); scores are means over each candidate's runs, and {bar}."
        )
    base_mean, best_mean = table[source_of(base)], table[source_of(best)]
    if best is base:
        lines.append(
            f"No candidate's mean beat the baseline's: the champion is still the baseline"
            f" {base.id} (val_bpb {base_mean.value:.4f}, mean of {base_mean.runs})."
        )
    else:
        found = base_mean.value - best.val_bpb
        again = (
            f", and {base_mean.value - best_mean.value:.4f} re-measured over"
            f" {best_mean.runs} runs (mean {best_mean.value:.4f})"
            if best_mean.runs > 1
            else " (one run: not re-measured)"
        )
        lines.append(
            f"Champion: {best.id}, {found:.4f} better than the baseline {base.id}"
            f" ({base_mean.value:.4f}) as found (val_bpb {best.val_bpb:.4f}){again}; on branch"
            f" autoresearch/{tag}: {_shorten(best.description, DESCRIPTION_WIDTH)}."
            f" Its diff: `autoresearch show {best.id}`."
        )
    if interrupted:
        lines.append(f"Next: continue where it stopped with `{resume}`.")
    elif best is base:
        lines.append(
            f"Next: search longer (`{resume} {raise_with}`), or add an LLM proposer"
            " (docs/proposers.md); on a busy machine, a new tag with --budget-tokens cuts the"
            " noise."
        )
    else:
        lines.append(
            f"Next: adopt the champion in your branch (`git merge autoresearch/{tag}`),"
            f" or search on from it (`{resume} {raise_with}`)."
        )
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- show


def find_record(records: list[Record], name: str) -> Record:
    """A record by `id` (the newest of that id) or `tag/id`; a close match is suggested."""
    tag, _, exp_id = name.rpartition("/")
    matches = [r for r in records if r.id == exp_id and (not tag or r.tag == tag)]
    if matches:
        return matches[-1]
    known = [r.id for r in records] + [f"{r.tag}/{r.id}" for r in records if r.tag]
    raise UserError(
        f"no experiment {name!r}{did_you_mean(name, known)}:"
        " list them with `autoresearch leaderboard --all`"
    )


def show_text(repo: Path, state: Path, records: list[Record], record: Record, color: bool) -> str:
    """Everything about one experiment: metrics, lineage, diff against its parent, log tail."""
    chain = lineage(records, record)
    base = baseline(tag_records(records, record.tag))
    parts = [
        _show_header(record, base, color),
        _show_metrics(record),
        _show_lineage(chain, color),
        _show_diff(repo, state, record, *compared_with(records, chain), color),
        _show_log(state, record),
    ]
    files = proposal_files(state, record)
    if files:
        parts.append("proposal files:\n" + "\n".join(f"  {p}" for p in files))
    return "\n\n".join(p for p in parts if p)


def _show_header(record: Record, base: Record | None, color: bool) -> str:
    import click

    score = "-" if record.val_bpb is None else f"{record.val_bpb:.6f}"
    line = f"{record.id}  {_status_text(record.status, color)}  val_bpb {score}"
    if base is not None and base is not record and record.val_bpb is not None:
        line += f"  ({record.val_bpb - base.val_bpb:+.6f} vs baseline {base.id})"
    elif base is record:
        line += "  (the baseline)"
    lines = [click.style(line, bold=True) if color else line]
    if record.reason:
        lines.append(f"reason: {record.reason}")
    if record.description:
        lines.append(f"description: {record.description}")
    return "\n".join(lines)


def _show_metrics(r: Record) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
    pairs = [
        ("tag", r.tag or "(autoresearch run)"),
        ("proposer", r.proposer or "-"),
        ("commit", r.commit or "-"),
        ("parent", r.parent or "-"),
        ("promoted", "yes" if r.promoted else "no"),
        ("created", when),
        ("memory_gb", f"{r.memory_gb:.2f}"),
        ("training_seconds", f"{r.training_seconds:.1f}"),
        ("total_seconds", f"{r.total_seconds:.1f}"),
        ("tokens", f"{r.tokens:,}"),
        ("num_steps", f"{r.num_steps:,}"),
        ("num_params", f"{r.num_params:,}"),
        ("model depth", "-" if r.depth is None else str(r.depth)),
        ("mfu_percent", "-" if r.mfu_percent is None else f"{r.mfu_percent:.2f}"),
        ("seed", str(r.seed)),
        ("device", r.device or "-"),
    ]
    if r.usage:
        pairs.append(("usage", _format_usage(r.usage)))
    if r.timings:
        pairs.append(("timings", ", ".join(f"{k} {v:.1f} s" for k, v in r.timings.items())))
    if r.fingerprints:
        pairs.append(
            ("fingerprints", ", ".join(f"{k} {v[:12]}" for k, v in r.fingerprints.items()))
        )
    return "\n".join(f"  {k + ':':<18}{v}" for k, v in pairs)


def _format_usage(usage: dict[str, float]) -> str:
    parts = []
    for key, value in usage.items():
        if key == "cost_usd":
            parts.append(f"${value:.4f}")
        elif key == "seconds":
            parts.append(f"{value:.1f} s")
        else:
            parts.append(f"{key} {value:,.0f}" if isinstance(value, (int, float)) else key)
    return ", ".join(parts)


def _show_lineage(chain: list[Record], color: bool) -> str:
    if len(chain) == 1:
        return "lineage: no parent (a baseline)"
    lines = [f"lineage ({len(chain) - 1} back to the baseline):"]
    for r in chain:
        score = "-" if r.val_bpb is None else f"{r.val_bpb:.6f}"
        status = _status_text(f"{r.status:<8}", color, r.status)
        lines.append(f"  {r.id:<10} {score:>9}  {status} {_shorten(r.description, 70)}")
    return "\n".join(lines)


def compared_with(records: list[Record], chain: list[Record]) -> tuple[Record | None, str]:
    """What to diff against: the parent; for an `autoresearch run` record, the run before it."""
    record = chain[0]
    if len(chain) > 1:
        return chain[1], ""
    if record.tag or record.parent:
        return None, ""
    before = records[: next(i for i, r in enumerate(records) if r is record)]
    previous = [r for r in before if not r.tag and r.commit]
    return (previous[-1], ", against the previous `autoresearch run`") if previous else (None, "")


def _show_diff(
    repo: Path, state: Path, record: Record, parent: Record | None, why: str, color: bool
) -> str:
    if parent is None:
        return ""
    title = f"diff {parent.id} -> {record.id} ({TRAIN_FILE}{why}):"
    text = diff_between(repo, state, parent, record)
    if text is None:
        return f"{title}\n  not available: commit {record.commit[:12] or '-'} is not in this repo"
    if not text.strip():
        return f"{title}\n  (identical {TRAIN_FILE})"
    return title + "\n" + (colorize_diff(text) if color else text)


def diff_between(repo: Path, state: Path, old: Record, new: Record) -> str | None:
    """The diff of train.py from `old` to `new`: git's, or where the commits are gone (another
    clone, a gc) the run folders' copies; None when neither has them."""
    text = git_diff(repo, old.commit, new.commit)
    return _snapshot_diff(state, old, new) if text is None else text


def git_diff(repo: Path, old: str, new: str) -> str | None:
    """`git diff old new -- train.py`, or None when either commit is unknown here. No
    external diff or textconv program: .git/config and .gitattributes could name any."""
    import git

    if not old or not new:
        return None
    try:
        with open_repo(repo) as r:
            return r.git.diff("--no-ext-diff", "--no-textconv", old, new, "--", TRAIN_FILE)
    except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def _snapshot_diff(state: Path, parent: Record, record: Record) -> str | None:
    import difflib

    old = run_dir(state, parent.id) / TRAIN_FILE
    new = run_dir(state, record.id) / TRAIN_FILE
    if not (old.is_file() and new.is_file()):
        return None
    lines = difflib.unified_diff(
        old.read_text(errors="replace").splitlines(),
        new.read_text(errors="replace").splitlines(),
        f"a/{TRAIN_FILE}",
        f"b/{TRAIN_FILE}",
        lineterm="",
    )
    return "\n".join(lines)


def colorize_diff(text: str) -> str:
    import click

    styles = {"+++": {"bold": True}, "---": {"bold": True}, "@@": {"fg": "cyan"}}
    out = []
    for line in text.splitlines():
        style = next((s for prefix, s in styles.items() if line.startswith(prefix)), None)
        if style is None and line[:1] in "+-":
            style = {"fg": "green" if line[0] == "+" else "red"}
        out.append(click.style(line, **style) if style else line)
    return "\n".join(out)


def _status_text(text: str, color: bool, status: str | None = None) -> str:
    import click

    colors = {"keep": "green", "discard": "yellow", "crash": "red", "timeout": "red"}
    fg = colors.get(status or text.strip(), "magenta")
    return click.style(text, fg=fg) if color else text


def _show_log(state: Path, record: Record) -> str:
    path, tail = log_lines(state, record)
    if path is None:
        return ""
    return f"log tail ({path}, last {len(tail)} lines):\n" + "\n".join(f"  {ln}" for ln in tail)


def log_lines(state: Path, record: Record) -> tuple[Path | None, list[str]]:
    """(the run's log, its last LOG_TAIL_LINES lines, redacted one by one: the first may be
    cut inside a secret the candidate found); (None, []) when it has none."""
    path = run_dir(state, record.id) / RUN_LOG
    if not path.is_file():
        return None, []
    mask = redactor()
    return path, [mask(line) for line in log_tail(path, LOG_TAIL_LINES).splitlines()]


def proposal_files(state: Path, record: Record) -> list[Path]:
    """The proposer's prompt_<n>.md and reply_<n>.md files saved with the run (in its
    PROPOSAL_DIR: files the candidate wrote beside them are not its proposer's), in the
    order of the attempts, at most MAX_PROPOSAL_FILES."""
    folder = run_dir(state, record.id) / PROPOSAL_DIR
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = PROPOSAL_FILE_RE.fullmatch(path.name)
        if match:
            found.append((match["kind"] == "reply", int(match["attempt"]), path))
    return [path for *_, path in sorted(found)[:MAX_PROPOSAL_FILES]]


# --------------------------------------------------------------------------- export


def export(ledger: Ledger, fmt: str, path: Path | None) -> int:
    """Write the ledger as `fmt` to `path` (None: stdout, text formats only); the record count."""
    import sys

    records = load_records(ledger)
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if path is None and fmt == "parquet":
        raise UserError("parquet is binary: give a file with -o, for example -o ledger.parquet")
    try:
        if fmt == "tsv" and path is not None:
            ledger.export_tsv(path)  # the original five columns, written by the ledger itself
        elif fmt == "tsv":
            tmp = _stdout_via_tmp(ledger.export_tsv)
            sys.stdout.write(tmp)
        elif fmt == "jsonl":
            text = "".join(
                json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in records
            )
            if path is None:
                sys.stdout.write(text)
            else:
                path.write_text(text, encoding="utf-8")
        else:
            write_parquet(records, path)
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {e.strerror or e}: choose another path with -o"
        ) from None
    return len(records)


def _stdout_via_tmp(write: Callable[[Path], None]) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / DEFAULT_EXPORT_NAMES["tsv"]
        write(target)
        return target.read_text()


def parquet_schema() -> Any:
    """One column per `Record` field, typed from its annotation; dicts as JSON text."""
    import pyarrow as pa

    types = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
    fields, json_columns = [], []
    for f in dataclasses.fields(Record):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        base = name.split("|")[0].strip()  # "float | None" -> float, nullable
        if base in types:
            fields.append(pa.field(f.name, types[base]))
        else:  # dict[...] and anything newer: JSON keeps it exact
            fields.append(pa.field(f.name, pa.string()))
            json_columns.append(f.name)
    return pa.schema(fields, metadata={PARQUET_JSON_COLUMNS_KEY: ",".join(json_columns).encode()})


def write_parquet(records: list[Record], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    json_columns = _json_columns(schema)
    columns = {}
    for field in schema:
        values = [getattr(r, field.name) for r in records]
        if field.name in json_columns:
            values = [json.dumps(v, sort_keys=True) for v in values]
        elif pa.types.is_integer(field.type):
            values = [None if v is None else int(v) for v in values]
        elif pa.types.is_floating(field.type):
            values = [None if v is None else float(v) for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    pq.write_table(pa.table(columns, schema=schema), path)


def read_parquet(path: Path) -> list[Record]:
    """The records of a parquet export, exactly as they were written."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    json_columns = _json_columns(table.schema)
    records = []
    for row in table.to_pylist():
        for name in json_columns:
            row[name] = json.loads(row[name])
        records.append(Record.from_dict(row))
    return records


def _json_columns(schema: Any) -> set[str]:
    raw = (schema.metadata or {}).get(PARQUET_JSON_COLUMNS_KEY, b"")
    return {name for name in raw.decode().split(",") if name}


# --------------------------------------------------------------------------- status


def status_json(status: RunStatus) -> dict[str, Any]:
    """What `autoresearch status --json` prints: `running`, `pid` and each field of status.json."""
    written = dataclasses.asdict(status.state) if status.state else {}
    return {"running": status.running, "pid": status.pid, **written}


def stop_condition(records: list[Record], settings: dict[str, Any], elapsed: float) -> str:
    """When the evolve run of `records` (one tag's) stops, with how far it is, in words:
    "after 20 experiments (14 trained) or 8 h (3.2 h run)". `settings`: the tag's dotted
    settings (autoresearch/tags.py); `elapsed`: seconds it has run over all its sessions."""
    most = settings.get("evolve.max_experiments") or 0
    hours = settings.get("evolve.hours") or 0.0
    cost = settings.get("evolve.max_cost_usd") or 0.0
    parts = []
    if most:
        parts.append(f"after {most} experiments ({trained(records)} trained)")
    if hours:
        parts.append(f"after {hours:g} h ({_duration(elapsed)} run)")
    if cost:
        parts.append(f"at ${cost:.2f} spent (${spent_usd(records):.2f})")
    return " or ".join(parts) or "when stopped (no limit set)"


def format_status(status: RunStatus, records: list[Record], now: float | None = None) -> str:
    """What `autoresearch status` prints: the live run, or that nothing runs and the last record."""
    now = time.time() if now is None else now
    s = status.state or EvolveStatus()
    if not status.running:
        lines = ["no evolve run is going"]
        if s.tag is not None:
            lines[0] += (
                f" (the last one, tag {s.tag!r}, pid {s.pid}, stopped after"
                f" {s.experiments_done} experiments)"
            )
        if not records:
            raise UserError(EMPTY_LEDGER)
        lines.append("last experiment: " + _record_line(records[-1], now))
        best = champion(tag_records(records, records[-1].tag))  # the leaderboard's starred row
        if best is not None and best is not records[-1]:
            lines.append("best of its tag: " + _record_line(best, now))
        return "\n".join(lines)
    since = f", for {_duration(now - s.started)}" if s.started is not None else ""
    tag = f"tag {s.tag!r}, " if s.tag else ""  # status.json may not be written yet
    lines = [f"evolve is running: {tag}pid {status.pid}{since}"]
    for cid, began in s.training.items():
        line = f"experiment {cid}: training"
        budget = s.budget_seconds
        if isinstance(began, (int, float)) and budget:
            elapsed = max(0.0, now - began)
            line += f", {elapsed:.0f} of {budget:.0f} s ({min(elapsed / budget, 1.0):.0%})"
        lines.append(line)
    if not s.training:
        lines.append(f"phase: {s.phase or 'starting'}")
    lines.append(f"experiments done: {s.experiments_done}")
    best = s.best  # the champion, as the engine writes it
    if best and best.get("val_bpb") is not None:
        lines.append(f"best so far: {best.get('id')} val_bpb {best['val_bpb']:.6f}")
    else:
        lines.append("best so far: -")
    lines.append(f"spend so far: ${s.spend_usd:.2f}")
    return "\n".join(lines)


def _record_line(r: Record, now: float) -> str:
    where = f"{r.tag}/{r.id}" if r.tag else r.id
    if r.val_bpb is not None:
        outcome = f"{r.status} val_bpb {r.val_bpb:.6f}"
    else:  # no score: the reason is the news
        outcome = f"{r.status} ({_shorten(r.reason, DESCRIPTION_WIDTH)})" if r.reason else r.status
    text = f"{where} {outcome}, {_duration(now - r.created)} ago"
    return text + (f": {_shorten(r.description, DESCRIPTION_WIDTH)}" if r.description else "")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
