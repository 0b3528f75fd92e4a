"""setup.py's import rewrite: what moves contracts and services under domed in a wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def setup_module_() -> ModuleType:
    spec = importlib.util.spec_from_file_location("domed_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewrite = setup_module_().rewrite_imports


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from contracts import subjects\n", "from domed.contracts import subjects\n"),
        ("from services.cli.main import main\n", "from domed.services.cli.main import main\n"),
        ("import contracts.events as ev\n", "import domed.contracts.events as ev\n"),
        (
            "def f():\n    from services.x import (\n        a,\n        b,\n    )\n",
            "def f():\n    from domed.services.x import (\n        a,\n        b,\n    )\n",
        ),
        ("from servicesx import y\nimport nats\n", "from servicesx import y\nimport nats\n"),
        ("from .relative import z\n", "from .relative import z\n"),
        ("from domed.errors import DomedError\n", "from domed.errors import DomedError\n"),
        ('"""\nfrom contracts import shown_in_a_docstring\n"""\n', None),
    ],
)
def test_imports_of_contracts_and_services_move_under_domed(
    source: str, expected: str | None
) -> None:
    assert rewrite(source) == (source if expected is None else expected)


def test_a_bare_import_that_would_bind_another_name_is_refused() -> None:
    with pytest.raises(ValueError, match="import ... as"):
        rewrite("import services.cli.main\n")


def test_every_module_of_the_tree_can_be_rewritten() -> None:
    for top in ("contracts", "services", "domed"):
        for path in (ROOT / top).rglob("*.py"):
            rewrite(path.read_text("utf-8"), str(path))
