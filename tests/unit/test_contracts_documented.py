"""Every public definition of contracts/ says what it is: the contract is read more than
it is written, by services, by the reference and by people writing clients.

Public means a name without a leading underscore: each module, class, function and
method (properties included) needs a docstring, and each module-level constant or type
alias an attribute docstring (a string literal on the line after it).
"""

from __future__ import annotations

import ast
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _public(name: str) -> bool:
    return not name.startswith("_")


def _is_docstring(node: ast.stmt | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _undocumented(path: Path) -> list[str]:
    """``<path>:<line> <name>`` of each public definition in ``path`` without a docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(path.parents[1])
    missing = [f"{where}: the module"] if ast.get_docstring(tree) is None else []
    body = tree.body
    for i, node in enumerate(body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if not _public(node.name):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{where}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                missing += [
                    f"{where}:{member.lineno} {node.name}.{member.name}"
                    for member in node.body
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
                    and _public(member.name)
                    and ast.get_docstring(member) is None
                ]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name) and _public(t.id)]
            following = body[i + 1] if i + 1 < len(body) else None
            if names and not _is_docstring(following):
                missing += [f"{where}:{node.lineno} {name}" for name in names]
    return missing


def test_every_public_definition_of_the_contract_has_a_docstring() -> None:
    modules = sorted(CONTRACTS.glob("*.py"))
    assert modules, f"no modules found in {CONTRACTS}"
    missing = [entry for path in modules for entry in _undocumented(path)]
    assert not missing, "public definitions in contracts/ without a docstring:\n" + "\n".join(
        missing
    )


def test_the_docstring_check_finds_what_is_missing(tmp_path: Path) -> None:
    """The check itself: each kind of public definition, documented and not."""
    source = '''"""A module."""
DOCUMENTED = 1
"""It is."""
BARE = 2
_PRIVATE = 3


class Shape:
    """A class."""

    def area(self) -> float:
        return 0.0

    def _helper(self) -> None:
        pass


def named() -> None:
    pass


def _hidden() -> None:
    pass
'''
    path = tmp_path / "sample.py"
    path.write_text(source)
    assert [entry.split(" ", 1)[1] for entry in _undocumented(path)] == [
        "BARE",
        "Shape.area",
        "named",
    ]
    path.write_text(source.removeprefix('"""A module."""\n'))
    assert _undocumented(path)[0].endswith(": the module")
