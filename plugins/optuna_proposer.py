"""The `optuna` proposer: Bayesian optimisation (TPE) over the constants of train.py.

Each proposal is an optuna trial: every tunable `ALL_CAPS = literal`
constant of the parent gets a value from the study, and the parent is
rewritten in place. The search space is fixed the first time a constant is
seen, around its value then (log scale for learning rates, sizes and other
positive numbers), because optuna needs a trial's distributions to stay put.

Learning comes from the request's history. Every description this proposer
writes is unique and parseable ("optuna trial 7: LR=0.05, DEPTH=6"), so a
finished experiment is told to the trial that asked for it; after a restart
the same descriptions, read back from the ledger, are added as finished
trials of the new study. Crashes, timeouts and invalid proposals are told as
failures. The parent's own score, when the history has it, is added as a
trial too, so the study starts from the baseline (and from the wins of other
proposers) instead of from nothing.

Bools are categorical; strings are tuned only over values the user lists in
the `choices` option, since nothing in a file says what else a string may be.
Names containing SEED are never tuned (validation would reject the change).
"""

from __future__ import annotations

import ast
import math
import re
import threading
import warnings
from typing import Any

from autoresearch import hookimpl
from autoresearch.constants import Value, format_value, read_constants, rewrite_constants
from autoresearch.errors import UserError
from autoresearch.ledger import SCORED_STATUSES, STATUSES
from autoresearch.plugins import check_option_names
from autoresearch.proposal import HistoryEntry, Proposal, ProposalRequest
from autoresearch.syntax import parse

NAME = "optuna"
# A positive float is searched from value/4 to value*4: train.py starts from a tuned
# baseline, and on a 40-trial budget a narrower range is found faster than two decades.
FLOAT_SPAN = 4.0
INT_SPAN = 2  # an int from value/2 to value*2 (at least value+2)
LOG_INT_MIN = 16  # ints from here are sizes or step counts: log scale
POW2_MIN = 16  # powers of two from here stay powers of two: value/4 .. value*4
POW2_STEPS = 2
SIGNIFICANT = 3  # floats are written with three significant digits: tidy diffs
MAX_ASKS = 5  # asks per proposal before giving up on finding a change
SEED_WORD = "SEED"  # never tuned: a seed-only change measures noise
DESCRIPTION = re.compile(r"^optuna trial (\d+): (.+)$")
DEFAULTS: dict[str, Any] = {
    "include": None,  # only these constants (default: every tunable one)
    "exclude": (),  # never these constants
    "choices": {},  # NAME -> list of values: a categorical (e.g. strings) instead of a range
    "n_startup_trials": 8,  # random trials before TPE starts modelling
}


@hookimpl
def register_proposers(register):
    register(NAME, OptunaProposer.from_options, "Bayesian optimisation (TPE) over the constants")


class OptunaProposer:
    """Ask/tell over the parent's constants; one study per proposer, guarded by a lock."""

    name = NAME

    def __init__(
        self,
        include: list[str] | None = None,
        exclude: list[str] | tuple[str, ...] = (),
        choices: dict[str, list[Value]] | None = None,
        n_startup_trials: int = 8,
    ) -> None:
        import optuna  # lazily: only a run that uses this proposer pays for the import

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the reporter speaks, not optuna
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self._optuna = optuna
        self.include = None if include is None else set(include)
        self.exclude = set(exclude)
        self.choices = {name: list(values) for name, values in (choices or {}).items()}
        for name, values in self.choices.items():
            if not values or not all(isinstance(v, (bool, int, float, str)) for v in values):
                raise UserError(f"optuna proposer: choices for {name} must be a non-empty list")
        if not isinstance(n_startup_trials, int) or n_startup_trials < 1:
            raise UserError(f"optuna proposer: n_startup_trials must be >= 1: {n_startup_trials}")
        self.n_startup_trials = n_startup_trials
        self._lock = threading.Lock()
        self._study: Any = None
        self._space: dict[str, Any] = {}  # constant -> optuna distribution, fixed at first sight
        self._pending: dict[str, Any] = {}  # description -> the asked trial awaiting its result
        self._told: set[str] = set()  # history ids already learnt from

    @classmethod
    def from_options(cls, options: dict) -> OptunaProposer:
        check_option_names("optuna", options, DEFAULTS)
        return cls(**{**DEFAULTS, **options})

    def propose(self, request: ProposalRequest) -> Proposal:
        with self._lock:
            if self._study is None:
                sampler = self._optuna.samplers.TPESampler(
                    seed=request.rng.randrange(2**32),
                    n_startup_trials=self.n_startup_trials,
                    multivariate=True,  # hyperparameters interact (LR and batch size)
                )
                self._study = self._optuna.create_study(direction="minimize", sampler=sampler)
            constants = read_constants(request.parent_source)
            for name, value in constants.items():
                if name not in self._space and self._wanted(name):
                    distribution = self._distribution(name, value)
                    if distribution is not None:
                        self._space[name] = distribution
            self._learn(request, constants)
            space = {name: self._space[name] for name in constants if name in self._space}
            if not space:
                raise UserError("optuna proposer: train.py has no constants to tune")
            return self._ask(request.parent_source, constants, space)

    # -- asking --------------------------------------------------------------

    def _ask(self, parent: str, constants: dict[str, Value], space: dict[str, Any]) -> Proposal:
        for _ in range(MAX_ASKS):
            trial = self._study.ask(space)
            values = {name: _tidy(trial.params[name]) for name in space}
            changes = {n: v for n, v in values.items() if not _same(v, constants[n])}
            if changes:
                description = f"optuna trial {trial.number}: " + ", ".join(
                    f"{name}={format_value(value)}" for name, value in values.items()
                )
                self._pending[description] = trial
                return Proposal(source=rewrite_constants(parent, changes), description=description)
            # The suggestion is the parent itself: nothing to train, nothing to learn.
            self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        raise UserError("optuna proposer: the search space has no value left that differs")

    def _wanted(self, name: str) -> bool:
        if name in self.exclude or (self.include is not None and name not in self.include):
            return False
        return SEED_WORD not in name.upper() or name in self.choices

    def _distribution(self, name: str, value: Value) -> Any:
        """The fixed search range for constant `name`, inferred from its current `value`."""
        d = self._optuna.distributions
        if name in self.choices:
            return d.CategoricalDistribution(self.choices[name])
        if isinstance(value, bool):
            return d.CategoricalDistribution([False, True])
        if isinstance(value, int):
            if value < 1:
                return None  # 0 and negative ints are switches or sentinels: no scale
            if value >= POW2_MIN and value & (value - 1) == 0:
                steps = range(-POW2_STEPS, POW2_STEPS + 1)
                return d.CategoricalDistribution(
                    [value * 2**k if k >= 0 else value >> -k for k in steps]
                )
            low, high = max(1, value // INT_SPAN), max(value * INT_SPAN, value + 2)
            return d.IntDistribution(low, high, log=value >= LOG_INT_MIN)
        if isinstance(value, float) and value > 0:
            if value < 1 and "LR" not in name.upper():
                # A fraction (beta, ratio): stay below 1, approaching it as closely as
                # the value's distance from 1 allows.
                high = _significant(1 - (1 - value) / FLOAT_SPAN)
                if value >= 0.5:
                    low = _significant(max(value / FLOAT_SPAN, 1 - (1 - value) * FLOAT_SPAN))
                    return d.FloatDistribution(low, high)
                low = _significant(value / FLOAT_SPAN)
                return d.FloatDistribution(
                    low, min(high, _significant(value * FLOAT_SPAN)), log=True
                )
            low, high = _significant(value / FLOAT_SPAN), _significant(value * FLOAT_SPAN)
            return d.FloatDistribution(low, high, log=True)
        return None  # zero or negative floats, and strings without choices

    # -- learning ------------------------------------------------------------

    def _learn(self, request: ProposalRequest, constants: dict[str, Value]) -> None:
        state = self._optuna.trial.TrialState
        for entry in request.history:
            outcome = _outcome(entry)
            if entry.id in self._told or outcome is None:
                continue
            trial = self._pending.pop(entry.description, None)
            if trial is not None:
                self._told.add(entry.id)
                if outcome == "fail":
                    self._study.tell(trial, state=state.FAIL)
                else:
                    self._study.tell(trial, outcome)
                continue
            if outcome == "fail":
                continue  # a failure of a trial this study never asked teaches TPE nothing
            params = parse_description(entry.description)  # a trial of an earlier process
            if params is None:
                if entry.id != request.parent_id:
                    continue  # another proposer's candidate: usable once it is a parent
                params = constants
            self._told.add(entry.id)
            self._add_trial(params, outcome)

    def _add_trial(self, params: dict[str, Value], value: float) -> None:
        """Add a finished trial from another process or proposer, when it fits the space."""
        known = {name: v for name, v in params.items() if name in self._space}
        if not known or not all(_contains(self._space[n], v) for n, v in known.items()):
            return
        trial = self._optuna.trial.create_trial(
            params=known, distributions={n: self._space[n] for n in known}, value=value
        )
        self._study.add_trial(trial)


def parse_description(description: str) -> dict[str, Value] | None:
    """The constants of an `optuna trial N: A=1, B=2.5` description, or None."""
    match = DESCRIPTION.match(description.strip())
    if not match:
        return None
    try:
        call = parse(f"f({match.group(2)})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            return None
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError):
        return None


def _outcome(entry: HistoryEntry) -> float | str | None:
    """val_bpb of a finished experiment, 'fail', or None while it is not finished."""
    if (
        entry.status in SCORED_STATUSES
        and entry.val_bpb is not None
        and math.isfinite(entry.val_bpb)
    ):
        return float(entry.val_bpb)
    if entry.status in STATUSES:
        return "fail"
    return None


def _contains(distribution: Any, value: Value) -> bool:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return any(_same(value, choice) for choice in choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def _same(a: Value, b: Value) -> bool:
    # True == 1 in Python, but flipping a bool constant to 1 is still a change.
    return type(a) is type(b) and a == b


def _tidy(value: Any) -> Value:
    return _significant(value) if isinstance(value, float) else value


def _significant(x: float) -> float:
    """`x` rounded to SIGNIFICANT digits; bounds rounded too, so rounded values stay inside."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, SIGNIFICANT - 1 - math.floor(math.log10(abs(x))))
