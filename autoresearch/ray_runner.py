"""The Ray executor: each experiment is one Ray task on a worker node, through the same runner.

    orchestrator (engine thread)              worker node (one Ray task, its own process)
    RayRunner(train_py, ...) --source-->      a fresh temporary run folder
                                              run_experiment(...)  sandbox, evaluator, limits
        on_event(...)        <--events--      (throttled)
        run_dir/run.log ...  <--result--      Outcome + the small files of the run folder

The worker runs the trusted runner unchanged: the candidate, its sandbox and its evaluator
all run on the worker node, so a node is as trusted as its autoresearch install (which must
be the orchestrator's: a task refuses to score with another harness). Only the orchestrator
writes the ledger and the git repo; it gets back the `Outcome` and the logs, never the
hand-over weights, and the worker's folder is removed.

Ray places the tasks (`run.ray_gpus`, `run.ray_cpus` per experiment): the engine's `Slot`s
are for local runs and ignored here. Ray names the GPUs of a task in CUDA_VISIBLE_DEVICES; the
runner passes exactly those to the candidate and its evaluator, and none for a task without
GPUs (where Ray would leave the node's whole list).

A Ray cluster runs whatever code reaches it, outside any sandbox: a candidate must not reach
it. So `--executor ray` needs `run.network = false` (or candidates unsandboxed on purpose,
`run.isolation = "off"`), and the sandbox hides Ray's files on the node (its sockets, its
token) from the candidate.

Stopping: `cancel_all` force-cancels the tasks in flight (Ray kills their worker processes;
the sandbox and the evaluator die with them, PR_SET_PDEATHSIG, and an isolated candidate with
its PID namespace). An orchestrator that dies is a Ray driver that dies: Ray kills its tasks
the same way. What a killed task leaves on its node (its folder, a stray process group of an
unisolated candidate) is swept by the next task on that node. A node lost mid-experiment:
Ray retries the task once (`SYSTEM_RETRIES`), from the start, on any node; lost again, the
experiment is recorded as a crash with Ray's reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import autoresearch
from autoresearch.config import Config
from autoresearch.errors import UserError
from autoresearch.harness.fingerprint import harness_fingerprint
from autoresearch.runner import (
    SANDBOX_LOG,
    SANDBOX_SPEC,
    Outcome,
    kill_leftovers,
    run_experiment,
)
from autoresearch.slots import WHOLE_MACHINE, Slot
from autoresearch.workspace import RUN_LOG, TRAIN_FILE

INSTALL_HINT = 'pip install "autoresearch[ray]"'
# What comes back from a worker's run folder: the logs and what the run was told and did.
# Never the hand-over (the model's weights, megabytes to gigabytes).
RETURNED_FILES = (RUN_LOG, "eval.log", SANDBOX_LOG, "context.json", SANDBOX_SPEC)
FILE_BYTES = 1 << 20  # at most this much of each file comes back: its tail
SYSTEM_RETRIES = 1  # a task whose worker or node died runs once more, then it is a crash
# Events cross the network one Ray object each: a step's at most every EVENT_SECONDS (the
# progress line redraws no faster), other kinds at once, and never more than EVENT_KINDS
# kinds or events over EVENT_BYTES (the candidate writes the pipe: it could flood it).
EVENT_SECONDS = 0.25
EVENT_KINDS = 32
EVENT_BYTES = 4096
WORK_DIR = "autoresearch-ray"  # under the worker's temporary folder: <pid>-<random>/<run id>/

_init_lock = threading.Lock()


class ExperimentCancelled(Exception):
    """The experiment was stopped by `RayRunner.cancel_all` or `close`: it has no result,
    and the engine records nothing for it (a resumed run trains it again)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def _identity() -> dict[str, str]:
    """What must be the same on the orchestrator and on every worker."""
    return {"version": autoresearch.__version__, "harness": harness_fingerprint()}


class RayRunner:
    """A `Runner` whose experiments run as Ray tasks; thread-safe (one call per engine slot).

    Connects to the cluster at `config.run.ray_address` ("": starts a local Ray) unless this
    process is connected already, and checks that some node can take one experiment.
    """

    def __init__(self, config: Config):
        self._ray = ray = _import_ray()
        self._config = config
        self._identity = _identity()
        self._lock = threading.Lock()
        self._in_flight: dict[int, Any] = {}  # id -> the ObjectRefGenerator of a running task
        self._stopped = False
        check_settings(config)
        self._owns_ray = _connect(ray, config.run.ray_address)
        self._check_capacity()
        self._experiment = ray.remote(
            num_gpus=config.run.ray_gpus,
            num_cpus=config.run.ray_cpus,
            num_returns="streaming",
            max_calls=1,  # a fresh worker process per experiment: no state carried over
            max_retries=SYSTEM_RETRIES,
            retry_exceptions=False,  # an error of the runner itself is not retried
        )(_experiment_on_node)

    # -- the Runner protocol

    def __call__(
        self,
        train_py: Path,
        config: Config,
        run_dir: Path,
        on_event: Callable[[dict], None] | None = None,
        slot: Slot = WHOLE_MACHINE,  # ignored: Ray places the task
    ) -> Outcome:
        """Train and score `train_py` on a node of the cluster; its logs land in `run_dir`."""
        ray = self._ray
        source = Path(train_py).read_bytes()
        with self._lock:
            if self._stopped:
                raise ExperimentCancelled("the Ray runner was stopped")
            task = self._experiment.remote(source, run_dir.name, for_nodes(config), self._identity)
            self._in_flight[id(task)] = task
        result = None
        try:
            for ref in task:
                item = ray.get(ref)
                if item[0] == "event":
                    if on_event is not None:
                        on_event(item[1])
                elif item[0] == "error":
                    raise UserError(item[1])
                elif item[0] == "result":
                    result = item
        except ray.exceptions.RayError as e:
            if self._stopped:
                raise ExperimentCancelled("stopped while it ran on the Ray cluster") from None
            if "No module named 'autoresearch'" in str(e):
                raise UserError(
                    "a Ray worker cannot import autoresearch: install the same autoresearch on"
                    f" every node ({INSTALL_HINT}, and torch)"
                ) from None
            if isinstance(e, ray.exceptions.RayTaskError):
                raise  # the runner's own error on the node: as it would be on this machine
            why = " ".join(str(e).split())[:300]
            return Outcome(
                "crash",
                f"lost on the Ray cluster, also when retried ({type(e).__name__}: {why})",
                ran_on="ray",
            )
        finally:
            with self._lock:
                self._in_flight.pop(id(task), None)
        if result is None:
            if self._stopped:
                raise ExperimentCancelled("stopped while it ran on the Ray cluster")
            return Outcome("crash", "the Ray task ended without a result", ran_on="ray")
        _, outcome, files = result
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if name in RETURNED_FILES:  # nothing else is written here, whatever came back
                (run_dir / name).write_bytes(data)
        return outcome

    # -- stopping

    def cancel_all(self) -> None:
        """Stop every experiment in flight now (their calls raise `ExperimentCancelled`), and
        refuse new ones: the engine calls this when it stops at once."""
        with self._lock:
            self._stopped = True
            tasks = list(self._in_flight.values())
        for task in tasks:
            with contextlib.suppress(Exception):  # finished meanwhile, or already gone
                self._ray.cancel(task, force=True)

    def close(self) -> None:
        """`cancel_all`, and disconnect from a Ray this runner started."""
        self.cancel_all()
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    # -- the nodes

    def nodes(self) -> list[dict]:
        """The alive nodes that can take one experiment (its GPUs and CPUs)."""
        run = self._config.run
        return [
            node
            for node in self._ray.nodes()
            if node.get("Alive")
            and node["Resources"].get("CPU", 0) >= run.ray_cpus
            and node["Resources"].get("GPU", 0) >= run.ray_gpus
        ]

    def _check_capacity(self) -> None:
        run = self._config.run
        if not self.nodes():
            raise UserError(
                f"no node of the Ray cluster has {run.ray_gpus:g} GPU and {run.ray_cpus:g} CPU"
                " for an experiment: set run.ray_gpus and run.ray_cpus to what a node has"
                " (run.ray_gpus = 0 on a cluster without GPUs), or add such a node"
            )

    def prepare_nodes(
        self, config: Config | None = None, log: Callable[[str], None] | None = None
    ) -> dict[str, str]:
        """Make sure every node that can take an experiment has the prepared data.

        `autoresearch prepare`'s function runs as one task pinned to each node whose cache
        lacks the data (a task that finds it ready does nothing): a cluster needs no shared
        filesystem. A node with a shared cache (AUTORESEARCH_CACHE) finds what the first
        node prepared there: the first node is done before the others start. Returns
        {node IP: "ready" | "prepared"}; a node's failure is a `UserError` naming it.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        config = for_nodes(config or self._config)
        say = log or (lambda line: None)
        done: dict[str, str] = {}
        nodes = self.nodes()
        prepare_task = ray.remote(_prepare_on_node)
        for batch in (nodes[:1], nodes[1:]):
            tasks = []
            for node in batch:
                task = prepare_task.options(
                    num_cpus=min(1.0, node["Resources"].get("CPU", 0)),
                    num_gpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                    max_retries=0,
                )
                tasks.append((node["NodeManagerAddress"], task.remote(config, self._identity)))
            for address, ref in tasks:
                try:
                    ip, state, message = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    what = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
                    raise UserError(f"prepare failed on Ray node {address}: {what}") from None
                if state == "error":
                    raise UserError(f"prepare failed on Ray node {ip}: {message}")
                say(f"node {ip}: {state}" + (f" ({message})" if message else ""))
                done[ip] = state
        return done


def check_settings(config: Config) -> None:
    """Refuse what would let a candidate out through Ray: a Ray cluster runs whatever code it
    is sent, outside any sandbox, as the user that started it (it could rewrite the ledger)."""
    run = config.run
    if run.network and run.isolation != "off":
        raise UserError(
            "--executor ray needs run.network = false: a candidate that can reach the network"
            " can reach the Ray cluster, which runs any code outside the sandbox"
            ' (run.isolation = "off" runs candidates unsandboxed, knowingly)'
        )


def _connect(ray: Any, address: str) -> bool:
    """Connect this process to Ray once; whether it started (and so owns) that Ray."""
    with _init_lock:
        if ray.is_initialized():
            return False
        options: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
        if not address:
            options["include_dashboard"] = False
        try:
            ray.init(address=address or None, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise UserError(
                f"cannot start or reach {where} ({why}): start one with `ray start --head`,"
                ' or set run.ray_address ("": a new local Ray; "auto": the one `ray start` made)'
            ) from None
        return True


def for_nodes(config: Config) -> Config:
    """The config a worker gets: the proposers' options stay here (they may hold keys), and
    a relative data.path is made absolute (on each node it names the same folder)."""
    data = config.data
    if data.path:
        data = dataclasses.replace(data, path=str(Path(data.path).expanduser().absolute()))
    return dataclasses.replace(config, proposers={}, data=data)


# --------------------------------------------------------------------------- on a worker node


def _refusal(expected: dict[str, str], where: str) -> str:
    """Why this node may not score (another autoresearch than the orchestrator's), or ""."""
    here = _identity()
    if here == expected:
        return ""
    return (
        f"{where} has autoresearch {here['version']} with harness {here['harness'][:12]}, the"
        f" orchestrator {expected['version']} with harness {expected['harness'][:12]}:"
        " install the same autoresearch on every node, so that every score is the same"
        " harness's"
    )


def work_root() -> Path:
    root = Path(tempfile.gettempdir()) / WORK_DIR
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def sweep_leftovers(root: Path | None = None) -> None:
    """Remove the folders of tasks whose worker died (force-cancelled, or its driver gone),
    after killing what their runs left running (the `pgid` files of runner.kill_leftovers)."""
    from autoresearch.harness.limits import pid_alive

    for folder in (root or work_root()).iterdir():
        pid = folder.name.partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        kill_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _placement(ray: Any) -> tuple[str, Slot]:
    """Where this task runs, in words, and the slot that shows its candidate its GPUs only."""
    gpus = ",".join(str(i) for i in ray.get_gpu_ids())
    where = f"ray {ray.util.get_node_ip_address()}" + (f" (GPU {gpus})" if gpus else "")
    # Ray sets this for a task with GPUs, and leaves a task without any the node's list.
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # for torch here (device "auto")
    # The other tasks' folders on this node (their hand-overs) are veiled like a repo's runs.
    hidden = (*ray_files(ray), str(work_root()))
    return where, Slot(env={"CUDA_VISIBLE_DEVICES": gpus}, label=where, hidden=hidden)


def ray_files(ray: Any) -> tuple[str, ...]:
    """Ray's own files on this node, which the candidate must not see: its temporary folder
    (the sockets of the raylet and the object store: a way into the cluster that needs no
    network) and ~/.ray (the cluster's token)."""
    paths = [Path.home() / ".ray", Path(tempfile.gettempdir()) / "ray"]  # Ray's defaults
    with contextlib.suppress(Exception):  # not public: where `ray start --temp-dir` put it
        paths.append(Path(ray._private.worker.global_worker.node.get_temp_dir_path()))
    ours = work_root().resolve()
    return tuple(
        str(path) for path in dict.fromkeys(p.resolve() for p in paths) if path not in ours.parents
    )


def _experiment_on_node(
    source: bytes, name: str, config: Config, expected: dict[str, str]
) -> Iterator[tuple]:
    """The Ray task: ("event", event)..., then ("result", Outcome, {file: bytes}) or
    ("error", one line) for what stops the search (a UserError of the runner, a mismatch)."""
    import ray

    where, slot = _placement(ray)
    if refusal := _refusal(expected, f"the Ray node {ray.util.get_node_ip_address()}"):
        yield ("error", refusal)
        return
    sweep_leftovers()
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=work_root()))
    thread = None
    try:
        run_dir = folder / name
        run_dir.mkdir()
        (run_dir / TRAIN_FILE).write_bytes(source)
        events: queue.Queue[dict] = queue.Queue()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["outcome"] = run_experiment(
                    run_dir / TRAIN_FILE, config, run_dir, events.put, slot
                )
            except UserError as e:
                box["error"] = f"on {where}: {e}"
            except BaseException as e:  # noqa: BLE001 - raised in the task below
                box["exception"] = e

        # In a thread, so that this generator can pass the events on while it trains; the
        # runner's processes die with this thread (PR_SET_PDEATHSIG), which lives as long.
        thread = threading.Thread(target=run, name="experiment")
        thread.start()
        throttle = EventThrottle()
        while thread.is_alive() or not events.empty():
            try:
                event = events.get(timeout=EVENT_SECONDS)
            except queue.Empty:
                event = None
            for out in throttle(event):
                yield ("event", out)
        for out in throttle.flush():
            yield ("event", out)
        if "exception" in box:
            raise box["exception"]
        if "error" in box:
            yield ("error", box["error"])
            return
        outcome = dataclasses.replace(box["outcome"], ran_on=where)
        yield ("result", outcome, returned_files(run_dir))
    finally:
        if thread is not None:
            thread.join()  # the folder goes only once the runner is done with it
        shutil.rmtree(folder, ignore_errors=True)


def returned_files(run_dir: Path) -> dict[str, bytes]:
    """The tail of each small file of a run folder that exists as a regular file (the
    candidate may have replaced one with a link or a FIFO: see harness.untrusted)."""
    from autoresearch.harness.untrusted import read_untrusted

    files = {}
    for name in RETURNED_FILES:
        with contextlib.suppress(OSError):
            files[name] = read_untrusted(run_dir / name, FILE_BYTES)
    return files


class EventThrottle:
    """Which events to pass on, in order: the first of each kind at once; later ones at most
    every EVENT_SECONDS per kind, the latest kept meanwhile and passed on before any newer
    event; at most EVENT_KINDS kinds, and no event over EVENT_BYTES."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._sent: dict[str, float] = {}  # kind -> when one was last passed on
        self._pending: dict[str, dict] = {}  # kind -> the latest one held back

    def __call__(self, event: dict | None) -> list[dict]:
        now = self._clock()
        if event is not None:
            kind = str(event.get("event"))
            try:
                too_big = len(json.dumps(event)) > EVENT_BYTES
            except (TypeError, ValueError):
                too_big = True
            if too_big or (kind not in self._sent and len(self._sent) >= EVENT_KINDS):
                pass  # dropped
            elif now - self._sent.get(kind, -float("inf")) >= EVENT_SECONDS:
                self._pending.pop(kind, None)
                out = self.flush()
                self._sent[kind] = now
                return [*out, event]
            else:
                self._pending[kind] = event
                return []
        due = [k for k in self._pending if now - self._sent[k] >= EVENT_SECONDS]
        for kind in due:
            self._sent[kind] = now
        return [self._pending.pop(kind) for kind in due]

    def flush(self) -> list[dict]:
        """Every event held back, in the order they came."""
        out = list(self._pending.values())
        self._pending.clear()
        return out


def _prepare_on_node(config: Config, expected: dict[str, str]) -> tuple[str, str, str]:
    """The Ray task of `prepare_nodes`: (node IP, "ready" | "prepared" | "error", message)."""
    import ray

    from autoresearch.harness.prepare import load_manifest, prepare

    ip = ray.util.get_node_ip_address()
    if refusal := _refusal(expected, f"the Ray node {ip}"):
        return ip, "error", refusal
    sweep_leftovers()
    try:
        load_manifest(config)  # ready and intact: nothing to do
        return ip, "ready", ""
    except UserError:
        pass
    try:
        manifest = prepare(config, log=lambda line: None)
    except UserError as e:
        return ip, "error", str(e)
    return ip, "prepared", f"{manifest.train_tokens:,} training tokens in {manifest.folder}"
