"""The Ray executor on a real, local Ray: experiments as Ray tasks through the same runner.

One Ray for the module (it takes seconds to start), with two declared GPUs so that the GPU
path of Ray's scheduler runs; the torch here may be a CPU build, so the experiments train
on the CPU (run.device = "cpu") while Ray still assigns each one a GPU id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "autoresearch[ray]"')

import candidates  # noqa: E402
from conftest import make_research_repo, write_corpus  # noqa: E402
from kill_resume import describe, kill_all, processes_of, wait_gone  # noqa: E402

from autoresearch.config import load_config  # noqa: E402
from autoresearch.errors import UserError  # noqa: E402
from autoresearch.harness.cache import prepared_dir  # noqa: E402
from autoresearch.harness.fingerprint import harness_fingerprint, sha256_file  # noqa: E402
from autoresearch.harness.prepare import MANIFEST, load_manifest  # noqa: E402
from autoresearch.ray_runner import (  # noqa: E402
    INSTALL_HINT,
    EventThrottle,
    ExperimentCancelled,
    RayRunner,
    sweep_leftovers,
    work_root,
)

GPU_RUN = re.compile(r"ray (\S+) \(GPU ([01])\)")
APPEAR_SECONDS = 60.0  # a task's candidate starts within this (a fresh Ray worker, imports)
GONE_SECONDS = 20.0  # a stopped task's processes are gone within this


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs and 2 (declared) GPUs; its address."""
    info = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield info.address_info["address"]
    ray.shutdown()
    sweep_leftovers()  # what the killed tasks left in this machine's temporary folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory, corpus) -> Path:
    return make_research_repo(tmp_path_factory.mktemp("ray") / "research", corpus)


@pytest.fixture(scope="module")
def config(repo):
    return load_config(repo, {"run.device": "cpu", "run.network": False})


@pytest.fixture(scope="module")
def runner(cluster, config):
    runner = RayRunner(config)
    yield runner
    runner.close()


def candidate(folder: Path, source: str) -> Path:
    """`source` as the train.py of a run folder `folder`, as the engine writes it."""
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(source)
    return folder / "train.py"


def hanging(marker: str) -> str:
    """A candidate that hangs, with a child that hangs too, `marker` in the child's command."""
    return candidates.GRANDCHILD.replace("time.sleep(3600)", f"time.sleep(3600)  # {marker}")


def wait_for_processes(marker: str) -> list[int]:
    """The processes of Ray runs on this machine once one of them has `marker` in its command
    line (the candidate's own child is running)."""
    deadline = time.monotonic() + APPEAR_SECONDS
    while time.monotonic() < deadline:
        pids = processes_of(work_root())
        for pid in pids:
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pids
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no process with {marker!r} appeared in {APPEAR_SECONDS:.0f} s")


def test_an_experiment_runs_on_a_ray_node_through_the_runner(runner, config, tmp_path):
    train_py = candidate(tmp_path / "e0001", candidates.HONEST)
    events: list[dict] = []
    outcome = runner(train_py, config, train_py.parent, on_event=events.append)

    assert outcome.status == "keep", outcome.reason
    assert outcome.val_bpb is not None and math.isfinite(outcome.val_bpb)
    assert outcome.tokens > 0 and outcome.device == "cpu"
    match = GPU_RUN.fullmatch(outcome.ran_on)
    assert match, outcome.ran_on
    assert match.group(1) == ray.util.get_node_ip_address()
    manifest = load_manifest(config)
    assert outcome.fingerprints == {  # measured with the same harness, data and source
        "harness": harness_fingerprint(),
        "data": manifest.data_fingerprint,
        "tokenizer": manifest.tokenizer_fingerprint,
        "train": sha256_file(train_py),
    }
    kinds = [e.get("event") for e in events]  # passed on from the node, in order
    assert "step" in kinds and kinds.index("start") < kinds.index("handed_over"), kinds
    # The run folder's small files came back; the hand-over (the weights) did not.
    run_dir = train_py.parent
    assert {"run.log", "eval.log", "sandbox.log", "context.json", "sandbox.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert not (run_dir / "handover").exists()
    assert json.loads((run_dir / "context.json").read_text())["device"] == "cpu"
    # The candidate saw exactly the GPU Ray assigned; its temporary folder on the node is gone.
    spec = json.loads((run_dir / "sandbox.json").read_text())
    assert spec["env"]["CUDA_VISIBLE_DEVICES"] == match.group(2)
    if "OMP_NUM_THREADS" not in os.environ:  # else Ray leaves the node's own
        assert spec["env"]["OMP_NUM_THREADS"] == "1"  # run.ray_cpus
    assert list(work_root().iterdir()) == []


def test_two_experiments_at_once_get_a_gpu_each(runner, config, tmp_path):
    outcomes: dict[int, object] = {}

    def one(i: int) -> None:
        train_py = candidate(tmp_path / f"e{i:04d}", candidates.HONEST)
        outcomes[i] = runner(train_py, config, train_py.parent)

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert sorted(outcomes) == [1, 2]
    assert [o.status for o in outcomes.values()] == ["keep", "keep"], outcomes
    gpus = {GPU_RUN.fullmatch(o.ran_on).group(2) for o in outcomes.values()}
    assert gpus == {"0", "1"}  # at the same time, so on both GPUs
    for i, outcome in outcomes.items():
        spec = json.loads((tmp_path / f"e{i:04d}" / "sandbox.json").read_text())
        assert spec["env"]["CUDA_VISIBLE_DEVICES"] == GPU_RUN.fullmatch(outcome.ran_on).group(2)


def test_a_task_without_gpus_sees_none_and_no_file_of_ray(cluster, config, tmp_path):
    no_gpus = dataclasses.replace(config, run=dataclasses.replace(config.run, ray_gpus=0.0))
    ray_dirs = [
        str(Path.home() / ".ray"),
        ray._private.worker.global_worker.node.get_temp_dir_path(),
    ]
    assert all(os.listdir(d) for d in ray_dirs)  # the token; the sockets and logs of this Ray
    snoop = f"import os\nfor d in {ray_dirs!r}:\n    print('RAY FILES', d, os.listdir(d))\n"
    train_py = candidate(tmp_path / "e0001", snoop + candidates.CRASH)  # quick: no training
    outcome = RayRunner(no_gpus)(train_py, no_gpus, train_py.parent)
    assert outcome.status == "crash" and "boom" in outcome.reason, outcome.reason
    assert outcome.ran_on == f"ray {ray.util.get_node_ip_address()}"
    spec = json.loads((train_py.parent / "sandbox.json").read_text())
    # Ray leaves a task without GPUs the node's own list: the runner names none.
    assert spec["env"]["CUDA_VISIBLE_DEVICES"] == ""
    log = (train_py.parent / "run.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("RAY FILES")] == [
        f"RAY FILES {d} []" for d in ray_dirs
    ], log


def test_a_candidate_with_network_is_refused(config):
    with pytest.raises(UserError, match="run.network = false"):
        RayRunner(dataclasses.replace(config, run=dataclasses.replace(config.run, network=True)))


def test_cancel_all_kills_the_task_and_leaves_no_process(cluster, config, tmp_path):
    runner = RayRunner(config)  # its own: a cancelled runner takes no more experiments
    marker = "ray-cancel-marker"
    train_py = candidate(tmp_path / "e0001", hanging(marker))
    raised: list[BaseException] = []

    def run() -> None:
        try:
            runner(train_py, config, train_py.parent)
        except BaseException as e:  # noqa: BLE001 - what the call ended with is the point
            raised.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    started = wait_for_processes(marker)
    assert len(started) >= 3, describe(started)  # the sandbox, the candidate, its child
    runner.cancel_all()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], ExperimentCancelled), raised
    left = wait_gone(work_root(), GONE_SECONDS)
    kill_all(left)
    assert left == [], describe(left)
    with pytest.raises(ExperimentCancelled):
        runner(train_py, config, train_py.parent)
    # The killed worker left its folder; the next task on the node removes it.
    folders = list(work_root().iterdir())
    assert folders
    deadline = time.monotonic() + GONE_SECONDS
    for folder in folders:
        while _alive(int(folder.name.partition("-")[0])) and time.monotonic() < deadline:
            time.sleep(0.1)
    RayRunner(config).prepare_nodes()
    assert list(work_root().iterdir()) == []


DRIVER = """
import sys
from pathlib import Path
from autoresearch.config import load_config
from autoresearch.ray_runner import RayRunner
repo, run_dir, address = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config = load_config(repo, {"run.device": "cpu", "run.network": False, "run.ray_address": address})
RayRunner(config)(run_dir / "train.py", config, run_dir)
"""


def test_a_killed_orchestrator_leaves_no_process_on_the_node(cluster, repo, tmp_path):
    marker = "ray-driver-marker"
    train_py = candidate(tmp_path / "e0001", hanging(marker))
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(repo), str(train_py.parent), cluster],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = wait_for_processes(marker)
        assert len(started) >= 3, describe(started)
        driver.send_signal(signal.SIGKILL)  # as the OOM killer or kill -9 would
        driver.wait(timeout=10)
        left = wait_gone(work_root(), GONE_SECONDS)
        kill_all(left)
        assert left == [], describe(left)
    finally:
        driver.kill()
        driver.wait()


def test_prepare_nodes_prepares_a_missing_cache_and_leaves_a_ready_one(runner, config, tmp_path):
    data = dataclasses.replace(config.data, path=str(write_corpus(tmp_path / "corpus")))
    fresh = dataclasses.replace(config, data=data)  # a folder of its own: not in the cache
    with pytest.raises(UserError, match="no prepared data"):
        load_manifest(fresh)
    ip = ray.util.get_node_ip_address()
    assert runner.prepare_nodes(fresh) == {ip: "prepared"}
    manifest = prepared_dir(fresh) / MANIFEST  # this machine is the node: its cache
    written = manifest.stat().st_mtime_ns
    assert load_manifest(fresh).train_tokens > 0
    lines: list[str] = []
    assert runner.prepare_nodes(fresh, log=lines.append) == {ip: "ready"}
    assert manifest.stat().st_mtime_ns == written
    assert lines == [f"node {ip}: ready"]


def test_a_worker_with_another_harness_refuses_to_score(cluster, config, tmp_path):
    runner = RayRunner(config)
    runner._identity = {"version": autoresearch_version(), "harness": "0" * 64}
    train_py = candidate(tmp_path / "e0001", candidates.HONEST)
    with pytest.raises(UserError) as e:
        runner(train_py, config, train_py.parent)
    message = str(e.value)
    assert "\n" not in message and message.startswith("the Ray node ")
    assert "install the same autoresearch on every node" in message
    assert not (train_py.parent / "run.log").exists()  # nothing ran


def test_without_ray_the_error_says_how_to_install_it(config, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(UserError) as e:
        RayRunner(config)
    assert "\n" not in str(e.value) and str(e.value).endswith(INSTALL_HINT)


def test_events_are_thinned_but_kept_in_order():
    now = [0.0]
    throttle = EventThrottle(clock=lambda: now[0])
    step = lambda i: {"event": "step", "step": i}  # noqa: E731
    assert throttle({"event": "start"}) == [{"event": "start"}]
    assert throttle(step(0)) == [step(0)]
    assert throttle(step(1)) == [] and throttle(step(2)) == []  # held: the latest is kept
    assert throttle({"event": "handover"}) == [step(2), {"event": "handover"}]
    assert throttle(step(3)) == []
    now[0] = 1.0
    assert throttle(None) == [step(3)]  # passed on when due, without a newer event
    assert throttle({"event": "x" * 5000}) == []  # too big: dropped
    assert throttle.flush() == []


def autoresearch_version() -> str:
    import autoresearch

    return autoresearch.__version__


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # 20-30 s; evolve on Ray slots is tests/test_ray_evolve.py (slow too)
def test_a_search_on_two_ray_slots_records_both_from_the_cluster(runner, repo):
    """The engine with the Ray runner: two candidates in flight on the cluster, both
    recorded by the orchestrator with the node and GPU that ran them."""
    from helpers import FROZEN, LEARNS, committed, make_engine

    from autoresearch.constants import rewrite_constants
    from autoresearch.slots import Slot
    from autoresearch.testing import ScriptedProposer

    base = committed(repo, FROZEN)
    proposer = ScriptedProposer([rewrite_constants(LEARNS, {"LR": lr}) for lr in (0.2, 0.1)])
    engine = make_engine(
        repo, proposer, population=4, prefetch=2, max_experiments=3, runner=runner,
        slots=[Slot(0), Slot(1)],
    )  # fmt: skip
    engine.config = dataclasses.replace(
        engine.config, run=dataclasses.replace(engine.config.run, device="cpu", network=False)
    )
    records = engine.run(base)
    assert [r.status for r in records] == ["keep", "keep", "keep"], [r.reason for r in records]
    gpus = {GPU_RUN.fullmatch(r.ran_on).group(2) for r in records[1:]}
    assert gpus == {"0", "1"}  # side by side, one declared GPU each
    assert all((repo / ".autoresearch/runs" / r.id / "run.log").exists() for r in records)
