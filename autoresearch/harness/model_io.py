"""Hand-over format of a trained model: an exported graph, without pickle.

`torch.export.save/load` unpickle parts of the archive, and the hand-over
folder is written by untrusted code; loading it must never run code. So the
graph goes into `model.json` (torch.export's JSON serializer) and every tensor
into `weights.safetensors`; the evaluator rebuilds the program from those two
and nothing else.

Rebuilding is not enough: the evaluator then *runs* the graph, outside the
candidate's sandbox, and a graph can call any ATen op, including ones that read
or write files (`aten.from_file`), draw random numbers or mutate their inputs.
So before anything is deserialised, `check_graph` reads the JSON and refuses
every op that is not on a reviewed list of side-effect-free tensor ops.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.harness.untrusted import check_regular, read_untrusted

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

GRAPH_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
GRAPH_BYTES = 2**30  # far more than any graph's JSON; a bigger file is not a graph

# The ATen ops a hand-over graph may call: pure functions of their tensor arguments. Chosen as
# the ops the baselines export to (tests/test_model_io.py exports each and checks it against
# this list), the building blocks of a GPT (attention, norms, activations, rotary embeddings
# via cos/sin/cat/slice, soft-capping via tanh) and their plain arithmetic, shape and reduction
# relatives; reviewed one by one. Left out on purpose: anything that touches files or storages
# (from_file, ...), random numbers (rand*, bernoulli, dropout, multinomial, ...), uninitialised
# memory (empty*, which may hold the evaluator's earlier tensors), raw strides (as_strided),
# devices, other processes (c10d, ...) and every in-place or out= form: an op is named here
# without its overload, and an overload whose schema writes to an argument is refused anyway.
PURE_OPS = frozenset(
    "aten::" + name
    for name in """
    abs add addcdiv addcmul atan atan2 ceil clamp clamp_max clamp_min cos cosh div erf exp exp2
    expm1 floor fmod frac lerp log log10 log1p log2 logaddexp maximum minimum mul neg pow
    reciprocal remainder round rsqrt sigmoid sign sin sinh sqrt square sub tan tanh trunc where
    eq ne lt le gt ge isfinite isinf isnan logical_and logical_or logical_not logical_xor
    bitwise_and bitwise_or bitwise_xor bitwise_not __and__ __or__ __xor__ masked_fill floor_divide
    sum mean amax amin max min argmax argmin prod var var_mean std std_mean norm
    linalg_vector_norm logsumexp cumsum cumprod softmax _softmax log_softmax _log_softmax any all
    sort topk
    view reshape _unsafe_view view_as expand expand_as permute transpose t unsqueeze squeeze
    flatten unflatten movedim slice select narrow split split_with_sizes chunk unbind cat stack
    contiguous clone alias detach repeat repeat_interleave roll flip tril triu diagonal pad
    constant_pad_nd index_select gather index index_put scatter scatter_add one_hot fill
    zeros ones full arange eye zeros_like ones_like full_like scalar_tensor lift_fresh_copy
    new_zeros new_ones new_full view_as_complex view_as_real polar complex
    to _to_copy type_as _assert_tensor_metadata
    linear mm bmm matmul addmm baddbmm outer dot einsum conv1d conv2d
    embedding layer_norm native_layer_norm rms_norm group_norm gelu relu silu leaky_relu
    softplus elu hardtanh mish scaled_dot_product_attention
    """.split()  # noqa: SIM905 - a reviewed list reads best as words
)
# Arguments that make an allowed op impure: attention dropout draws random numbers.
IMPURE_ARGUMENTS = {"aten::scaled_dot_product_attention": ("dropout_p", (0, 0.0))}
# Higher-order ops that only run their subgraphs (checked like the graph itself) under a
# numeric mode: autocast on CUDA, grad mode, and FlexAttention with its score and mask functions
# (which torch 2.13 cannot serialize to JSON yet: such a hand-over fails before it gets here).
HIGHER_ORDER_OPS = frozenset({"wrap_with_autocast", "wrap_with_set_grad_enabled", "flex_attention"})
# Python callables the serializer writes for multi-output ops: picking an output.
PYTHON_TARGETS = frozenset({"_operator.getitem"})
# What a graph's inputs and outputs may be: no input, buffer or parameter is written back, and
# no script object (a C++ class with methods of its own) or effect token comes in.
INPUT_KINDS = frozenset({"parameter", "buffer", "tensor_constant", "user_input"})
OUTPUT_KINDS = frozenset({"user_output"})
# Keys of the JSON that only symbolic (dynamic-shape) graphs, operators passed as values or
# script objects use; the hand-over is exported at one fixed shape, and the deserializer parses
# symbolic expressions with sympy (which evaluates strings) and guards as Python code.
STATIC_ONLY_KEYS = ("as_sym_", "as_custom_obj", "as_operator", "sym_", "custom_obj_")


class ForbiddenGraph(ValueError):
    """The hand-over graph does something other than side-effect-free tensor math."""


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


def check_graph(graph: dict) -> None:
    """Refuse a serialized graph (the parsed `model.json`) that is not pure tensor math.

    Runs on the JSON, before deserialising: the deserializer resolves a target such as
    `torch.load` to that Python function, so no name may reach it unchecked. Nodes are found
    wherever they are (any object with a `target` and `inputs`), subgraphs of the
    higher-order ops included.
    """
    if graph.get("guards_code") or graph.get("range_constraints"):
        raise ForbiddenGraph("the hand-over graph has shape guards: export at one fixed shape")
    signature = graph.get("graph_module", {}).get("signature", {})
    for specs, allowed in ((signature.get("input_specs", []), INPUT_KINDS),
                           (signature.get("output_specs", []), OUTPUT_KINDS)):  # fmt: skip
        for spec in specs:
            kind = next(iter(spec), "no")
            if kind not in allowed:
                side = "output" if allowed is OUTPUT_KINDS else "input"
                raise ForbiddenGraph(
                    f"the hand-over graph has a {kind} {side}, which the evaluator does not"
                    " allow (nothing may write back to its inputs or state)"
                )
    for node in _nodes(graph):
        _check_target(str(node["target"]), node.get("inputs") or [])


def _nodes(value: object):
    """Every graph node in a JSON value, and every static-only key as a refusal."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith(STATIC_ONLY_KEYS) and item:
                raise ForbiddenGraph(
                    f"the hand-over graph uses {key}, which the evaluator does not allow"
                    " (export one fixed shape, tensors only)"
                )
            yield from _nodes(item)
        if "target" in value and isinstance(value.get("inputs"), list):
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def _check_target(target: str, inputs: list) -> None:
    import torch

    parts = target.split(".")
    hop = parts[:3] == ["torch", "ops", "higher_order"] and len(parts) == 4
    if target in PYTHON_TARGETS or (hop and parts[3] in HIGHER_ORDER_OPS):
        return
    shown = ".".join(parts[2:4]) if target.startswith("torch.ops.") else target[:80]
    aten = parts[:3] == ["torch", "ops", "aten"] and len(parts) == 5
    packet = getattr(torch.ops.aten, parts[3], None) if aten else None
    op = getattr(packet, parts[4], None) if packet is not None else None
    op = op if isinstance(op, torch._ops.OpOverload) else None
    if op is not None and op._schema.is_mutable:
        raise ForbiddenGraph(
            f"the hand-over graph calls {'.'.join(parts[2:])}, which writes to its arguments,"
            " and the evaluator runs only side-effect-free tensor ops: write forward without"
            " in-place ops (x = x.masked_fill(m, v), not x.masked_fill_(m, v) or x[m] = v)"
        )
    if op is None or f"aten::{parts[3]}" not in PURE_OPS:
        raise ForbiddenGraph(
            f"the hand-over graph calls {shown}, which is not allowed in the evaluator"
            " (only side-effect-free tensor ops are)"
        )
    argument, allowed = IMPURE_ARGUMENTS.get(f"aten::{parts[3]}", (None, ()))
    for given in inputs:
        value = next(iter((given.get("arg") or {}).values()), None)
        if given.get("name") == argument and value not in allowed:
            raise ForbiddenGraph(
                f"the hand-over graph calls {shown} with {argument} = {value!r}, which draws"
                " random numbers (not allowed in the evaluator)"
            )


def warm_up() -> None:
    """Import what `load_exported` needs ahead of time: torch's export deserialiser takes over
    a second to import on a CPU, which the evaluator pays while the candidate trains."""
    import safetensors.torch  # noqa: F401
    from torch._export.serde import serialize  # noqa: F401


def load_exported(folder: Path, device: str) -> ExportedProgram:
    """Rebuild the program from JSON and safetensors only; raises on anything malformed, and
    ForbiddenGraph on a graph that `check_graph` refuses, before deserialising anything."""
    from safetensors import safe_open
    from torch._export.serde import serialize
    from torch.nn import Parameter

    state_dict, constants = {}, {}
    check_regular(folder / WEIGHTS_FILE)  # not a link to the validation tokens, not a FIFO
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
    graph = read_untrusted(folder / GRAPH_FILE, GRAPH_BYTES)
    check_graph(json.loads(graph))
    artifact = serialize.SerializedArtifact(graph, state_dict, constants, b"")
    return serialize.deserialize(artifact)
