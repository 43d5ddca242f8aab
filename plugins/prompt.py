"""What a language model or coding agent is told: the research context and the answer format.

Both the `llm` and the `agent` proposer describe the same situation; only the
way to answer differs. The briefing, in order: the research instructions
(program.md), the parent's run (its numbers, and for a failed parent the
reason and its log tail), how results are judged (noise and promotion
threshold), the best results and recent failures with their reasons, the last
promotions with their diffs, and the results table; then the parent's
`train.py`. Everything between program.md and train.py is bounded by
MAX_BRIEFING_CHARS whatever the history's length, and is built from the
request's `Briefing` (kept up to date by the engine) in time independent of
it. Everything is plain Markdown so the saved prompt files read well.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from autoresearch.briefing import summarize
from autoresearch.ledger import FAILED_STATUSES
from autoresearch.proposal import Briefing, HistoryEntry, ProposalRequest, RunNumbers

# Everything between program.md and train.py (about 8k tokens): the history sections are
# bounded on their own (autoresearch.briefing), and this caps their sum.
MAX_BRIEFING_CHARS = 32_000
MAX_HISTORY_DESCRIPTION = 160  # characters of each past description
MAX_REASON_CHARS = 200  # characters of each failure's reason
CRASH_TAIL_LINES = 60  # the end of a traceback is where the cause is
CRASH_TAIL_CHARS = 6000
SECTION_BREAK = "\n\n"
TABLE_TITLE_CHARS = 160  # the table's title and fences, at most
FAILED_WORDS = {"crash": "crashed", "timeout": "timed out", "invalid": "was rejected"}  # verbs

SYSTEM = """\
You are an expert machine-learning research engineer. You improve a small \
language-model training script, train.py, one experiment at a time. Each \
experiment trains under the same fixed budget (training seconds or tokens, \
as the parent's numbers say) and is scored by val_bpb \
(validation bits per byte, lower is better), measured by a trusted harness \
that train.py cannot change. Propose one focused, promising change per \
experiment, informed by what has already been tried."""

EDIT_FORMAT = """\
## How to answer

First line: `DESCRIPTION: <one line: what you change and why>`.

Then change train.py with one or more SEARCH/REPLACE blocks:

train.py
```python
<<<<<<< SEARCH
<lines copied exactly from the current train.py>
=======
<the lines that replace them>
>>>>>>> REPLACE
```

Rules:
- SEARCH must copy existing lines exactly, indentation and comments included,
  and must match exactly one place in train.py: include a few surrounding lines
  if needed.
- Keep blocks short: only the lines that change plus a little context.
- Blocks are applied in order; several blocks may edit different places.
- Only train.py may be changed.
- A unified diff of train.py in a ```diff block is accepted too; its hunks
  are placed by their context lines, which must match exactly one place.
- For a large rewrite you may instead send the complete new train.py in a
  single ```python block (no SEARCH/REPLACE markers).
"""

AGENT_FORMAT = """\
## What to do

Edit `train.py` in this folder in place: one focused change, as above.
- Change only train.py; do not add, delete or edit any other file
  (program.md in particular is read-only).
- Do not run training: experiments are run and scored elsewhere.
- When done, write one line describing your change (what and why) to a file
  named `DESCRIPTION` in this folder.
"""

RETRY = """\
Your previous answer could not be used:

{error}

Answer again in the same format (DESCRIPTION line, then {form} \
against the current train.py shown above, which is unchanged)."""
# How the retry names the form the failed reply tried (edits.reply_form), so a model that
# answered with a diff is not told to switch to blocks it did not use.
RETRY_FORMS = {
    "blocks": "SEARCH/REPLACE blocks",
    "diff": "a unified diff of train.py in a ```diff block",
    "file": "the complete train.py in one ```python block",
}


def llm_messages(request: ProposalRequest, extra_instructions: str | None = None) -> list[dict]:
    """The chat messages for a first attempt."""
    user = "\n\n".join(
        part for part in (context(request), _extra(extra_instructions), EDIT_FORMAT) if part
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def retry_message(error: str, form: str = "blocks") -> dict:
    """The follow-up user message that sends a parse or apply error back to the model, asking
    for the answer again in `form` (a key of RETRY_FORMS)."""
    return {"role": "user", "content": RETRY.format(error=error.strip(), form=RETRY_FORMS[form])}


def agent_prompt(request: ProposalRequest, extra_instructions: str | None = None) -> str:
    """The whole task for a coding agent working in a folder with train.py."""
    parts = (
        SYSTEM, context(request, include_source=False), _extra(extra_instructions), AGENT_FORMAT
    )
    return "\n\n".join(part for part in parts if part)


def context(request: ProposalRequest, include_source: bool = True) -> str:
    """The research situation: instructions, the briefing, and the parent's source."""
    parts = [f"# Research instructions (program.md)\n\n{request.program.strip()}"]
    briefing = request.briefing or summarize(request.history)
    # Most useful first, each whole or not at all (never a fence cut open); the promotions
    # and the table shrink to the room the sections before them leave.
    sections: tuple[Callable[[int], str], ...] = (
        lambda room: parent_section(request),
        lambda room: judging_section(briefing),
        lambda room: format_history(briefing),
        lambda room: promotions_section(briefing, room),
        lambda room: table_section(briefing, room),
    )
    room = MAX_BRIEFING_CHARS
    for section in sections:
        part = section(room - len(SECTION_BREAK))
        if part and len(part) + len(SECTION_BREAK) <= room:
            parts.append(part)
            room -= len(part) + len(SECTION_BREAK)
    if include_source:
        parts.append(
            f"# The current train.py (parent {request.parent_id})\n\n"
            f"{_fence(request.parent_source, 'python')}"
        )
    else:
        parts.append(f"The current train.py in this folder is candidate {request.parent_id}.")
    return SECTION_BREAK.join(parts)


def parent_section(request: ProposalRequest) -> str:
    """The parent's numbers, and for a failed parent why, with the end of its log."""
    run, pid = request.parent_run, request.parent_id
    out = []
    if run is not None:
        if run.status in FAILED_STATUSES:
            out.append(f"# The parent ({pid}) {_failed(run.status)}: {_line(run.reason)}")
        else:
            out.append(f"# The parent's run ({pid})")
        out += ["", *_numbers(run)]
    if request.crash_log:
        if run is None:
            out.append(f"# The parent ({pid}) failed")
        out += [
            "", "The end of its log:", "", _fence(crash_tail(request.crash_log), "text"), "",
            "Fix the cause, or take another direction.",
        ]  # fmt: skip
    return "\n".join(out)


def _numbers(run: RunNumbers) -> list[str]:
    score = f"val_bpb {run.val_bpb:.4f}" if run.val_bpb is not None else "no val_bpb"
    speed = f", {run.tokens_per_second:,.0f} tokens/s" if run.tokens_per_second else ""
    loss = (
        f"- final training loss {run.final_loss:.4f} (as train.py reported it)"
        if run.final_loss is not None
        else "- final training loss: not reported"
    )
    status = "" if run.status in FAILED_STATUSES else f" ({run.status}: {_line(run.reason)})"
    return [
        f"- {score}{status}",  # a failure's reason is in the section's title
        f"- budget {run.budget}; trained {run.training_seconds:.1f} s on {run.device or '?'}",
        f"- {run.num_steps:,} optimizer steps, {run.tokens:,} tokens{speed}",
        f"- peak memory {run.memory_gb:.2f} GB",
        loss,
    ]


def judging_section(briefing: Briefing) -> str:
    """The measured noise and the promotion threshold; '' when neither is known."""
    if briefing.noise is None and briefing.threshold is None:
        return ""
    out = ["# How results are judged", ""]
    if briefing.noise is None:
        out.append("- noise: not measured yet (no train.py has been run twice)")
    else:
        out.append(
            f"- noise: runs of the same train.py differ in val_bpb by σ = {briefing.noise:.4f};"
            " a change smaller than that is hard to tell from luck"
        )
    if briefing.threshold:
        out.append(
            "- promotion: a candidate's val_bpb must beat the champion's mean by more than"
            f" {briefing.threshold:.4f}"
        )
    elif briefing.threshold is not None:
        out.append("- promotion: a candidate's val_bpb must be lower than the champion's mean")
    return "\n".join(out)


def format_history(briefing: Briefing) -> str:
    """Best results, then recent failures with their reasons, one line each; '' when nothing
    was tried yet."""
    if not (briefing.best or briefing.failures):
        return ""
    out = ["# What has been tried (val_bpb: lower is better; delta is against the parent)"]
    if briefing.best:
        out += ["", "## Results so far, best first", *(_history_line(h) for h in briefing.best)]
    if briefing.failures:
        out += ["", "## Recent failures, newest first: avoid repeating them"]
        out += [_history_line(h) for h in briefing.failures]
    return "\n".join(out)


def promotions_section(briefing: Briefing, room: int = MAX_BRIEFING_CHARS) -> str:
    """The last promotions with their diffs (what worked, exactly), newest first, as many
    as fit in `room` characters."""
    out = "# The last promotions, newest first, with their changes"
    shown = 0
    for promotion in briefing.promotions:
        block = f"\n\n## {_history_line(promotion.entry)[2:]}\n\n{_fence(promotion.diff, 'diff')}"
        if len(out) + len(block) > room:
            break
        out += block
        shown += 1
    return out if shown else ""


def table_section(briefing: Briefing, room: int = MAX_BRIEFING_CHARS) -> str:
    """Every result of the run as TSV, or the newest rows that fit in `room` characters."""
    if not briefing.table:
        return ""
    header, *rows = briefing.table.split("\n")
    room -= TABLE_TITLE_CHARS + len(header) + 1
    shown: list[str] = []
    for row in reversed(rows):
        if len(row) + 1 > room:
            break
        shown.append(row)
        room -= len(row) + 1
    if not shown:
        return ""
    if len(shown) < briefing.table_rows:
        title = (
            f"# The newest {len(shown)} of {briefing.table_rows} results (TSV, oldest first;"
            " the best results and recent failures are listed above)"
        )
    else:
        title = "# Every result so far (TSV, oldest first): do not repeat what was tried"
    table = "\n".join([header, *reversed(shown)])
    return f"{title}\n\n{_fence(table, 'tsv')}"


def crash_tail(log: str) -> str:
    """The last lines of a log, bounded in lines and characters."""
    tail = "\n".join(log.rstrip().splitlines()[-CRASH_TAIL_LINES:])
    return tail[-CRASH_TAIL_CHARS:]


def _history_line(h: HistoryEntry) -> str:
    score = f"val_bpb {h.val_bpb:.4f}" if h.val_bpb is not None else "no score"
    delta = f" ({h.delta:+.4f})" if h.delta is not None else ""
    parent = f" from {h.parent}" if h.parent else ""
    text = _line(h.description, MAX_HISTORY_DESCRIPTION) or "no description"
    why = ""
    if h.reason and h.status in FAILED_STATUSES:
        why = f" ({_failed(h.status)}: {_line(h.reason)})"
    return f"- {h.id}{parent} [{h.status}, {h.proposer}] {score}{delta}: {text}{why}"


def _failed(status: str) -> str:
    return FAILED_WORDS.get(status, status)


def _line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _extra(extra_instructions: str | None) -> str:
    if not extra_instructions or not extra_instructions.strip():
        return ""
    return f"# Additional instructions\n\n{extra_instructions.strip()}"


def _fence(text: str, lang: str) -> str:
    """A code fence longer than any backtick run inside `text`, so it cannot close early."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    ticks = "`" * max(3, longest + 1)
    body = text.rstrip("\n")  # only newlines: a TSV row may end in an empty field
    return f"{ticks}{lang}\n{body}\n{ticks}"
