"""What a new user meets before the server runs: the Makefile's virtual environment, the install
lines in the docs, the licence metadata, and one duration for `make bench` everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter that answers the Makefile's version question with `version`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version} /opt/python'\n")
    path.chmod(0o755)
    return path


def make_dry_run(folder: Path, python: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    (folder / "pyproject.toml").write_text("")
    (folder / ".venv").mkdir(exist_ok=True)
    for stamp in (".installed", ".dev"):  # an installed .venv, newer than pyproject.toml
        (folder / ".venv" / stamp).touch()
    result = subprocess.run(
        ["make", "-n", "run", f"PYTHON={python}"], cwd=folder, capture_output=True, text=True, check=True
    )
    return result.stdout


def test_a_venv_of_another_python_is_made_again(tmp_path: Path) -> None:
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.10.12")
    python = fake_python(tmp_path / "python3.11", "3.11.7")
    output = make_dry_run(tmp_path, python)
    assert ".venv was made by Python 3.10.12" in output
    assert f"{python} -m venv .venv" in output
    assert not (tmp_path / ".venv").exists()


def test_a_venv_whose_python_is_gone_is_made_again(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "python3.11", "3.11.7")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(tmp_path / "removed-python")
    output = make_dry_run(tmp_path, python)
    assert "that is gone" in output and f"{python} -m venv .venv" in output


def test_a_venv_of_the_same_python_is_kept(tmp_path: Path) -> None:
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.11.7")
    python = fake_python(tmp_path / "python3.11", "3.11.7")
    output = make_dry_run(tmp_path, python)
    assert "-m venv" not in output and ".venv/bin/cityos serve --demo-on-empty" in output
    assert (tmp_path / ".venv" / ".installed").exists()


def test_make_clean_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make clean" in readme
    clean = re.search(r"^clean:\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert clean is not None and "$(VENV)" in clean.group(1) and ".db" not in clean.group(1)


def test_install_lines_name_what_can_be_installed() -> None:
    """CityOS is not on PyPI: every install line works from a clone."""
    for path in DOCS:
        for line in path.read_text().splitlines():
            if "pip install" in line and "cityos" in line.split("pip install", 1)[1].split("#")[0]:
                pytest.fail(f"{path.name}: {line.strip()} names a package that is not published")
    assert "pip install -e '.[postgres]'" in (ROOT / "README.md").read_text()
    assert "pip install -e '.[postgres]'" in (ROOT / "docs" / "deployment.md").read_text()


def test_make_bench_has_one_duration_everywhere() -> None:
    makefile = (ROOT / "Makefile").read_text()
    comment = re.search(r"^# the full benchmark.*$", makefile, re.M)
    assert comment is not None
    mentions = [comment.group(0)]
    for path in DOCS:
        mentions += [line for line in path.read_text().splitlines() if "make bench" in line]
    durations = {m.group(0) for line in mentions if (m := re.search(r"\d+\+? ?min|hours", line))}
    assert len(mentions) >= 3 and durations == {"hours"}, mentions


def test_licence_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    setuptools = next(r for r in project["build-system"]["requires"] if r.startswith("setuptools"))
    assert setuptools == "setuptools>=77"  # the first that reads an SPDX string (PEP 639)
