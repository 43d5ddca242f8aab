"""One experiment: the training subprocess, its hard limits, and the trusted evaluation.

    train.py  --(events pipe)-->  runner  --(hand-over files)-->  evaluate (own process)

The training process runs in its own process group with a minimal environment
(no API keys) and its output in `run.log`. The runner stamps its events on
arrival, kills the whole group on timeout, divergence or exit, and then starts
the evaluator, whose val_bpb is the only score. Nothing the candidate prints
is parsed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoresearch.config import Config
from autoresearch.harness.context import CONTEXT_ENV, EVENTS_ENV, build_context
from autoresearch.harness.evaluate import GO, EvalSpec
from autoresearch.harness.events import LOSS_LIMIT
from autoresearch.harness.fingerprint import harness_fingerprint, sha256_file
from autoresearch.harness.handover import META_FILE
from autoresearch.harness.prepare import load_manifest
from autoresearch.ledger import Record

# Only these variables reach the candidate: never API keys, tokens or credentials.
ENV_ALLOWLIST = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
KILL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL for a group that has not gone
# The last step starts before the deadline and ends after it: training may overrun the
# budget by 5% + 1 s, plus one mean step, but never by more than 10% for the step.
BUDGET_TOLERANCE = 1.05
LAST_STEP_SHARE = 0.10
EVAL_TIMEOUT_SECONDS = 900.0
POLL_SECONDS = 0.05
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
PGID_FILE = "pgid"  # in the run folder while its process group may be alive
MEASURED_FIELDS = (
    "status", "reason", "val_bpb", "training_seconds", "total_seconds", "tokens", "num_steps",
    "num_params", "mfu_percent", "device", "fingerprints", "timings",
)  # fmt: skip
LOG_TAIL_LINES = 40
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
    status: str  # keep | crash | timeout
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
    device: str = ""
    fingerprints: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, see `_timings`

    @property
    def memory_gb(self) -> float:
        """Peak GPU memory, or peak process memory where there is no GPU."""
        return (self.peak_vram_mb or self.peak_rss_mb) / 1024

    def to_record(self, **fields: object) -> Record:
        """The ledger record of this outcome; `fields` add what the runner cannot know (id, ...)."""
        measured = {name: getattr(self, name) for name in MEASURED_FIELDS}
        return Record(**({"memory_gb": self.memory_gb} | measured | fields))


class Events:
    """Reads the candidate's event pipe in a thread; every event stamped on arrival."""

    def __init__(self, fd: int, on_event: Callable[[dict], None] | None):
        self.times: dict[str, float] = {}  # first arrival of each event kind
        self.last_step: dict = {}
        self.diverged: str | None = None
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
                if kind == "step":
                    self.last_step = event
                    loss = event.get("loss")
                    if isinstance(loss, (int, float)) and not (
                        math.isfinite(loss) and loss <= LOSS_LIMIT
                    ):
                        self.diverged = f"loss diverged ({loss}) at step {event.get('step')}"
                elif kind == "diverged":
                    self.diverged = (
                        f"loss diverged ({event.get('loss')}) at step {event.get('step')}"
                    )
                if self._on_event:
                    self._on_event(event)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs it if the runner dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_experiment(
    train_py: Path,
    config: Config,
    run_dir: Path,
    on_event: Callable[[dict], None] | None = None,
) -> Outcome:
    """Train `train_py` for the budget and score it; candidate faults become statuses."""
    t_spawn = time.monotonic()
    manifest = load_manifest(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = build_context(config, run_dir / "handover")
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
    )
    evaluator = Evaluator(spec, run_dir / "eval.log")  # loads its data while the candidate trains
    try:
        limit = config.run.budget_seconds + config.run.startup_seconds
        run = _supervise(train_py, run_dir, limit, on_event)
        t_end = time.monotonic()
        events = run.events
        t_start = events.times.get("start", t_spawn)
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
            tokens=int(meta.get("tokens") or events.last_step.get("tokens", 0)),
            device=ctx.device,
            fingerprints=fingerprints,
            timings=timings,
        )
        failure = _training_failure(
            run, config, training, common["num_steps"], common["tokens"], run_dir
        )
        if failure:
            return Outcome(*failure, total_seconds=time.monotonic() - t_spawn, **common)
        t_eval = time.monotonic()
        result, error = evaluator.score()
        timings["evaluation"] = time.monotonic() - t_eval
        if error:
            reason = f"evaluation failed: {error}"
            return Outcome("crash", reason, total_seconds=time.monotonic() - t_spawn, **common)
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


@dataclass
class TrainingRun:
    events: Events
    returncode: int | None
    rusage: object
    why_stopped: str  # "", "timeout", "diverged" or "handed_over"


def _supervise(
    train_py: Path, run_dir: Path, limit: float, on_event: Callable[[dict], None] | None
) -> TrainingRun:
    """Run train.py in its own process group until it exits, hands over, diverges or times out."""
    t_spawn = time.monotonic()
    read_fd, write_fd = os.pipe()
    env = minimal_env({CONTEXT_ENV: str(run_dir / "context.json"), EVENTS_ENV: str(write_fd)})
    with open(run_dir / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, train_py.name],
            cwd=train_py.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    os.close(write_fd)
    (run_dir / PGID_FILE).write_text(str(proc.pid))
    events = Events(read_fd, on_event)
    returncode, rusage, why_stopped = None, None, ""
    try:
        while True:
            returncode, rusage = _reap(proc.pid, 0)
            if returncode is not None:
                break
            if time.monotonic() - t_spawn > limit:
                why_stopped = "timeout"
            elif events.diverged:
                why_stopped = "diverged"
            elif "handed_over" in events.times:
                why_stopped = "handed_over"  # nothing the process does from here on counts
            if why_stopped:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if returncode is None:  # stop it, but reap it ourselves: its rusage has the peak memory
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            returncode, rusage = _reap(proc.pid, KILL_GRACE_SECONDS)
        kill_group(proc.pid)  # grandchildren, and a process that ignored SIGTERM
        # Reaped here or by kill_group (then it died of SIGKILL): Popen must not wait again.
        proc.returncode = -signal.SIGKILL if returncode is None else returncode
        (run_dir / PGID_FILE).unlink(missing_ok=True)
    events.join(timeout=KILL_GRACE_SECONDS)
    return TrainingRun(events, returncode, rusage, why_stopped)


def _training_failure(
    run: TrainingRun, config: Config, training: float, steps: int, tokens: int, run_dir: Path
) -> tuple[str, str] | None:
    """(status, reason) when the training went wrong, else None."""
    events = run.events
    if run.why_stopped == "diverged":
        return "crash", events.diverged or "loss diverged"
    if "handed_over" not in events.times:
        if run.why_stopped == "timeout":
            limit = config.run.budget_seconds + config.run.startup_seconds
            return "timeout", (
                f"no hand-over within {limit:.0f} s (budget {config.run.budget_seconds:.0f} s"
                f" + start-up allowance {config.run.startup_seconds:.0f} s)"
            )
        if run.returncode == 0:
            return "crash", "train.py exited without calling harness.handover(model)"
        return "crash", f"exit code {run.returncode}: {error_line(log_tail(run_dir / 'run.log'))}"
    budget = config.run.budget_seconds
    mean_step = training / max(steps, 1)
    if training > budget * BUDGET_TOLERANCE + 1.0 + min(mean_step, budget * LAST_STEP_SHARE):
        return "timeout", f"trained {training:.1f} s, over the {budget:.0f} s budget"
    # A token budget counts the harness loader's tokens (as the candidate reports them): the
    # last step may draw one more batch than needed, a loop that ignores the budget many more.
    budget_tokens = config.run.budget_tokens
    if budget_tokens and tokens > budget_tokens + 2 * tokens / max(steps, 1):
        return "timeout", f"trained on {tokens:,} tokens, over the {budget_tokens:,} token budget"
    return None


class Evaluator:
    """The trusted evaluator process, started early: it imports torch and loads the validation
    rows while the candidate trains, and loads the model only when told the hand-over is done."""

    def __init__(self, spec: EvalSpec, log_path: Path):
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by score() or cancel()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch.harness.evaluate", json.dumps(asdict(spec))],
            env=minimal_env({}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._log_path = log_path

    def score(self) -> tuple[dict, str]:
        """(result, "") or ({}, error)."""
        try:
            out, _ = self.proc.communicate(f"{GO}\n".encode(), timeout=EVAL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return {}, f"the evaluator took over {EVAL_TIMEOUT_SECONDS:.0f} s"
        finally:
            self.cancel()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = log_tail(self._log_path, 3).replace("\n", " | ")
            return {}, f"no result (exit code {self.proc.returncode}): {tail[-300:]}"
        if "error" in result:
            return {}, str(result["error"])
        return result, ""

    def cancel(self) -> None:
        """Stop the evaluator (a no-op once it has finished)."""
        kill_group(self.proc.pid)
        self.proc.wait()
        self._log.close()


def _read_meta(path: Path) -> dict:
    """The candidate's own hand-over notes: informational, every field optional."""
    try:
        meta = json.loads(path.read_text())
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
