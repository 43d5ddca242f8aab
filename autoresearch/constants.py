"""The `ALL_CAPS = literal` constants of a train.py: read them, rewrite them in place.

Only top-level assignments count, and only when the value is a literal int,
float, bool or str, a negated number, or arithmetic on numeric literals such
as `2**19` (evaluated here; a rewrite writes the plain value back). A name
whose last top-level assignment is anything else is not a constant: changing
an earlier literal would have no effect.

Rewriting edits only the characters of the changed values, located by the
parser's positions, so comments, spacing and every other line stay exactly
as the author wrote them.

The offline proposers describe a change as `LR 0.04 -> 0.05, DEPTH 8 -> 7`:
`describe_changes` writes that line and `parse_changes` reads it back, so a
proposer can learn from the ledger what each experiment moved.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Union

from autoresearch.syntax import parse

CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
MAX_EXPONENT = 64  # `2**19` is a size; `10**10**10` is an attack on the reader
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line ends the tokenizer counts
CHANGE = re.compile(r"^([A-Z][A-Z0-9_]*) (.+) -> (.+)$")  # one `NAME old -> new`
CHANGE_SEPARATOR = re.compile(r", (?=[A-Z][A-Z0-9_]* )")  # ", " before the next NAME

Value = Union[bool, int, float, str]  # noqa: UP007 - evaluated at runtime on Python 3.10

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


@dataclass(frozen=True)
class _Constant:
    value: Value
    node: ast.expr  # the value expression, whose position a rewrite replaces


def read_constants(source: str) -> dict[str, Value]:
    """The module-level `ALL_CAPS = literal` constants of `source`, in file order."""
    return {name: c.value for name, c in _constants(parse(source)).items()}


def depth_of(source: str) -> int | None:
    """The `DEPTH` constant, for the summary's `depth`; None when there is none (never raises)."""
    try:
        depth = read_constants(source).get("DEPTH")
    except (SyntaxError, ValueError):
        return None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


def code_lines(source: str) -> int:
    """Lines that are neither blank nor comments: the size of the code, for the simplicity
    rule (less code at an equal score is better)."""
    stripped = (line.strip() for line in source.splitlines())
    return sum(1 for line in stripped if line and not line.startswith("#"))


def rewrite_constants(source: str, values: Mapping[str, Value]) -> str:
    """`source` with the named constants set to `values`, everything else untouched.

    Raises KeyError for a name that is not a constant of `source`.
    """
    found = _constants(parse(source))
    unknown = [name for name in values if name not in found]
    if unknown:
        raise KeyError(f"not a constant of train.py: {', '.join(unknown)}")
    starts = [0] + [m.end() for m in LINE_BREAK.finditer(source)]
    lines = [source[a:b] for a, b in zip(starts, [*starts[1:], len(source)], strict=True)]

    def offset(line: int, col: int) -> int:
        # ast columns count UTF-8 bytes; the string is indexed by characters.
        text = lines[line - 1]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8"))

    edits = []
    for name, value in values.items():
        node = found[name].node
        start = offset(node.lineno, node.col_offset)
        end = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        text = format_value(value)
        if isinstance(value, str) and source[start] == '"':
            # Keep the author's double quotes; JSON escapes are valid Python escapes.
            text = json.dumps(value, ensure_ascii=False)
        edits.append((start, end, text))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def format_value(value: Value) -> str:
    """The Python literal for `value`, written compactly."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return repr(value)
    raise TypeError(f"a constant must be a bool, int, float or str, not {type(value).__name__}")


def describe_changes(changes: Mapping[str, tuple[Value, Value]]) -> str:
    """`NAME old -> new, ...` for constants changed from `old` to `new`."""
    return ", ".join(
        f"{name} {format_value(old)} -> {format_value(new)}" for name, (old, new) in changes.items()
    )


def parse_changes(description: str) -> dict[str, tuple[Value, Value]] | None:
    """The `NAME: (old, new)` pairs of a `describe_changes` line; None for any other text."""
    changes: dict[str, tuple[Value, Value]] = {}
    for part in CHANGE_SEPARATOR.split(description.strip()):
        match = CHANGE.match(part)
        if not match:
            return None
        try:
            old, new = (_literal(parse(text, mode="eval").body) for text in match.group(2, 3))
        except (SyntaxError, ValueError):
            return None
        changes[match.group(1)] = (old, new)
    return changes


def format_float(x: float) -> str:
    """The shorter of `repr(x)` and its scientific form: 0.04, 3e-4, 1e6, 524288.0."""
    if not math.isfinite(x):
        raise ValueError(f"{x} cannot be written as a Python literal")
    plain = repr(x)
    if x == 0:
        return plain
    sign, digits, exponent = Decimal(plain).as_tuple()
    while len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], int(exponent) + 1
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    scientific = f"{'-' if sign else ''}{mantissa}e{int(exponent) + len(digits) - 1}"
    return scientific if len(scientific) < len(plain) else plain


def _constants(tree: ast.Module) -> dict[str, _Constant]:
    found: dict[str, _Constant] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, node = stmt.target, stmt.value
        else:
            continue
        if not (isinstance(target, ast.Name) and CONSTANT_NAME.match(target.id)):
            continue
        found.pop(target.id, None)  # keep file order of the last assignment
        with contextlib.suppress(ValueError):  # something computed: not a tunable constant
            found[target.id] = _Constant(_literal(node), node)
    return found


def _literal(node: ast.expr) -> Value:
    """The value of a literal (or arithmetic on numeric literals); ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _number(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError("exponent too large")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            raise ValueError("not a finite number") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("not a finite real number")  # e.g. (-8) ** 0.5, 1e308 * 10
        return value
    raise ValueError("not a literal")


def _number(node: ast.expr) -> int | float:
    value = _literal(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    return value
