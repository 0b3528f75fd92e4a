"""How the source tree becomes an installed package (the metadata is in pyproject.toml).

The source tree holds three top-level packages: ``domed`` (the Python client), and
``contracts`` and ``services``, which import each other by those names. Installed as
they are, ``contracts`` and ``services`` would be top-level names in site-packages and
clash with any program's own ``services`` package. So a built wheel holds the one
package ``domed``: ``contracts/`` becomes ``domed/contracts/``, ``services/``
``domed/services/``, and every ``import``/``from`` of ``contracts`` or ``services`` in
the copied modules is rewritten to ``domed.contracts`` / ``domed.services``, the way
pip rewrites the imports of the packages it vendors. The rewrite is checked: a built
module that still imports a top-level ``contracts`` or ``services`` fails the build.

An editable install (``pip install -e .``, for development) exposes the tree as it is,
three top-level packages, so the tests, ``just`` and ``python -m services.cli.main`` run
the very files in the repository. docs/client.md explains the choice.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = "domed"
MAPPED = ("contracts", "services")
"""The source tree's top-level packages that live under ``domed`` once installed."""

HERE = Path(__file__).resolve().parent


DATA = {"contracts": ["schemas/*.json", "asyncapi.json"]}
"""Files other than modules that are part of a package: the generated JSON Schemas and
AsyncAPI document."""


def _source_packages() -> list[str]:
    return find_packages(where=str(HERE), include=[ROOT, f"{ROOT}.*"] + [f"{m}*" for m in MAPPED])


def _installed_packages() -> list[str]:
    names = find_packages(where=str(HERE), include=[ROOT, f"{ROOT}.*"])
    for p in _source_packages():
        if p.split(".")[0] in MAPPED:
            names.append(f"{ROOT}.{p}")
    return names


_IMPORT = re.compile(rf"(from|import)(\s+)({'|'.join(MAPPED)})(?=[\s.])")


def rewrite_imports(source: str, filename: str = "<module>") -> str:
    """``source`` with each absolute import of a mapped package moved under ``domed``.

    Only import statements are touched (found with ``ast``, so a docstring that shows an
    import stays as it is). ``import services.x`` without ``as`` would bind the name
    ``domed`` instead of ``services``, so it is refused rather than rewritten.
    """
    tree = ast.parse(source, filename)
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mapped = node.module.split(".")[0] in MAPPED
        elif isinstance(node, ast.Import):
            mapped = any(a.name.split(".")[0] in MAPPED for a in node.names)
            if mapped and any(a.asname is None for a in node.names):
                raise ValueError(
                    f"{filename}:{node.lineno}: write `from ... import ...` or `import ... as`"
                    " for contracts and services, so the import can move under domed"
                )
        else:
            continue
        if not mapped:
            continue
        i, col = node.lineno - 1, node.col_offset
        line = lines[i]
        new, n = _IMPORT.subn(rf"\1\2{ROOT}.\3", line[col:], count=1)
        if n != 1:
            raise ValueError(f"{filename}:{node.lineno}: cannot rewrite {line.strip()!r}")
        lines[i] = line[:col] + new
    out = "".join(lines)
    _check_rewritten(out, filename)
    return out


def _check_rewritten(source: str, filename: str) -> None:
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in MAPPED:
                raise ValueError(f"{filename}:{node.lineno}: still imports top-level {name}")


class BuildPy(build_py):
    """Copies the modules as usual, then moves their imports under ``domed``."""

    def build_module(self, module: str, module_file: str, package: str) -> tuple[str, bool]:
        outfile, copied = super().build_module(module, module_file, package)
        path = Path(outfile)
        path.write_text(rewrite_imports(path.read_text("utf-8"), module_file), "utf-8")
        return outfile, copied


class EditableWheel(editable_wheel):
    """A development install: the source tree's own three top-level packages, unmapped."""

    def run(self) -> None:
        self.distribution.packages = _source_packages()
        self.distribution.package_dir = {}
        self.distribution.package_data = DATA
        super().run()


if __name__ == "__main__":  # as pip's build backend runs it; a test imports the rewrite
    setup(
        packages=_installed_packages(),
        package_dir={f"{ROOT}.{top}": top for top in MAPPED},
        package_data={f"{ROOT}.{p}": files for p, files in DATA.items()},
        cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel},
    )
