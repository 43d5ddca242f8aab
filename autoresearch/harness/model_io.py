"""Hand-over format of a trained model: an exported graph, without pickle.

`torch.export.save/load` unpickle parts of the archive, and the hand-over
folder is written by untrusted code; loading it must never run code. So the
graph goes into `model.json` (torch.export's JSON serializer) and every tensor
into `weights.safetensors`; the evaluator rebuilds the program from those two
and nothing else.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

GRAPH_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"


def precision(device: str) -> AbstractContextManager:
    """The numerics of evaluation: bf16 autocast on CUDA, full precision elsewhere.

    The model is exported under the same context it is evaluated under: a graph
    traced in fp32 records every `.float()` in `forward` with a dtype check, which
    then fails when the evaluator runs it under autocast.
    """
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def export(module: torch.nn.Module, example: torch.Tensor, device: str) -> ExportedProgram:
    import torch

    with torch.no_grad(), precision(device):
        return torch.export.export(module, (example,))


def save_exported(program: ExportedProgram, folder: Path) -> None:
    from safetensors.torch import save_file
    from torch._export.serde import serialize
    from torch.nn import Parameter

    folder.mkdir(parents=True, exist_ok=True)
    artifact = serialize.serialize(
        program,
        serialize_state_dict=False,
        serialize_constants=False,
        serialize_example_inputs=False,
    )
    tensors = {f"p.{k}": v for k, v in program.state_dict.items()}
    tensors |= {f"c.{k}": v for k, v in program.constants.items()}
    parameters = [k for k, v in program.state_dict.items() if isinstance(v, Parameter)]
    # clone(): tied weights share storage, which safetensors refuses to write twice
    save_file(
        {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()},
        str(folder / WEIGHTS_FILE),
        metadata={"parameters": json.dumps(parameters)},
    )
    (folder / GRAPH_FILE).write_bytes(artifact.exported_program)


def load_exported(folder: Path, device: str) -> ExportedProgram:
    """Rebuild the program from JSON and safetensors only; raises on anything malformed."""
    from safetensors import safe_open
    from torch._export.serde import serialize
    from torch.nn import Parameter

    state_dict, constants = {}, {}
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device=device) as f:
        parameters = set(json.loads((f.metadata() or {}).get("parameters", "[]")))
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            kind, name = key.split(".", 1)
            tensor = f.get_tensor(key)
            if kind == "p":
                state_dict[name] = (
                    Parameter(tensor, requires_grad=False) if name in parameters else tensor
                )
            else:
                constants[name] = tensor
    # Empty bytes, not a tuple: "no example inputs", and never a torch.load.
    graph = (folder / GRAPH_FILE).read_bytes()
    artifact = serialize.SerializedArtifact(graph, state_dict, constants, b"")
    return serialize.deserialize(artifact)
