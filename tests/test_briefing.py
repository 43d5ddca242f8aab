"""The briefing proposers get (autoresearch/briefing.py, plugins/prompt.py): the parent's
numbers, failures with their reasons, noise and threshold, promotions with their diffs, the
results table, all bounded; and the engine filling it in from its records."""

from __future__ import annotations

import helpers
from helpers import FROZEN, LEARNS, committed

from autoresearch.briefing import (
    MAX_BEST,
    MAX_FAILURES,
    MAX_PROMOTIONS,
    MAX_TABLE_CHARS,
    Book,
    HistoryView,
    run_numbers,
    train_diff,
)
from autoresearch.constants import read_constants, rewrite_constants
from autoresearch.default_plugins import prompt
from autoresearch.ledger import Record
from autoresearch.runner import Outcome
from autoresearch.testing import ScriptedProposer, ScriptedRunner, make_request

TIMEOUT_REASON = "trained 17.0 s, over the 10 s budget"
PARENT = "import math\n\nLR = 0.01\nDEPTH = 8\n"


def record(i: int, bpb: float | None, status: str = "keep", **fields) -> Record:
    parent = fields.pop("parent", "e0001" if i > 1 else None)
    return Record(
        id=f"e{i:04d}", status=status, val_bpb=bpb, parent=parent, commit=f"c{i}",
        proposer=fields.pop("proposer", "llm:m" if i > 1 else "baseline"),
        description=fields.pop("description", f"idea {i}"), **fields,
    )  # fmt: skip


def sources_diff(sources: dict[str, str]):
    """A Book's `diff`, from train.py sources by commit (the engine reads them from git)."""
    return lambda parent, rec: train_diff(sources[parent.commit], sources[rec.commit])


def user_prompt(request) -> str:
    return prompt.llm_messages(request)[1]["content"]


def test_the_parents_numbers_are_in_the_prompt():
    parent = record(
        1, 1.2345, device="cpu", num_steps=1234, tokens=2_468_000, training_seconds=10.0,
        memory_gb=1.5, final_loss=3.25, promoted=True,
    )  # fmt: skip
    text = user_prompt(
        make_request(PARENT, parent_id="e0001", parent_run=run_numbers(parent, "10 s"))
    )
    assert "# The parent's run (e0001)" in text
    for part in ("val_bpb 1.2345", "budget 10 s; trained 10.0 s on cpu", "1,234 optimizer steps",
                 "2,468,000 tokens, 246,800 tokens/s", "peak memory 1.50 GB",
                 "final training loss 3.2500 (as train.py reported it)"):  # fmt: skip
        assert part in text, part


def test_a_timed_out_parent_is_called_a_timeout_with_its_reason():
    parent = record(3, None, "timeout", reason=TIMEOUT_REASON, training_seconds=17.0)
    request = make_request(
        PARENT, parent_id="e0003", parent_run=run_numbers(parent, "10 s"),
        crash_log="step 90\nkilled: over the budget",
    )  # fmt: skip
    text = user_prompt(request)
    assert f"# The parent (e0003) timed out: {TIMEOUT_REASON}" in text
    assert text.count(TIMEOUT_REASON) == 1  # in the title, not again in the numbers
    assert "crashed" not in text
    assert "killed: over the budget" in text  # and its log tail follows


def test_failures_carry_their_reasons_and_scores_come_best_first():
    book = Book(diff=lambda parent, rec: "")
    book.add(record(1, 2.0, promoted=True))
    book.add(record(2, None, "timeout", reason=TIMEOUT_REASON, description="train longer"))
    book.add(record(3, None, "invalid", reason="duplicate of e0001", description="same again"))
    book.add(record(4, 1.9, "discard"))
    book.add(record(5, 1.8, "keep"))
    text = user_prompt(make_request(PARENT, briefing=book.briefing(None, None)))
    best = text.index("## Results so far")
    assert text.index("- e0005", best) < text.index("- e0004", best) < text.index("- e0001", best)
    timeout = f"train longer (timed out: {TIMEOUT_REASON})"
    assert f"- e0002 from e0001 [timeout, llm:m] no score: {timeout}" in text
    invalid = "same again (was rejected: duplicate of e0001)"
    assert f"- e0003 from e0001 [invalid, llm:m] no score: {invalid}" in text
    assert text.index("e0003 from") < text.index("e0002 from")  # failures newest first


def test_noise_and_threshold_are_stated():
    book = Book(diff=lambda parent, rec: "")
    book.add(record(1, 2.0, promoted=True))
    measured = user_prompt(make_request(PARENT, briefing=book.briefing(0.0123, 0.0246)))
    assert "σ = 0.0123" in measured
    assert "beat the champion's mean by more than 0.0246" in measured
    unmeasured = user_prompt(make_request(PARENT, briefing=book.briefing(None, 0.0)))
    assert "noise: not measured yet" in unmeasured
    assert "must be lower than the champion's mean" in unmeasured


def test_the_last_promotions_come_with_their_diffs():
    sources, asked = {"c1": PARENT}, []
    diff = sources_diff(sources)
    book = Book(diff=lambda parent, rec: asked.append(rec.id) or diff(parent, rec))
    book.add(record(1, 2.0, promoted=True))
    parent = "e0001"
    for i in range(2, 2 + MAX_PROMOTIONS + 1):  # one more than a briefing shows
        sources[f"c{i}"] = sources[f"c{i - 1}"].replace(f"DEPTH = {6 + i}", f"DEPTH = {7 + i}")
        book.add(record(i, 2.0 - i / 10, promoted=True, parent=parent, description=f"depth {i}"))
        parent = f"e{i:04d}"
    book.add(record(9, 1.0, "discard", parent=parent))  # not promoted: no diff
    briefing = book.briefing(None, None)
    assert [p.entry.id for p in briefing.promotions] == ["e0005", "e0004", "e0003"]
    assert book.briefing(None, None) == briefing
    assert sorted(asked) == ["e0003", "e0004", "e0005"]  # only those shown, once each
    text = user_prompt(make_request(PARENT, briefing=briefing))
    section = text[text.index("# The last promotions"):]
    assert "## e0005 from e0004 [keep, llm:m] val_bpb 1.5000 (-0.1000): depth 5" in section
    assert "```diff\n--- a/train.py\n+++ b/train.py\n" in section
    assert "-DEPTH = 11\n+DEPTH = 12" in section  # e0005's own change
    assert "-DEPTH = 8\n+DEPTH = 9" not in section  # e0002's is one too many


def test_a_promoted_repeat_stands_for_the_candidate_it_repeats():
    sources = {"c1": PARENT, "c2": PARENT.replace("LR = 0.01", "LR = 0.02")}
    book = Book(diff=sources_diff(sources))
    book.add(record(1, 2.0, promoted=True))
    book.add(record(2, 1.9, "keep", description="double the LR"))
    book.add(record(3, 1.9, "keep", proposer="repeat", parent="e0002", promoted=True))
    (promotion,) = book.briefing(None, None).promotions
    assert promotion.entry.id == "e0002" and "+LR = 0.02" in promotion.diff
    assert [e.id for e in book.history()] == ["e0002", "e0001"]  # the repeat tried nothing


def test_the_results_table_is_whole_when_it_fits():
    book = Book(diff=lambda parent, rec: "")
    book.add(record(1, 2.0, promoted=True))
    book.add(record(2, None, "crash", reason="exit code 1:\tValueError"))
    book.add(record(3, 1.95, "discard", description="tab\tin it"))
    text = user_prompt(make_request(PARENT, briefing=book.briefing(None, None)))
    assert "# Every result so far (TSV, oldest first)" in text
    table = text[text.index("```tsv\n") + 7 :].split("\n```")[0].splitlines()
    assert table[0].split("\t") == ["id", "parent", "status", "val_bpb", "delta", "description",
                                    "reason"]  # fmt: skip
    assert table[1:] == [
        "e0001\t\tkeep\t2.0000\t\tidea 1\t",
        "e0002\te0001\tcrash\t\t\tidea 2\texit code 1: ValueError",
        "e0003\te0001\tdiscard\t1.9500\t-0.0500\ttab in it\t",
    ]


def test_a_long_history_is_cut_to_the_caps():
    book = Book(diff=lambda parent, rec: "x" * 100_000)
    book.add(record(1, 2.0, promoted=True))
    long = "word " * 500
    for i in range(2, 10_002):
        failed = i % 3 == 0
        book.add(record(
            i, None if failed else 2.0 - i * 1e-5, "crash" if failed else "keep",
            reason=long if failed else "", description=long, promoted=i % 1000 == 0,
        ))  # fmt: skip
    briefing = book.briefing(0.01, 0.02)
    assert len(briefing.best) == MAX_BEST and len(briefing.failures) == MAX_FAILURES
    assert len(briefing.table) <= MAX_TABLE_CHARS and briefing.table_rows == 10_001
    assert briefing.table.splitlines()[-1].startswith("e10001\t")  # the newest rows are kept
    assert all(len(p.diff) <= 3000 for p in briefing.promotions)
    request = make_request(PARENT, parent_id="e9999", program="Lower val_bpb.", briefing=briefing)
    text = user_prompt(request)
    shown = briefing.table.count("\n")
    assert f"# The newest {shown} of 10001 results" in text
    fixed = len(prompt.context(make_request(PARENT, program="Lower val_bpb.")))
    assert len(prompt.context(request)) <= fixed + prompt.MAX_BRIEFING_CHARS + 2
    agent = prompt.agent_prompt(request)  # the agent's prompt is bounded the same way
    assert "# The last promotions" in agent and len(agent) < prompt.MAX_BRIEFING_CHARS + 5000


def test_a_history_view_is_a_snapshot_ordered_like_the_history():
    book = Book(diff=lambda parent, rec: "")
    book.add(record(1, 2.0, promoted=True))
    book.add(record(2, None, "crash"))
    book.add(record(3, 1.5, "keep"))
    view = book.history()
    book.add(record(4, 1.0, "keep"))  # after the snapshot: not in it
    book.add(record(5, None, "invalid"))
    assert isinstance(view, HistoryView) and len(view) == 3
    assert [e.id for e in view] == ["e0003", "e0001", "e0002"]
    assert [e.id for e in book.history()] == ["e0004", "e0003", "e0001", "e0005", "e0002"]
    assert view[0].delta == -0.5 and view[-1].status == "crash"


TIMES_OUT = rewrite_constants(LEARNS, {"BATCH_SIZE": 8})


def measured(source: str) -> Outcome:
    """The scripted runner's outcome, with the numbers a real run records."""
    if read_constants(source)["BATCH_SIZE"] == 8:
        return Outcome("timeout", TIMEOUT_REASON, training_seconds=17.0, device="cpu")
    return Outcome(
        "keep", "trained and evaluated", val_bpb=3.0 - 5 * float(read_constants(source)["LR"]),
        training_seconds=1.5, num_steps=123, tokens=45_600, peak_rss_mb=512.0, final_loss=2.5,
        device="cpu",
    )  # fmt: skip


def test_the_engine_briefs_proposers_from_its_records(research_repo):
    base = committed(research_repo, FROZEN)
    better = rewrite_constants(LEARNS, {"LR": 0.3})
    proposer = ScriptedProposer([
        (LEARNS, "raise the LR"), (TIMES_OUT, "smaller batches"), (LEARNS, "the same again"),
        (better, "raise the LR more"),
    ])  # fmt: skip
    engine = helpers.make_engine(
        research_repo, proposer, runner=ScriptedRunner(measured), max_experiments=4, prefetch=0,
        fix_attempts=1,
    )  # fmt: skip
    records = engine.run(base)
    assert [r.status for r in records] == ["keep", "keep", "timeout", "invalid", "keep"]
    first, champion, fix, after_invalid = proposer.requests
    assert first.parent_run is None  # prepared while the baseline trained
    assert champion.parent_id == "e0002" and champion.parent_run.num_steps == 123
    assert champion.parent_run.final_loss == 2.5 and champion.parent_run.memory_gb == 0.5
    assert champion.parent_run.budget == engine.config.run.describe_budget()
    (promotion,) = champion.briefing.promotions
    assert promotion.entry.id == "e0002" and "-LR = 0.0\n+LR = 0.2\n" in promotion.diff
    assert champion.briefing.threshold == engine.threshold()
    # The timed-out candidate is handed back as a timeout, with its reason.
    assert fix.parent_id == "e0003" and fix.parent_run.status == "timeout"
    assert f"timed out: {TIMEOUT_REASON}" in user_prompt(fix)
    reasons = {e.id: e.reason for e in after_invalid.briefing.failures}
    assert reasons["e0003"] == TIMEOUT_REASON and "duplicate" in reasons["e0004"]
    assert [e.id for e in after_invalid.history] == ["e0002", "e0001", "e0004", "e0003"]
    assert after_invalid.briefing.table_rows == 4


def test_the_briefing_cap_holds_and_the_table_gives_way(monkeypatch):
    cap = 6000
    monkeypatch.setattr(prompt, "MAX_BRIEFING_CHARS", cap)
    book = Book(diff=lambda parent, rec: "+x = 1\n" * 300)  # 2,100 characters each
    book.add(record(1, 2.0, promoted=True))
    for i in range(2, 150):
        book.add(record(i, 2.0 - i * 1e-4, promoted=i % 30 == 0))
    request = make_request(PARENT, program="Lower val_bpb.", briefing=book.briefing(0.01, 0.02))
    text = prompt.context(request)
    assert len(text) - len(prompt.context(make_request(PARENT, program="Lower val_bpb."))) <= cap
    assert 0 < text.count("\n## e0") < 3  # of 3 promotions, the newest whose diffs fit
    assert "# The newest" in text  # and the table has fewer rows, not none
    assert text.count("```") % 2 == 0  # every fence closed: the table lost rows, not its end
    monkeypatch.setattr(prompt, "MAX_BRIEFING_CHARS", 40_000)
    whole = prompt.context(request)
    assert "# Every result so far" in whole and whole.count("\n## e0") == 3
