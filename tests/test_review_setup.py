"""The set-up path: what ``make install`` (and so ``make demo`` and ``make test``) does with the Python it
finds and with a .venv left behind, and that .ci/run runs the README's test command.

Each test runs the real Makefile in a temporary folder (a copy of it with pyproject.toml and README.md),
with stand-in interpreters where a real one of that kind is not on the machine; nothing is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _project(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, work / name)
    return work


def _stand_in(tmp_path: Path, name: str, site: dict[str, str]) -> Path:
    """An interpreter that runs ``-c`` code on this Python with the modules of ``site`` put first (a
    sitecustomize, a shadowing package), and refuses anything else (``-m venv``), so that a Makefile
    that goes on to make a venv with it fails at once."""
    lib = tmp_path / f"{name}-lib"
    for relative, text in site.items():
        (lib / relative).parent.mkdir(parents=True, exist_ok=True)
        (lib / relative).write_text(text)
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then PYTHONPATH={lib} exec {sys.executable} "$@"; fi\n'
                      'echo "stand-in interpreter: refused $*" >&2\nexit 1\n')
    script.chmod(0o755)
    return script


def _make(work: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # PIP_NO_INDEX: whatever pip runs here looks at no registry
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env["PIP_NO_INDEX"] = "1"
    return subprocess.run(["make", "--no-print-directory", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_python_older_than_requires_python_is_named_before_anything_is_made(tmp_path):
    work = _project(tmp_path)
    old = _stand_in(tmp_path, "python-old",
                    {"sitecustomize.py": "import sys\nsys.version_info = (3, 9, 18, 'final', 0)\n"})
    result = _make(work, "install", f"PYTHON={old}")
    assert result.returncode != 0
    assert "needs Python >= 3.10" in result.stderr and "3.9" in result.stderr, result.stderr
    assert not (work / ".venv").exists()  # no venv of the old Python left for the next run to trust


def test_a_python_without_its_venv_module_gets_the_package_to_install(tmp_path):
    work = _project(tmp_path)
    bare = _stand_in(tmp_path, "python-bare", {
        "ensurepip/__init__.py": "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n"})
    result = _make(work, "install", f"PYTHON={bare}")
    assert result.returncode != 0
    assert "python3-venv" in result.stderr, result.stderr
    assert not (work / ".venv").exists()


def test_a_missing_python_is_named(tmp_path):
    work = _project(tmp_path)
    result = _make(work, "install", "PYTHON=python3.harstream-none")
    assert result.returncode != 0 and "no python3.harstream-none" in result.stderr, result.stderr


def _old_interpreters() -> list[str]:
    found = sorted(Path.home().glob(".pyenv/versions/3.[6-9].*/bin/python3.[6-9]"))
    found += [Path(p) for p in (shutil.which(f"python3.{k}") for k in (9, 8, 7)) if p]
    for path in found:
        try:
            answer = subprocess.run([str(path), "-c", "import sys, venv; print(sys.version_info < (3, 10))"],
                                    capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.stdout.strip() == "True":
            return [str(path)]
    return []


@pytest.mark.parametrize("left", ["dangling", "older"])
def test_a_venv_whose_python_is_gone_or_too_old_is_made_anew(tmp_path, left):
    """A .venv whose interpreter was removed (a Python upgrade, a pyenv version uninstalled) or was
    made by a Python older than requires-python: `python -m venv` over it keeps its old `python` link,
    so every later install failed, on torch, naming neither."""
    work = _project(tmp_path)
    venv = work / ".venv"
    if left == "dangling":
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(tmp_path / "removed" / "python3.9")
    else:
        old = _old_interpreters()
        if not old:
            pytest.skip("no Python older than 3.10 on this machine")
        subprocess.run([old[0], "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # TORCH=pip: a requirement already met, so the torch step costs nothing; the editable install of
    # the project (not here) fails afterwards, which is not what is looked at
    result = _make(work, "install", f"PYTHON={sys.executable}", "TORCH=pip", "TORCH_CPU_INDEX=file:///nonexistent",
                   "TORCH_MACOS=pip")
    answer = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, pip; print(sys.version_info[:2])"],
                            capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, (result.stdout, result.stderr, answer.stderr)
    assert eval(answer.stdout) >= (3, 10)
    assert "Cannot install" not in result.stderr  # the old failure, on torch


def _installed_stamp(work: Path) -> None:
    """An install finished 100 s ago, after the last change to pyproject.toml and the Makefile (no time is
    set in the future: make would warn of clock skew)."""
    stamp = work / ".venv" / ".installed"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    now = time.time()
    os.utime(stamp, (now - 100, now - 100))
    for name in ("Makefile", "pyproject.toml"):
        os.utime(work / name, (now - 200, now - 200))


def test_install_is_done_again_when_pyproject_or_the_makefile_change(tmp_path):
    work = _project(tmp_path)
    _installed_stamp(work)
    assert _make(work, "-q", "install").returncode == 0  # up to date: a second `make install` does nothing
    for name in ("pyproject.toml", "Makefile"):  # a new dependency; a new TORCH
        _installed_stamp(work)
        (work / name).touch()
        result = _make(work, "-q", "install")
        assert result.returncode == 1 and "skew" not in result.stderr, (name, result.stderr)


def test_the_makefile_checks_the_python_of_requires_python():
    requires = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text(),
                         re.M)
    assert requires, "requires-python is no longer '>=X.Y': update the Makefile's PYTHON_OK with it"
    major, minor = requires.groups()
    makefile = (ROOT / "Makefile").read_text()
    assert f"v >= ({major}, {minor})" in makefile and f"Python >= {major}.{minor}" in makefile


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", quick_start, re.S)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert "make test" in commands
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    ci = [line for line in ci if line]
    assert ci[-1] == "make test"
