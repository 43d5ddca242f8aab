"""One experiment: the training subprocess, its hard limits, and the trusted evaluation.

    train.py  --(events pipe)-->  runner  --(hand-over files)-->  evaluate (own process)

The training process runs in its own process group with a minimal environment
(no API keys) and its output in `run.log`. The runner stamps its events on
arrival, kills the whole group on timeout, divergence or exit, and then starts
the evaluator, whose val_bpb is the only score. Nothing the candidate prints
is parsed.

Time and tokens are the runner's own. The candidate cannot read the training split
(hidden like the validation data): a thread here serves its rows over a socket
(`dataloader.BatchServer`), counts the tokens served, refuses rows past the token
budget, and stamps every batch. The training window runs from the earlier of the
`start` event and the first batch served to the `handover` event, on the runner's
clock. Events are the candidate's to forge, so the phases around the window are
bounded: a start-up (spawn to window) over `run.startup_seconds`, an export
(`handover` to `handed_over`) over `export_limit`, batches drawn outside the
window: each makes the run `invalid`, since work there is training off the clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import autoresearch
from autoresearch.config import CONFIG_FILE, Config
from autoresearch.errors import UserError
from autoresearch.harness.cache import cache_root
from autoresearch.harness.context import CONTEXT_ENV, DATA_ENV, EVENTS_ENV, build_context
from autoresearch.harness.dataloader import BatchServer
from autoresearch.harness.evaluate import GO, WARM, EvalSpec
from autoresearch.harness.events import LOSS_LIMIT
from autoresearch.harness.fingerprint import file_states, harness_fingerprint, sha256_file
from autoresearch.harness.handover import META_FILE
from autoresearch.harness.limits import (
    Caps,
    DiskWatch,
    cap_reason,
    caps_for,
    cgroup_events,
    make_cgroups,
    remove_cgroups,
)
from autoresearch.harness.prepare import Manifest, load_manifest
from autoresearch.harness.sandbox import (
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    SandboxSpec,
    isolation_works,
    prctl,
)
from autoresearch.harness.untrusted import decode_cut, read_untrusted
from autoresearch.ledger import Record, own_write
from autoresearch.redact import redact
from autoresearch.slots import WHOLE_MACHINE, Slot
from autoresearch.workspace import LEDGER_FILE, PROTECTED_FILES, RUN_LOG, STATE_DIR, TRAIN_FILE

# Only these variables reach the candidate: never API keys, tokens or credentials. Not HOME
# or TMPDIR either: the candidate gets its own (`sandbox_spec`), and XDG's folders follow HOME.
ENV_ALLOWLIST = (
    "PATH",
    "USER",
    "LANG",
    "LC_ALL",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
# Compile caches a user set on purpose, shared by all runs (compiling on a GPU takes minutes):
# they stay writable under isolation, the one place outside the run folder that is.
COMPILE_CACHES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
KILL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL for a group that has not gone
# The last step starts before the deadline and ends after it: training may overrun the
# budget by 5% + 1 s, plus one mean step, but never by more than 10% for the step.
BUDGET_TOLERANCE = 1.05
LAST_STEP_SHARE = 0.10
# The export (torch.export at the evaluation shape, then the weights written) runs after
# the training clock stopped, so it is bounded: work there would be training off the clock.
# Measured: 0.3-0.9 s for the tiny baselines on a loaded 2-core CPU; a ~50M-parameter GPT
# on an H100 takes a few seconds (tracing, then ~200 MB written). 10 s leaves a wide margin
# for a slow disk; the share of the budget lets bigger models of longer budgets export.
EXPORT_SECONDS = 10.0
EXPORT_BUDGET_SHARE = 0.03
# A loader that prefetches in a thread may have one request in flight at the hand-over.
PREFETCHED_BATCHES = 1
EVAL_TIMEOUT_SECONDS = 900.0
POLL_SECONDS = 0.05
CORE_CHECK_SECONDS = 0.5  # how often a slot's run is checked for an undone core pinning
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
PGID_FILE = "pgid"  # in the run folder while its process group may be alive
HANDOVER_DIR = "handover"  # in the run folder: the model as the candidate handed it over
SANDBOX_SPEC = "sandbox.json"  # in the run folder: what the sandbox did for this run
SANDBOX_LOG = "sandbox.log"  # the sandbox's own errors (the candidate's output is in run.log)
PACKAGE_DIR = Path(autoresearch.__file__).resolve().parent  # the harness and the orchestrator
# The user's files that commonly hold keys or logins: the candidate's environment has none of
# them on purpose, and these would give them back. Paths in the user's home, then names in
# the research repo (`.env` and `.env.*` as python-dotenv and direnv keep them).
KEY_FILES = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker/config.json",
    ".netrc", ".git-credentials", ".config/gh", ".pypirc", ".kaggle", ".huggingface",
    ".cache/huggingface/token", ".claude", ".claude.json", ".codex", ".aider.conf.yml", ".env",
)  # fmt: skip
REPO_KEY_FILES = (".env", ".env.*", ".envrc")
MEASURED_FIELDS = (
    "status", "reason", "val_bpb", "training_seconds", "total_seconds", "tokens", "num_steps",
    "num_params", "mfu_percent", "final_loss", "device", "fingerprints", "timings",
)  # fmt: skip
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024  # read from the end of a log for its last lines
META_BYTES = 64 * 1024  # the hand-over notes are a few fields: more is not notes
MIN_FREE_BYTES = 64 * 2**20  # a run that failed with less free disk than this failed for that
# bf16 dense peak FLOP/s by device name, for MFU; unknown devices report no MFU.
PEAK_FLOPS = {
    "H100": 989.5e12,
    "H200": 989.5e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "4090": 165.2e12,
    "A10G": 125e12,
}


@dataclass(frozen=True)
class Outcome:
    status: str  # keep | crash | timeout | invalid
    reason: str
    val_bpb: float | None = None
    training_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_vram_mb: float = 0.0
    peak_rss_mb: float = 0.0
    mfu_percent: float | None = None
    tokens: int = 0
    num_steps: int = 0
    num_params: int = 0
    final_loss: float | None = None  # of the last step event: train.py's word, for proposers
    device: str = ""
    ran_on: str = ""  # the machine and GPU, where the runner knows better than the slot (Ray)
    fingerprints: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, see `_timings`
    isolated: bool = False  # ran inside the sandbox's namespaces
    fatal: bool = False  # the run changed files that every later run depends on: stop the search

    @property
    def memory_gb(self) -> float:
        """Peak GPU memory, or peak process memory where there is no GPU."""
        return (self.peak_vram_mb or self.peak_rss_mb) / 1024

    def to_record(self, **fields: object) -> Record:
        """The ledger record of this outcome; `fields` add what the runner cannot know (id, ...)."""
        measured = {name: getattr(self, name) for name in MEASURED_FIELDS}
        measured["reason"] = redact(self.reason)  # it may quote the candidate's output
        return Record(**({"memory_gb": self.memory_gb} | measured | fields))


class Events:
    """Reads the candidate's event pipe in a thread; every event stamped on arrival.

    The candidate can write any line to the pipe: the times here are when lines arrived,
    never what they claim, and only the first of each kind counts. A forged `start` only
    opens the window early; a forged `handover` stops the training clock early but opens
    the export, which is bounded (`export_limit`), and any batch served after it is
    training off the clock: both make the run invalid.
    """

    def __init__(self, fd: int, handover_dir: Path, on_event: Callable[[dict], None] | None):
        self.times: dict[str, float] = {}  # first arrival of each event kind
        self.handover_dir = handover_dir
        self.handed_over: dict[str, tuple[int, ...] | None] = {}  # its files, as handed over
        self.last_step: dict = {}
        self.diverged: str | None = None
        self.violation: str | None = None  # the first thing the guard refused
        self._on_event = on_event
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            for raw in pipe:
                try:
                    event = json.loads(raw)
                    kind = str(event["event"])
                except (ValueError, KeyError, TypeError):
                    continue  # garbage on the pipe is ignored, never trusted
                self.times.setdefault(kind, time.monotonic())
                if kind == "handed_over" and not self.handed_over:
                    self.handed_over = self.handover_files()
                elif kind == "step":
                    self.last_step = event
                    loss = event.get("loss")
                    if isinstance(loss, (int, float)) and not (
                        math.isfinite(loss) and loss <= LOSS_LIMIT
                    ):
                        self.diverged = f"loss diverged ({loss}) at step {event.get('step')}"
                elif kind == "violation":
                    self.violation = self.violation or str(event.get("reason"))[:300]
                elif kind == "diverged":
                    self.diverged = (
                        f"loss diverged ({event.get('loss')}) at step {event.get('step')}"
                    )
                if self._on_event:
                    self._on_event(event)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def handover_files(self) -> dict[str, tuple[int, ...] | None]:
        folder = self.handover_dir
        return file_states(sorted(folder.iterdir()) if folder.is_dir() else [])


def die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs it if the runner dies, even by SIGKILL."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def in_slot(cpus: Iterable[int]) -> Callable[[], None]:
    """What a child of the runner does before exec: die with it, and run on `cpus` only (a
    slot's cores; all of them when empty), it and everything it starts."""
    cores = tuple(cpus)

    def setup() -> None:
        die_with_parent()
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


def kill_leftovers(runs: Path) -> None:
    """Kill process groups that a killed runner left behind (their `pgid` files remain)."""
    for marker in runs.glob(f"*/{PGID_FILE}"):
        with contextlib.suppress(ValueError):
            kill_group(int(marker.read_text()))
        marker.unlink(missing_ok=True)


def minimal_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def kill_group(pgid: int) -> None:
    """Stop every process in the group: the candidate and anything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline:
            # Our own dead children stay zombies, which still count as members: reap them.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(POLL_SECONDS)


def error_line(log: str) -> str:
    """The line of a log that says what went wrong: the last exception, else the last line.

    Libraries print hints after a traceback (torch: "Set TORCHDYNAMO_VERBOSE=1 ..."),
    so the last line is often not the error.
    """
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if EXCEPTION_LINE.match(ln)), None)
    return (error or (lines[-1] if lines else "no output"))[:200]


def _reap(pid: int, timeout: float) -> tuple[int | None, object]:
    """(exit code, rusage) of child `pid` once it has exited, or (None, None) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), rusage
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(POLL_SECONDS)


def key_files(home: Path, root: Path | None) -> list[Path]:
    """The user's key files (KEY_FILES in `home`, REPO_KEY_FILES in the research repo `root`)
    that exist: hidden from candidates."""
    found = [home / name for name in KEY_FILES]
    if root:
        found += [path for pattern in REPO_KEY_FILES for path in sorted(root.glob(pattern))]
    return [path for path in found if os.path.lexists(path)]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a run's log; "" if it is missing or not a plain file (the
    candidate may have replaced it: see harness.untrusted)."""
    try:
        tail = read_untrusted(path, LOG_TAIL_BYTES)
    except OSError:
        return ""
    return decode_cut(b"\n".join(tail.splitlines()[-lines:]))


class Runner(Protocol):
    """What trains and scores one candidate: `run_experiment`, the Ray runner, or a test
    double. Called from several threads at once when there are several slots; a runner
    whose experiments run elsewhere offers `cancel_all()`, called when the engine stops
    with experiments in flight (local ones it kills by their process groups)."""

    def __call__(
        self,
        train_py: Path,
        config: Config,
        run_dir: Path,
        on_event: Callable[[dict], None] | None = None,
        slot: Slot = WHOLE_MACHINE,
    ) -> Outcome: ...


def run_experiment(
    train_py: Path,
    config: Config,
    run_dir: Path,
    on_event: Callable[[dict], None] | None = None,
    slot: Slot = WHOLE_MACHINE,
) -> Outcome:
    """Train `train_py` for the budget and score it; candidate faults become statuses.

    The candidate runs in `run_dir` (a copy of `train_py` is put there), the only folder of
    the research repo it may write to; it and its evaluator run on `slot`'s part of the
    machine (its GPU, its cores).
    """
    t_spawn = time.monotonic()
    manifest = load_manifest(config)
    isolate = use_isolation(config)
    hide_environment()
    run_dir.mkdir(parents=True, exist_ok=True)
    if train_py.resolve() != (run_dir / TRAIN_FILE).resolve():
        shutil.copyfile(train_py, run_dir / TRAIN_FILE)
        train_py = run_dir / TRAIN_FILE
    ctx = build_context(config, run_dir / HANDOVER_DIR, manifest, served=True)
    ctx.save(run_dir / "context.json")
    fingerprints = {
        "harness": harness_fingerprint(),
        "data": manifest.data_fingerprint,
        "tokenizer": manifest.tokenizer_fingerprint,
        "train": sha256_file(train_py),
    }
    spec = EvalSpec(
        model_dir=ctx.handover_dir,
        tokenizer_path=str(manifest.tokenizer_path),
        val_tokens_path=str(manifest.val_path),
        sequence_len=config.data.sequence_len,
        eval_tokens=config.eval.tokens,
        batch_size=config.eval.batch_size,
        device=ctx.device,
        isolated=isolate,
    )
    root = research_root(train_py)
    protected = protected_files(root, manifest)
    before = file_states(protected)
    evaluator = Evaluator(spec, run_dir / "eval.log", slot)  # warmed up once training starts
    data = BatchServer(
        manifest.train_path,
        config.data.sequence_len,
        manifest.bos_id,
        config.run.seed,
        config.run.budget_tokens,
    )
    try:
        sandbox = sandbox_spec(train_py, config, run_dir, root, manifest, isolate, ctx.device, slot)
        limits = (hard_limit(config), export_limit(config.run.budget_seconds))
        run = _supervise(sandbox, run_dir, limits, on_event, data, evaluator.warm)
        t_end = time.monotonic()
        events = run.events
        # Either may be forged or missing; the earlier one opens the window: a late `start`
        # cannot hide batches served before it, an early one only lengthens the window.
        opened = [t for t in (events.times.get("start"), data.first_batch) if t is not None]
        t_start = min(opened, default=t_spawn)
        t_handover = events.times.get("handover")
        training = (t_handover or t_end) - t_start
        timings = {"startup": t_start - t_spawn, "training": training}
        if t_handover and "handed_over" in events.times:
            timings["export"] = events.times["handed_over"] - t_handover
            timings["exit"] = t_end - events.times["handed_over"]
        meta = _read_meta(Path(ctx.handover_dir) / META_FILE)
        common = dict(
            training_seconds=training,
            peak_rss_mb=_peak_rss_mb(run.rusage),
            num_steps=int(meta.get("steps") or events.last_step.get("step", -1) + 1),
            tokens=data.tokens_served,  # the runner's count, never the candidate's
            final_loss=_reported_loss(events.last_step),
            device=ctx.device,
            fingerprints=fingerprints,
            timings=timings,
            isolated=isolate,
        )

        def tampered(when: str) -> Outcome | None:
            """`invalid`, and the search stopped, if a protected file changed by now (the
            orchestrator's own record of another slot's experiment is no change)."""
            changed = [
                p for p, state in file_states(protected).items()
                if state not in (before[p], own_write(p))
            ]  # fmt: skip
            if not changed:
                return None
            reason = f"changed protected files {when}: {', '.join(changed)[:300]}"
            total = time.monotonic() - t_spawn
            return Outcome("invalid", reason, total_seconds=total, fatal=True, **common)

        if out := tampered("while it ran"):
            return out
        failure = _training_failure(run, config, timings, common["num_steps"], run_dir)
        if failure and shutil.disk_usage(run_dir).free < MIN_FREE_BYTES:
            raise UserError(  # the machine's fault, not the candidate's: stop, record nothing
                f"disk full while {run_dir.name} ran ({failure[1]}): free space, then resume"
            )
        if failure:
            return Outcome(*failure, total_seconds=time.monotonic() - t_spawn, **common)
        t_eval = time.monotonic()
        result, error, refused = evaluator.score()
        timings["evaluation"] = time.monotonic() - t_eval
        # The evaluator runs the candidate's graph: it must leave the protected files as they were.
        if out := tampered("while it was evaluated"):
            return out
        if error:
            status, reason = (
                ("invalid", error) if refused else ("crash", f"evaluation failed: {error}")
            )
            return Outcome(status, reason, total_seconds=time.monotonic() - t_spawn, **common)
        return Outcome(
            "keep",
            "trained and evaluated",
            val_bpb=result["val_bpb"],
            total_seconds=time.monotonic() - t_spawn,
            peak_vram_mb=float(meta.get("peak_vram_mb") or 0.0),
            mfu_percent=_mfu(
                meta.get("flops_per_token"), common["tokens"], training, result["device_name"]
            ),
            num_params=int(result["num_params"]),
            **common,
        )
    finally:
        evaluator.cancel()


def _reported_loss(step: dict) -> float | None:
    """The loss of a step event if it is a finite number (the pipe carries any JSON)."""
    loss = step.get("loss")
    ok = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss)
    return float(loss) if ok else None


def hide_environment() -> None:
    """Keep a candidate of the same user from reading our API keys in /proc/<pid>/environ.

    A process that is not dumpable has its /proc files owned by root. This stops a candidate
    run by an ordinary user even without isolation; root needs the sandbox's namespaces.
    """
    prctl(PR_SET_DUMPABLE, 0)


def research_root(train_py: Path) -> Path | None:
    """The research repo a candidate belongs to (the nearest folder with autoresearch.toml),
    or None for a run folder outside any (a benchmark's, a library user's)."""
    folder = train_py.resolve().parent
    return next((p for p in (folder, *folder.parents) if (p / CONFIG_FILE).exists()), None)


def protected_files(root: Path | None, manifest: Manifest) -> list[Path]:
    """Files no run may change: every later score depends on them, or (git's config, hooks
    and attributes) they could make a later git command run a program."""
    from autoresearch.workspace import git_config_files

    files = list(Path(manifest.folder).iterdir()) + git_config_files(root)
    if root:
        files += [root / name for name in PROTECTED_FILES] + [root / STATE_DIR / LEDGER_FILE]
    # Sources only: any Python process may (re)write the byte-code caches beside them.
    files += (PACKAGE_DIR / "harness").glob("*.py")
    return files


def use_isolation(config: Config) -> bool:
    """Whether to run the candidate in the sandbox's namespaces; refuses what cannot be had."""
    if config.run.isolation == "off":
        return False
    if isolation_works():
        return True
    if config.run.isolation == "on" or not config.run.network:
        raise UserError(
            "run.isolation = \"on\" and run.network = false need unprivileged user namespaces,"
            " which this system does not allow; enable them (Linux: sysctl"
            " kernel.unprivileged_userns_clone=1) or set run.isolation = \"auto\""
            " and run.network = true"
        )
    return False


def describe_isolation(config: Config) -> str:
    """How candidates will run, in a few words for the start of a search."""
    if config.run.isolation == "off":
        return "not isolated (run.isolation = off)"
    if not use_isolation(config):
        return "not isolated (no user namespaces here; see docs/threat-model.md)"
    return "isolated" + ("" if config.run.network else ", without network")


def sandbox_spec(
    train_py: Path,
    config: Config,
    run_dir: Path,
    root: Path | None,
    manifest: Manifest,
    isolate: bool,
    device: str = "cpu",
    slot: Slot = WHOLE_MACHINE,
) -> SandboxSpec:
    """How the sandbox runs `train_py`: its command, environment, what it may touch and use."""
    spec_path = run_dir / SANDBOX_SPEC
    home, tmp = run_dir / "home", run_dir / "tmp"  # its own, gone with the run folder
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    # The raw shards hold the validation text; the training rows are served by the runner.
    # Of the research repo's state folder (the other runs with their hand-overs, models to
    # copy; the ledger), only this run's own folder shows.
    hidden = [manifest.val_path, cache_root() / "data", manifest.train_path]
    if root:
        hidden.append(root / STATE_DIR)
    if config.data.source == "folder" and config.data.path:
        hidden.append(((root or Path.cwd()) / config.data.path).resolve())
    if config.data.source == "stdlib":  # its validation text is files of Python's own library
        from autoresearch.harness.sources import stdlib_val_folders

        hidden += stdlib_val_folders()
    hidden += [Path(p) for p in slot.hidden]
    keys = key_files(Path.home(), root)
    env = minimal_env({
        CONTEXT_ENV: str(run_dir / "context.json"),
        "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc written next to the harness by anyone
        "HOME": str(home),
        "TMPDIR": str(tmp),
    } | slot.env)  # fmt: skip
    caches = [Path(env[k]) for k in COMPILE_CACHES if os.path.isabs(env.get(k, ""))]
    for cache in caches:  # a relative one is inside the run folder, the candidate's cwd
        cache.mkdir(parents=True, exist_ok=True)
    run = config.run
    caps = caps_for(run.memory_gb, run.max_processes, run.disk_gb, run_dir, slot.share)
    return SandboxSpec(
        argv=[sys.executable, "-m", "autoresearch.harness.guard", str(spec_path), train_py.name],
        cwd=str(train_py.parent),
        env=env,
        log=str(run_dir / RUN_LOG),
        isolate=isolate,
        network=config.run.network,
        hidden=[str(p) for p in hidden],
        keys=[str(p) for p in keys],
        readonly=[str(p) for p in (root, cache_root(), PACKAGE_DIR) if p],
        writable=[str(p.resolve()) for p in (run_dir, *caches)],
        memory_bytes=caps.memory_bytes,
        max_processes=caps.max_processes,
        disk_bytes=caps.disk_bytes,
        cpu_only=device == "cpu",
        cpus=list(slot.cpus),
    )


@dataclass
class TrainingRun:
    events: Events
    data: BatchServer  # what the runner served, when
    returncode: int | None
    rusage: object
    why_stopped: str  # "", timeout, export, diverged, violation, "over a cap", cores or handed_over
    over_cap: str = ""  # which cap of harness.limits it hit, if any
    off_cores: str = ""  # a process or thread of the run seen off its slot's cores


def training_limit(budget: float, mean_step: float = math.inf) -> float:
    """The longest training window that still keeps `budget` seconds (see BUDGET_TOLERANCE)."""
    return budget * BUDGET_TOLERANCE + 1.0 + min(mean_step, budget * LAST_STEP_SHARE)


def export_limit(budget: float) -> float:
    """The longest export a run of `budget` seconds may take (see EXPORT_SECONDS)."""
    return EXPORT_SECONDS + EXPORT_BUDGET_SHARE * budget


def hard_limit(config: Config) -> float:
    """Seconds from spawn to the kill: the budget plus the start-up allowance, which is meant
    to cover the export too (a real start-up and export take a fraction of it). A run that
    ends before it is still judged on each bound: start-up, training window, export."""
    return config.run.budget_seconds + config.run.startup_seconds


def _supervise(
    sandbox: SandboxSpec,
    run_dir: Path,
    limits: tuple[float, float],
    on_event: Callable[[dict], None] | None,
    data: BatchServer,
    on_training: Callable[[], None],
) -> TrainingRun:
    """Run the sandbox until the candidate exits, hands over, diverges, cheats or times out
    (`limits`: seconds from spawn, and from `handover` to `handed_over`), serving it the
    training rows from `data` all along; `on_training` is called once training starts."""
    limit, export_seconds = limits
    t_spawn = time.monotonic()
    read_fd, write_fd = os.pipe()
    ours, theirs = socket.socketpair()
    sandbox.env[EVENTS_ENV] = str(write_fd)
    sandbox.env[DATA_ENV] = str(theirs.fileno())
    caps = Caps(sandbox.memory_bytes, sandbox.max_processes, sandbox.disk_bytes)
    sandbox.cgroups = make_cgroups(caps)  # the sandbox joins them; removed below
    disk = DiskWatch(run_dir, caps.disk_bytes)
    sandbox.save(run_dir / SANDBOX_SPEC)  # read by the sandbox, and by the guard it starts
    with open(run_dir / SANDBOX_LOG, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch.harness.sandbox", str(run_dir / SANDBOX_SPEC)],
            cwd=run_dir,  # explicit: the process's own folder may be gone (a proposer's scratch)
            env=minimal_env({"PYTHONDONTWRITEBYTECODE": "1"}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd, theirs.fileno()),
            start_new_session=True,
            preexec_fn=in_slot(sandbox.cpus),
        )
    os.close(write_fd)
    theirs.close()
    (run_dir / PGID_FILE).write_text(str(proc.pid))
    data.serve(ours)
    events = Events(read_fd, run_dir / HANDOVER_DIR, on_event)
    returncode, rusage, why_stopped, off_cores = None, None, "", ""
    training = False
    next_core_check = t_spawn
    try:
        while True:
            returncode, rusage = _reap(proc.pid, 0)
            if returncode is not None:
                break
            if sandbox.cpus and time.monotonic() >= next_core_check:
                off_cores = off_its_cores(proc.pid, set(sandbox.cpus))
                next_core_check = time.monotonic() + CORE_CHECK_SECONDS
            if not training and ("start" in events.times or data.first_batch is not None):
                training = True
                on_training()
            if off_cores:
                why_stopped = "cores"
            elif time.monotonic() - t_spawn > limit:
                why_stopped = "timeout"
            elif events.diverged:
                why_stopped = "diverged"
            elif events.violation:
                why_stopped = "violation"
            elif disk.over():
                why_stopped = "over a cap"
            elif "handed_over" in events.times:
                why_stopped = "handed_over"  # nothing the process does from here on counts
            elif time.monotonic() - events.times.get("handover", math.inf) > export_seconds:
                why_stopped = "export"  # invalid whatever comes: no need to wait for it
            if why_stopped:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if returncode is None:  # the sandbox kills the candidate and all it started, then exits
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            returncode, rusage = _reap(proc.pid, KILL_GRACE_SECONDS)
        kill_group(proc.pid)  # in case the sandbox itself was killed before it could sweep
        # Reaped here or by kill_group (then it died of SIGKILL): Popen must not wait again.
        proc.returncode = -signal.SIGKILL if returncode is None else returncode
        (run_dir / PGID_FILE).unlink(missing_ok=True)
        data.stop()
        over_cap = cap_reason(caps, *cgroup_events(sandbox.cgroups), disk.measure())
        remove_cgroups(sandbox.cgroups)
    events.join(timeout=KILL_GRACE_SECONDS)
    return TrainingRun(events, data, returncode, rusage, why_stopped, over_cap, off_cores)


def off_its_cores(root: int, cores: set[int]) -> str:
    """Which process or thread under `root` (the sandbox) may run on cores outside `cores`,
    in words; "" when none. A slot's pinning is an affinity its candidate could undo: this
    is how an undone one is seen (every CORE_CHECK_SECONDS)."""
    pending, seen = [root], set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
                pending += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue  # gone meanwhile
            allowed = _cpu_list(status.partition("Cpus_allowed_list:")[2].split("\n")[0])
            if allowed - cores:
                return (
                    f"thread {task.name} may run on cores {sorted(allowed)}, its slot has"
                    f" {sorted(cores)}"
                )
    return ""


def _cpu_list(text: str) -> set[int]:
    """`0-3,8` as {0, 1, 2, 3, 8}."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _training_failure(
    run: TrainingRun, config: Config, timings: dict[str, float], steps: int, run_dir: Path
) -> tuple[str, str] | None:
    """(status, reason) when the training went wrong, else None. Times and tokens are the
    runner's (`timings`, `run.data`); only `steps` is the candidate's, and it only sizes
    the last step's allowance, which is capped."""
    events, data = run.events, run.data
    budget, budget_tokens = config.run.budget_seconds, config.run.budget_tokens
    if events.violation:
        return "invalid", events.violation
    if run.off_cores:  # more cores than its share: faster than its neighbour, at its cost
        return "invalid", f"left its slot's cores: {run.off_cores}"
    if events.handed_over and events.handover_files() != events.handed_over:
        return "invalid", "the hand-over files changed after the hand-over was complete"
    if data.tokens_before_start:
        return "invalid", (
            f"drew {data.tokens_before_start:,} training tokens before budget.start(): training"
            " happens on the clock (warm up compilation on made-up tokens such as torch.zeros)"
        )
    late = data.batches_after(events.times.get("handover", math.inf))
    if late > PREFETCHED_BATCHES:
        return "invalid", (
            f"drew {late} batches of training tokens after harness.handover(): training"
            " happens on the clock"
        )
    if run.over_cap:
        return "crash", run.over_cap
    if run.why_stopped == "diverged":
        return "crash", events.diverged or "loss diverged"
    if "handed_over" not in events.times:
        if data.refused and data.started is None:
            return "invalid", (
                f"drew all {data.tokens_served:,} training tokens of the budget before"
                " budget.start(): training happens on the clock"
            )
        if run.why_stopped == "export":
            return "invalid", (
                f"no hand-over within {export_limit(budget):.0f} s of harness.handover() (the"
                " export's bound): work after harness.handover() is training off the clock"
            )
        if data.refused:  # it asked on past the budget, then failed: the budget ended it
            return "timeout", f"asked for training tokens past the {budget_tokens:,} token budget"
        if run.why_stopped == "timeout":
            return "timeout", (
                f"no hand-over within {hard_limit(config):.0f} s (budget {budget:.0f} s"
                f" + start-up allowance {config.run.startup_seconds:.0f} s)"
            )
        if run.returncode == 0:
            return "crash", "train.py exited without calling harness.handover(model)"
        log = log_tail(run_dir / RUN_LOG) or log_tail(run_dir / SANDBOX_LOG)
        return "crash", f"exit code {run.returncode}: {error_line(log)}"
    if timings["startup"] > config.run.startup_seconds:
        return "invalid", (
            f"started training {timings['startup']:.1f} s after launch, over the"
            f" {config.run.startup_seconds:.0f} s start-up allowance (run.startup_seconds)"
        )
    export = timings.get("export", 0.0)
    if export > export_limit(budget):
        return "invalid", (
            f"the export took {export:.1f} s, over its {export_limit(budget):.0f} s bound:"
            " work after harness.handover() is training off the clock"
        )
    training = timings["training"]
    if training > training_limit(budget, training / max(steps, 1)):
        return "timeout", f"trained {training:.1f} s, over the {budget:.0f} s budget"
    # The token budget is the server's: it never serves past the budget plus the last batch.
    return None


class Evaluator:
    """The trusted evaluator process, started with the candidate: told `warm` once training
    starts, it imports torch and loads the validation rows while the candidate trains, and
    loads the model only when told the hand-over is done."""

    def __init__(self, spec: EvalSpec, log_path: Path, slot: Slot = WHOLE_MACHINE):
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by score() or cancel()

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch.harness.evaluate", json.dumps(asdict(spec))],
            cwd=log_path.parent,  # explicit, like every process started here
            env=minimal_env(slot.env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=in_slot(slot.cpus),  # scored on the slot's own cores, like its candidate
        )
        self._log_path = log_path

    def warm(self) -> None:
        """Training has started: load everything but the model now."""
        with contextlib.suppress(OSError):  # it died: score() says so
            self.proc.stdin.write(f"{WARM}\n".encode())
            self.proc.stdin.flush()

    def score(self) -> tuple[dict, str, bool]:
        """(result, "", False), or ({}, error, refused): refused when the evaluator found the
        hand-over to be no honest model (status `invalid`), not merely unscorable (`crash`)."""
        try:
            out, _ = self.proc.communicate(f"{GO}\n".encode(), timeout=EVAL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return {}, f"the evaluator took over {EVAL_TIMEOUT_SECONDS:.0f} s", False
        finally:
            self.cancel()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = log_tail(self._log_path, 3).replace("\n", " | ")
            return {}, f"no result (exit code {self.proc.returncode}): {tail[-300:]}", False
        if "error" in result:
            return {}, str(result["error"]), result.get("invalid") is True
        return result, "", False

    def cancel(self) -> None:
        """Stop the evaluator (a no-op once it has finished)."""
        kill_group(self.proc.pid)
        self.proc.wait()
        self._log.close()


def _read_meta(path: Path) -> dict:
    """The candidate's own hand-over notes: informational, every field optional."""
    try:
        meta = json.loads(read_untrusted(path, META_BYTES))
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _peak_rss_mb(rusage) -> float:
    """Peak resident memory of the training process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    if rusage is None:
        return 0.0
    return rusage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def _mfu(flops_per_token, tokens: int, seconds: float, device_name: str) -> float | None:
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)
    if not peak or not flops_per_token or seconds <= 0:
        return None
    return 100.0 * float(flops_per_token) * tokens / seconds / peak
