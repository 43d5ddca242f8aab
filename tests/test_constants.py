"""Reading and rewriting the ALL_CAPS constants of a train.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.constants import (
    describe_changes,
    format_float,
    parse_changes,
    read_constants,
    rewrite_constants,
)

SOURCE = '''\
"""A train.py-like module."""
import math

# --- hyperparameters -------------------------------------------------------
LR   = 0.04      # learning rate: aligned comments must survive
DEPTH: int = 8   # annotated
BATCH = 2**19  # tokens per step (2**19)
WD = -1e-4
NAME = "héllo"; WIDTH = 64  # two on one line, after a non-ASCII string
FLAG = True
MIXED = (
    3 * 4  # a parenthesised expression over two lines
)
lower_case = 5
A = B = 7
COMPUTED = math.sqrt(2)
LATER = 1
LATER = 2
OVERWRITTEN = 3
OVERWRITTEN = OVERWRITTEN * 2


def f():
    INNER = 1
    return INNER
'''


def test_reads_top_level_literal_constants_only():
    assert read_constants(SOURCE) == {
        "LR": 0.04,
        "DEPTH": 8,
        "BATCH": 524288,
        "WD": -1e-4,
        "NAME": "héllo",
        "WIDTH": 64,
        "FLAG": True,
        "MIXED": 12,
        "LATER": 2,  # the last assignment is the one that counts
    }


def test_types_are_kept():
    constants = read_constants(SOURCE)
    assert type(constants["FLAG"]) is bool
    assert type(constants["DEPTH"]) is int
    assert type(constants["LR"]) is float


@pytest.mark.parametrize("expr", ["2**100", "1e308 * 10", "(-8) ** 0.5", "1 / 0", "'a' * 3"])
def test_unsafe_or_odd_expressions_are_not_constants(expr):
    assert read_constants(f"X = {expr}\nY = 1\n") == {"Y": 1}


def test_rewrite_changes_only_the_values():
    new = rewrite_constants(
        SOURCE,
        {"LR": 0.0003, "DEPTH": 12, "BATCH": 262144, "WD": -2.5e-5, "WIDTH": 128,
         "FLAG": False, "MIXED": 5, "NAME": 'say "hi"'},
    )
    old_lines, new_lines = SOURCE.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = {
        "LR   = 0.04      # learning rate: aligned comments must survive":
            "LR   = 3e-4      # learning rate: aligned comments must survive",
        "DEPTH: int = 8   # annotated": "DEPTH: int = 12   # annotated",
        "BATCH = 2**19  # tokens per step (2**19)": "BATCH = 262144  # tokens per step (2**19)",
        "WD = -1e-4": "WD = -2.5e-5",
        'NAME = "héllo"; WIDTH = 64  # two on one line, after a non-ASCII string':
            'NAME = "say \\"hi\\""; WIDTH = 128  # two on one line, after a non-ASCII string',
        "FLAG = True": "FLAG = False",
        # Only the expression is replaced: the parentheses and the comment stay.
        "    3 * 4  # a parenthesised expression over two lines":
            "    5  # a parenthesised expression over two lines",
    }
    expected = [changed.get(line, line) for line in old_lines]
    assert new_lines == expected
    assert read_constants(new)["NAME"] == 'say "hi"'


def test_round_trip_reads_back_what_was_written():
    values = {"LR": 0.0123, "DEPTH": 3, "FLAG": False, "NAME": "x", "WD": -0.5}
    new = rewrite_constants(SOURCE, values)
    assert read_constants(new) == {**read_constants(SOURCE), **values}
    # Writing the old values back restores the file, except that expressions
    # such as 2**19 come back as their plain value.
    restored = rewrite_constants(new, read_constants(SOURCE))
    assert restored == SOURCE.replace("BATCH = 2**19", "BATCH = 524288").replace("3 * 4", "12")
    assert rewrite_constants(SOURCE, {}) == SOURCE


def test_rewrite_keeps_the_real_baseline_byte_identical_elsewhere():
    path = Path(__file__).parents[1] / "baselines" / "gpt" / "train.py"
    source = path.read_text()
    constants = read_constants(source)
    assert constants["MATRIX_LR"] == 0.04 and constants["COMPILE"] is True
    new = rewrite_constants(source, {"MATRIX_LR": 0.05})
    diff = [(a, b) for a, b in zip(source.splitlines(), new.splitlines(), strict=True) if a != b]
    assert diff == [(
        "MATRIX_LR = 0.04  # Muon LR of the transformer's 2-D weight matrices",
        "MATRIX_LR = 0.05  # Muon LR of the transformer's 2-D weight matrices",
    )]


def test_rewrite_refuses_unknown_names():
    with pytest.raises(KeyError, match="COMPUTED"):
        rewrite_constants(SOURCE, {"COMPUTED": 1.0})


def test_crlf_line_endings_are_kept():
    source = "A = 1\r\nB = 2.5  # note\r\n"
    assert rewrite_constants(source, {"B": 3.5}) == "A = 1\r\nB = 3.5  # note\r\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.04, "0.04"), (3e-4, "3e-4"), (2.5e-5, "2.5e-5"), (1e6, "1e6"), (524288.0, "524288.0"),
     (1.0, "1.0"), (-0.00025, "-2.5e-4"), (0.052, "0.052"), (0.0, "0.0")],
)
def test_floats_are_written_compactly_and_exactly(value, text):
    assert format_float(value) == text
    assert float(text) == value


def test_depth_of_reads_an_int_depth_or_none():
    from autoresearch.constants import depth_of

    assert depth_of("DEPTH = 8  # blocks\nLR = 0.1\n") == 8
    assert depth_of("LR = 0.1\n") is None
    assert depth_of("DEPTH = 2.5\n") is None
    assert depth_of("DEPTH = True\n") is None
    assert depth_of("def broken(:\n") is None


def test_change_lists_read_back_what_was_written():
    changes = {"LR": (0.04, 0.052), "DEPTH": (8, 7), "OFFSET": (-1.5, -3e-4),
               "USE_BIAS": (False, True), "ACTIVATION": ("relu", "gelu, tanh")}  # fmt: skip
    text = describe_changes(changes)
    assert text.startswith("LR 0.04 -> 0.052, DEPTH 8 -> 7, OFFSET -1.5 -> -3e-4, ")
    assert parse_changes(text) == changes
    for other in ("halve LR", "LR 0.04 -> x", "LR 0.04 -> 0.05, and more", "", "lr 1 -> 2"):
        assert parse_changes(other) is None, other
