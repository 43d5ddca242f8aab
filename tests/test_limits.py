"""The caps of harness.limits and the candidate's private folders, with real runs and real
cgroups where this machine has them (the attacks on them are in tests/attacks/test_host.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import attacking
import candidates
import pytest
from attacking import needs_isolation

from autoresearch.config import load_config
from autoresearch.errors import ConfigError
from autoresearch.harness import limits
from autoresearch.runner import Outcome

GiB = 2**30
TOKENS = 8 * 16 * 64  # 8 steps of the honest bigram


def attack(repo: Path, source: str, isolation: str = "off", **overrides) -> Outcome:
    """Run `source` as evolve does, for TOKENS of training."""
    return attacking.attack(
        repo, source, isolation, check=False, **{"run.budget_tokens": TOKENS} | overrides
    )


def run_cgroups(log: str) -> list[Path]:
    """The run cgroups a candidate was in, from the `cgroup` lines of its log (its
    /proc/self/cgroup): the folders of this run alone, whatever other runs on the machine
    (or a killed one's stale cgroups) have made."""
    folders = []
    for line in log.splitlines():
        if line.startswith("cgroup ") and limits.CGROUP_PREFIX in line:
            _, controllers, path = line.removeprefix("cgroup ").split(":", 2)
            mount = limits.CGROUP_ROOT / controllers if controllers else limits.CGROUP_ROOT
            folders.append(mount / path.lstrip("/"))
    return folders


def cgroups_here() -> bool:
    made = limits.make_cgroups(limits.Caps(GiB, 100, GiB))
    limits.remove_cgroups(made)
    return bool(made)


needs_cgroups = pytest.mark.skipif(not cgroups_here(), reason="no writable cgroups here")


def test_caps_are_the_configured_ones_or_derived_from_the_machine(tmp_path):
    caps = limits.caps_for(1.5, 300, 0.25, tmp_path)
    assert caps == limits.Caps(int(1.5 * GiB), 300, GiB // 4)
    derived = limits.caps_for(0, 0, 0, tmp_path)
    assert 0 < derived.disk_bytes <= os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert derived.max_processes >= limits.MIN_PROCESSES
    assert 0 < derived.memory_bytes < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # A slot of two: half of each derived cap (what is free moves a little between calls).
    half = limits.caps_for(0, 0, 0, tmp_path, share=0.5)
    assert abs(half.memory_bytes / derived.memory_bytes - 0.5) < 0.05
    assert abs(half.disk_bytes / derived.disk_bytes - 0.5) < 0.05
    assert limits.caps_for(1.5, 300, 0.25, tmp_path, share=0.5) == caps  # set ones are kept


@pytest.mark.parametrize("key", ["memory_gb", "max_processes", "disk_gb"])
def test_a_negative_cap_is_refused(key):
    with pytest.raises(ConfigError, match=f"'run.{key}' must be 0 \\(derived\\) or more"):
        load_config(None, {f"run.{key}": -1})


def test_a_cap_of_the_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="'run.max_processes' must be an integer"):
        load_config(None, {"run.max_processes": 1.5})


@needs_cgroups
def test_cgroups_carry_the_caps_and_are_removed():
    made = limits.make_cgroups(limits.Caps(GiB, 123, GiB))
    assert set(made) == {"memory", "pids"}
    pids = Path(made["pids"])
    assert (pids / "pids.max").read_text().strip() == "123"
    memory = Path(made["memory"])
    cap = memory / ("memory.max" if (memory / "memory.max").exists() else "memory.limit_in_bytes")
    assert int(cap.read_text()) == GiB
    limits.remove_cgroups(made)
    assert not pids.exists() and not memory.exists()


@needs_cgroups
def test_a_dead_runners_cgroups_are_removed_by_the_next_run():
    made = limits.make_cgroups(limits.Caps(GiB, 100, GiB))
    dead = 2**22 + 1  # above pid_max's largest value: no process has it
    stale = [Path(f).with_name(f"{limits.CGROUP_PREFIX}{dead}-0") for f in made.values()]
    for folder in stale:
        folder.mkdir(exist_ok=True)
    limits.remove_cgroups(made)
    limits.remove_cgroups(limits.make_cgroups(limits.Caps(GiB, 100, GiB)))
    assert [f for f in stale if f.exists()] == []


# An honest candidate that says where it runs: its OOM score and cgroups, its private
# folders and environment; and writes to the user's compile cache. One run per isolation
# setting serves the two tests below, which assert different facts of it.
OBSERVER = candidates.honest_with(
    at_start="    import os\n"
    "    print('oom_score_adj', open('/proc/self/oom_score_adj').read().strip())\n"
    "    for line in open('/proc/self/cgroup'):\n"
    "        print('cgroup', line.strip())\n"
    "    for key in ('HOME', 'TMPDIR', 'XDG_CACHE_HOME', 'TORCHINDUCTOR_CACHE_DIR'):\n"
    "        print(key, os.environ.get(key))\n"
    "    open(os.path.join(os.environ['TORCHINDUCTOR_CACHE_DIR'], 'kernel'), 'w').write('k')\n"
)


@dataclass
class Observed:
    out: Outcome
    run: Path  # its run folder
    log: str
    inductor_cache: Path  # the user's compile cache: shared by runs on purpose
    cgroups: list[Path]  # the run cgroups the candidate was in
    cgroups_left: list[Path]  # those of them that still exist right after the run


@pytest.fixture(scope="module", params=["off", pytest.param("on", marks=needs_isolation)])
def observed(request, tmp_path_factory, corpus) -> Observed:
    from conftest import make_research_repo

    folder = tmp_path_factory.mktemp(f"observed-{request.param}")
    cache = folder / "inductor-cache"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        env.setenv("XDG_CACHE_HOME", str(folder / "xdg"))
        repo = make_research_repo(folder / "research", corpus)
        out = attack(repo, OBSERVER, isolation=request.param)
    run = next((repo / ".autoresearch/runs").glob("*/run.log")).parent
    log = (run / "run.log").read_text()
    cgroups = run_cgroups(log)
    left = [folder for folder in cgroups if folder.exists()]
    return Observed(out, run, log, cache, cgroups, left)


@needs_cgroups
def test_a_run_leaves_no_cgroup_and_is_first_to_go_when_memory_runs_out(observed):
    assert observed.out.status == "keep", observed.out.reason
    assert "oom_score_adj 1000" in observed.log
    # v1: memory and pids; v2: one for both. Named for the runner (this process).
    assert len(observed.cgroups) in (1, 2), observed.log
    assert {c.name.split("-")[1] for c in observed.cgroups} == {str(os.getpid())}
    assert len({c.name for c in observed.cgroups}) == 1  # one run: one name in each hierarchy
    assert observed.cgroups_left == []


def test_without_cgroups_an_address_space_limit_caps_a_cpu_run(research_repo, monkeypatch):
    """Where no cgroup can be made the run still runs, under RLIMIT_AS (CPU runs only)."""
    monkeypatch.setattr(limits, "CGROUP_ROOT", research_repo / "no-cgroups-here")
    hog = candidates.honest_with(at_start="    hog = [bytearray(50 << 20) for _ in range(60)]\n")
    out = attack(research_repo, hog, **{"run.memory_gb": 2})
    assert out.status == "crash" and "MemoryError" in out.reason, out.reason
    out = attack(research_repo, candidates.HONEST, **{"run.memory_gb": 2})
    assert out.status == "keep", out.reason  # torch's ~1 GB of address space fits


def test_the_candidate_has_its_own_home_and_temporary_folder(observed):
    assert observed.out.status == "keep", observed.out.reason
    run, log = observed.run, observed.log
    assert f"HOME {run / 'home'}\n" in log and f"TMPDIR {run / 'tmp'}\n" in log
    assert "XDG_CACHE_HOME None" in log
    assert (observed.inductor_cache / "kernel").read_text() == "k"


def test_disk_usage_counts_blocks_and_each_file_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data").write_bytes(b"x" * 2**20)
    os.link(tmp_path / "sub" / "data", tmp_path / "again")  # the same blocks
    (tmp_path / "link").symlink_to("/usr")  # not followed
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(2**30)  # a gigabyte that takes no disk
    used = limits.disk_usage(tmp_path)
    assert 2**20 <= used < 2**20 + 64 * 1024
