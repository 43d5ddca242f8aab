"""Turn a model's reply into a new `train.py`: SEARCH/REPLACE blocks or a whole file.

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

or, instead of blocks, the complete new file in one ```python fence.

Every problem raises `EditError` whose message is written to be sent back to
the model as is: it names the block, says what is wrong, and what to do.

Matching is exact: a SEARCH text must occur exactly once in the current
source. One fallback exists because models often get indentation slightly
wrong: when there is no exact match, lines are compared ignoring trailing
whitespace and one uniform indentation shift, and the REPLACE lines are
re-indented by the same shift. The fallback applies only when it is
unambiguous (exactly one place matches); otherwise the block is refused.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

TARGET = "train.py"  # the only file a proposal may change
FULL_FILE_MIN_RATIO = 0.5  # a "whole file" shorter than this share of the parent is a fragment
CONTEXT_PREVIEW_LINES = 6  # how many source lines a no-match error quotes back

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
class ParsedReply:
    description: str | None
    edits: tuple[Edit, ...] = ()
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
    return ParsedReply(description, full_source=_full_file(lines))


def apply_reply(source: str, reply: str) -> tuple[str, str | None]:
    """New source and description from a reply; raises `EditError` on any problem."""
    parsed = parse_reply(reply)
    if parsed.full_source is not None:
        new = parsed.full_source
        _check_not_fragment(source, new)
    else:
        new = apply_edits(source, parsed.edits)
    if new == source:
        raise EditError("the reply leaves train.py unchanged: propose an actual change")
    check_compiles(new)
    return new, parsed.description


def apply_edits(source: str, edits: tuple[Edit, ...] | list[Edit]) -> str:
    """Apply blocks in order, each to the result of the previous; report every failing block."""
    problems = []
    for edit in edits:
        if edit.filename is not None and not is_target(edit.filename):
            problems.append(
                f"block {edit.number} edits {edit.filename}: only {TARGET} may be changed"
            )
            continue
        try:
            source = _apply_one(source, edit)
        except EditError as e:
            problems.append(str(e))
    if problems:
        raise EditError(
            "\n".join(problems) + "\nNo block was applied. Send all blocks again, corrected,"
            " against the current train.py."
        )
    return source


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
            "no '<<<<<<< SEARCH' block and no ```python block found: answer with DESCRIPTION"
            " and SEARCH/REPLACE blocks, or the complete train.py in one ```python block"
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
        raise EditError(_multi_match_message(edit, source, starts))
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
    """Match lines ignoring trailing whitespace and one uniform indentation shift."""
    src_lines = source.splitlines(keepends=True)
    find = _strip_blank_edges(edit.search.splitlines())
    if not find:
        raise EditError(f"block {edit.number} has an empty SEARCH section")
    hits = []
    for start in range(len(src_lines) - len(find) + 1):
        shift = _shift_if_match(src_lines[start : start + len(find)], find)
        if shift is not None:
            hits.append((start, shift))
    if not hits:
        raise EditError(_no_match_message(edit, src_lines, find))
    if len(hits) > 1:
        offsets = [sum(len(x) for x in src_lines[:start]) for start, _ in hits]
        raise EditError(_multi_match_message(edit, source, offsets))
    start, (remove, add) = hits[0]
    replaced = []
    for line in edit.replace.splitlines(keepends=True):
        body = line[len(remove) :] if remove and line.startswith(remove) else line
        replaced.append(add + body if line.strip() else line)
    if replaced and not replaced[-1].endswith("\n"):
        replaced[-1] += "\n"
    end = start + len(find)
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


def _line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _multi_match_message(edit: Edit, source: str, offsets: list[int]) -> str:
    where = ", ".join(str(_line_of(source, at)) for at in offsets[:5])
    return (
        f"block {edit.number}: the SEARCH text occurs {len(offsets)} times in train.py"
        f" (at lines {where}); include more surrounding lines so it matches exactly once"
    )


def _no_match_message(edit: Edit, src_lines: list[str], find: list[str]) -> str:
    message = (
        f"block {edit.number}: the SEARCH text does not occur in train.py; SEARCH must copy"
        " existing lines exactly, comments and indentation included"
    )
    first = next(line.strip() for line in find if line.strip())
    stripped = [line.strip() for line in src_lines]
    close = difflib.get_close_matches(first, stripped, n=1, cutoff=0.6)
    if close:
        at = stripped.index(close[0])
        preview = "".join(src_lines[at : at + min(len(find), CONTEXT_PREVIEW_LINES)]).rstrip("\n")
        message += f". The closest lines in train.py (line {at + 1}) are:\n{preview}"
    return message


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
