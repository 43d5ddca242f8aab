"""What a language model or coding agent is told: the research context and the answer format.

Both the `llm` and the `agent` proposer describe the same situation (the
research instructions, the parent `train.py`, what has been tried, how the
parent crashed); only the way to answer differs. Everything is plain
Markdown so the saved prompt files read well.
"""

from __future__ import annotations

import re

from autoresearch.ledger import FAILED_STATUSES
from autoresearch.proposal import HistoryEntry, ProposalRequest

MAX_BEST = 12  # history lines shown as "results so far"
MAX_FAILURES = 8  # history lines shown as "recent failures"
MAX_HISTORY_DESCRIPTION = 160  # characters of each past description
CRASH_TAIL_LINES = 60  # the end of a traceback is where the cause is
CRASH_TAIL_CHARS = 6000

SYSTEM = """\
You are an expert machine-learning research engineer. You improve a small \
language-model training script, train.py, one experiment at a time. Each \
experiment trains for a fixed wall-clock budget and is scored by val_bpb \
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

Answer again in the same format (DESCRIPTION line, then SEARCH/REPLACE blocks \
against the current train.py shown above, which is unchanged)."""


def llm_messages(request: ProposalRequest, extra_instructions: str | None = None) -> list[dict]:
    """The chat messages for a first attempt."""
    user = "\n\n".join(
        part for part in (context(request), _extra(extra_instructions), EDIT_FORMAT) if part
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def retry_message(error: str) -> dict:
    """The follow-up user message that sends a parse or apply error back to the model."""
    return {"role": "user", "content": RETRY.format(error=error.strip())}


def agent_prompt(request: ProposalRequest, extra_instructions: str | None = None) -> str:
    """The whole task for a coding agent working in a folder with train.py."""
    parts = (
        SYSTEM, context(request, include_source=False), _extra(extra_instructions), AGENT_FORMAT
    )
    return "\n\n".join(part for part in parts if part)


def context(request: ProposalRequest, include_source: bool = True) -> str:
    """The research situation: instructions, history, crash log, and the parent's source."""
    parts = [f"# Research instructions (program.md)\n\n{request.program.strip()}"]
    history = format_history(request.history)
    if history:
        parts.append(history)
    if request.crash_log:
        parts.append(
            f"# The parent ({request.parent_id}) crashed\n\nThe end of its log:\n\n"
            f"{_fence(crash_tail(request.crash_log), 'text')}\n\nFix the cause, or take"
            " another direction."
        )
    if include_source:
        parts.append(
            f"# The current train.py (parent {request.parent_id})\n\n"
            f"{_fence(request.parent_source, 'python')}"
        )
    else:
        parts.append(f"The current train.py in this folder is candidate {request.parent_id}.")
    return "\n\n".join(parts)


def format_history(history: tuple[HistoryEntry, ...]) -> str:
    """Best results, then recent failures, one line each; '' when nothing was tried yet."""
    if not history:
        return ""
    scored = [h for h in history if h.status not in FAILED_STATUSES][:MAX_BEST]
    failed = [h for h in history if h.status in FAILED_STATUSES][:MAX_FAILURES]
    out = ["# What has been tried (val_bpb: lower is better; delta is against the parent)"]
    if scored:
        out += ["", "## Results so far, best first", *(_history_line(h) for h in scored)]
    if failed:
        out += ["", "## Recent failures: avoid repeating them", *(_history_line(h) for h in failed)]
    return "\n".join(out)


def crash_tail(log: str) -> str:
    """The last lines of a log, bounded in lines and characters."""
    tail = "\n".join(log.rstrip().splitlines()[-CRASH_TAIL_LINES:])
    return tail[-CRASH_TAIL_CHARS:]


def _history_line(h: HistoryEntry) -> str:
    score = f"val_bpb {h.val_bpb:.4f}" if h.val_bpb is not None else "no score"
    delta = f" ({h.delta:+.4f})" if h.delta is not None else ""
    parent = f" from {h.parent}" if h.parent else ""
    text = " ".join(h.description.split())
    if len(text) > MAX_HISTORY_DESCRIPTION:
        text = text[: MAX_HISTORY_DESCRIPTION - 1] + "…"
    return f"- {h.id}{parent} [{h.status}, {h.proposer}] {score}{delta}: {text}"


def _extra(extra_instructions: str | None) -> str:
    if not extra_instructions or not extra_instructions.strip():
        return ""
    return f"# Additional instructions\n\n{extra_instructions.strip()}"


def _fence(text: str, lang: str) -> str:
    """A code fence longer than any backtick run inside `text`, so it cannot close early."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"
