"""Static checks on a proposed train.py, before any compute is spent on it.

`validate_proposal` answers with a one-line reason to reject (the candidate is
recorded as `invalid` with it) or None. These checks are a cheap first line:
the score itself is protected by the harness, which evaluates the handed-over
model in a separate process whatever the source says.

`source_hash` identifies a train.py up to comments, docstrings and
formatting, so re-wrapping lines or editing a comment is a duplicate, not a
new experiment.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from collections.abc import Callable, Collection

from autoresearch.syntax import compile_tree, parse

MAX_SOURCE_BYTES = 200_000  # a real train.py is ~30 KB; more is a runaway reply
# Normalised hashes remembered per source text: a parent's is asked for by every proposal made
# from it, and a proposal's by validation, the engine and the ledger (hashing a real train.py
# takes ~50 ms: parse, strip, unparse).
HASHES_KEPT = 256
HARNESS = "autoresearch.harness"
HANDOVER = "handover"
# Parts of the harness a candidate must never touch: the scorer, the data it scores on, and
# the machinery that guards both.
FORBIDDEN_HARNESS_PARTS = frozenset({
    "evaluate", "prepare", "cache", "sources", "download", "fingerprint", "sandbox", "guard",
    "model_io",
})  # fmt: skip
SEED_WORD = "seed"  # compared case-insensitively: SEED, TRAIN_SEED, manual_seed, seed=
# A dotted name inside a string that reaches past the harness (importlib, sys.modules), or
# the validation split's file: a candidate never needs to name either.
FORBIDDEN_STRING = re.compile(
    r"\bautoresearch\.(?!harness\b)\w+|\bautoresearch\.harness\.(?:"
    + "|".join(sorted(FORBIDDEN_HARNESS_PARTS))
    + r"|_\w+)\b|\bval\.npy\b"
)

ProtectedCheck = Callable[[str], "str | None"]


def validate_proposal(
    parent_source: str,
    new_source: str,
    seen_hashes: Collection[str],
    protected_check: ProtectedCheck | None = None,
) -> str | None:
    """Why `new_source` must not be trained (one line), or None when it may be.

    `seen_hashes` holds `source_hash` of every train.py already evaluated;
    `protected_check(new_source)` may add a check of its own (for example
    that nothing but train.py changed in a worktree) and returns a reason or None.
    """
    if not isinstance(new_source, str) or not new_source.strip():
        return "the proposal is an empty train.py"
    size = len(new_source.encode("utf-8", errors="replace"))
    if size > MAX_SOURCE_BYTES:
        return f"train.py is {size // 1000} KB, over the {MAX_SOURCE_BYTES // 1000} KB limit"
    if protected_check is not None:
        reason = protected_check(new_source)
        if reason:
            return reason
    try:
        tree = parse(new_source, "train.py")
        compile_tree(tree, "train.py")  # catches what parses but cannot compile
    except SyntaxError as e:
        return f"train.py does not compile: line {e.lineno}: {e.msg}"
    except ValueError as e:  # null bytes
        return f"train.py does not compile: {e}"
    reason = check_harness_contract(tree)
    if reason:
        return f"breaks the harness contract: {reason}"
    if new_source == parent_source:
        return "identical to the parent"
    new_hash = source_hash(new_source)
    if new_hash == source_hash(parent_source):
        return "only comments, docstrings or formatting differ from the parent"
    if new_hash in seen_hashes:
        return "duplicate of an already-evaluated train.py"
    try:
        parent_digest = _seedless_digest(parent_source)
    except SyntaxError:
        return None  # a broken parent: any parsable proposal is a real change
    if _seedless_digest(new_source) == parent_digest:
        return "only the random seed changed; change the training instead"
    return None


@functools.lru_cache(maxsize=HASHES_KEPT)
def _seedless_digest(source: str) -> str:
    """The digest of `source` normalised with every seed value blanked."""
    return _digest(_normalised(parse(source), mask_seeds=True))


@functools.lru_cache(maxsize=HASHES_KEPT)
def source_hash(source: str) -> str:
    """sha256 of `source` without comments, docstrings and formatting."""
    try:
        tree = parse(source)
    except (SyntaxError, ValueError):
        return hashlib.sha256(b"unparsable\0" + source.encode("utf-8", "replace")).hexdigest()
    return _digest(_normalised(tree))


def check_harness_contract(tree: ast.Module) -> str | None:
    """Why `tree` breaks the harness contract, or None.

    It must import `autoresearch.harness` and call `harness.handover(...)`,
    and must reach nothing else of autoresearch and no private harness name.
    """
    modules: set[str] = set()  # names bound to the harness module
    handovers: set[str] = set()  # names bound to harness.handover itself
    roots: set[str] = set()  # names bound to the `autoresearch` package
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                reason = _forbidden_module(alias.name)
                if reason:
                    return f"line {node.lineno} imports {alias.name}; {reason}"
                if alias.asname and alias.name == HARNESS:
                    modules.add(alias.asname)
                elif not alias.asname and alias.name.split(".")[0] == "autoresearch":
                    roots.add("autoresearch")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                reason = _forbidden_module(full) or _forbidden_module(node.module)
                if reason:
                    return f"line {node.lineno} imports {full}; {reason}"
                bound = alias.asname or alias.name
                if alias.name == "*" and node.module == HARNESS:
                    handovers.add(HANDOVER)
                elif full == HARNESS:
                    modules.add(bound)
                elif full == f"{HARNESS}.{HANDOVER}":
                    handovers.add(bound)
    if not (modules or handovers or roots):
        return "it no longer imports the harness; keep `from autoresearch import harness`"
    docstrings = {id(s.value) for s in ast.walk(tree) if _is_bare_string(s)}
    calls_handover = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted:
                head, _, rest = dotted.partition(".")
                if head in modules:
                    dotted = f"{HARNESS}.{rest}"
                if head in modules or head in roots:
                    reason = _forbidden_module(dotted)
                    if reason:
                        return f"line {node.lineno} uses {dotted}; {reason}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found = FORBIDDEN_STRING.search(node.value)
            if found and id(node) not in docstrings:  # a docstring may talk about anything
                return (
                    f"line {node.lineno} names {found.group()}; train.py may use the public"
                    " autoresearch.harness and its training data only"
                )
        elif isinstance(node, ast.Call):
            calls_handover = calls_handover or _is_handover(node.func, modules, handovers)
    if not calls_handover:
        return "it no longer calls harness.handover(model); the model must be handed over"
    return None


def _forbidden_module(dotted: str) -> str | None:
    """Why the dotted name `dotted` is out of a candidate's reach, or None."""
    parts = dotted.split(".")
    if parts[0] != "autoresearch" or len(parts) == 1:
        return None
    if parts[1] != "harness":
        return "only autoresearch.harness is available to train.py"
    if len(parts) > 2 and parts[2] in FORBIDDEN_HARNESS_PARTS:
        return "the evaluation, its data and its guards are the harness's, not the candidate's"
    if any(part.startswith("_") for part in parts[2:]):
        return "private harness names are not part of the contract"
    return None


def _dotted(node: ast.expr) -> str | None:
    """'a.b.c' for an attribute chain on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _is_handover(func: ast.expr, modules: set[str], handovers: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in handovers
    dotted = _dotted(func) if isinstance(func, ast.Attribute) else None
    if not dotted:
        return False
    head, _, rest = dotted.partition(".")
    return (head in modules and rest == HANDOVER) or dotted == f"{HARNESS}.{HANDOVER}"


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def _digest(tree: ast.Module) -> str:
    return hashlib.sha256(ast.unparse(tree).encode("utf-8")).hexdigest()


def _normalised(tree: ast.Module, mask_seeds: bool = False) -> ast.Module:
    """A copy of `tree` without docstrings; with `mask_seeds`, every seed value blanked."""
    tree = _StripDocstrings().visit(_copy(tree))
    if mask_seeds:
        tree = _MaskSeeds().visit(tree)
    return ast.fix_missing_locations(tree)


def _copy(tree: ast.Module) -> ast.Module:
    # ast trees are mutable; the caller's tree must survive normalisation.
    return parse(ast.unparse(tree))


class _StripDocstrings(ast.NodeTransformer):
    """Drops bare string statements (docstrings and string 'comments')."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list):
            body[:] = [s for s in body if not _is_bare_string(s)]
            if not body and not isinstance(node, ast.Module):
                body.append(ast.Pass())  # a def whose body was only a docstring
        return node


def _is_bare_string(stmt: ast.AST) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


class _MaskSeeds(ast.NodeTransformer):
    """Blanks values assigned to *seed* names and the arguments of *seed* calls."""

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        if any(_is_seed(_target_name(t)) for t in node.targets):
            node.value = ast.Constant(0)
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None and _is_seed(_target_name(node.target)):
            node.value = ast.Constant(0)
        return self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        if _is_seed(_target_name(node.target)):
            node.value = ast.Constant(0)
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _is_seed(_target_name(node.func)):  # torch.manual_seed(42), random.seed(1)
            node.args, node.keywords = [], []
        for keyword in node.keywords:
            if _is_seed(keyword.arg):  # default_rng(seed=3)
                keyword.value = ast.Constant(0)
        return self.generic_visit(node)


def _target_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_seed(name: str | None) -> bool:
    return name is not None and SEED_WORD in name.lower()
