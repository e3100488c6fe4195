"""README.md's examples print what the README says, on the database `make run` serves.

The conventions (expected `# ` lines, … wildcards, skip markers) are in readme_examples.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from readme_examples import ROOT, expected_json, json_difference, localise, output_difference, parse_readme, run_readme

pytestmark = pytest.mark.slow(seconds=60)

README = ROOT / "README.md"


@pytest.mark.timeout(180)
def test_every_readme_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's examples use curl: install it (.ci/run does)"
    blocks = parse_readme(README.read_text(encoding="utf-8"))
    failures = run_readme(blocks, tmp_path)
    if failures:  # pytest.fail, not assert: the message alone, without the repr of the failures
        pytest.fail(
            f"{len(failures)} README example(s) print something else:\n\n" + "\n\n".join(map(str, failures)),
            pytrace=False,
        )


def test_readme_skips_are_few_and_say_why() -> None:
    blocks = parse_readme(README.read_text(encoding="utf-8"))
    skipped = [block for block in blocks if block.skip is not None]
    assert all(block.skip for block in skipped), [b.line for b in skipped if not b.skip]
    assert len(skipped) <= 5, [(b.line, b.skip) for b in skipped]
    assert sum(len(block.commands) for block in blocks if block.skip is None) >= 40


# -- the comparison itself: a drift is caught and named ---------------------------------------------
def test_parse_splits_commands_expected_lines_and_notes() -> None:
    text = """# Title
<!-- readme: skip: needs a PostgreSQL server -->
```sh
pip install x
```

## Section
```sh
curl -X POST http://127.0.0.1:1026/a \\
  -d '{
    "a": 1
  }'
# HTTP/1.1 201 Created

# a note, not output
curl http://127.0.0.1:1026/b   # a trailing comment
# {"b": 2}
```
"""
    skipped, block = parse_readme(text)
    assert skipped.skip == "needs a PostgreSQL server"
    assert block.skip is None and block.heading == "Section"
    assert [c.expected for c in block.commands] == [["HTTP/1.1 201 Created"], ['{"b": 2}']]
    assert block.commands[0].text.endswith("  }'") and block.commands[0].line == 9


def test_json_is_compared_by_structure_with_wildcards() -> None:
    expected = expected_json('[{"id": "urn:x:1", "n": 69, "at": "…", "i": "urn:ngsi-ld:Instance:…", …}, …]')
    assert (
        json_difference(expected, [{"n": 69, "id": "urn:x:1", "at": 5, "i": "urn:ngsi-ld:Instance:7", "z": 1}]) is None
    )
    assert json_difference(expected, [{"n": 69, "id": "urn:x:1", "at": 5, "i": "urn:ngsi-ld:Instance:7"}, 2]) is None
    assert json_difference(expected, [{"n": 70, "id": "urn:x:1", "at": 5, "i": "urn:ngsi-ld:Instance:7"}]) == (
        "$[0].n: expected 69, got 70"
    )
    exact = expected_json('[{"id": "urn:x:1"}]')
    assert json_difference(exact, [{"id": "urn:x:1"}, {"id": "urn:x:2"}]) == "$: expected 1 items, got 2"
    assert json_difference(exact, [{"id": "urn:x:1", "more": 1}]) == "$[0]: unexpected member(s) ['more']"
    assert json_difference(expected_json("[1, 2]"), [2, 1]) == "$[0]: expected 1, got 2"
    wrapped = expected_json('{"detail": "a long\n   sentence"}')  # a string wrapped onto the next line
    assert wrapped == {"detail": "a long sentence"}


def test_a_changed_expected_line_fails_with_the_difference() -> None:
    got = 'HTTP/1.1 200 OK\r\nngsild-results-count: 4\r\ncontent-type: application/json\r\n\r\n[{"id":"urn:a"}]'
    assert output_difference(["HTTP/1.1 200 OK", "NGSILD-Results-Count: 4"], got) is None
    assert output_difference(["HTTP/1.1 200 OK", "NGSILD-Results-Count: 4", "", '[{"id": "urn:a"}]'], got) is None
    assert output_difference(["HTTP/1.1 200 OK", "NGSILD-Results-Count: 5"], got) == (
        "header NGSILD-Results-Count: expected '5', got ['4']"
    )
    assert (
        output_difference(["HTTP/1.1 201 Created"], got)
        == "status line: expected 'HTTP/1.1 201 Created', got 'HTTP/1.1 200 OK'"
    )
    assert output_difference(["HTTP/1.1 200 OK", "", '[{"id": "urn:b"}]'], got) == (
        '$[0].id: expected "urn:b", got "urn:a"'
    )
    assert (
        output_difference(["a.csv: 16 rows read, 9 loaded", "in … s"], "a.csv: 16 rows read, 9 loaded in 0.1 s\n")
        is None
    )
    assert output_difference(["a.csv: 16 rows read, 8 loaded in … s"], "a.csv: 16 rows read, 9 loaded in 0.1 s") == (
        "the text differs"
    )
    continued = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nlocation: /x\r\n\r\n"
    assert output_difference(["HTTP/1.1 201 Created", "Location: /x"], continued) is None
    assert output_difference([], "something\n") == "the README shows no output, but the command printed some"


def test_ports_are_replaced_where_they_are_ports() -> None:
    text = 'curl http://127.0.0.1:1026/x; ("127.0.0.1", 8765) http://127.0.0.1:8765/n /dev/tcp/127.0.0.1/8765 36.8765'
    assert localise(text, 4000, 5000) == (
        'curl http://127.0.0.1:4000/x; ("127.0.0.1", 5000) http://127.0.0.1:5000/n /dev/tcp/127.0.0.1/5000 36.8765'
    )
