"""docs/operations.md's examples in the sections of issue 20 parts 1 and 3 ("API description",
"Health checks") print what the page says, against a broker started as `make run` starts it (the
conventions of readme_examples.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from readme_examples import ROOT, parse_readme, run_readme

pytestmark = pytest.mark.slow(seconds=60)

PAGE = ROOT / "docs" / "operations.md"
SECTIONS = ("API description", "Health checks")


def sections(text: str, names: tuple[str, ...]) -> str:
    """The text of the `## name` sections (each up to the next `## `)."""
    kept: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() in names
        if keep:
            kept.append(line)
    return "\n".join(kept)


@pytest.mark.timeout(120)
def test_api_and_health_examples_print_what_the_page_says(tmp_path: Path) -> None:
    assert shutil.which("curl")
    text = sections(PAGE.read_text(encoding="utf-8"), SECTIONS)
    blocks = parse_readme(text)
    assert sum(len(b.commands) for b in blocks if b.skip is None) >= 6
    failures = run_readme(blocks, tmp_path)
    if failures:
        pytest.fail("\n\n".join(map(str, failures)), pytrace=False)
