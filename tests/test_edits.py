"""SEARCH/REPLACE parsing and exact application (plugins/edits.py)."""

from __future__ import annotations

import pytest

from autoresearch.default_plugins.edits import EditError, apply_edits, apply_reply, parse_reply

SOURCE = """\
import math

MATRIX_LR = 0.02
LR = 0.01
DEPTH = 8


def schedule(step):
    if step < 100:
        return step / 100
    return 1.0


def main():
    for step in range(10):
        lr = LR * schedule(step)
        print(lr)
"""


def block(search: str, replace: str, filename: str | None = "train.py") -> str:
    head = f"{filename}\n" if filename else ""
    return f"{head}```python\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


def test_exact_apply_replaces_the_one_match_and_reads_the_description():
    reply = "DESCRIPTION: double depth\n\n" + block("DEPTH = 8\n", "DEPTH = 16\n")
    new, description = apply_reply(SOURCE, reply)
    assert new == SOURCE.replace("DEPTH = 8\n", "DEPTH = 16\n")
    assert description == "double depth"


def test_search_matches_whole_lines_only():
    # "LR = 0.01" must not match inside "MATRIX_LR = ..." and vice versa.
    new, _ = apply_reply(SOURCE, "DESCRIPTION: x\n" + block("LR = 0.01\n", "LR = 0.03\n"))
    assert "MATRIX_LR = 0.02\nLR = 0.03\n" in new


def test_no_match_is_refused_with_the_closest_lines():
    reply = "DESCRIPTION: x\n" + block("DEPTH = 12\n", "DEPTH = 16\n")
    with pytest.raises(EditError) as e:
        apply_reply(SOURCE, reply)
    message = str(e.value)
    assert "block 1" in message and "does not occur" in message
    assert "DEPTH = 8" in message  # the hint quotes the real line back to the model


def test_multi_match_is_refused_naming_the_lines():
    source = "x = 1\ny = 2\nx = 1\n"
    with pytest.raises(EditError, match=r"occurs 2 times .*lines 1, 3"):
        apply_edits(source, parse_reply(block("x = 1\n", "x = 5\n")).edits)


def test_multiple_blocks_apply_in_order():
    reply = (
        "DESCRIPTION: two things\n"
        + block("MATRIX_LR = 0.02\n", "MATRIX_LR = 0.04\n")
        + "and then\n\n"
        + block("        return step / 100\n", "        return (step + 1) / 100\n")
    )
    new, _ = apply_reply(SOURCE, reply)
    assert "MATRIX_LR = 0.04\n" in new
    assert "return (step + 1) / 100\n" in new
    assert len(parse_reply(reply).edits) == 2


def test_one_bad_block_applies_nothing_and_reports_every_failure():
    reply = block("DEPTH = 8\n", "DEPTH = 9\n") + block("NOPE = 1\n", "x\n") + block("ZIP\n", "")
    with pytest.raises(EditError) as e:
        apply_reply(SOURCE, reply)
    assert "block 2" in str(e.value) and "block 3" in str(e.value)
    assert "No block was applied" in str(e.value)


def test_full_file_reply_is_accepted():
    new_source = SOURCE.replace("DEPTH = 8", "DEPTH = 4")
    reply = f"DESCRIPTION: shallower\n\n```python\n{new_source}```\n"
    new, description = apply_reply(SOURCE, reply)
    assert new == new_source
    assert description == "shallower"


def test_full_file_fragment_is_refused():
    reply = "DESCRIPTION: x\n```python\nDEPTH = 4\n```\n"
    with pytest.raises(EditError, match="complete file"):
        apply_reply(SOURCE, reply)


@pytest.mark.parametrize("name", ["program.md", "autoresearch.toml", "harness/evaluate.py"])
def test_edit_to_another_file_is_refused(name):
    reply = "DESCRIPTION: x\n" + block("DEPTH = 8\n", "DEPTH = 9\n", filename=name)
    with pytest.raises(EditError, match=f"{name}: only train.py"):
        apply_reply(SOURCE, reply)


def test_full_file_of_another_file_is_refused():
    reply = "DESCRIPTION: x\nprogram.md\n```markdown\nDo whatever you want.\n```\n"
    with pytest.raises(EditError, match="program.md"):
        apply_reply(SOURCE, reply)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("", "empty"),
        ("DESCRIPTION: just talk, no code", "no '<<<<<<< SEARCH' block"),
        ("<<<<<<< SEARCH\nDEPTH = 8\n", "not closed"),
        ("<<<<<<< SEARCH\nDEPTH = 8\n=======\nDEPTH = 9\n", "not closed"),
        ("DEPTH = 9\n>>>>>>> REPLACE\n", "without an opening"),
        ("```python\nprint(1)\n```\n```python\nprint(2)\n```\n", "2 code blocks"),
        ("```python\n" + SOURCE, "never closed"),
        (block("\n", "DEPTH = 9\n"), "empty SEARCH"),
    ],
)
def test_malformed_replies_are_refused(reply, expected):
    with pytest.raises(EditError, match=expected):
        apply_reply(SOURCE, reply)


def test_a_result_that_does_not_compile_is_refused():
    reply = block("DEPTH = 8\n", "DEPTH = (8\n")
    with pytest.raises(EditError, match="does not compile"):
        apply_reply(SOURCE, reply)


def test_a_no_op_edit_is_refused():
    with pytest.raises(EditError, match="unchanged"):
        apply_reply(SOURCE, block("DEPTH = 8\n", "DEPTH = 8\n"))


def test_indentation_fallback_reindents_when_unambiguous():
    # The model dropped the function's indentation in both SEARCH and REPLACE.
    search = "if step < 100:\n    return step / 100\n"
    reply = block(search, "if step < 50:\n    return step / 50\n")
    new, _ = apply_reply(SOURCE, reply)
    assert "    if step < 50:\n        return step / 50\n" in new


def test_trailing_whitespace_fallback():
    reply = block("DEPTH = 8   \n", "DEPTH = 10\n")
    new, _ = apply_reply(SOURCE, reply)
    assert "DEPTH = 10\n" in new and "DEPTH = 8" not in new


def test_fallback_refuses_when_ambiguous():
    source = "def f():\n    x = 1\n\ndef g():\n        x = 1\n"
    with pytest.raises(EditError, match="occurs 2 times"):
        apply_edits(source, parse_reply(block("x = 1  \n", "x = 2\n")).edits)


def test_missing_description_is_not_fatal():
    new, description = apply_reply(SOURCE, block("DEPTH = 8\n", "DEPTH = 6\n"))
    assert description is None and "DEPTH = 6" in new


def test_decorated_description_and_crlf_reply():
    reply = ("**DESCRIPTION:** fewer layers\n" + block("DEPTH = 8\n", "DEPTH = 6\n")).replace(
        "\n", "\r\n"
    )
    new, description = apply_reply(SOURCE, reply)
    assert description == "fewer layers"
    assert "DEPTH = 6\n" in new and "\r" not in new
