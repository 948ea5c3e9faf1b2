"""The README's minimal runner, served exactly as written, and the README's test of it, run as written."""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import live_server

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(prefix: str) -> tuple[str, str]:
    """(file path, source) of the README's python block whose first line is `# <prefix>...`."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        first = block.splitlines()[0]
        if first.startswith("# " + prefix):
            return first[2:].strip(), block
    raise AssertionError(f"README has no python block for {prefix}")


def readme_runner() -> tuple[str, str]:
    return readme_block("my_runners/")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_readme_runner_serves_embeddings(tmp_path: Path) -> None:
    path, source = readme_runner()
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(source)
    command = re.search(r'MODELS="([^"]+)"', README.read_text(encoding="utf-8")[README.read_text().index(path):])
    assert command is not None
    with live_server(env={"MODELS": command.group(1), "PYTHONPATH": str(tmp_path)}) as server:
        texts = ["the cat sat on the mat", "the cat sat on a mat", "stock markets fell sharply"]
        r = httpx.post(server.url + "/v1/embeddings", json={"input": texts}, timeout=30)
        assert r.status_code == 200, r.text
        vectors = [d["embedding"] for d in r.json()["data"]]
        assert len(vectors[0]) == 256
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
        bad = httpx.post(server.url + "/v1/embeddings", json={"input": ["fine", " "]}, timeout=30)
        assert bad.status_code == 422 and "empty input" in bad.json()["detail"]
        listed = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
        assert listed[0]["runner_target"] == "my_runners.hashing:HashingEmbedder" and not listed[0]["simulated"]


def test_the_readme_runner_test_passes_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the README says to run it: from the directory that holds my_runners/, nothing on PYTHONPATH.
    runner_path, runner_source = readme_runner()
    (tmp_path / runner_path).parent.mkdir(parents=True)
    (tmp_path / runner_path).write_text(runner_source)
    test_path, test_source = readme_block("tests/")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    namespace: dict[str, Any] = {}
    exec(compile(test_source, test_path, "exec"), namespace)  # noqa: S102 - the README's own code
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 1
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    tests[0]()
    # The harness made a scratch directory (DATA_DIR and log) and removed it when the server stopped.
    assert made and not [d for d in made if os.path.exists(d)], made
