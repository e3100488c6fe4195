"""docs/federation.md's "connect two cities in ten minutes" runs as printed: its shell block (the
one after `<!-- walkthrough -->`) in an empty folder, on two ports of the data channel tests' range
(the block reads CQ_PORT and SG_PORT, defaulting to 1026 and 1027), with `cityos` on the PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from backends import cli_env
from dataspace_helpers import free_ports

DOC = Path(__file__).parent.parent / "docs" / "federation.md"


def walkthrough() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)\n```", text, re.S)
    assert found is not None, "docs/federation.md has no walkthrough block"
    return found.group(1)


def test_the_two_city_walkthrough_runs_as_printed(tmp_path: Path) -> None:
    cq_port, sg_port = free_ports(2)
    env = cli_env(CQ_PORT=str(cq_port), SG_PORT=str(sg_port))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `cityos`
    done = subprocess.run(
        ["bash", "-c", walkthrough()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{(tmp_path / 'chongqing.log').read_text()}"
    out = done.stdout
    assert '"participantId": "Chongqing"' in out  # the catalogue
    shown = re.search(r'^  "id": "(urn:uuid:[0-9a-f-]{36})",$', out, re.M)  # `cityos agreements show`
    assert shown is not None, out
    assert '"state": "FINALIZED"' in out and '"consumerSignature"' in out
    assert '"id": "urn:ngsi-ld:TrafficFlowObserved:jiefangbei"' in out  # read under the agreement
    assert '"id": "urn:ngsi-ld:TrafficFlowObserved:airport"' not in out  # outside the offered area
    assert '"laneId"' not in out  # not in the agreement's attributes
    assert '"id":"urn:ngsi-ld:TrafficFlowObserved:jiefangbei"' in out  # Singapore's own query, forwarded
    assert '"id":"urn:ngsi-ld:TrafficFlowObserved:airport"' not in out
    assert f"no active agreement '{shown.group(1)}'" in out
    assert "dataspace.request.served" in out and "dataspace.request.sent" in out
    assert out.rstrip().endswith("refused after the revocation")
    assert "the partner answered HTTP 403" in done.stderr
