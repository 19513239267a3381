"""Broken variants of a correct Python solution, to check that a verifier rejects them.

Used by the accuracy tests and the benchmark: a code verifier that passes reference solutions
must also fail them once an operator is flipped or a return is dropped. Pure (``ast`` only).
"""

from __future__ import annotations

import ast

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


def _target(tree: ast.Module, entry_point: str | None) -> ast.AST:
    """The function to mutate: ``entry_point`` if given, else the last top-level def/class."""
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    for node in defs:
        if node.name == entry_point:
            return node
    if not defs:
        raise ValueError("no function to mutate")
    return defs[-1]


def flip_operator(source: str, entry_point: str | None = None) -> str | None:
    """The first comparison negated (``<`` → ``>=``), else the first arithmetic operator swapped;
    None when the function has neither."""
    tree = ast.parse(source)
    target = _target(tree, entry_point)
    for node in ast.walk(target):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _FLIP:
            node.ops[0] = _FLIP[type(node.ops[0])]()
            return ast.unparse(tree)
    for node in ast.walk(target):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
            node.op = _BINOP[type(node.op)]()
            return ast.unparse(tree)
    return None


def drop_return(source: str, entry_point: str | None = None) -> str | None:
    """The function's last ``return <value>`` replaced by ``pass``; None when it has none."""
    tree = ast.parse(source)
    target = _target(tree, entry_point)
    returns = [n for n in ast.walk(target) if isinstance(n, ast.Return) and n.value is not None]
    if not returns:
        return None
    victim = max(returns, key=lambda n: (n.lineno, n.col_offset))  # the function's final return
    for parent in ast.walk(target):
        for _, value in ast.iter_fields(parent):
            if isinstance(value, list) and victim in value:
                value[value.index(victim)] = ast.Pass()
                return ast.unparse(ast.fix_missing_locations(tree))
    return None
