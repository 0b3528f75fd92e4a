"""What installing domed puts into site-packages: a wheel built from the tree with pip,
installed, and run from there with nothing of the source tree on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "domed", "contracts", "services")

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import domed
names = [m.name for m in pkgutil.walk_packages(domed.__path__, "domed.")]
for name in names:
    importlib.import_module(name)
outside = sorted(
    n for n, m in sys.modules.items()
    if n.split(".")[0] in ("contracts", "services")
    or n.split(".")[0] == "domed" and not (getattr(m, "__file__", None) or "").startswith(sys.argv[1])
)
print(len(names), outside)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project, built into a wheel by pip and installed with ``pip install --target``."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(tmp / "wheels"), str(src)],
        check=True,
        cwd=tmp,
        timeout=600,
    )
    (wheel,) = (tmp / "wheels").glob("domed-*.whl")
    site = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp,
        timeout=600,
    )
    return site


def run_installed(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python with the install and the dependencies on its path, and no ``site``
    processing, so no editable install of the source tree can answer an import."""
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{deps}"}
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=site.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_only_domed_goes_into_site_packages(installed: Path) -> None:
    top = sorted(p.name for p in installed.iterdir() if p.name != "bin")
    assert top[0] == "domed" and all(name.startswith("domed") for name in top), top
    assert not (installed / "services").exists() and not (installed / "contracts").exists()
    assert (installed / "domed" / "contracts" / "schemas" / "manifest.json").is_file()


def test_every_installed_module_imports_with_no_top_level_services_or_contracts(
    installed: Path,
) -> None:
    r = run_installed(installed, "-c", IMPORT_EVERYTHING, str(installed))
    assert r.returncode == 0, r.stderr
    count, outside = r.stdout.split(" ", 1)
    assert int(count) > 50 and outside.strip() == "[]", r.stdout


def test_the_installed_command_runs(installed: Path) -> None:
    r = run_installed(installed, str(installed / "bin" / "domed"), "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: domed"), r.stderr
    r = run_installed(installed, "-m", "domed", "tools", "validate", str(ROOT / "ssot"))
    assert r.returncode == 0 and "demo.echo" in r.stdout, r.stderr
    r = run_installed(installed, "-c", "import domed; print(domed.connect.__module__)")
    assert r.stdout.strip() == "domed.client", r.stderr
