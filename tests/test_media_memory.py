"""ttmedia.media.memory: large blocks freed by one request are reused by the next, instead of
being faulted in afresh from the kernel each time (measured in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from ttmedia.media.memory import reuse_large_blocks
applied = reuse_large_blocks() if sys.argv[1] == "set" else None
faults = []
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"x" * (13_700_000 + i * 1000)  # an image edit's body, a little different each time
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    others = [bytes(5000) for _ in range(200)]  # what else the request allocates meanwhile
    del block
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_large_block_reuses_pages_once_the_thresholds_are_set() -> None:
    default, tuned = _probe("default"), _probe("set")
    assert tuned["applied"] is True
    pages = 13_700_000 // 4096
    # glibc's defaults hand such a block fresh pages again and again (every page a fault) ...
    assert max(default["faults"][2:]) > pages // 2, default
    # ... with the thresholds set, from the third request on the same pages serve it (a few
    # hundred new ones at most, where the heap grew for the small blocks in between).
    assert max(tuned["faults"][2:]) < pages // 8, tuned
