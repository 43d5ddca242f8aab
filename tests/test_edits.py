"""SEARCH/REPLACE parsing and exact application (plugins/edits.py)."""

from __future__ import annotations

import pytest

from autoresearch.default_plugins.edits import (
    EditError,
    apply_edits,
    apply_reply,
    parse_reply,
    reply_form,
)

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


# -- a SEARCH line without its trailing comment, or spaced differently --------------------------

COMMENTED = """\
MATRIX_LR = 0.02  # learning rate of the matrix parameters
EMBED_LR = 0.6  # learning rate of the embeddings
WARMUP = 10


def schedule(step):
    if step < WARMUP:  # linear warm-up
        return step / WARMUP
    return 1.0
"""


def test_a_search_line_without_its_trailing_comment_replaces_that_line():
    new, _ = apply_reply(COMMENTED, block("MATRIX_LR = 0.02\n", "MATRIX_LR = 0.04\n"))
    assert new == COMMENTED.replace(
        "MATRIX_LR = 0.02  # learning rate of the matrix parameters", "MATRIX_LR = 0.04"
    )


@pytest.mark.parametrize("search", ["MATRIX_LR=0.02\n", "  MATRIX_LR =  0.02 #learning rate\n"])
def test_a_search_line_spaced_differently_replaces_that_line(search):
    new, _ = apply_reply(COMMENTED, block(search, "MATRIX_LR = 0.04\n"))
    assert new.splitlines()[0] == "MATRIX_LR = 0.04"
    assert new.splitlines()[1:] == COMMENTED.splitlines()[1:]


def test_a_search_line_without_its_comment_is_reindented_to_the_file():
    new, _ = apply_reply(
        COMMENTED, block("if step < WARMUP:\n", "if step < 2 * WARMUP:  # longer warm-up\n")
    )
    assert "    if step < 2 * WARMUP:  # longer warm-up\n        return" in new


def test_a_loose_single_line_matching_two_lines_is_refused_never_guessed():
    source = "X = 1  # first\nY = 2\nX = 1  # second\n"
    with pytest.raises(EditError, match=r"matches 2 lines .*lines 1, 3"):
        apply_reply(source, block("X = 1\n", "X = 3\n"))


def test_a_prefix_that_is_not_the_line_without_its_comment_is_no_match():
    # "X = 1" is a prefix of "X = 10", but not that line without a comment.
    with pytest.raises(EditError, match="does not occur") as e:
        apply_reply("X = 10\nY = 2\n", block("X = 1\n", "X = 3\n"))
    assert "X = 10" in str(e.value)  # the hint quotes the real line


def test_no_match_hints_at_the_line_whose_comment_the_search_lacks():
    # Two lines, the first without its comment: no fallback, but the hint finds the line
    # (difflib alone rates the pair under its cutoff) and names the difference.
    search = "MATRIX_LR = 0.02\nEMBED_LR = 0.6\n"
    with pytest.raises(EditError) as e:
        apply_reply(COMMENTED, block(search, "MATRIX_LR = 0.04\nEMBED_LR = 0.6\n"))
    message = str(e.value)
    assert "closest lines in train.py (line 1)" in message
    assert "# learning rate of the matrix parameters" in message
    assert "first difference is at line 1" in message


# -- unified diffs -----------------------------------------------------------------------------


def diff(*hunks: str, header: str = "--- a/train.py\n+++ b/train.py\n") -> str:
    return "DESCRIPTION: by diff\n\n```diff\n" + header + "".join(hunks) + "```\n"


def test_a_unified_diff_is_applied_wherever_its_context_is():
    # The header's line numbers are wrong (models miscount): the context places the hunk.
    hunk = "@@ -40,3 +40,3 @@\n MATRIX_LR = 0.02\n-LR = 0.01\n+LR = 0.03\n DEPTH = 8\n"
    new, description = apply_reply(SOURCE, diff(hunk))
    assert new == SOURCE.replace("LR = 0.01\n", "LR = 0.03\n")
    assert description == "by diff"


def test_hunks_are_placed_in_the_parent_and_applied_together():
    first = "@@ -3,2 +3,3 @@\n MATRIX_LR = 0.02\n+EXTRA = 1\n LR = 0.01\n"
    second = (
        "@@ -9,3 +10,3 @@\n def schedule(step):\n-    if step < 100:\n"
        "-        return step / 100\n+    if step < 50:\n+        return step / 50\n"
        "     return 1.0\n"
    )
    new, _ = apply_reply(SOURCE, diff(first, second))
    assert "MATRIX_LR = 0.02\nEXTRA = 1\nLR = 0.01\n" in new
    assert "    if step < 50:\n        return step / 50\n    return 1.0\n" in new
    assert len(parse_reply(diff(first, second)).hunks) == 2


def test_a_diff_with_dropped_spaces_on_blank_context_lines_and_no_header_applies():
    hunk = "@@ -5,4 +5,4 @@\n-DEPTH = 8\n+DEPTH = 4\n\n\n def schedule(step):\n\n"
    new, _ = apply_reply(SOURCE, diff(hunk, header=""))
    assert new == SOURCE.replace("DEPTH = 8", "DEPTH = 4")


def test_an_ambiguous_hunk_is_refused_whatever_its_header_says():
    source = "x = 1\ny = 2\nx = 1\ny = 2\n"
    with pytest.raises(EditError, match=r"hunk 1 .*occur 2 times .*lines 1, 3"):
        apply_reply(source, diff("@@ -3,2 +3,2 @@\n x = 1\n-y = 2\n+y = 3\n"))


def test_a_hunk_that_does_not_match_quotes_the_closest_lines():
    hunk = "@@ -5,1 +5,1 @@\n-DEPTH = 12\n+DEPTH = 4\n"
    with pytest.raises(EditError) as e:
        apply_reply(SOURCE, diff(hunk))
    message = str(e.value)
    assert "hunk 1 of the diff" in message and "header says line 5" in message
    assert "DEPTH = 8" in message and "No hunk was applied" in message


def test_overlapping_hunks_are_refused():
    a = "@@ -3,2 +3,2 @@\n MATRIX_LR = 0.02\n-LR = 0.01\n+LR = 0.02\n"
    b = "@@ -4,2 +4,2 @@\n-LR = 0.01\n+LR = 0.05\n DEPTH = 8\n"
    with pytest.raises(EditError, match="hunks 1 and 2 change the same lines"):
        apply_reply(SOURCE, diff(a, b))


def test_a_hunk_without_context_is_refused():
    with pytest.raises(EditError, match="no context or '-' lines"):
        apply_reply(SOURCE, diff("@@ -3,0 +3,1 @@\n+EXTRA = 1\n"))


@pytest.mark.parametrize(
    "header", ["--- a/program.md\n+++ b/program.md\n", "--- a/train.py\n+++ /dev/null\n"]
)
def test_a_diff_of_another_file_is_refused(header):
    with pytest.raises(EditError, match="only train.py may be changed"):
        apply_reply(SOURCE, diff("@@ -1 +1 @@\n-import math\n+import os\n", header=header))


def test_a_diff_without_hunk_headers_is_one_hunk():
    reply = diff(" LR = 0.01\n-DEPTH = 8\n+DEPTH = 4\n")
    assert apply_reply(SOURCE, reply)[0] == SOURCE.replace("DEPTH = 8", "DEPTH = 4")


def test_an_empty_diff_is_refused_saying_what_a_hunk_is():
    with pytest.raises(EditError, match="has no hunk: a hunk is the unchanged lines"):
        apply_reply(SOURCE, "DESCRIPTION: x\n```diff\n--- a/train.py\n+++ b/train.py\n```\n")


@pytest.mark.parametrize(
    ("reply", "form"),
    [
        (block("LR = 0.5\n", "LR = 0.1\n"), "blocks"),
        ("<<<<<<< SEARCH\nLR = 0.5\n", "blocks"),  # cut off before its fence closes
        ("```diff\n-LR = 0.5\n+LR = 0.1\n```\n", "diff"),
        ("```\n@@ -3,1 +3,1 @@\n-LR = 0.5\n", "diff"),  # no language, never closed
        ("```python\nimport math\n```\n", "file"),
        ("raise the learning rate", "blocks"),  # no form at all: ask for the main one
        ("", "blocks"),
    ],
)
def test_reply_form_names_the_form_a_broken_reply_tried(reply, form):
    assert reply_form(reply) == form
