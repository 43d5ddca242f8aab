"""Python's parser, safe to call from several threads at once.

CPython 3.11 keeps the AST constructor's recursion depth in state shared by all threads:
two threads that parse at once can fail with `SystemError: AST constructor recursion depth
mismatch` (python/cpython#106905). Proposers parse train.py in their threads while the
engine validates other proposals, so every parse of ours, and every compile of a tree,
takes one lock. A parse takes about a millisecond: nobody waits for long.
"""

from __future__ import annotations

import ast
import threading
from types import CodeType

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """`ast.parse`, one thread at a time."""
    with _LOCK:
        return ast.parse(source, filename, mode)


def compile_tree(tree: ast.AST, filename: str) -> CodeType:
    """`compile` of a parsed module, one thread at a time: what parses but cannot compile
    (a `return` outside a function, say) raises SyntaxError here."""
    with _LOCK:
        return compile(tree, filename, "exec")
