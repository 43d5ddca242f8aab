"""What an evolve tag remembers: the settings it was started with, and how long it has run.

`.autoresearch/tags/<tag>.json`, rewritten atomically after every record:

    {"settings": {"run.budget_seconds": 60.0, ..., "evolve.max_experiments": 6},
     "configured": {"run.budget_seconds": 300.0, ...},
     "recorded": 17, "elapsed_seconds": 1234.5}

`settings` are what the tag runs with; `configured` what autoresearch.toml said
when it last ran (so a note is printed only when the file was edited since);
`recorded` how many ledger records the tag had (so a lost ledger is caught).

Two kinds of settings are kept:

- **pinned** ones decide what the tag's numbers mean (the budget, the seed, the
  data, the evaluation set). Every experiment of a tag uses the same ones, so a
  `--resume` that asks for another value on the command line is refused once
  the baseline has a score: its results would not compare with the ones already
  recorded. A changed `autoresearch.toml` does not change them either (the
  caller prints the note that says so);
- **remembered** ones (the population, the proposers, the repeats, the rules of
  promotion, the limits) are used again on `--resume` unless given anew on the
  command line, and then the new value is remembered.

`elapsed_seconds` is the time the tag has been running over all its sessions, so
`--hours 8` means eight hours of search however often it was resumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch.atomic import write_text
from autoresearch.config import Config, parse_config
from autoresearch.errors import ConfigError, UserError

TAGS_DIR = "tags"  # inside the state folder
PINNED = (
    "run.budget_seconds",
    "run.budget_tokens",
    "run.seed",
    "data.source",
    "data.path",
    "data.train_shards",
    "data.sequence_len",
    "tokenizer.kind",
    "tokenizer.vocab_size",
    "eval.tokens",
)
REMEMBERED = (
    "evolve.population",
    "evolve.selection",
    "evolve.proposers",
    "evolve.calibrate",
    "evolve.noise_k",
    "evolve.min_improvement",
    "evolve.confirm",
    "evolve.remeasure",
    "evolve.max_experiments",
    "evolve.hours",
    "evolve.max_cost_usd",
    "run.slots",
    "run.executor",
    "run.ray_address",
)
# The settings `evolve` has a flag for. Of the pinned ones, the only ones a command line can
# ask to change (and is refused); of the remembered ones, how to change them on resume.
FLAGS = {
    "run.budget_seconds": "--budget",
    "run.budget_tokens": "--budget-tokens",
    "evolve.population": "--population",
    "evolve.proposers": "--proposer",
    "evolve.calibrate": "--calibrate",
    "evolve.confirm": "--confirm",
    "evolve.max_experiments": "--max-experiments",
    "evolve.hours": "--hours",
    "evolve.max_cost_usd": "--max-cost-usd",
    "run.slots": "--slots",
    "run.executor": "--executor",
    "run.ray_address": "--ray-address",
}


@dataclass
class TagState:
    settings: dict[str, Any]
    configured: dict[str, Any]  # autoresearch.toml's own values, when the tag last ran
    recorded: int = 0
    elapsed_seconds: float = 0.0


def tag_file(state: Path, tag: str) -> Path:
    return state / TAGS_DIR / f"{tag}.json"


def resume_command(tag: str) -> str:
    """The command that continues `tag`: every message that says how to go on names it."""
    return f"autoresearch evolve --resume --tag {tag}"


def known_tags(state: Path) -> list[str]:
    """The tags that remember their settings, the most recently active last."""
    files = sorted((state / TAGS_DIR).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    return [p.stem for p in files]


def settings_of(config: Config) -> dict[str, Any]:
    """The pinned and remembered settings of `config`, by dotted key."""
    out = {}
    for key in PINNED + REMEMBERED:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def load(state: Path, tag: str) -> TagState | None:
    """What `tag` remembers; None for a tag started before tags remembered anything."""
    path = tag_file(state, tag)
    # Deleting it would let the tag go on with other settings, unchecked: not the first advice.
    damaged = (
        f"{path} is damaged: restore it from a backup, or start a new tag (deleting it lets"
        f" {tag!r} go on with today's settings, unchecked against its results)"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        settings = {k: v for k, v in data["settings"].items() if k in PINNED + REMEMBERED}
        configured = {k: v for k, v in data.get("configured", {}).items() if k in settings}
        elapsed = float(data.get("elapsed_seconds", 0.0))
        recorded = int(data.get("recorded", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}): fix its permissions") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(damaged) from None
    if not (math.isfinite(elapsed) and elapsed >= 0):
        raise UserError(f"{damaged} (elapsed_seconds is {elapsed})")
    try:  # the same checks as autoresearch.toml: a wrong type must not surface later
        raw: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        parse_config(raw)
    except ConfigError as e:
        raise UserError(f"{damaged}: {e}") from None
    return TagState(settings, configured, recorded, elapsed)


def save(state: Path, tag: str, tag_state: TagState) -> None:
    path = tag_file(state, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "settings": tag_state.settings,
        "configured": tag_state.configured,
        "recorded": tag_state.recorded,
        "elapsed_seconds": round(tag_state.elapsed_seconds, 3),
    }
    write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def resume_overrides(
    remembered: TagState,
    configured: dict[str, Any],
    explicit: dict[str, Any],
    tag: str,
    measured: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """(overrides, notes) that resume `tag` with what it was started with.

    `configured`: the settings of autoresearch.toml now; `explicit`: the settings
    given on this command line. Once the tag has `measured` its baseline, a pinned
    setting asked for with another value is refused, and an edit of the toml is
    kept out with a note; before, nothing compares with them (a failed baseline can
    be fixed with another budget). A remembered setting given anew wins.
    """
    saved = remembered.settings
    for key in PINNED if measured else ():
        if key in explicit and key in saved and _differs(explicit[key], saved[key]):
            raise UserError(
                f"tag {tag!r} was started with {key} = {saved[key]!r}, not {explicit[key]!r}:"
                " its results would not compare; start a new tag instead"
                f" (`autoresearch evolve` with {FLAGS[key]} and no --resume)"
            )
    free = () if measured else PINNED  # nothing measured yet: the toml's values go
    overrides = {k: v for k, v in saved.items() if k not in explicit and k not in free}
    notes = []
    for key in (k for k in PINNED + REMEMBERED if k in overrides and k in configured):
        now, then = configured[key], remembered.configured.get(key, configured[key])
        if _differs(now, then) and _differs(now, saved[key]):
            if key in PINNED:
                why = "the value its results were measured with"
            else:
                why = f"as it started; {FLAGS[key]} changes it" if key in FLAGS else "as it started"
            notes.append(
                f"note: autoresearch.toml now says {key} = {_shown(configured[key])}; tag {tag!r}"
                f" keeps {_shown(saved[key])}, {why}"
            )
    return overrides, notes


def _shown(value: Any) -> str:
    return "automatic" if value in ([], ()) else repr(value)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) != float(b)
    return list(a) != list(b) if isinstance(a, (list, tuple)) else a != b
