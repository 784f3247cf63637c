"""The package as `pip install` gives it: a wheel built from this source tree, installed on its own (not the
editable install the suite otherwise runs), holds every module of `rmt`, its type marker and a working `rmt`
command. A subpackage left out of the build's package list, or a module that reads on import a file the wheel does
not carry, passes every other test here and breaks for every user who installs the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built without build isolation (the dev extra brings the setuptools it needs, so no network is
    used) and unpacked into a folder of its own, as pip installs it. It is built from a copy of the files a build
    reads: a build in the source tree would leave a build/ folder there, whose stale modules the next build ships."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "rmt", source / "rmt", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("rmt-*.whl")
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    return target


def run_installed(target: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` run by this interpreter with the installed wheel first on the path, from a folder holding no `rmt`
    source (the source tree's `rmt/` would otherwise be found first)."""
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)


def modules_under(root: Path) -> set[str]:
    """Every module of the `rmt` package under `root` (the source tree, or where the wheel was installed), dotted."""
    return {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for path in (root / "rmt").rglob("*.py")
    }


def test_wheel_holds_every_module_and_the_type_marker(installed):
    assert modules_under(installed) == modules_under(ROOT)
    assert (installed / "rmt" / "py.typed").is_file()
    # Nothing of the source tree but the package: tests and benchmarks stay out of site-packages.
    assert sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "rmt"]
    (record,) = installed.glob("rmt-*.dist-info")
    assert (record / "entry_points.txt").read_text().count("rmt = rmt.cli:main") == 1


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
import rmt
print(rmt.__file__)
names = [module.name for module in pkgutil.walk_packages(rmt.__path__, "rmt.")]
for name in names:
    if not name.endswith(".__main__"):  # importing one runs the command
        importlib.import_module(name)
print(" ".join(names))
"""


def test_installed_package_imports_every_module_and_runs_its_command(installed, tmp_path):
    imported = run_installed(installed, IMPORT_EVERY_MODULE, tmp_path)
    assert imported.returncode == 0, imported.stderr
    location, names = imported.stdout.splitlines()
    assert Path(location).is_relative_to(installed)
    assert {"rmt", *names.split()} == modules_under(ROOT)

    # The console script pip wrote, run by this interpreter (its first line names the one pip ran under).
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    help_text = subprocess.run(
        [sys.executable, str(installed / "bin" / "rmt"), "train", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--memory-tokens" in help_text.stdout


def test_wheel_metadata_names_the_license_and_dependencies(installed):
    (record,) = installed.glob("rmt-*.dist-info")
    metadata = (record / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: torch>=2.6" in metadata
    assert (record / "licenses" / "LICENSE").is_file()
    assert "Root-Is-Purelib: true" in (record / "WHEEL").read_text()
