"""Slots: the places where experiments run at the same time (`run.slots`, `--slots`).

With one slot (the default) an experiment runs as it always has: on every core and
the device torch picks. With N slots, N experiments run at once, and each slot gets
its own part of the machine, so that they do not slow each other down more than they
must:

  - with CUDA, slot i sees only GPU i (`CUDA_VISIBLE_DEVICES`): one experiment per GPU;
  - each slot gets an equal share of the cores: its processes (the candidate and its
    evaluator) are pinned to them, and torch starts as many threads as the share has
    (`OMP_NUM_THREADS`; an explicit `torch.set_num_threads` in train.py still wins).
    More threads than cores make every one of them wait: on a loaded 2-core machine two
    threads trained at 0.13x the speed of one;
  - the default caps on memory and disk (`run.memory_gb = 0`, `run.disk_gb = 0`) are the
    slot's share of what the machine has free.

Where the cores or GPUs are too few for the slots asked for, that is an error with the
number that would fit. A Ray cluster places experiments itself (`autoresearch.ray_runner`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from autoresearch.config import Config
from autoresearch.errors import UserError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch sizes its pools from


@dataclass(frozen=True)
class Slot:
    """One place to run an experiment: what its processes see and where they run."""

    index: int = 0
    env: dict[str, str] = field(default_factory=dict)  # set in the candidate's and evaluator's
    cpus: tuple[int, ...] = ()  # the cores its processes are pinned to; () = not pinned
    label: str = ""  # where a record says it ran: "slot 2 (GPU 2)"; "" for the one slot
    share: float = 1.0  # its part of the machine's memory and disk, for the default caps
    hidden: tuple[str, ...] = ()  # more that the sandbox hides from the candidate (Ray's files)


WHOLE_MACHINE = Slot()  # the one slot of `run.slots = 1`: nothing set, nothing pinned


def plan_slots(count: int, cores: list[int], gpus: list[str] | None) -> list[Slot]:
    """`count` slots over `cores` (the CPUs this process may use) and, for CUDA, `gpus`
    (the ids CUDA_VISIBLE_DEVICES may name); None: no GPU. Each slot gets
    len(cores) // count cores, and GPU i."""
    if count == 1:
        return [WHOLE_MACHINE]
    if gpus is not None and count > len(gpus):
        raise UserError(
            f"{count} slots, but {len(gpus)} GPU{'s' * (len(gpus) != 1)} visible: one"
            f" experiment runs per GPU, so use --slots {len(gpus)} or fewer"
        )
    if count > len(cores):
        raise UserError(
            f"{count} slots, but {len(cores)} core{'s' * (len(cores) != 1)} to share: use"
            f" --slots {len(cores)} or fewer"
        )
    share = len(cores) // count
    slots = []
    for i in range(count):
        env = dict.fromkeys(THREAD_VARIABLES, str(share))
        label = f"slot {i}"
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            label += f" (GPU {gpus[i]})"
        mine = tuple(cores[i * share : (i + 1) * share])
        slots.append(Slot(i, env, mine, label, 1 / count))
    return slots


def slots_for(config: Config) -> list[Slot]:
    """The slots of `config.run.slots`: this machine's shares, or (Ray) just that many
    experiments in flight, which Ray places on the cluster's GPUs itself."""
    if config.run.executor == "ray":
        return [Slot(i) for i in range(config.run.slots)]
    from autoresearch.harness.context import resolve_device

    return machine_slots(config.run.slots, resolve_device(config.run.device))


def machine_slots(count: int, device: str) -> list[Slot]:
    """`plan_slots` for this machine, running on `device` (resolved: cuda, cpu or mps)."""
    if count == 1:
        return [WHOLE_MACHINE]
    gpus = visible_gpus() if device == "cuda" else None
    return plan_slots(count, sorted(os.sched_getaffinity(0)), gpus)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [g.strip() for g in named.split(",") if g.strip()]
    import torch  # only asked with CUDA and more than one slot

    return [str(i) for i in range(torch.cuda.device_count())]
