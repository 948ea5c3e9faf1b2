"""No path from a request reaches the filesystem unchecked: job and checkpoint ids are validated."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.helpers import app_client, wait_until

ORG = {"X-TT-Organization": "acme"}
# Plain dot segments ("../") are resolved by the HTTP client before sending; the encoded forms
# reach the server as they are.
ATTACKS = ["%2e%2e%2f%2e%2e", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a/../../b", "/etc/passwd",
           "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e/../../secret", "ckpt-step-20/../../../secret",
           "ckpt-step-20%00.zip", "~root"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data.parent / "secret").write_text("do not serve me")
    with app_client(data_dir=str(data), models="Llama-3.2-3B-Instruct", sim_speed=0.1) as c:
        yield c


def _completed_job(client) -> str:
    job = client.post("/v1/jobs", json={"max_steps": 20, "save_interval": 10, "steps_freq": 5}, headers=ORG).json()
    assert wait_until(lambda: client.get(f"/v1/jobs/{job['id']}", headers=ORG).json()["status"] == "completed", 30)
    return job["id"]


@pytest.fixture(scope="module")
def job_id(client):
    return _completed_job(client)


@pytest.mark.parametrize("attack", ATTACKS)
def test_traversal_ids_never_reach_the_filesystem(client, job_id, attack):
    for path in (f"/v1/jobs/{quote(attack, safe='%/')}", f"/v1/jobs/{job_id}/checkpoints/{quote(attack, safe='%/')}",
                 f"/v1/videos/generations/{quote(attack, safe='%/')}/download"):
        r = client.get(path, headers=ORG)
        assert r.status_code in (404, 405, 422), (path, r.status_code, r.text[:200])
        assert b"do not serve me" not in r.content
        assert r.headers["content-type"].startswith("application/problem+json")


def test_a_real_checkpoint_still_downloads(client, job_id):
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=ORG).json()["checkpoints"]
    r = client.get(f"/v1/jobs/{job_id}/checkpoints/{checkpoints[0]['id']}", headers=ORG)
    assert r.status_code == 200 and r.content[:2] == b"PK"
