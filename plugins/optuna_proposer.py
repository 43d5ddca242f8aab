"""The `optuna` proposer: TPE over small moves of the parent's constants.

Each proposal changes one to three tunable `ALL_CAPS = literal` constants of
the parent (which ones: the request's seeded generator), each by a move an
optuna trial samples on a range centred on the parent's value: a factor from
÷2 to ×2 for positive numbers (ints rounded, powers of two stay powers of
two), the same on the odds for fractions such as betas, so they stay inside
(0, 1). A trial's parameters are these moves, not absolute values, and its
objective is the child's val_bpb minus the parent's: the study learns that
"LR ×1.3 helps" across parents, and each proposal stays a small step from a
good parent instead of a leap across the whole space.

Learning comes from the request's history alone. Every description is the
change list `LR 0.04 -> 0.052, DEPTH 8 -> 7`, which is also what the `random`
proposer writes, so each finished experiment of either is added as a trial of
the moves it made, scored by its delta; a study rebuilt after a restart from
the ledger is the study the run had. Failures teach nothing (TPE ignores
them).

Bools and the strings the user lists in `choices` are categorical: the trial
picks the value, which may be the parent's (then it stays). Names containing
SEED are never tuned (validation would reject the change).
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

from autoresearch import hookimpl
from autoresearch.constants import (
    Value,
    describe_changes,
    parse_changes,
    read_constants,
    rewrite_constants,
)
from autoresearch.errors import UserError
from autoresearch.ledger import SCORED_STATUSES
from autoresearch.plugins import check_option_names
from autoresearch.proposal import HistoryEntry, Proposal, ProposalRequest

NAME = "optuna"
LEARNS_FROM = (NAME, "random")  # both describe their changes with `describe_changes`
MAX_CHANGES = 3  # constants moved per proposal: small steps from the parent
# A move is a log-factor up to ×/÷ MOVE_SPAN: train.py starts from a tuned baseline,
# and a child a step away from a good parent is judged against that parent.
MOVE_SPAN = 2.0
MAX_MOVE = math.log(MOVE_SPAN)
POW2_MIN = 16  # powers of two from here are sizes: they move by whole doublings
SIGNIFICANT = 3  # floats are written with three significant digits: tidy diffs
MAX_ASKS = 5  # asks per proposal before giving up on finding a change
SEED_WORD = "SEED"  # never tuned: a seed-only change measures noise
DEFAULTS: dict[str, Any] = {
    "include": None,  # only these constants (default: every tunable one)
    "exclude": (),  # never these constants
    "choices": {},  # NAME -> list of values: a categorical (e.g. strings) instead of a move
    "n_startup_trials": 4,  # random trials before TPE starts modelling: moves are few
}


@hookimpl
def register_proposers(register):
    register(NAME, OptunaProposer.from_options, "TPE over small moves of the parent's constants")


class OptunaProposer:
    """Ask/tell over moves from the parent; one study per proposer, guarded by a lock."""

    name = NAME

    def __init__(
        self,
        include: list[str] | None = None,
        exclude: list[str] | tuple[str, ...] = (),
        choices: dict[str, list[Value]] | None = None,
        n_startup_trials: int = 4,
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
                    # Each trial moves its own few constants: TPE models each move on the
                    # trials that made it, not a joint space no two trials share.
                    multivariate=False,
                )
                self._study = self._optuna.create_study(direction="minimize", sampler=sampler)
            self._learn(request.history)
            constants = read_constants(request.parent_source)
            tunable = [n for n, v in constants.items() if self._distribution(n, v) is not None]
            if not tunable:
                raise UserError("optuna proposer: train.py has no constants to tune")
            for _ in range(MAX_ASKS):
                chosen = request.rng.sample(
                    tunable, request.rng.randint(1, min(MAX_CHANGES, len(tunable)))
                )
                changes = self._ask({name: constants[name] for name in chosen})
                if changes:
                    return Proposal(
                        source=rewrite_constants(request.parent_source, changes),
                        description=describe_changes(
                            {name: (constants[name], new) for name, new in changes.items()}
                        ),
                    )
            raise UserError("optuna proposer: no move of the constants changes train.py")

    # -- asking --------------------------------------------------------------

    def _ask(self, parent: dict[str, Value]) -> dict[str, Value]:
        """New values for the `parent` constants from one trial; the unchanged ones left out.

        The trial only draws the moves: it is closed at once, and what the child scores
        is learnt from the history as after a restart, so a live study and a rebuilt one
        are the same.
        """
        space = {name: self._distribution(name, value) for name, value in parent.items()}
        trial = self._study.ask(space)
        self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        changes = {}
        for name, value in parent.items():
            sampled = trial.params[name]
            new = sampled if _categorical(space[name]) else apply_move(name, value, sampled)
            if not _same(new, value):
                changes[name] = new
        return changes

    def _wanted(self, name: str) -> bool:
        if name in self.exclude or (self.include is not None and name not in self.include):
            return False
        return SEED_WORD not in name.upper() or name in self.choices

    def _distribution(self, name: str, value: Value) -> Any:
        """What a trial samples for constant `name` at the parent's `value`; None: not tuned."""
        d = self._optuna.distributions
        if not self._wanted(name):
            return None
        if name in self.choices:
            return d.CategoricalDistribution(self.choices[name])
        if isinstance(value, bool):
            return d.CategoricalDistribution([False, True])
        if isinstance(value, (int, float)) and value > 0:
            return d.FloatDistribution(-MAX_MOVE, MAX_MOVE)  # a move, centred on the parent
        return None  # 0, negative numbers (switches, sentinels), strings without choices

    # -- learning ------------------------------------------------------------

    def _learn(self, history: tuple[HistoryEntry, ...]) -> None:
        """Add every new finished experiment of LEARNS_FROM as a trial of the moves it made."""
        for entry in history:
            improvement = _improvement(entry)
            if entry.id in self._told or improvement is None:
                continue
            self._told.add(entry.id)
            changes = parse_changes(entry.description) if entry.proposer in LEARNS_FROM else None
            params = {}
            for name, (old, new) in (changes or {}).items():
                distribution = self._distribution(name, old)
                param = None if distribution is None else _param(name, old, new, distribution)
                if param is None:
                    params = {}  # a change the study cannot express: the score is not the moves'
                    break
                params[name] = (param, distribution)
            if params:
                self._study.add_trial(
                    self._optuna.trial.create_trial(
                        params={n: p for n, (p, _) in params.items()},
                        distributions={n: d for n, (_, d) in params.items()},
                        value=improvement,
                    )
                )


def apply_move(name: str, value: int | float, move: float) -> Value:
    """The parent's `value` of constant `name` moved by the log-factor `move`.

    Ints stay ints (at least 1, and at least one step when the move rounds to none),
    powers of two from POW2_MIN move by whole doublings, fractions move on their odds.
    """
    if isinstance(value, int):
        if value >= POW2_MIN and value & (value - 1) == 0:
            doublings = round(move / math.log(2)) or (1 if move > 0 else -1)
            return value << doublings if doublings > 0 else max(1, value >> -doublings)
        new = max(1, round(value * math.exp(move)))
        if new == value:
            new = max(1, value + (1 if move > 0 else -1))
        return new
    if _fraction(name, value):
        odds = value / (1 - value) * math.exp(move)
        new = odds / (1 + odds)
        # Round the distance to the nearer end, so 0.9995 does not round to 1.
        return 1 - _significant(1 - new) if new > 0.5 else _significant(new)
    return _significant(value * math.exp(move))


def realised_move(name: str, old: Value, new: Value) -> float | None:
    """The log-factor that took `old` to `new` (on the odds for fractions); None if none can."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numbers or old <= 0 or new <= 0:
        return None
    if _fraction(name, old):
        if new >= 1:
            return None
        return math.log(new / (1 - new)) - math.log(old / (1 - old))
    return math.log(new / old)


def _param(name: str, old: Value, new: Value, distribution: Any) -> Value | None:
    """The trial parameter of a change from `old` to `new`; None when it has none."""
    if _categorical(distribution):
        return new if any(_same(new, c) for c in distribution.choices) else None
    move = realised_move(name, old, new)
    # Rounding (ints, three digits) may step just past the range; a bigger move of
    # another proposer still says which way helped: both count as the edge.
    return None if move is None else min(max(move, -MAX_MOVE), MAX_MOVE)


def _improvement(entry: HistoryEntry) -> float | None:
    """The child's score minus the parent's (negative: better), or None when not measured."""
    if entry.status not in SCORED_STATUSES or entry.delta is None:
        return None
    return float(entry.delta) if math.isfinite(entry.delta) else None


def _fraction(name: str, value: int | float) -> bool:
    # A float below 1 that is not a learning rate is a beta or a ratio: it must stay below 1.
    return isinstance(value, float) and 0 < value < 1 and "LR" not in name.upper()


def _categorical(distribution: Any) -> bool:
    return hasattr(distribution, "choices")


def _same(a: Value, b: Value) -> bool:
    # True == 1 in Python, but flipping a bool constant to 1 is still a change.
    return type(a) is type(b) and a == b


def _significant(x: float) -> float:
    """`x` rounded to SIGNIFICANT digits: tidy diffs."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, SIGNIFICANT - 1 - math.floor(math.log10(abs(x))))
