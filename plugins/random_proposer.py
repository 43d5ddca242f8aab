"""The `random` proposer: jitter one to three constants of the parent.

It is the control every other proposer is judged against, so it is kept
simple and blind: it reads nothing but the parent's `ALL_CAPS = literal`
constants and the request's seeded generator, which also makes it
deterministic for a seed and safe to call from several threads at once.
`include` and `exclude` (as for the optuna proposer) say which constants it
may change: leave out the ones that must stay consistent with each other
(N_HEAD must divide MODEL_DIM) or that change nothing but the speed.
"""

from __future__ import annotations

import math
import random
from typing import Any

from autoresearch import hookimpl
from autoresearch.constants import Value, describe_changes, read_constants, rewrite_constants
from autoresearch.errors import UserError
from autoresearch.plugins import check_option_names
from autoresearch.proposal import Proposal, ProposalRequest

NAME = "random"
DEFAULTS: dict[str, Any] = {
    "max_changes": 3,
    "sigma": 0.3,  # a typical float moves by ~30%
    "include": None,  # only these constants (default: every numeric or bool one)
    "exclude": (),  # never these constants
}
INT_SCALE = 0.25  # the larger of the two int steps: ±25%
POW2_MIN = 16  # powers of two from here are sizes: double or halve, keep divisibility
SIGNIFICANT = 3  # floats are written with three significant digits: tidy diffs
SEED_WORD = "SEED"  # never perturbed: a seed-only change measures noise, not an idea


@hookimpl
def register_proposers(register):
    register(NAME, RandomProposer.from_options, "control: jitter 1-3 numeric or bool constants")


class RandomProposer:
    """Changes a few numeric or bool constants of the parent by a random amount."""

    name = NAME

    def __init__(
        self,
        max_changes: int = 3,
        sigma: float = 0.3,
        include: list[str] | None = None,
        exclude: list[str] | tuple[str, ...] = (),
    ) -> None:
        if isinstance(max_changes, bool) or not isinstance(max_changes, int) or max_changes < 1:
            raise UserError(f"random proposer: max_changes must be an int >= 1: {max_changes!r}")
        if not isinstance(sigma, (int, float)) or not 0 < sigma <= 3:
            raise UserError(f"random proposer: sigma must be a number in (0, 3]: {sigma!r}")
        for option, names in (("include", include), ("exclude", exclude)):
            if names is not None and (
                isinstance(names, str) or not all(isinstance(n, str) for n in names)
            ):
                raise UserError(f"random proposer: {option} must be a list of constant names")
        self.max_changes = max_changes
        self.sigma = float(sigma)
        self.include = None if include is None else set(include)
        self.exclude = set(exclude)

    @classmethod
    def from_options(cls, options: dict) -> RandomProposer:
        check_option_names("random", options, DEFAULTS)
        return cls(**{**DEFAULTS, **options})

    def propose(self, request: ProposalRequest) -> Proposal:
        rng = request.rng
        constants = read_constants(request.parent_source)
        candidates = [
            name for name, value in constants.items()
            if _tunable(name, value) and self._wanted(name)
        ]  # fmt: skip
        if not candidates:
            limited = self.include is not None or self.exclude
            raise UserError(
                "random proposer: train.py has no numeric or bool constants to change"
                + (" among those its include and exclude options allow" if limited else "")
            )
        count = rng.randint(1, min(self.max_changes, len(candidates)))
        chosen = rng.sample(candidates, count)
        changes = {name: perturb(constants[name], rng, self.sigma) for name in chosen}
        source = rewrite_constants(request.parent_source, changes)
        description = describe_changes({n: (constants[n], new) for n, new in changes.items()})
        return Proposal(source=source, description=description)

    def _wanted(self, name: str) -> bool:
        return name not in self.exclude and (self.include is None or name in self.include)


def _tunable(name: str, value: Value) -> bool:
    if SEED_WORD in name.upper() or isinstance(value, str):
        return False
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value >= 0  # negative ints are usually sentinels such as -1
    return value != 0  # a zero float has no scale to jitter around


def perturb(value: Value, rng: random.Random, sigma: float) -> Value:
    """A random neighbour of `value`, never equal to it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _perturb_int(value, rng)
    for _ in range(100):  # rounding can land on the old value; try again
        if 0 < value < 1:
            # Fractions (betas, ratios) move in logit space so they stay inside (0, 1);
            # for small values such as learning rates this is log-normal jitter.
            z = math.log(value / (1 - value)) + rng.gauss(0, sigma)
            new = 1 / (1 + math.exp(-z))
        else:
            new = value * math.exp(rng.gauss(0, sigma))
        new = round_significant(new, SIGNIFICANT)
        if new != value and (0 < new < 1 or not 0 < value < 1):
            return new
    return value * 2  # pragma: no cover - sigma is bounded, so this is unreachable in practice


def _perturb_int(value: int, rng: random.Random) -> int:
    if value >= POW2_MIN and value & (value - 1) == 0:
        return value * 2 if rng.random() < 0.5 else value // 2
    step = 1 if rng.random() < 0.5 else max(1, round(value * INT_SCALE))
    floor = 1 if value >= 1 else 0  # a count or size stays positive
    new = value + step if rng.random() < 0.5 else value - step
    return new if new >= floor else value + step


def round_significant(x: float, digits: int) -> float:
    """`x` rounded to `digits` significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))
