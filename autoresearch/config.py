"""One settings object from `autoresearch.toml` plus command-line overrides.

The file has one table per section below; every key is optional and falls
back to the default written here. Unknown sections or keys, wrong types and
out-of-range values are refused with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

CONFIG_FILE = "autoresearch.toml"
DEVICES = ("auto", "cuda", "cpu", "mps")
ISOLATION_MODES = ("auto", "on", "off")
TOKENIZER_KINDS = ("bpe", "byte")
SELECTIONS = ("rank", "none")
EXECUTORS = ("local", "ray")
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AUTO = "auto"
# Settings that may be "auto" (chosen from the measured noise, autoresearch.population) or a
# number of this type.
AUTO_TYPES = {"evolve.population": int, "evolve.noise_k": float, "evolve.remeasure": float}
TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    tuple: "a list of strings",
}


@dataclass(frozen=True)
class RunSettings:
    budget_seconds: float = 300.0  # training time of one experiment, measured by the harness
    startup_seconds: float = (
        180.0  # allowance for imports, compile and hand-over before a hard kill
    )
    # Training tokens per experiment (0: off). When set, training ends after this many tokens
    # from the harness loader, and budget_seconds is only the cap: results no longer depend on
    # how fast or how loaded the machine is, so they compare across machines.
    budget_tokens: int = 0
    seed: int = 42
    device: str = "auto"  # auto picks cuda when available, else cpu
    # Linux namespaces around the candidate (see docs/threat-model.md): auto uses them where
    # the system allows unprivileged user namespaces; on requires them; off never uses them.
    isolation: str = "auto"
    network: bool = True  # false: the candidate runs without network access (needs isolation)
    # Caps on one experiment (harness.limits); 0 derives one from the machine when it starts:
    # 3/4 of the available memory, half the free disk, max(4096, 64 per CPU) processes.
    memory_gb: float = 0.0  # the run's processes together (CPU memory; not the GPU's)
    max_processes: int = 0  # processes and threads together
    disk_gb: float = 0.0  # the run folder, with the candidate's HOME and TMPDIR in it
    # Experiments at the same time (docs/more-gpus.md): with CUDA one per GPU, on a CPU an
    # equal share of the cores each; with Ray, tasks in flight on the cluster.
    slots: int = 1
    executor: str = "local"  # local (this machine) | ray (a Ray cluster)
    ray_address: str = ""  # ray only: the cluster ("auto": the one `ray start` made; "": new)
    ray_gpus: float = 1.0  # ray only: GPUs each experiment asks for (0 on a cluster of CPUs)
    ray_cpus: float = 1.0  # ray only: CPUs each experiment asks for

    def describe_budget(self) -> str:
        if self.budget_tokens:
            return f"{self.budget_tokens:,} tokens (at most {self.budget_seconds:.0f} s)"
        return f"{self.budget_seconds:.0f} s"


@dataclass(frozen=True)
class DataSettings:
    source: str = (
        "stdlib"  # stdlib | climbmix | tinystories | folder (see `autoresearch prepare --help`)
    )
    path: str = ""  # the folder, for source = "folder"
    url: str = ""  # a mirror for the download sources; empty means the source's own
    train_shards: int = 8  # climbmix: training shards to download (~100 MB each)
    sequence_len: int = 2048  # tokens per row, for training and evaluation


@dataclass(frozen=True)
class TokenizerSettings:
    kind: str = "bpe"  # bpe (trained on the data) | byte (256 byte values, nothing to train)
    vocab_size: int = 8192  # bpe only


@dataclass(frozen=True)
class EvalSettings:
    tokens: int = (
        10 * 2**20
    )  # validation tokens scored; fixed, so every candidate sees the same set
    batch_size: int = 32  # rows per evaluation forward pass


@dataclass(frozen=True)
class EvolveSettings:
    # candidates kept alive; 1 is the original greedy loop; auto: 1 or 4, from the noise
    population: int | str = AUTO
    # how parents are chosen: rank (the population rule), or none (always the baseline:
    # candidates are independent changes of it, random search with the random proposer)
    selection: str = "rank"
    proposers: tuple = ()  # e.g. ["llm:anthropic/claude-sonnet-4-5", "optuna"]; empty: automatic
    tag: str = ""  # names the branches autoresearch/<tag>/...; empty: today's date
    max_experiments: int = 0  # stop after this many experiments in the tag (0: no limit)
    hours: float = 0.0  # stop after this many hours (0: no limit)
    max_cost_usd: float = 0.0  # stop when proposers have spent this much (0: no limit)
    calibrate: int = 2  # extra runs of the baseline, to measure the noise of val_bpb
    min_improvement: float = 0.0  # a promotion's mean must beat the champion's by this...
    # ...and by noise_k standard errors of the difference of the two means (auto: 0, since
    # the final re-measurement, not a bar, guards the result)
    noise_k: float | str = AUTO
    confirm: int = 0  # re-runs of a would-be champion before it is promoted (0: none)
    # share of the experiments (or hours) kept to re-measure the best candidates at the end
    # (auto: 6% when the noise is calibrated, else none)
    remeasure: float | str = AUTO
    prefetch: int = 2  # proposals prepared while the device trains (0: propose, then train)
    max_invalid: int = 5  # invalid proposals in a row before the run stops
    fix_attempts: int = 1  # proposals that try to fix a crashed candidate, from its log
    proposal_timeout: float = 3600.0  # seconds before a proposal is given up (0: never)


@dataclass(frozen=True)
class Config:
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    evolve: EvolveSettings = field(default_factory=EvolveSettings)
    # [proposers.<name>] tables: options for that proposer, and its `weight` (default 1)
    proposers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def proposer_options(self, spec: str) -> tuple[float, dict[str, Any]]:
        """(weight, options) for a proposer spec such as `llm:openai/gpt-4.1` or `optuna`."""
        options = dict(self.proposers.get(spec.partition(":")[0], {}))
        return float(options.pop("weight", 1.0)), options

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "run": RunSettings,
    "data": DataSettings,
    "tokenizer": TokenizerSettings,
    "eval": EvalSettings,
    "evolve": EvolveSettings,
    "proposers": dict,
}


def load_config(repo: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `repo/autoresearch.toml` (if any), apply `section.key` overrides, validate."""
    raw: dict[str, Any] = {}
    if repo is not None and (repo / CONFIG_FILE).exists():
        path = repo / CONFIG_FILE
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # not TOML, or not even text
            raise ConfigError(f"{path} is not valid TOML: {e}; fix the file and retry") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> Config:
    """Build a validated `Config` from a parsed TOML document."""
    sections = {}
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown section [{name}] in {CONFIG_FILE}{did_you_mean(name, SECTIONS)};"
                f" valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"'{name}' in {CONFIG_FILE} must be a table like [{name}]")
        if name == "proposers":
            sections[name] = _parse_proposers(table)
        else:
            sections[name] = _parse_section(name, SECTIONS[name], table)
    config = Config(**sections)
    _validate(config)
    return config


def _parse_section(name: str, cls: type, table: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{name}.{key}' in {CONFIG_FILE}{did_you_mean(key, fields)};"
                f" valid keys in [{name}]: {', '.join(fields)}"
            )
        values[key] = _coerce(f"{name}.{key}", fields[key].default, value)
    return cls(**values)


def _parse_proposers(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Free-form options per proposer; only `weight` is checked here, the rest by the proposer."""
    for name, options in table.items():
        if not isinstance(options, dict):
            raise ConfigError(f"'proposers.{name}' must be a table like [proposers.{name}]")
        weight = options.get("weight", 1.0)
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not (number and math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"'proposers.{name}.weight' must be a number >= 0, got {weight!r}")
    return table


def _coerce(key: str, default: Any, value: Any) -> Any:
    """Accept the default's type (an int where a float is expected is fine); "auto" or a
    number for the settings that can be chosen automatically."""
    if key in AUTO_TYPES:
        if value == AUTO:
            return value
        if isinstance(value, str):  # from the command line
            try:
                value = AUTO_TYPES[key](value)
            except ValueError:
                raise ConfigError(f"'{key}' must be auto or a number, got {value!r}") from None
        default = AUTO_TYPES[key]()
    want = type(default)
    if want is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is float and isinstance(value, float) and not math.isfinite(value):
        # TOML has inf and nan, and click parses them: no budget or limit means either.
        raise ConfigError(f"'{key}' must be a finite number, got {value}")
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    example = '["optuna"]' if want is tuple else repr(default)  # TOML, not Python
    raise ConfigError(
        f"'{key}' must be {TYPE_NAMES[want]}, got {type(value).__name__} {value!r}"
        f" (for example {key.split('.')[1]} = {example})"
    )


def _validate(c: Config) -> None:
    positive = {
        "run.budget_seconds": c.run.budget_seconds,
        "run.startup_seconds": c.run.startup_seconds,
        "data.train_shards": c.data.train_shards,
        "data.sequence_len": c.data.sequence_len,
        "tokenizer.vocab_size": c.tokenizer.vocab_size,
        "eval.tokens": c.eval.tokens,
        "eval.batch_size": c.eval.batch_size,
        "run.slots": c.run.slots,
        "evolve.population": 1 if c.evolve.population == AUTO else c.evolve.population,
        "evolve.max_invalid": c.evolve.max_invalid,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' must be positive, got {value}")
    if not 0 <= c.run.seed < 2**32:  # numpy's generators refuse negative seeds
        raise ConfigError(f"'run.seed' must be from 0 to {2**32 - 1}, got {c.run.seed}")
    if c.run.budget_tokens < 0:
        raise ConfigError(f"'run.budget_tokens' must be 0 (off) or more, got {c.run.budget_tokens}")
    for key in ("memory_gb", "max_processes", "disk_gb"):
        if getattr(c.run, key) < 0:
            raise ConfigError(f"'run.{key}' must be 0 (derived) or more, got {getattr(c.run, key)}")
    for key in ("ray_gpus", "ray_cpus"):
        if getattr(c.run, key) < 0:
            raise ConfigError(f"'run.{key}' must be 0 or more, got {getattr(c.run, key)}")
    for key in ("max_experiments", "hours", "max_cost_usd", "calibrate", "min_improvement",
                "noise_k", "fix_attempts", "prefetch", "proposal_timeout", "confirm"):  # fmt: skip
        value = getattr(c.evolve, key)
        if value != AUTO and value < 0:
            raise ConfigError(f"'evolve.{key}' must be 0 or more, got {value}")
    if c.evolve.remeasure != AUTO and not 0 <= c.evolve.remeasure <= 0.5:
        raise ConfigError(
            f"'evolve.remeasure' must be auto or a share from 0 to 0.5, got {c.evolve.remeasure}"
        )
    if c.evolve.selection not in SELECTIONS:
        raise ConfigError(
            f"'evolve.selection' must be one of {', '.join(SELECTIONS)},"
            f" got {c.evolve.selection!r}"
        )
    if c.evolve.tag and not TAG_PATTERN.fullmatch(c.evolve.tag):
        raise ConfigError(
            f"'evolve.tag' {c.evolve.tag!r} cannot name a git branch: use letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    if c.run.isolation not in ISOLATION_MODES:
        raise ConfigError(
            f"'run.isolation' must be one of {', '.join(ISOLATION_MODES)}, got {c.run.isolation!r}"
        )
    if not c.run.network and c.run.isolation == "off":
        raise ConfigError("'run.network = false' needs 'run.isolation' auto or on, not off")
    if c.run.executor not in EXECUTORS:
        raise ConfigError(
            f"'run.executor' must be one of {', '.join(EXECUTORS)}, got {c.run.executor!r}"
        )
    if c.run.device not in DEVICES:
        raise ConfigError(f"'run.device' must be one of {', '.join(DEVICES)}, got {c.run.device!r}")
    if c.tokenizer.kind not in TOKENIZER_KINDS:
        raise ConfigError(
            f"'tokenizer.kind' must be one of {', '.join(TOKENIZER_KINDS)},"
            f" got {c.tokenizer.kind!r}"
        )
    if c.tokenizer.kind == "bpe" and c.tokenizer.vocab_size < 257:
        raise ConfigError("'tokenizer.vocab_size' must be at least 257 for bpe (256 bytes + BOS)")
    if c.eval.tokens < c.data.sequence_len:
        raise ConfigError("'eval.tokens' must be at least one row of 'data.sequence_len' tokens")
