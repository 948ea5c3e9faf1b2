"""Live contract runs: Schemathesis fuzzes a real uvicorn server against openapi.yaml.

Each test runs `contract.run.main` (server on a free loopback port, `st run` with
contract/schemathesis.toml and contract/checks.py, server stopped afterwards) with a modest
example count. Deselect with `-m "not contract"`; the full runs are `python -m contract.run`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from contract import run

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

#: Per-operation examples: enough for every phase to reach every operation, small enough for
#: about a minute per mode on a 2-core machine.
MAX_EXAMPLES = 15


def _junit_failures(report_dir: Path) -> list[str]:
    root = ET.parse(report_dir / "junit.xml").getroot()
    out = []
    for case in root.iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            out.append(f"{case.get('name')}: {(bad.get('message') or bad.text or '').strip()[:500]}")
    return out


def run_contract(mode: str, max_examples: int, timeout_s: int, report_dir: Path,
                 capsys: pytest.CaptureFixture[str], st_args: tuple[str, ...] = (),
                 spec: str = "served") -> tuple[str, str]:
    """One `contract.run` in `mode` against the served (or general) spec; assert it wrote its
    report and passed. Its (stdout, stderr)."""
    code = run.main(["--mode", mode, "--spec", spec, "--max-examples", str(max_examples), "--report-dir",
                     str(report_dir), "--timeout", str(timeout_s), *(["--", *st_args] if st_args else [])])
    out, err = capsys.readouterr()
    assert (report_dir / "junit.xml").is_file(), f"no JUnit report\n{err[-3000:]}"
    failures = _junit_failures(report_dir)
    assert code == 0, (f"{mode}: exit {code}; failures: {failures}\n--- st output (tail) ---\n"
                       f"{out[-6000:]}\n--- runner ---\n{err[-3000:]}")
    return out, err


@pytest.mark.parametrize("mode", ["ready", "warming"])
def test_live_contract(mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the spec the server serves (narrowed to its models): every check, positive data
    acceptance included, on every family's operations."""
    out, err = run_contract(mode, MAX_EXAMPLES, 240, tmp_path, capsys)
    assert "Operations:       59 selected" in out  # every family, legacy aliases and OpenAI's videos
    if mode == "warming":
        assert "[FAIL]" not in err and "warming check" in err


def test_live_contract_on_the_general_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """openapi.yaml as written (what SDKs are generated from), its positive cases kept within the
    model rules it cannot state by contract/checks.py's filter."""
    out, _ = run_contract("ready", MAX_EXAMPLES, 240, tmp_path, capsys, spec="general")
    assert "?contract=general" in out


def test_live_contract_on_postgresql(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The ready-mode run against a server whose job store is PostgreSQL (the scale-out setup), on
    the operations the store serves (every job route, link chains included); the other routes do
    not touch the store and are fuzzed by the runs above."""
    monkeypatch.setenv("JOB_STORE_URL", pg_url)
    monkeypatch.setenv("ARTIFACT_DIR", str(tmp_path / "artifacts"))
    out, _ = run_contract("ready", MAX_EXAMPLES, 240, tmp_path / "report", capsys,
                          st_args=("--include-tag-regex", "^(videos|fine_tuning)$"))
    assert "Selected: 21/" in out  # every job operation (videos 12, fine-tuning 9), nothing else
    import psycopg

    with psycopg.connect(pg_url) as conn:  # the fuzzer's jobs went to PostgreSQL
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] > 0


def test_help_describes_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--mode", "ready", "warming", "--max-examples", "--seed", "--report-dir"):
        assert word in text


def test_warming_request_builder_covers_every_media_operation() -> None:
    """The post-run 503 probe can build a valid request for every media operation in the spec."""
    from ttmedia.web.app import load_spec

    spec = load_spec()
    media = [(p, m, op, item) for p, item in spec["paths"].items() for m, op in item.items()
             if isinstance(op, dict) and "x-ttmedia-family" in op]
    assert media
    for path, method, operation, item in media:
        url, _body, headers = run.build_request(spec, path, method, operation, item)
        assert "{" not in url, (method, path, url)
        if operation.get("requestBody"):
            assert "Content-Type" in headers, (method, path)
