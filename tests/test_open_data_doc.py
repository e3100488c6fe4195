"""docs/open-data.md's examples print what the page says, on the demo city `make run` serves
(the README's conventions: tests/readme_examples.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from readme_examples import ROOT, parse_readme, run_readme

pytestmark = pytest.mark.slow(seconds=60)

PAGE = ROOT / "docs" / "open-data.md"


@pytest.mark.timeout(180)
def test_every_open_data_example_prints_what_the_page_says(tmp_path: Path) -> None:
    assert shutil.which("curl") and shutil.which("jq"), "the examples use curl and jq"
    blocks = parse_readme(PAGE.read_text(encoding="utf-8"))
    assert sum(len(block.commands) for block in blocks if block.skip is None) >= 9
    failures = run_readme(blocks, tmp_path)
    if failures:
        pytest.fail(
            f"{len(failures)} example(s) print something else:\n\n" + "\n\n".join(map(str, failures)), pytrace=False
        )
