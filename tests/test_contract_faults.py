"""Live contract run under faults: Schemathesis fuzzes a server whose workers crash and hang.

`contract.run --mode faults` serves every model with SIM_FAULTS=crash_rate/hang_rate, a 2 s
request timeout and fast restarts, and runs the ready-mode phases. A crash must surface as 503
(worker_lost / no_workers, with Retry-After), a hang as 504 timeout; nothing else may fail (500
stays "a bug", so injected runner *errors* are not part of the mix). Deselect with
`-m "not contract"`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_contract_live import run_contract

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

#: Fewer examples than the ready run: hangs cost the request timeout each.
MAX_EXAMPLES = 8


def test_live_contract_under_crashes_and_hangs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_contract("faults", MAX_EXAMPLES, 200, tmp_path, capsys)
    server_log = (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
    crashes = len(re.findall(r"exited \(code 17\)", server_log))
    timeouts = len(re.findall(r'"status": 504', server_log))
    assert '"status": 500' not in server_log, "a 500 under faults"
    assert crashes + timeouts >= 1, "no fault fired: the run proved nothing"
    with capsys.disabled():
        not_ready = len(re.findall(r'"status": 503', server_log))
        print(f"\n[contract faults] crashes {crashes}, 504 timeouts {timeouts}, 503 answers {not_ready}")
