"""The search: a population of `train.py` candidates on git branches, trained on slots.

    baseline ─► calibration repeats ─► interrupted candidates, then the search loop

One slot (`run.slots`) trains one experiment at a time, the original loop; with N slots,
N experiments train at once (`autoresearch.slots`; a Ray cluster through its runner).
Only this thread writes the ledger and the git repo; each experiment's thread just waits
for the runner. Search loop:
  1. proposals are prepared in background threads, `evolve.prefetch` ahead (and one per
     free slot), so no slot waits for a slow proposer;
  2. when a slot is free, the next ready proposal is validated (parses, keeps the harness
     contract, not a duplicate of anything tried or in flight, not a seed-only change);
     a rejected one is recorded `invalid`;
  3. a valid one is committed on its own branch, on top of its parent's result
     commit, and trained and scored by the runner on that slot;
  4. results are judged and recorded in the order they arrive, a result commit (the same
     tree, the score in its subject) ends each branch, and the research branch follows
     the champion.

Rules (pure functions of the records in population.py, documented in docs/evolve.md):
- **Parent selection.** A population member of rank r (0 = best) out of n is
  chosen with weight (n - r) / (1 + its children so far): good parents are
  preferred, and a parent that already has many children gives way to others.
  A crashed candidate is handed back to its proposer with its log tail, up to
  `evolve.fix_attempts` times, before anything else. With `evolve.selection =
  "none"` the parent is always the baseline, and nothing is handed back: the
  candidates are independent draws (random search, the control of a benchmark).
- **Judging.** threshold = max(evolve.min_improvement, evolve.noise_k × the
  standard deviation of the baseline's repeated val_bpb). A candidate beating the
  champion by more than the threshold is promoted. With population 1 a candidate
  is kept only if it is promoted (the original greedy loop); with a larger
  population it is kept if it enters the population (better than its worst member,
  or the population is not yet full).
- **Resume.** Everything is derived from the ledger and the branches: a candidate
  whose branch exists but has no record was cut off and is trained again.
- **Stopping.** A limit counts the experiments in flight: none starts that would pass
  it. The first Ctrl-C starts nothing new and records what is in flight; a second one, or
  SIGTERM, stops them at once (cut off: `--resume` trains them again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import queue
import random
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoresearch import population as pop
from autoresearch import tags
from autoresearch.briefing import Book, HistoryView, run_numbers, train_diff
from autoresearch.config import Config
from autoresearch.constants import code_lines, depth_of
from autoresearch.errors import UserError
from autoresearch.ledger import (
    CRASHED_STATUSES,
    FAILED_STATUSES,
    Ledger,
    Record,
    format_id,
    highest_number,
)
from autoresearch.population import AUTO, BASELINE, CALIBRATE, REPEAT
from autoresearch.progress import LiveProgress
from autoresearch.proposal import Briefing, Proposal, ProposalRequest, Proposer, Usage
from autoresearch.redact import redact
from autoresearch.runner import Outcome, Runner, kill_leftovers, log_tail, run_experiment
from autoresearch.slots import Slot, slots_for
from autoresearch.status import EvolveStatus, RunLock, write_status
from autoresearch.validation import MAX_SOURCE_BYTES, source_hash, validate_proposal
from autoresearch.workspace import (
    LEDGER_FILE,
    PROGRAM_FILE,
    PROPOSAL_DIR,
    PROPOSALS_DIR,
    RESULTS_FILE,
    RUN_LOG,
    RUNS_DIR,
    TRAIN_FILE,
    branch_sha,
    candidate_branch,
    candidate_message,
    commit_candidate,
    commit_message,
    commit_result,
    parse_trailers,
    read_train,
    research_branch,
    result_message,
    run_dir,
    set_branch,
    state_dir,
)

# A scratch file is kept whole up to this size; a bigger one (a runaway reply) keeps its head
# and tail. An LLM reply of max_tokens is ~30 KB, a prompt with a 200 KB train.py ~250 KB.
SCRATCH_FILE_BYTES = 512 * 2**10
# Plain words when the baseline shows that results will be noise (docs/evolve.md).
FEW_STEPS = 100  # optimizer steps of the baseline below which the machine is too slow or busy
NOISY_FRACTION = 0.005  # noise over 0.5% of the baseline's val_bpb: more than most edits gain
EVENT_POLL_SECONDS = 0.2  # how long the engine waits for an event before it looks at limits
STATUS_SECONDS = 1.0  # status.json is rewritten at most this often


@dataclass
class Job:
    """One proposal being prepared in a background thread."""

    number: int
    parent: Record
    champion_id: str  # the champion when the job was made (greedy drops stale proposals)
    spec: str
    work_dir: Path
    started: float = 0.0
    proposal: Proposal | None = None
    error: BaseException | None = None


@dataclass
class Work:
    """An experiment to train: what the runner gets, and what its record will say."""

    id: str | None  # None: numbered when it starts (a calibration repeat)
    source: str
    commit: str
    parent: Record | None
    spec: str  # the proposer, or baseline / calibrate
    description: str
    usage: object = None  # what its proposal cost
    work_dir: Path | None = None  # the proposer's scratch files, moved into the run folder
    seed: int | None = None  # the training seed: set when it starts, one per run of a source

    @functools.cached_property
    def source_hash(self) -> str:
        """Its normalised-source hash, made once: with 16 slots, every proposal checks it
        against each experiment in flight."""
        return source_hash(self.source)


@dataclass
class Running:
    """An experiment on a slot; its thread fills in the outcome (or the runner's error)."""

    work: Work
    slot: Slot
    started: float  # time.time()
    outcome: Outcome | None = None
    error: BaseException | None = None


class StopNow(Exception):
    """The run must end at once (a second Ctrl-C, SIGTERM)."""


class Engine:
    def __init__(
        self,
        repo: Path,
        config: Config,
        tag: str,
        proposers: dict[str, tuple[Proposer, float]],
        say: Callable[[str], None],
        progress: Callable[..., LiveProgress] | None = None,
        notify: Callable[[Record], None] | None = None,
        configured: dict | None = None,
        runner: Runner = run_experiment,
        slots: list[Slot] | None = None,
    ):
        self.repo, self.config, self.tag = repo, config, tag
        self.runner = runner  # trains and scores one candidate (a test double in engine tests)
        self.slots = slots or slots_for(config)  # where experiments run: `run.slots` of them
        self.settings = config.evolve
        self.proposers = proposers
        self.say = say
        self.progress = progress
        self.notify = notify or (lambda record: None)
        self.state = state_dir(repo)
        self.ledger = Ledger(self.state / LEDGER_FILE)
        recorded = self.ledger.records()
        self.records = pop.tag_records(recorded, tag)
        # Kept in memory from here on, so that an experiment's bookkeeping does not grow with
        # the history: the highest id of every tag, this tag's candidate branches (the
        # engine is the only writer while it holds the run lock).
        self._last_number = highest_number(r.id for r in recorded)
        self._tips: dict[str, str] = {}
        self._book = Book(self._diff)  # what proposers see of the records, added as they come
        self._briefed: tuple[int, Briefing] | None = None  # (records in the book, its briefing)
        self.rng = random.Random(f"{config.run.seed}-{tag}")
        self.program = (repo / PROGRAM_FILE).read_text(encoding="utf-8")
        remembered = tags.load(self.state, tag)
        self.elapsed_before = remembered.elapsed_seconds if remembered else 0.0  # earlier sessions
        # autoresearch.toml's own settings, remembered so that a later edit is noticed
        self.configured = configured if configured is not None else tags.settings_of(config)
        self.started = time.monotonic()
        self.stop_requested = False
        self.stop_reason = ""
        self.interrupted_by: int | None = None  # the signal that stopped the run, if one did
        self.limit: pop.Limit | None = None  # the stop limit reached, once one is
        self.idle_seconds = 0.0  # the device waited for a proposal this long
        # Proposals finished and experiments finished arrive here, from their threads.
        self._events: queue.Queue[Job | Running] = queue.Queue()
        self._in_flight: list[Job] = []  # proposals being prepared
        self._ready: list[Job] = []  # prepared, waiting for a slot
        self._pending: list[Work] = []  # cut-off candidates, trained before any proposal
        self._free: list[Slot] = list(self.slots)
        self._running: dict[str, Running] = {}  # experiment id -> where and since when
        self._status_said: tuple = ()  # what status.json says now
        self._status_written_at = -math.inf
        self._jobs_made = 0
        self._fixes: list[Record] = []  # crashed candidates to hand back for a fix
        self._confirming: list[Work] = []  # repeats of would-be champions, before any proposal
        self._invalid_in_a_row = 0
        self.finish = False  # the first Ctrl-C re-measures the best candidates, then stops
        self._finishing = False  # that Ctrl-C came: FINISH_RUNS repeats, then the end
        self._finish_launched = 0
        self._said_strategy: tuple = ()
        self._rules_for: tuple[int, pop.Rules] = (-1, pop.Rules(1, 0.0))

    # -- the run -------------------------------------------------------------------------------

    def run(self, base_commit: str) -> list[Record]:
        """Run until a limit or Ctrl-C; returns this tag's records."""
        with RunLock(self.state), self._signals():
            kill_leftovers(self.state / RUNS_DIR)
            # Proposals in flight when an earlier run was killed left their scratch folders;
            # this run numbers its proposals from 1 again and must not adopt their files.
            shutil.rmtree(self.state / PROPOSALS_DIR, ignore_errors=True)
            try:
                self._tips = self._branches()
                self._last_number = max(self._last_number, highest_number(self._cut_off_ids()))
                self.ledger.export_tsv(self.state / RESULTS_FILE)  # mended once, then appended
                self._reconcile_results()
                self._reconcile_research_branch()
                self._baseline(base_commit)
                self._calibrate()
                self._pending.extend(self._cut_off())
                self._search()
                self._record_abandoned_spend()
            except StopNow:
                self.stop_reason = self.stop_reason or "stopped at once (second Ctrl-C or SIGTERM)"
                self.say(f"stopped: continue with `{self.resume_command()}`")
            finally:
                self._abandon_running()
                self._write_status(phase="idle")
        return self.records

    def _baseline(self, base_commit: str) -> None:
        sha = self.baseline_commit(base_commit)
        if sha is None:
            return
        set_branch(self.repo, research_branch(self.tag), sha)
        cid = self._next_id()
        # Its id and commit are all a proposal needs: the first proposals are prepared while
        # the baseline trains, so the device never waits for a proposer, not even at the start.
        ahead = max(len(self.slots), self.settings.prefetch)
        self._fill_pipeline(ahead, first_parent=Record(cid, "keep", commit=sha))
        work = Work(cid, read_train(self.repo, sha), sha, None, BASELINE, BASELINE)
        records = self._run_all([work])
        if not records:
            return  # Ctrl-C before it started
        record = records[0]
        if record.status != "keep":
            raise UserError(
                f"the baseline failed ({record.status}: {record.reason}); fix train.py (and commit"
                f" it), the budget or the data, then `{self.resume_command()}`"
                f" (log: {run_dir(self.state, record.id) / RUN_LOG})"
            )
        if record.num_steps < FEW_STEPS:
            self.say(
                f"warning: the baseline made only {record.num_steps} optimizer steps in"
                f" {record.training_seconds:.0f} s: this machine is too slow or too busy for this"
                f" budget, and val_bpb will be mostly noise; {self._steadier()}"
            )

    def baseline_commit(self, head: str) -> str | None:
        """The commit the baseline will train; None once it has trained. A run cut off during
        its baseline trains what the research branch names; after a baseline that failed, the
        user's fix: `head`, the commit checked out now."""
        if pop.champion(self.records):
            return None
        failed_before = any(r.proposer == BASELINE for r in self.records)
        return (None if failed_before else branch_sha(self.repo, research_branch(self.tag))) or head

    def _calibrate(self) -> None:
        """Repeat the baseline to measure how much val_bpb varies for the same code: the
        repeats run side by side when there are slots, and all end before any candidate is
        judged (the threshold needs them)."""
        if self._should_stop():
            return
        baseline = pop.baseline(self.records)
        assert baseline is not None, "the baseline is recorded before the calibration"
        done = sum(r.proposer == CALIBRATE for r in self.records)
        if done >= self.settings.calibrate:
            return
        source = read_train(self.repo, baseline.commit)
        self._run_all([
            Work(None, source, baseline.commit, baseline, CALIBRATE,
                 f"repeat {i + 1} of the baseline, to measure noise")
            for i in range(done, self.settings.calibrate)
        ])  # fmt: skip
        if sum(r.proposer == CALIBRATE for r in self.records) >= self.settings.calibrate:
            self._warn_if_noisy(baseline)

    def _warn_if_noisy(self, baseline: Record) -> None:
        """Say plainly when the measured noise is larger than the gains a search finds."""
        sd = self.noise()
        if sd is None or not baseline.val_bpb:
            return  # the repeats failed: nothing measured
        if sd > NOISY_FRACTION * baseline.val_bpb:
            self.say(
                f"warning: repeats of the same train.py differ by {sd:.4f} val_bpb"
                f" ({sd / baseline.val_bpb:.1%} of the baseline), more than most single edits"
                " gain: on this machine and budget (busy, slow, or too short to settle)"
                f" results are mostly noise; {self._steadier()}"
            )

    def _steadier(self) -> str:
        """Advice for a noisy machine: the same work per run, with a generous time cap."""
        base = pop.baseline(self.records)
        if self.config.run.budget_tokens or base is None:
            return "use a quieter machine"
        tokens = max(base.tokens, 1)
        nice = int(float(f"{tokens:.1g}"))  # about what the baseline trained on
        cap = 4 * self.config.run.budget_seconds
        return (
            f"start a new tag with --budget-tokens {nice} --budget {cap:.0f} (the same work for"
            " every run, whatever the load; the seconds become only a cap)"
        )

    def _cut_off(self) -> list[Work]:
        """Candidates committed but never recorded were cut off mid-run: train them again,
        before any new proposal."""
        works = []
        for cid in self._cut_off_ids():
            sha = self._tips[candidate_branch(self.tag, cid)]
            trailers = parse_trailers(commit_message(self.repo, sha))
            parent = next((r for r in self.records if r.id == trailers.parent), None)
            source = read_train(self.repo, sha)
            works.append(Work(cid, source, sha, parent, trailers.proposer, trailers.description))
        return works

    def _search(self) -> None:
        """Whenever a slot is free: the next cut-off candidate, else the next ready proposal;
        results are judged and recorded as they arrive. Ends when a limit or Ctrl-C stops
        new experiments and those in flight have been recorded."""
        self._confirming.extend(self._unconfirmed())
        while True:
            if not self._running and self._should_stop():
                return
            if self._may_launch():
                self._launch_ready()
                if not self._final_phase():
                    self._fill_pipeline(max(len(self._free), self.settings.prefetch))
            self._handle_next_event()

    def _launch_ready(self) -> None:
        """Start experiments on the free slots while there is something to start: cut-off
        candidates, then repeats that confirm a would-be champion, then (in the run's last
        experiments) repeats of the best candidates, else proposals."""
        while self._free and self._may_launch():
            if self._pending:
                work = self._pending.pop(0)
                self.say(f"{work.id}: was cut off, training it again")
                self._launch(work)
                continue
            if self._confirming:
                self._launch(self._confirming.pop(0))
                continue
            if self._final_phase():
                self._launch(self._final_repeat())
                continue
            if not self._ready:
                return
            job = self._ready.pop(0)
            if self._greedy() and job.champion_id != self._champion().id:
                self.say(f"dropped a proposal made for the previous champion {job.champion_id}")
                continue
            self._take(job)

    def _run_all(self, works: list[Work]) -> list[Record]:
        """Train `works` on the slots, as many at a time as there are and the limits allow,
        and wait for them; their records, in order of arrival. Proposals that arrive
        meanwhile wait."""
        queued, before = list(works), len(self.records)
        while queued or self._running:
            while queued and self._free and self._may_launch():
                self._launch(queued.pop(0))
            if not self._running and not self._may_launch():
                break  # Ctrl-C, or a limit that leaves no room for the rest
            self._handle_next_event()
        return self.records[before:]  # after the first Ctrl-C, what was in flight

    # -- proposals -----------------------------------------------------------------------------

    def _fill_pipeline(self, ahead: int, first_parent: Record | None = None) -> None:
        """Start proposals until `ahead` are being prepared or wait for a slot;
        `first_parent`: the baseline-to-be."""
        while len(self._in_flight) + len(self._ready) < ahead:
            if first_parent:
                parent, spec = first_parent, self._choose_proposer()
            else:
                parent, spec = self._choose()
            champion_id = first_parent.id if first_parent else self._champion().id
            self._jobs_made += 1
            job = Job(
                number=self._jobs_made, parent=parent, champion_id=champion_id,
                spec=spec, work_dir=self.state / PROPOSALS_DIR / f"p{self._jobs_made:05d}",
                started=time.monotonic(),
            )  # fmt: skip
            history, briefing = self._history()
            request = ProposalRequest(
                parent_id=parent.id,
                parent_source=read_train(self.repo, parent.commit),
                program=self.program,
                history=history,
                crash_log=log_tail(run_dir(self.state, parent.id) / RUN_LOG)
                if parent.status in CRASHED_STATUSES
                else None,
                rng=random.Random(f"{self.config.run.seed}-{self.tag}-{job.number}"),
                work_dir=job.work_dir,
                parent_run=None  # the baseline-to-be has not trained yet
                if first_parent
                else run_numbers(parent, self.config.run.describe_budget()),
                briefing=briefing,
            )
            job.work_dir.mkdir(parents=True, exist_ok=True)
            self._in_flight.append(job)
            threading.Thread(target=self._propose, args=(job, request), daemon=True).start()

    def _propose(self, job: Job, request: ProposalRequest) -> None:
        try:
            job.proposal = self.proposers[job.spec][0].propose(request)
        except BaseException as e:  # noqa: BLE001 - any failure is recorded, never fatal here
            job.error = e
        self._events.put(job)

    def _record_abandoned_spend(self) -> None:
        """Proposals the stopped run never trained (ready, or finished while the last
        experiments trained): those that spent tokens or money are recorded, so that the
        spend is not lost and counts toward `--max-cost-usd`, on `--resume` too."""
        with contextlib.suppress(queue.Empty):
            while True:  # nothing trains any more: only proposals arrive here
                job = self._events.get_nowait()
                if job in self._in_flight:
                    self._in_flight.remove(job)
                    self._ready.append(job)
        for job in self._ready:
            proposal = job.proposal if isinstance(job.proposal, Proposal) else None
            usage = proposal.usage if proposal else getattr(job.error, "usage", None)
            if usage is not None and pop.has_spend(_usage(usage)):
                source = proposal.source if proposal and isinstance(proposal.source, str) else ""
                reason = "abandoned: the run stopped before this proposal was trained"
                self._invalid(job, proposal, redact(source), reason, usage=usage, counts=False)
        self._ready.clear()

    def _handle_next_event(self) -> None:
        """A ready proposal waits for a slot; a finished experiment is judged and recorded."""
        event = self._next_event()
        if isinstance(event, Job):
            self._ready.append(event)
        elif event is not None:
            self._finish(event)

    def _next_event(self) -> Job | Running | None:
        """The next proposal ready or experiment finished, waiting a moment for one; None when
        none came (the caller looks at limits and Ctrl-C again)."""
        t0 = time.monotonic()
        # Slots free for want of a proposal: the device time that a slow proposer costs.
        starving = len(self._free) if self._may_launch() and not self._pending else 0
        self._write_status(phase="training" if self._running else "proposing")
        try:
            event = self._events.get(timeout=EVENT_POLL_SECONDS)
        except queue.Empty:
            event = self._overdue()
        if starving and not self._ready:
            self.idle_seconds += starving * (time.monotonic() - t0)
        if isinstance(event, Job):
            if event not in self._in_flight:
                return None  # it timed out earlier and was recorded
            self._in_flight.remove(event)
        return event

    def _overdue(self) -> Job | None:
        """A proposal past `evolve.proposal_timeout`: given up on (its thread is left to die)."""
        limit = self.settings.proposal_timeout
        for job in self._in_flight:
            if limit and time.monotonic() - job.started > limit:
                job.error = TimeoutError(f"no proposal after {limit:.0f} s")
                return job
        return None

    def _choose(self) -> tuple[Record, str]:
        """The next parent and proposer (see the module docstring for the rule)."""
        if self.settings.selection == "none":  # random search: results choose no parent
            return self._baseline_record(), self._choose_proposer()
        if self._fixes:
            crashed = self._fixes.pop(0)
            if crashed.proposer in self.proposers:
                return crashed, crashed.proposer
        size = self._rules().population
        if size == 1:  # greedy: always the champion
            return self._champion(), self._choose_proposer()
        members = pop.population(self.records, size)
        weights = pop.parent_weights(self.records, members, self._children_in_flight())
        return self.rng.choices(members, weights=weights)[0], self._choose_proposer()

    def _children_in_flight(self) -> list[str]:
        """The parent ids of the children not yet recorded: proposed, waiting or training."""
        jobs = [j.parent.id for j in (*self._in_flight, *self._ready)]
        works = [w.parent.id for w in (*self._pending, *self._works()) if w.parent]
        return jobs + works

    def _greedy(self) -> bool:
        """The original loop: one lineage, every proposal a change of the champion."""
        return self._rules().population == 1 and self.settings.selection == "rank"

    def _rules(self) -> pop.Rules:
        """The judging rules now: `auto` settings resolved from the records
        (`population.strategy`), said when the choice changes."""
        s = self.settings
        if self._rules_for[0] != len(self.records):
            chosen = pop.strategy(self.records, s.population, s.noise_k)
            rules = pop.Rules(chosen.population, chosen.noise_k, s.min_improvement, s.confirm)
            choice = (rules.population, rules.noise_k)
            measured = self.noise() is not None or not s.calibrate
            if s.population == AUTO and measured and choice != self._said_strategy:
                self._said_strategy = choice
                self.say(chosen.why)
            self._rules_for = (len(self.records), rules)
        return self._rules_for[1]

    def _remeasure(self) -> float:
        """The share of the run kept to re-measure its best candidates at the end."""
        share = self.settings.remeasure
        if share == AUTO:
            return pop.REMEASURE_FRACTION if self.settings.calibrate else 0.0
        return float(share)

    def _final_phase(self) -> bool:
        """Whether the run's last experiments have come: from here on, no proposal starts, and
        the best candidates are run again with new seeds (`population.finalist_to_repeat`), so
        that the morning's champion is the best by a mean, not one lucky run."""
        if self._finishing:
            return True
        share, s = self._remeasure(), self.settings
        if not share:
            return False
        reserve = pop.remeasure_runs(s.max_experiments, share)
        started = pop.trained(self.records) + len(self._running)
        if reserve and started >= s.max_experiments - reserve:
            return True
        return bool(s.hours) and self.elapsed() >= s.hours * 3600 * (1 - share)

    def _final_repeat(self) -> Work:
        finalist = pop.finalist_to_repeat(self.records, [w.source_hash for w in self._works()])
        assert finalist is not None, "the baseline is recorded before the search starts"
        if self._finishing:
            self._finish_launched += 1
        return self._repeat(finalist, "to re-measure it before the run ends")

    def _repeat(self, of: Record, why: str) -> Work:
        """Another run of `of`'s source (with a seed of its own), recorded as its repeat."""
        source = read_train(self.repo, of.commit)
        return Work(None, source, of.commit, of, REPEAT, f"repeat of {of.id}, {why}")

    def _unconfirmed(self) -> list[Work]:
        """On resume: would-be champions whose confirmation was cut off."""
        if not self.settings.confirm:
            return []
        rules, latest = self._rules(), {}
        for r in self.records:
            if pop.is_candidate(r) or r.proposer == REPEAT:
                latest[pop.source_of(r)] = r
        originals = {pop.source_of(r): r for r in self.records if pop.is_candidate(r)}
        return [
            work
            for source, r in latest.items()
            if source in originals and pop.needs_confirming(self.records, r, rules)
            for work in self._confirmation(originals[source])
        ]

    def _confirmation(self, of: Record) -> list[Work]:
        """`of`'s next run, to confirm it, after runs of the champion at the seeds it lacks up to
        that run's: a run is compared with the other sources' runs at its own seed
        (`population.seed_effects`), so a seed only one of the two has run tells nothing."""
        repeat, best = self._repeat(of, "to confirm it"), self._champion()
        why = f"to pair its seeds with {of.id}'s confirmation"
        # Works are filled in when they start (id, seed): one object per run.
        missing = self._seed_for(repeat) - self._seed_for(self._repeat(best, why)) + 1
        return [self._repeat(best, why) for _ in range(max(missing, 0))] + [repeat]

    def _seed_for(self, work: Work) -> int:
        """One seed per run of a source: a source's first run trains with `run.seed`, its
        n-th repeat with run.seed + n (the seed is a large part of the noise)."""
        runs = sum(
            r.val_bpb is not None and r.fingerprints.get("source") == work.source_hash
            for r in self.records
        )
        runs += sum(w.source_hash == work.source_hash for w in self._works())
        return (self.config.run.seed + runs) % 2**32

    def _choose_proposer(self) -> str:
        specs = list(self.proposers)
        return self.rng.choices(specs, weights=[self.proposers[s][1] for s in specs])[0]

    def _history(self) -> tuple[HistoryView, Briefing]:
        """What a request tells of the run (`autoresearch.briefing`): the book takes in the
        records made since the last request, and the briefing, noise and threshold included,
        is made once per new record, so a request costs the same with 10,000 records as
        with 100."""
        if self._briefed is None or self._briefed[0] != len(self.records):
            for r in self.records[self._briefed[0] if self._briefed else 0 :]:
                self._book.add(r)
            briefing = self._book.briefing(self.noise(), self.threshold())
            self._briefed = (len(self.records), briefing)
        return self._book.history(), self._briefed[1]

    def _diff(self, parent: Record, record: Record) -> str:
        """A promoted record's change to train.py, for the briefing."""
        if not (parent.commit and record.commit):
            return ""
        old, new = (read_train(self.repo, r.commit) for r in (parent, record))
        return train_diff(old, new)

    # -- one proposal to one record ------------------------------------------------------------

    def _take(self, job: Job) -> None:
        """Validate a ready proposal: an invalid one is recorded, a valid one committed on its
        own branch and started on a free slot."""
        parent_source = read_train(self.repo, job.parent.commit)
        if job.error is not None:
            if isinstance(job.error, UserError):
                raise job.error  # the proposer cannot work at all (no key, bad options)
            reason = f"proposer failed: {type(job.error).__name__}: {_one_line(job.error)}"
            self._invalid(job, None, "", reason, usage=getattr(job.error, "usage", None))
            return
        proposal = job.proposal
        if not isinstance(proposal, Proposal):
            self._invalid(
                job, None, "", f"proposer returned {type(proposal).__name__}, not a Proposal"
            )
            return
        if not isinstance(proposal.source, str):
            reason = f"the proposal's source is {type(proposal.source).__name__}, not str"
            self._invalid(job, proposal, "", reason)
            return
        if redact(proposal.source) != proposal.source:  # it would be committed and trained
            reason = "the proposal contains the value of a secret environment variable"
            self._invalid(job, proposal, redact(proposal.source), reason)
            return
        # What is training or about to counts as tried: nothing is trained twice.
        seen = {r.fingerprints.get("source") for r in self.records if r.status != "invalid"}
        seen |= {w.source_hash for w in (*self._pending, *self._works())}
        reason = validate_proposal(parent_source, proposal.source, seen)
        if reason:
            self._invalid(job, proposal, proposal.source, reason)
            return
        self._invalid_in_a_row = 0
        description = _one_line(proposal.description) or "no description"
        cid = self._next_id()
        message = candidate_message(cid, description, job.parent.id, job.spec)
        sha = commit_candidate(self.repo, self._tip(job.parent), proposal.source, message)
        self._set_candidate_branch(cid, sha)
        self._launch(
            Work(cid, proposal.source, sha, job.parent, job.spec, description,
                 usage=proposal.usage, work_dir=job.work_dir)
        )  # fmt: skip

    def _invalid(
        self, job: Job, proposal: Proposal | None, source: str, reason: str,
        usage: object = None, counts: bool = True,
    ) -> None:
        """Record `job` as `invalid` with what it spent (`usage`: a failed proposer's, else
        the proposal's); `counts`: toward `evolve.max_invalid` in a row."""
        cid = self._next_id()
        folder = run_dir(self.state, cid)
        folder.mkdir(parents=True, exist_ok=True)
        # The rejected source is kept as evidence, unless it is too big to be one (the reason
        # says so); whatever it holds, as text that can be written.
        data = source.encode("utf-8", "backslashreplace")
        if 0 < len(data) <= MAX_SOURCE_BYTES:
            (folder / TRAIN_FILE).write_bytes(data)
        _adopt(job.work_dir, folder)
        if usage is None and proposal is not None:
            usage = proposal.usage
        usage = _usage(usage) if usage is not None else {}
        description = _one_line(proposal.description) if proposal else ""
        record = Record(
            id=cid, status="invalid", reason=reason, parent=job.parent.id, proposer=job.spec,
            description=description, usage=usage, tag=self.tag, seed=self.config.run.seed,
        )  # fmt: skip
        self._record(record)
        if not counts:
            return
        self._invalid_in_a_row += 1
        if self._invalid_in_a_row >= self.settings.max_invalid:
            raise UserError(
                f"{self._invalid_in_a_row} invalid proposals in a row (last: {reason});"
                f" check the proposers and program.md, then `{self.resume_command()}`"
            )

    # -- experiments on slots ------------------------------------------------------------------

    def _launch(self, work: Work) -> None:
        """Start `work` on a free slot, in a thread of its own that waits for the runner."""
        work.id = work.id or self._next_id()
        work.seed = self._seed_for(work) if work.seed is None else work.seed
        folder = run_dir(self.state, work.id)
        folder.mkdir(parents=True, exist_ok=True)
        train_py = folder / TRAIN_FILE
        train_py.write_text(work.source, encoding="utf-8")
        slot = self._free.pop(0)
        running = Running(work, slot, time.time())
        self._running[work.id] = running
        self._write_status(phase="training")
        # A live bar for one experiment at a time; with several, a line says where each runs.
        on_event = None
        if len(self.slots) > 1:
            self.say(f"{work.id}: training on {slot.label or f'slot {slot.index}'}")
        elif self.progress:
            on_event = self.progress(self.config.run.budget_seconds, label=work.id)
        thread = threading.Thread(
            target=self._run, args=(running, train_py, folder, on_event), daemon=True
        )
        thread.start()

    def _run(self, running: Running, train_py: Path, folder: Path, on_event) -> None:
        """In the experiment's thread: train and score it, then hand it to the engine."""
        config = self.config
        if running.work.seed != config.run.seed:  # a repeat: the same code, another seed
            config = dataclasses.replace(
                config, run=dataclasses.replace(config.run, seed=running.work.seed)
            )
        try:
            running.outcome = self.runner(train_py, config, folder, on_event=on_event,
                                          slot=running.slot)  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - the engine's thread decides what it means
            running.error = e
        finally:
            if on_event is not None:
                on_event.close()  # a crash leaves the bar open: end it before the result line
        self._events.put(running)

    def _finish(self, running: Running) -> Record:
        """Judge a finished experiment against the records so far, record it, and move the
        research branch if it is the new champion."""
        work = running.work
        del self._running[work.id]
        self._keep_proposal_files(work)  # now that its candidate has stopped
        self._free.append(running.slot)
        self._free.sort(key=lambda slot: slot.index)
        if running.error is not None:
            raise running.error  # a machine fault (a full disk): nothing to record
        outcome = running.outcome
        assert outcome is not None
        if outcome.fatal and self._running:
            # Another slot's candidate may have changed the files as well as this one (only
            # without namespaces can they): nobody is blamed; one at a time tells.
            others = ", ".join(sorted(self._running))
            raise UserError(
                f"{work.id}: {outcome.reason}, while {others} trained too, so which one did"
                " it is unknown; restore them (git checkout, or delete the prepared data and"
                f" run `autoresearch prepare`), then `{self.resume_command()} --slots 1`"
                " trains them again one at a time"
            )
        record = outcome.to_record(
            id=work.id, status=outcome.status, commit=work.commit,
            parent=work.parent.id if work.parent else None,
            depth=depth_of(work.source), code_lines=code_lines(work.source), seed=work.seed,
            proposer=work.spec, description=work.description, tag=self.tag,
            usage=_usage(work.usage) if work.usage is not None else {},
            ran_on=outcome.ran_on or running.slot.label,
            fingerprints=outcome.fingerprints | {"source": work.source_hash},
        )  # fmt: skip
        status, promoted = self._judge(record)
        record = dataclasses.replace(record, status=status, promoted=promoted)
        self._record(record)
        if outcome.fatal:
            raise UserError(
                f"{work.id} {outcome.reason}; restore them (git checkout, or delete the prepared"
                f" data and run `autoresearch prepare`), then `{self.resume_command()}`"
            )
        if promoted:
            set_branch(self.repo, research_branch(self.tag), self._tip(self._champion()))
        elif pop.needs_confirming(self.records, record, self._rules()):
            original = work.parent if work.spec == REPEAT and work.parent else record
            self._confirming.extend(self._confirmation(original))
        elif outcome.status in CRASHED_STATUSES and pop.may_fix(
            self.records, record, self.settings.fix_attempts
        ):
            self._fixes.append(record)
        return record

    def _works(self) -> list[Work]:
        return [running.work for running in self._running.values()]

    def _may_launch(self) -> bool:
        """Whether another experiment may start: no Ctrl-C, and no limit reached counting
        the experiments in flight as done."""
        if self.stop_requested or self._finishing and self._finish_launched >= pop.FINISH_RUNS:
            return False
        s = self.settings
        return (
            pop.limit_reached(
                self.records, self.elapsed(), s.max_experiments, s.hours, s.max_cost_usd,
                in_flight=len(self._running),
            )  # fmt: skip
            is None
        )

    def _abandon_running(self) -> None:
        """The run ends with experiments in flight (a second Ctrl-C, an error): stop them.
        Their candidates have branches and no record, so `--resume` trains them again."""
        if not self._running:
            return
        kill_leftovers(self.state / RUNS_DIR)  # every run's process group, by its pgid file
        cancel = getattr(self.runner, "cancel_all", None)  # a runner with remote tasks (Ray)
        if cancel is not None:
            cancel()
        cut = sorted(self._running)
        for running in self._running.values():  # their candidates are stopped
            self._keep_proposal_files(running.work)
        self._running.clear()
        self.say(f"cut off {', '.join(cut)}: `{self.resume_command()}` trains them again")

    def _keep_proposal_files(self, work: Work) -> None:
        """Move the proposer's files of `work` into its run folder, once its candidate has
        stopped; what the candidate left there can make that fail, never lose the record."""
        if not (work.work_dir and work.id):
            return
        try:
            _adopt(work.work_dir, run_dir(self.state, work.id))
        except OSError as e:
            self.say(
                f"{work.id}: its proposer's files could not join its run folder"
                f" ({e.strerror or e}); they stay in {work.work_dir} until the next run"
            )

    def _judge(self, record: Record) -> tuple[str, bool]:
        """(status, promoted) for a finished experiment (the rule: `population.judge`)."""
        if record.status != "keep" or record.val_bpb is None:
            return record.status, False
        return pop.judge(self.records, record, self._rules())

    def noise(self) -> float | None:
        return pop.noise(self.records)

    def threshold(self) -> float:
        return pop.threshold(self.records, self.settings.min_improvement, self._rules().noise_k)

    # -- records, limits, state ----------------------------------------------------------------

    def _record(self, record: Record) -> None:
        self.ledger.record(record, self.state / RESULTS_FILE)
        self.records.append(record)
        self._commit_result(record)  # before anything slow: a kill here is mended on resume
        self.notify(record)
        self.say(self._line(record))

    def _commit_result(self, record: Record) -> None:
        """End a candidate's branch with a result commit (the same tree, the score in its
        subject), so that `git log --graph --all --oneline` reads as the lineage."""
        if self._tips.get(candidate_branch(self.tag, record.id)) != record.commit:
            return  # no branch of its own (the baseline, a repeat), or its result is committed
        parent = next((r for r in self.records if r.id == record.parent), None)
        score = f"val_bpb {record.val_bpb:.4f}" if record.val_bpb is not None else record.status
        if record.val_bpb is not None and parent and parent.val_bpb is not None:
            score += f" ({record.val_bpb - parent.val_bpb:+.4f})"
        if record.val_bpb is not None:
            score += " promoted" if record.promoted else f" {record.status}"
        subject = f"{record.id} {score}: {record.description}"
        message = result_message(subject, record.status, record.reason)
        self._set_candidate_branch(record.id, commit_result(self.repo, record.commit, message))

    def _reconcile_results(self) -> None:
        """After a kill between a record and its result commit, make the commit now."""
        for record in self.records:
            self._commit_result(record)  # a no-op for every record whose result is committed

    def _tip(self, record: Record) -> str:
        """The commit a child of `record` is made on: its result commit, else what it trained."""
        return self._tips.get(candidate_branch(self.tag, record.id)) or record.commit

    def elapsed(self) -> float:
        """Seconds this tag has been running, over all its sessions."""
        return self.elapsed_before + time.monotonic() - self.started

    def _save_tag(self) -> None:
        remembered = tags.TagState(
            tags.settings_of(self.config), self.configured, len(self.records), self.elapsed()
        )
        tags.save(self.state, self.tag, remembered)

    def resume_command(self) -> str:
        return tags.resume_command(self.tag)

    def _line(self, r: Record) -> str:
        by_id = {x.id: x for x in self.records}
        parent = by_id.get(r.parent or "")
        bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
        delta = (
            f"{r.val_bpb - parent.val_bpb:+.6f}"
            if r.val_bpb is not None and parent and parent.val_bpb is not None
            else ""
        )
        # The delta is against the parent: say when a kept one is worse than the start.
        worse = r.status == "keep" and pop.worse_than_baseline(r, pop.baseline(self.records))
        mark = (
            " (promoted)" if r.promoted
            else " (in the population, worse than the baseline)" if worse else ""
        )  # fmt: skip
        if r.proposer == pop.CALIBRATE and r.val_bpb is not None:
            # Its seed-adjusted mean is the baseline's first run until a candidate shares its
            # seeds: what a calibration run tells so far is the noise.
            sd = self.noise()
            mark += f" (noise so far: sd {sd:.6f})" if sd is not None else ""
        elif r.proposer == pop.REPEAT and r.val_bpb is not None:
            mean = pop.means(self.records)[pop.source_of(r)]
            mark += f" (seed-adjusted mean {mean.value:.6f} over {mean.runs} runs)"
        why = f" [{r.reason}]" if r.status in FAILED_STATUSES else ""
        return (
            f"{r.id}  parent {r.parent or '-':5}  {r.proposer:<12} val_bpb {bpb} {delta:>10}"
            f"  {r.status}{mark}  {r.description}{why}"
        )

    def _should_stop(self) -> bool:
        s = self.settings
        self.limit = pop.limit_reached(
            self.records, self.elapsed(), s.max_experiments, s.hours, s.max_cost_usd
        )
        finished = self._finishing and self._finish_launched >= pop.FINISH_RUNS
        why = (
            "stopped by Ctrl-C" if self.stop_requested
            else "stopped by Ctrl-C, after re-measuring the best candidates" if finished
            else self.limit and self.limit.reason
        )  # fmt: skip
        if why and not self.stop_reason:
            self.stop_reason = why
            self.say(f"stopping: {why}")
        return why is not None

    def _next_id(self) -> str:
        """One past every recorded id; ids of cut-off candidates (a branch, no record yet)
        stay theirs."""
        self._last_number += 1
        return format_id(self._last_number)

    def _cut_off_ids(self) -> list[str]:
        """Candidates with a branch but no record: a run was cut off while they trained."""
        prefix = candidate_branch(self.tag, "")
        recorded = {r.id for r in self.records}
        return sorted(n[len(prefix) :] for n in self._tips if n[len(prefix) :] not in recorded)

    def _set_candidate_branch(self, cid: str, sha: str) -> None:
        set_branch(self.repo, candidate_branch(self.tag, cid), sha)
        self._tips[candidate_branch(self.tag, cid)] = sha

    def _champion(self) -> Record:
        best = self.champion()
        assert best is not None, "the baseline is recorded before the search starts"
        return best

    def _baseline_record(self) -> Record:
        base = pop.baseline(self.records)
        assert base is not None, "the baseline is recorded before the search starts"
        return base

    def champion(self) -> Record | None:
        return pop.champion(self.records)

    def _reconcile_research_branch(self) -> None:
        """After a kill between recording a promotion and moving the branch, move it now."""
        best = self.champion()
        if best and branch_sha(self.repo, research_branch(self.tag)) != self._tip(best):
            set_branch(self.repo, research_branch(self.tag), self._tip(best))

    def _branches(self) -> dict[str, str]:
        from autoresearch.workspace import branches

        return branches(self.repo, candidate_branch(self.tag, "").rstrip("/"))

    def _write_status(self, phase: str) -> None:
        """Rewrite status.json (and the tag's state) when what it says has changed, at most
        every STATUS_SECONDS (the engine's wait for events asks again within a moment; with
        16 slots, results come faster than a status reader needs them)."""
        said = (phase, tuple(self._running), len(self.records))
        soon = time.monotonic() - self._status_written_at < STATUS_SECONDS
        if said == self._status_said or (soon and phase != "idle"):
            return
        self._status_said, self._status_written_at = said, time.monotonic()
        best = self.champion()
        status = EvolveStatus(
            pid=os.getpid(),
            tag=self.tag,
            started=time.time() - (time.monotonic() - self.started),
            phase=phase,
            training={cid: r.started for cid, r in self._running.items()},
            slots=len(self.slots),
            budget_seconds=self.config.run.budget_seconds,
            experiments_done=len(self.records),
            best={"id": best.id, "val_bpb": pop.means(self.records)[pop.source_of(best)].value}
            if best
            else None,
            spend_usd=pop.spent_usd(self.records),
        )
        write_status(self.state, status)
        # The tag's state goes with it: its running time (a SIGKILL loses at most a phase)
        # and its record count (lagging one behind after a kill is safe: only fewer records
        # in the ledger than counted is an error).
        self._save_tag()

    @contextlib.contextmanager
    def _signals(self):
        """First Ctrl-C: finish the current experiment, then stop. Second (or SIGTERM): stop now."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_interrupt(signum, frame):
            self.interrupted_by = signum
            if self.stop_requested or self._finishing or signum == signal.SIGTERM:
                raise StopNow()
            if self.finish:
                self._finishing = True
                self.say(
                    f"re-measuring the best candidates ({pop.FINISH_RUNS} runs), then stopping"
                    " (Ctrl-C again to stop now)"
                )
                return
            self.stop_requested = True
            what = "the experiments in flight" if len(self.slots) > 1 else "the current experiment"
            self.say(f"finishing {what}, then stopping (Ctrl-C again to stop now)")

        previous = {s: signal.signal(s, on_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _adopt(work_dir: Path, run_dir: Path) -> None:
    """Move a proposer's scratch files (prompts, replies) into the run folder's PROPOSAL_DIR,
    in place of anything its candidate (stopped by now) left under that name."""
    if not work_dir.is_dir():
        return
    target = run_dir / PROPOSAL_DIR
    run_dir.chmod(run_dir.stat().st_mode | stat.S_IRWXU)  # the candidate may have locked it
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()  # a link (not followed), a file, a FIFO
    elif target.exists():
        # A folder is set aside, not removed: whatever it holds (folders locked or nested
        # past any path's length) cannot stop a rename, and it stays as the candidate left it.
        aside = tempfile.mkdtemp(prefix=f"{PROPOSAL_DIR}-by-the-candidate-", dir=run_dir)
        os.replace(target, aside)
    os.replace(work_dir, target)
    for item in target.iterdir():
        if item.is_file():
            _shorten(item, SCRATCH_FILE_BYTES)


def _shorten(path: Path, limit: int) -> None:
    """Cut a file over `limit` bytes to its first and last `limit / 2` bytes."""
    size = path.stat().st_size
    if size <= limit:
        return
    half = limit // 2
    with open(path, "r+b") as f:
        head = f.read(half)
        f.seek(size - half)
        tail = f.read(half)
        f.seek(0)
        f.write(head + f"\n[... {size - 2 * half} bytes cut ...]\n".encode() + tail)
        f.truncate()


def _one_line(value: object, limit: int = 300) -> str:
    """`value` as one short line of printable text: what a proposer sends is printed and
    recorded, so never megabytes, control characters, lone surrogates or a secret."""
    try:
        text = str(value)[: limit * 10]  # room for the whitespace that collapses below
    except Exception:  # an exception whose __str__ itself fails
        text = type(value).__name__
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return redact(text)[:limit]


def _usage(usage: object) -> dict[str, float]:
    """A proposal's `Usage` as recorded; a field that is not a finite number >= 0 counts 0
    (a garbage cost would otherwise break the spend limit)."""
    recorded = {}
    for f in dataclasses.fields(Usage):
        value = getattr(usage, f.name, f.default)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        recorded[f.name] = value if number and math.isfinite(value) and value >= 0 else f.default
    return recorded


# -- setting a run up ------------------------------------------------------------------------------

# With no proposer named, an LLM is used when its key is present, next to the offline optimizer.
DEFAULT_LLM_BY_KEY = {
    "ANTHROPIC_API_KEY": "llm:anthropic/claude-sonnet-4-5",
    "OPENAI_API_KEY": "llm:openai/gpt-4.1",
    "GEMINI_API_KEY": "llm:gemini/gemini-2.5-pro",
}
OFFLINE_PROPOSERS = ("optuna", "random")


def default_proposers() -> tuple[str, ...]:
    """The proposers used when none is configured: offline ones, plus an LLM if a key is set."""
    llm = next((spec for key, spec in DEFAULT_LLM_BY_KEY.items() if os.environ.get(key)), None)
    return (llm, "optuna") if llm else OFFLINE_PROPOSERS


def make_proposers(config: Config, specs: tuple[str, ...]) -> dict[str, tuple[Proposer, float]]:
    """spec -> (proposer, weight), each checked ready (API keys, commands) before any training."""
    from autoresearch.plugins import make_proposer

    made = {}
    for spec in dict.fromkeys(specs):  # a repeated spec is used once
        weight, options = config.proposer_options(spec)
        proposer = make_proposer(spec, options)
        if hasattr(proposer, "check_ready"):
            proposer.check_ready()
        made[spec] = (proposer, weight)
    if not any(weight > 0 for _, weight in made.values()):
        raise UserError(
            "every proposer has weight 0: give one a positive [proposers.<name>] weight"
        )
    return made


def pick_tag(
    repo: Path, records: list[Record], requested: str, resume: bool, remembered: list[str] = ()
) -> str:
    """The tag to run: the requested or latest one on --resume, else a new one.
    `remembered`: the tags with saved settings, most recently active last; a tag killed
    during its first baseline has no record yet, but it has those."""
    import datetime

    known = list(dict.fromkeys(r.tag for r in records if r.tag))
    known = [t for t in known if t not in remembered] + list(remembered)

    def exists(tag: str) -> bool:
        return tag in known or branch_sha(repo, research_branch(tag)) is not None

    if resume:
        tag = requested or (known[-1] if known else "")
        if not tag:
            raise UserError("nothing to resume: no `autoresearch evolve` has run in this repo yet")
        if not exists(tag):
            raise UserError(
                f"no evolve run tagged {tag!r} to resume; known tags: {', '.join(known) or 'none'}"
            )
        return tag
    if requested:
        if exists(requested):
            raise UserError(
                f"tag {requested!r} exists: continue it with `autoresearch evolve --resume --tag"
                f" {requested}`, or choose another --tag"
            )
        return requested
    base = datetime.date.today().strftime("%b%d").lower()  # like the original: nov21
    tag, n = base, 2
    while exists(tag):
        tag, n = f"{base}-{n}", n + 1
    return tag
