"""Turn a model's reply into a new `train.py`: SEARCH/REPLACE blocks, a diff, or a whole file.

The reply format (the same one aider uses, so models already know it):

    DESCRIPTION: raise the matrix learning rate to 0.04
    train.py
    ```python
    <<<<<<< SEARCH
    MATRIX_LR = 0.02
    =======
    MATRIX_LR = 0.04
    >>>>>>> REPLACE
    ```

or, instead of blocks, a unified diff of train.py in a ```diff fence (the form
most models fall back to), or the complete new file in one ```python fence.

Every problem raises `EditError` whose message is written to be sent back to
the model as is: it names the block or hunk, says what is wrong, and what to do.

Matching is exact: a SEARCH text (a hunk's context and '-' lines) must occur
exactly once in the current source. Fallbacks exist because models often get
whitespace slightly wrong, and each applies only when exactly one place
matches; anything that matches more than one place is refused, never guessed:

- lines compared ignoring trailing whitespace and one uniform indentation shift,
  the new lines re-indented by the same shift;
- a one-line SEARCH compared ignoring all whitespace, and allowed to lack the
  line's trailing comment (the whole line is replaced).

A diff's hunks are all placed in the parent first, by their lines, not by the
line numbers of their `@@` headers (models get those wrong), then applied
together; hunks that overlap are refused.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

TARGET = "train.py"  # the only file a proposal may change
FULL_FILE_MIN_RATIO = 0.5  # a "whole file" shorter than this share of the parent is a fragment
CONTEXT_PREVIEW_LINES = 6  # how many source lines a no-match error quotes back
HINT_CUTOFF = 0.6  # difflib ratio under which no source line is "close" to a SEARCH line
CONTAINED_SCORE = 0.95  # a SEARCH line that starts a longer one (a missing comment) is close

SEARCH_RE = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
DIVIDER_RE = re.compile(r"^\s*={5,9}\s*$")
REPLACE_RE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+.-]*)\s*$")
DESCRIPTION_RE = re.compile(r"^[\s*#>_`]*DESCRIPTION[\s*_`]*:[\s*_`]*(.+?)[\s*_`]*$", re.IGNORECASE)
# A line that is only a file name, perhaps decorated: "train.py", "**train.py**",
# "`program.md`", "# File: train.py", "train.py:".
FILENAME_RE = re.compile(
    r"^[\s#*`>-]*(?:file(?:name)?\s*:\s*)?[`*]*([\w./\\-]+\.[A-Za-z0-9]+)[`*:]*\s*$", re.IGNORECASE
)
CODE_LANGS = {"", "python", "py", "python3"}
DIFF_LANGS = {"diff", "patch", "udiff"}
HUNK_RE = re.compile(r"^@@ *-(\d+)?[^@]*@@")  # "@@ -12,7 +12,8 @@", "@@ -12 +12 @@", "@@ -,+ @@"
NO_FILE = "/dev/null"  # a diff's name for the missing side of a created or deleted file
MAX_DESCRIPTION_CHARS = 200


class EditError(ValueError):
    """The reply could not be turned into a valid train.py; the message is for the model."""


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str
    filename: str | None = None  # the file name written just before the block, if any
    number: int = 1  # 1-based position in the reply, for error messages


@dataclass(frozen=True)
class Hunk:
    """One hunk of a unified diff: the lines it expects and the lines it leaves, no newlines."""

    old: tuple[str, ...]  # context and '-' lines, in order
    new: tuple[str, ...]  # context and '+' lines, in order
    number: int = 1  # 1-based position in the reply, for error messages
    filename: str | None = None  # from the diff's ---/+++ header, if any
    claimed_line: int | None = None  # where its @@ header says it starts (only ever quoted)


@dataclass(frozen=True)
class ParsedReply:
    description: str | None
    edits: tuple[Edit, ...] = ()
    hunks: tuple[Hunk, ...] = ()  # set when the reply is a unified diff
    full_source: str | None = None  # set when the reply is a whole file instead of edits


def parse_reply(reply: str) -> ParsedReply:
    """Split a reply into its description and either edit blocks or a whole file."""
    text = reply.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise EditError("the reply was empty: answer with DESCRIPTION and SEARCH/REPLACE blocks")
    lines = text.splitlines(keepends=True)
    description = _description(lines)
    edits = _edit_blocks(lines)
    if edits:
        return ParsedReply(description, edits=tuple(edits))
    hunks = _diff_hunks(lines)
    if hunks:
        return ParsedReply(description, hunks=tuple(hunks))
    return ParsedReply(description, full_source=_full_file(lines))


def reply_form(reply: str) -> str:
    """Which accepted form a reply tried, even a broken one: "blocks" (SEARCH/REPLACE),
    "diff" (a unified diff) or "file" (the whole train.py), so a retry can ask for the same."""
    lines = reply.splitlines()
    if any(SEARCH_RE.match(line) for line in lines):
        return "blocks"
    for line in lines:
        fence = FENCE_RE.match(line)
        if HUNK_RE.match(line) or (fence and fence.group(2).lower() in DIFF_LANGS):
            return "diff"
    return "file" if any(FENCE_RE.match(line) for line in lines) else "blocks"


def apply_reply(source: str, reply: str) -> tuple[str, str | None]:
    """New source and description from a reply; raises `EditError` on any problem."""
    parsed = parse_reply(reply)
    if parsed.full_source is not None:
        new = parsed.full_source
        _check_not_fragment(source, new)
    elif parsed.hunks:
        new = apply_hunks(source, parsed.hunks)
    else:
        new = apply_edits(source, parsed.edits)
    if new == source:
        raise EditError("the reply leaves train.py unchanged: propose an actual change")
    check_compiles(new)
    return new, parsed.description


def apply_edits(source: str, edits: tuple[Edit, ...] | list[Edit]) -> str:
    """Apply blocks in order, each to the result of the previous; report every failing block."""

    def apply(edit: Edit) -> None:
        nonlocal source
        source = _apply_one(source, edit)

    problems = _problems("block", edits, apply)
    if problems:
        raise EditError(
            "\n".join(problems) + "\nNo block was applied. Send all blocks again, corrected,"
            " against the current train.py."
        )
    return source


def apply_hunks(source: str, hunks: tuple[Hunk, ...] | list[Hunk]) -> str:
    """Place every hunk in `source` by its lines, then apply them together; report every
    hunk that does not fit (no match, several, another file, overlapping another)."""
    src_lines = source.splitlines(keepends=True)
    placed: list[tuple[int, tuple[str, str], Hunk]] = []
    problems = _problems("hunk", hunks, lambda h: placed.append((*_place(src_lines, h), h)))
    placed.sort(key=lambda p: p[0])
    for (start, _, a), (other, _, b) in zip(placed, placed[1:], strict=False):
        if other < start + len(a.old):
            problems.append(
                f"hunks {a.number} and {b.number} change the same lines of {TARGET} (from line"
                f" {other + 1}): merge them into one hunk"
            )
    if problems:
        raise EditError(
            "\n".join(problems) + "\nNo hunk was applied. Send the whole diff again, corrected,"
            " against the current train.py."
        )
    for start, shift, hunk in reversed(placed):
        new = [line + "\n" for line in hunk.new]
        source = _splice(source, src_lines, start, len(hunk.old), "".join(new), shift)
        src_lines = source.splitlines(keepends=True)
    return source


def _problems(kind: str, items: Iterable[Edit | Hunk], work: Callable[[Any], None]) -> list[str]:
    """`work(item)` for each block or hunk of train.py; the problem of each that is for
    another file or raises `EditError`."""
    problems = []
    for item in items:
        if item.filename is not None and not is_target(item.filename):
            problems.append(
                f"{kind} {item.number} edits {item.filename}: only {TARGET} may be changed"
            )
            continue
        try:
            work(item)
        except EditError as e:
            problems.append(str(e))
    return problems


def check_compiles(source: str) -> None:
    """Raise `EditError` unless `source` is valid Python."""
    try:
        compile(source, TARGET, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f"line {e.lineno}" if e.lineno else "somewhere"
        shown = f": {e.text.strip()}" if e.text and e.text.strip() else ""
        raise EditError(
            f"the resulting train.py does not compile: {e.msg} at {where}{shown}"
        ) from None
    except ValueError as e:  # e.g. null bytes in the source
        raise EditError(f"the resulting train.py does not compile: {e}") from None


def is_target(filename: str) -> bool:
    """True when a file name in a reply means train.py (with or without a leading path)."""
    name = filename.strip().replace("\\", "/")
    return PurePosixPath(name).name == TARGET


# -- parsing ---------------------------------------------------------------------------------


def _description(lines: list[str]) -> str | None:
    for line in lines:
        match = DESCRIPTION_RE.match(line.rstrip("\n"))
        if match:
            return match.group(1).strip()[:MAX_DESCRIPTION_CHARS] or None
    return None


def _edit_blocks(lines: list[str]) -> list[Edit]:
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        # A stray '=======' outside a block is often a markdown heading underline, so only
        # a stray REPLACE marker betrays a broken block.
        if REPLACE_RE.match(line):
            raise EditError(
                f"line {i + 1} of the reply has '{line.strip()}' without an opening"
                " '<<<<<<< SEARCH': each block is SEARCH, '=======', REPLACE"
            )
        if not SEARCH_RE.match(line):
            i += 1
            continue
        number = len(edits) + 1
        filename = _name_above(lines, i, skip_fence=True)
        search, i = _collect(lines, i + 1, DIVIDER_RE, number, "'======='")
        replace, i = _collect(lines, i + 1, REPLACE_RE, number, "'>>>>>>> REPLACE'")
        edits.append(Edit("".join(search), "".join(replace), filename, number))
        i += 1
    return edits


def _collect(lines: list[str], start: int, end_re: re.Pattern[str], number: int,
             marker: str) -> tuple[list[str], int]:
    out = []
    for j in range(start, len(lines)):
        if end_re.match(lines[j]):
            return out, j
        if SEARCH_RE.match(lines[j]):
            break
        out.append(lines[j])
    raise EditError(
        f"block {number} is not closed: expected {marker}; each block is '<<<<<<< SEARCH',"
        " the exact lines to find, '=======', the new lines, '>>>>>>> REPLACE'"
    )


def _diff_hunks(lines: list[str]) -> list[Hunk]:
    """The hunks of every diff fence in the reply (```diff, or any fence with an @@ line)."""
    hunks: list[Hunk] = []
    diffs = 0
    for lang, filename, body in _fenced_blocks(lines):
        body_lines = body.splitlines()
        if lang in DIFF_LANGS or any(HUNK_RE.match(line) for line in body_lines):
            diffs += 1
            hunks += _parse_diff(body_lines, filename, len(hunks) + 1)
    if diffs and not hunks:
        raise EditError(
            "the ```diff block has no hunk: a hunk is the unchanged lines around the change"
            " (each with a leading space), the removed lines ('-') and the added lines ('+'),"
            " after a line '@@ -12,3 +12,3 @@'"
        )
    return hunks


def _parse_diff(lines: list[str], filename: str | None, first: int) -> list[Hunk]:
    """Hunks of one diff; line counts in @@ headers are ignored (models miscount them). A
    diff without any @@ line is one hunk: its lines must still place it."""
    hunks: list[Hunk] = []
    headerless = not any(HUNK_RE.match(line) for line in lines)
    # The open hunk's lines as (kind ' ', '-' or '+', text); None: outside any hunk.
    body: list[tuple[str, str]] | None = [] if headerless else None
    claimed: int | None = None

    def close() -> None:
        if body:
            hunks.append(_hunk(body, first + len(hunks), filename, claimed))

    for i, line in enumerate(lines):
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            close()
            body = [] if headerless else None
            old_name, new_name = _diff_name(line), _diff_name(lines[i + 1])
            filename = next((n for n in (new_name, old_name) if not is_target(n)), new_name)
            continue
        if line.startswith("+++ ") and i and lines[i - 1].startswith("--- "):
            continue
        header = HUNK_RE.match(line)
        if header:
            close()
            body, claimed = [], int(header.group(1)) if header.group(1) else None
        elif line.startswith("diff "):  # "diff --git a/x b/x": the next file's header
            close()
            body = [] if headerless else None
        elif body is None or line.startswith("\\"):  # preamble; "\ No newline at end of file"
            continue
        elif line[:1] in ("+", "-", " "):
            body.append((line[0], line[1:]))
        else:  # a blank context line whose space was dropped, or a context line without it
            body.append((" ", line))
    close()
    return hunks


def _diff_name(header: str) -> str:
    """The file a ---/+++ line names, without its a/ or b/ prefix or a timestamp."""
    name = (header[4:].split("\t")[0].split() or [""])[0]
    return name if name == NO_FILE else re.sub(r"^[ab]/", "", name)


def _hunk(body: list[tuple[str, str]], number: int, filename: str | None,
          claimed: int | None) -> Hunk:  # fmt: skip
    # Blank context at either end is often an artefact of the reply (a trailing empty line
    # before the fence), and dropping it only removes context: it is ignored.
    while body and body[-1][0] == " " and not body[-1][1].strip():
        body = body[:-1]
    while body and body[0][0] == " " and not body[0][1].strip():
        body = body[1:]
    old = tuple(text for kind, text in body if kind != "+")
    new = tuple(text for kind, text in body if kind != "-")
    return Hunk(old, new, number, filename, claimed)


def _full_file(lines: list[str]) -> str:
    blocks = _fenced_blocks(lines)
    code = [(name, body) for lang, name, body in blocks if lang in CODE_LANGS]
    named_elsewhere = [name for _, name, _ in blocks if name and not is_target(name)]
    if named_elsewhere:
        raise EditError(
            f"the reply contains {named_elsewhere[0]}: only {TARGET} may be changed;"
            f" send edits to {TARGET} only"
        )
    if not code:
        raise EditError(
            "no '<<<<<<< SEARCH' block, no ```diff block and no ```python block found: answer"
            " with DESCRIPTION and SEARCH/REPLACE blocks, or the complete train.py in one"
            " ```python block"
        )
    if len(code) > 1:
        raise EditError(
            f"the reply has {len(code)} code blocks and no SEARCH/REPLACE blocks: send either"
            " SEARCH/REPLACE blocks or exactly one ```python block with the complete train.py"
        )
    return code[0][1]


def _fenced_blocks(lines: list[str]) -> list[tuple[str, str | None, str]]:
    """(language, file name above it, body) for each closed fence in the reply."""
    blocks = []
    i = 0
    while i < len(lines):
        opener = FENCE_RE.match(lines[i])
        if not opener:
            i += 1
            continue
        fence, lang = opener.group(1), opener.group(2).lower()
        filename = _name_above(lines, i)
        for j in range(i + 1, len(lines)):
            closer = lines[j].strip()
            if closer and set(closer) == {fence[0]} and len(closer) >= len(fence):
                blocks.append((lang, filename, "".join(lines[i + 1 : j])))
                i = j + 1
                break
        else:
            raise EditError(
                f"the code block opened at line {i + 1} of the reply is never closed with"
                f" {fence}: the reply may have been cut off; prefer short SEARCH/REPLACE blocks"
            )
    return blocks


def _name_above(lines: list[str], i: int, skip_fence: bool = False) -> str | None:
    """The file name on the nearest non-blank line above line `i` (past a fence opener)."""
    j = _nonblank_above(lines, i)
    if skip_fence and j >= 0 and FENCE_RE.match(lines[j]):
        j = _nonblank_above(lines, j)
    if j < 0:
        return None
    match = FILENAME_RE.match(lines[j].rstrip("\n"))
    return match.group(1) if match else None


def _nonblank_above(lines: list[str], i: int) -> int:
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j


# -- applying --------------------------------------------------------------------------------


def _apply_one(source: str, edit: Edit) -> str:
    if not edit.search.strip():
        raise EditError(
            f"block {edit.number} has an empty SEARCH section: quote the existing lines to"
            " replace, or send the complete train.py in one ```python block"
        )
    starts = _exact_matches(source, edit.search)
    if len(starts) == 1:
        at = starts[0]
        return source[:at] + edit.replace + source[at + len(edit.search) :]
    if len(starts) > 1:
        hits = [(source.count("\n", 0, at), ("", "")) for at in starts]
        raise EditError(_multi_match_message(f"block {edit.number}: the SEARCH text", hits))
    return _apply_loose(source, edit)


def _exact_matches(source: str, search: str) -> list[int]:
    """Every offset where `search` starts at the beginning of a line, overlaps included.

    Requiring a line start keeps `LR = 1` from matching inside `MATRIX_LR = 1`.
    """
    starts = []
    at = source.find(search)
    while at != -1:
        if at == 0 or source[at - 1] == "\n":
            starts.append(at)
        at = source.find(search, at + 1)
    return starts


def _apply_loose(source: str, edit: Edit) -> str:
    """Match lines ignoring trailing whitespace and one uniform indentation shift; a single
    line also ignoring all whitespace and a trailing comment it lacks."""
    src_lines = source.splitlines(keepends=True)
    find = _strip_blank_edges(edit.search.splitlines())
    if not find:
        raise EditError(f"block {edit.number} has an empty SEARCH section")
    what = f"block {edit.number}: the SEARCH text"
    hits = _find_lines(src_lines, find)
    if not hits and len(find) == 1:
        hits = _find_line_variant(src_lines, find[0])
        if len(hits) > 1:
            where = ", ".join(str(start + 1) for start, _ in hits[:5])
            raise EditError(
                f"{what} matches {len(hits)} lines of train.py once spaces and trailing"
                f" comments are ignored (lines {where}): copy the one line exactly, with"
                " a line around it"
            )
    if not hits:
        raise EditError(_no_match_message(what, src_lines, find))
    if len(hits) > 1:
        raise EditError(_multi_match_message(what, hits))
    start, shift = hits[0]
    return _splice(source, src_lines, start, len(find), edit.replace, shift)


def _place(src_lines: list[str], hunk: Hunk) -> tuple[int, tuple[str, str]]:
    """(first line, indentation shift) of the one place in the parent a hunk fits."""
    what = f"hunk {hunk.number} of the diff: its context and '-' lines"
    if not any(line.strip() for line in hunk.old):
        raise EditError(
            f"hunk {hunk.number} of the diff has no context or '-' lines, so where it goes is"
            " unknown: include the unchanged lines around it, each with a leading space"
        )
    hits = _find_lines(src_lines, list(hunk.old))
    if not hits:
        said = f" (its @@ header says line {hunk.claimed_line})" if hunk.claimed_line else ""
        raise EditError(_no_match_message(what + said, src_lines, list(hunk.old)))
    if len(hits) > 1:
        raise EditError(_multi_match_message(what, hits))
    return hits[0]


def _find_lines(src_lines: list[str], find: list[str]) -> list[tuple[int, tuple[str, str]]]:
    """(start, indentation shift) of every place the lines `find` occur: exactly, or, where
    they occur nowhere exactly, ignoring trailing whitespace and one uniform shift."""
    have = [line.rstrip("\n") for line in src_lines]
    starts = range(len(src_lines) - len(find) + 1)
    exact = [(i, ("", "")) for i in starts if have[i : i + len(find)] == find]
    if exact:
        return exact
    loose = ((i, _shift_if_match(src_lines[i : i + len(find)], find)) for i in starts)
    return [(i, shift) for i, shift in loose if shift is not None]


def _find_line_variant(src_lines: list[str], want: str) -> list[tuple[int, tuple[str, str]]]:
    """Lines that `want` is, once all whitespace is ignored, or a start of that ends in the
    line's trailing comment or before it: a SEARCH line spaced its own way, or without all
    of its comment. A start that ends in code ("X = 1" of "X = 10") is not one."""
    squashed = _squash(want)
    hits = []
    for i, line in enumerate(src_lines):
        have = _squash(line)
        rest = have[len(squashed) :] if have.startswith(squashed) else None
        if rest is not None and (not rest or rest[0] == "#" or "#" in squashed):
            shift = _indent_shift(_indent(line.rstrip()), _indent(want.rstrip()))
            hits.append((i, shift or (_indent(want), _indent(line))))
    return hits if squashed else []


def _squash(text: str) -> str:
    return "".join(text.split())


def _splice(source: str, src_lines: list[str], start: int, count: int, replace: str,
            shift: tuple[str, str]) -> str:  # fmt: skip
    """`source` with its lines start..start+count replaced by `replace`, whose lines are
    re-indented by `shift` (the prefix to drop from the model's lines, the prefix to add)."""
    remove, add = shift
    replaced = []
    for line in replace.splitlines(keepends=True):
        body = line[len(remove) :] if remove and line.startswith(remove) else line
        replaced.append(add + body if line.strip() else line)
    if replaced and not replaced[-1].endswith("\n"):
        replaced[-1] += "\n"
    end = start + count
    if end == len(src_lines) and not source.endswith("\n") and replaced:
        replaced[-1] = replaced[-1].rstrip("\n")  # keep the file's missing final newline
    return "".join(src_lines[:start] + replaced + src_lines[end:])


def _strip_blank_edges(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _shift_if_match(window: list[str], find: list[str]) -> tuple[str, str] | None:
    """(prefix to drop from the model's lines, prefix to add) if `window` matches `find`."""
    shift: tuple[str, str] | None = None
    for have, want in zip(window, find, strict=True):
        have, want = have.rstrip(), want.rstrip()
        if not have or not want:
            if have or want:
                return None
            continue
        if have.lstrip() != want.lstrip():
            return None
        this = _indent_shift(_indent(have), _indent(want))
        if this is None or (shift is not None and this != shift):
            return None  # not one uniform shift (or tabs against spaces)
        shift = this
    return shift or ("", "")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _indent_shift(have: str, want: str) -> tuple[str, str] | None:
    """(drop, add) turning the model's indentation `want` into the file's `have`."""
    if want.startswith(have):
        return want[len(have) :], ""
    if have.startswith(want):
        return "", have[len(want) :]
    return None


def _multi_match_message(what: str, hits: list[tuple[int, tuple[str, str]]]) -> str:
    where = ", ".join(str(start + 1) for start, _ in hits[:5])
    return (
        f"{what} occur{'s' * what.endswith('text')} {len(hits)} times in train.py (at lines"
        f" {where}); include more surrounding lines so it matches exactly once"
    )


def _no_match_message(what: str, src_lines: list[str], find: list[str]) -> str:
    """Says that `what` (the SEARCH text, a hunk's lines) is not in train.py, quoting the
    lines of train.py closest to its first line and the first of them that differs."""
    verb, they = ("does", "it") if what.endswith("text") else ("do", "they")
    message = (
        f"{what} {verb} not occur in train.py; {they} must copy existing lines exactly,"
        " comments and indentation included"
    )
    first = next(i for i, line in enumerate(find) if line.strip())
    at = _closest_line(src_lines, find[first])
    if at is None:
        return message
    at = max(at - first, 0)
    shown = src_lines[at : at + min(len(find), CONTEXT_PREVIEW_LINES)]
    message += f". The closest lines in train.py (line {at + 1}) are:\n" + "".join(shown).rstrip()
    for n, (have, want) in enumerate(zip(src_lines[at:], find, strict=False)):
        if have.rstrip() != want.rstrip():
            message += (
                f"\nThe first difference is at line {at + n + 1}: train.py has"
                f" {have.strip()!r}, you wrote {want.strip()!r}"
            )
            break
    return message


def _closest_line(src_lines: list[str], want: str) -> int | None:
    """Index of the line most like `want`: one that starts with it (a line with a comment
    the SEARCH lacks) first, else the best difflib ratio over HINT_CUTOFF; None if none is."""
    target, squashed = want.strip(), _squash(want)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    best, best_score = None, HINT_CUTOFF
    for i, line in enumerate(src_lines):
        have = line.strip()
        if not have:
            continue
        if _squash(have).startswith(squashed):
            score = CONTAINED_SCORE
        else:
            matcher.set_seq1(have)
            if matcher.real_quick_ratio() <= best_score or matcher.quick_ratio() <= best_score:
                continue
            score = matcher.ratio()
        if score > best_score:
            best, best_score = i, score
    return best


def _check_not_fragment(parent: str, new: str) -> None:
    """A 'whole file' much shorter than the parent is a snippet that would wipe the rest."""
    have = sum(1 for line in parent.splitlines() if line.strip())
    got = sum(1 for line in new.splitlines() if line.strip())
    if have and got < FULL_FILE_MIN_RATIO * have:
        raise EditError(
            f"the ```python block has {got} non-blank lines but train.py has {have}: a block"
            " without SEARCH/REPLACE markers replaces the whole file, so send the complete file,"
            " or use SEARCH/REPLACE blocks for a partial change"
        )
