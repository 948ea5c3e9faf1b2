"""Video generation jobs through HTTP: lifecycle to a real MP4, ranges, cancel in every state,
I2V validation, idempotency, paging. One app (real worker processes) for the module."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.helpers import app_client, wait_until
from ttmedia.media.video import probe_mp4

T2V, I2V = "Wan2.2-T2V-A14B-Diffusers", "Wan2.2-I2V-A14B-Diffusers"
FRAMES = 17
#: Simulated time ×0.1: a Wan step is 0.04 s, so 4 steps ≈ 0.2 s and 50 steps ≈ 2 s.
SETTINGS = {"models": f"{T2V};{I2V};Llama-3.2-3B-Instruct", "sim_speed": 0.1, "sim_video_frames": FRAMES,
            "sim_video_width": 128, "sim_video_height": 72, "log_level": "warning"}
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The whole module runs on both job stores (a real PostgreSQL from tests/conftest.py)."""
    store = {}
    if request.param == "postgresql":
        import psycopg

        server = request.getfixturevalue("postgres")
        name = f"videos_{tmp_path_factory.mktemp('pg').name.replace('-', '_')}"
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        store = {"job_store_url": server.get_uri(name)}
    with app_client(data_dir=str(tmp_path_factory.mktemp("data")), **SETTINGS, **store) as c:
        yield c


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def wait_job(client: Any, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(client.get(f"/v1/videos/generations/{job_id}").json())
        return seen["status"] in statuses

    assert wait_until(reached, timeout), f"job {job_id} stuck in {seen.get('status')}"
    return seen


def create(client: Any, steps: int = 4, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/videos/generations", json={"prompt": "a paper boat", "num_inference_steps": steps,
                                                     "model": T2V, **extra})
    assert r.status_code == 202, r.text
    return r.json()


def test_t2v_lifecycle_ends_in_a_real_mp4(client: Any) -> None:
    r = client.post("/v1/videos/generations", json={"prompt": "a paper boat", "num_inference_steps": 4,
                                                     "seed": 3})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/videos/generations/{job['id']}"
    assert job["status"] == "queued" and job["object"] == "video.generation" and job["model"] == T2V
    assert job["request_parameters"]["num_inference_steps"] == 4
    done = wait_job(client, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] is not None and done["completed_at"] >= done["started_at"]
    video = client.get(f"/v1/videos/generations/{job['id']}/download")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.headers["accept-ranges"] == "bytes"
    assert f"video_{job['id']}.mp4" in video.headers["content-disposition"]
    info = probe_mp4(video.content)
    assert info["frames"] == FRAMES == done["result"]["frames"]
    assert info["codec"] == "h264" and (info["width"], info["height"]) == (128, 72)
    assert done["result"]["bytes"] == len(video.content)


def test_range_downloads(client: Any) -> None:
    job = wait_job(client, create(client)["id"])
    url = f"/v1/videos/generations/{job['id']}/download"
    full = client.get(url).content
    size = len(full)
    part = client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == full[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}"
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == full[-10:]
    rest = client.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.content == full[-5:]
    clipped = client.get(url, headers={"Range": f"bytes=10-{size * 2}"})
    assert clipped.status_code == 206 and clipped.content == full[10:]
    bad = client.get(url, headers={"Range": f"bytes={size}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{size}"
    assert bad.json()["reason"] == "range_not_satisfiable"
    # A Range we do not understand is ignored (RFC 9110): the whole file.
    for header in ("items=0-5", "bytes=0-1,5-9", "bytes=abc"):
        whole = client.get(url, headers={"Range": header})
        assert whole.status_code == 200 and whole.content == full


def test_cancel_in_every_state(client: Any) -> None:
    running = create(client, steps=50)
    queued = create(client, steps=4)  # one T2V worker: waits behind `running`
    assert client.get(f"/v1/videos/generations/{queued['id']}/download").status_code == 409

    r = client.post(f"/v1/videos/generations/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["started_at"] is None

    progressed = wait_job(client, running["id"], {"in_progress"})
    assert wait_until(lambda: 0 < client.get(f"/v1/videos/generations/{running['id']}").json()["progress"] < 90)
    del progressed
    r = client.post(f"/v1/videos/generations/{running['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    final = wait_job(client, running["id"])
    assert final["status"] == "cancelled" and final["progress"] < 100
    assert client.get(f"/v1/videos/generations/{running['id']}/download").status_code == 409

    for job in (running, queued):
        again = client.post(f"/v1/videos/generations/{job['id']}/cancel")
        assert again.status_code == 409 and again.json()["reason"] == "conflict"
    done = wait_job(client, create(client)["id"])
    assert client.post(f"/v1/videos/generations/{done['id']}/cancel").status_code == 409

    unknown = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"
    assert client.post(f"/v1/videos/generations/{unknown}/cancel").status_code == 404
    assert client.get(f"/v1/videos/generations/{unknown}").status_code == 404
    assert client.get(f"/v1/videos/generations/{unknown}/download").status_code == 404
    assert client.get("/v1/videos/generations/..%2f..%2fjobs.db").status_code in (404, 422)
    # A malformed id names no job: 404, as upstream (the id is validated before it reaches the store).
    assert client.get("/v1/videos/generations/not-a-uuid").status_code == 404
    assert client.get(f"/v1/videos/generations/{unknown}/cancel").status_code == 405
    wrong = client.get("/v1/videos/generations/i2v")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_i2v_only_model_rejects_text_to_video(client: Any) -> None:
    r = client.post("/v1/videos/generations", json={"prompt": "x", "model": I2V})
    assert r.status_code == 422
    assert "/v1/videos/generations/i2v" in r.json()["detail"]
    r = client.post("/v1/videos/generations/i2v", json={"prompt": "x", "model": T2V,
                                                         "image_prompts": [{"image": base64.b64encode(png()).decode()}]})
    assert r.status_code == 422


def test_i2v_json(client: Any) -> None:
    image = png()
    b64 = base64.b64encode(image).decode()
    body = {"prompt": "a red square", "num_inference_steps": 4,
            "image_prompts": [{"image": b64, "frame_pos": 0},
                              {"image": "data:image/png;base64," + b64, "frame_pos": 80}]}
    r = client.post("/v1/videos/generations/i2v", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["model"] == I2V
    echoed = job["request_parameters"]["image_prompts"]
    assert echoed[0]["image"] == {"bytes": len(image), "sha256": __import__("hashlib").sha256(image).hexdigest()}
    assert b64 not in r.text  # no base64 blobs echoed back
    done = wait_job(client, job["id"])
    assert done["status"] == "completed", done
    first = probe_mp4(client.get(f"/v1/videos/generations/{job['id']}/download").content)
    assert first["frames"] == FRAMES

    def post(prompts: Any) -> int:
        return int(client.post("/v1/videos/generations/i2v", json={"prompt": "x", "image_prompts": prompts}).status_code)

    assert post([{"image": b64, "frame_pos": 3}, {"image": b64, "frame_pos": 3}]) == 422  # duplicate frame_pos
    assert post([{"image": base64.b64encode(b"not an image").decode()}]) == 422
    assert post([{"image": "!!!not base64!!!"}]) == 422
    assert post([{"image": b64, "frame_pos": 81}]) == 422
    assert post([]) == 422
    assert post([{"image": b64, "frame_pos": i % 81} for i in range(82)]) == 422


def test_i2v_upload(client: Any) -> None:
    def upload(data: bytes, ctype: str, **fields: Any) -> Any:
        return client.post("/v1/videos/generations/i2v/upload",
                           data={"prompt": "a red square", "num_inference_steps": "4", **fields},
                           files={"image": ("in.png", data, ctype)})

    r = upload(png(), "image/png", frame_pos="10", seed="5")
    assert r.status_code == 202, r.text
    params = r.json()["request_parameters"]
    assert params["image_prompts"][0]["frame_pos"] == 10 and params["seed"] == 5
    assert wait_job(client, r.json()["id"])["status"] == "completed"
    assert upload(png(), "text/plain").status_code == 415
    assert upload(png(), "image/gif").status_code == 415
    assert upload(b"\x89PNG garbage", "image/png").status_code == 422
    too_big = upload(b"\0" * (10 * 1024 * 1024 + 1), "image/png")
    assert too_big.status_code == 413 and too_big.json()["reason"] == "payload_too_large"
    # Upstream's multipart default is 12 steps.
    r = client.post("/v1/videos/generations/i2v/upload", data={"prompt": "p"},
                    files={"image": ("a.png", png(), "image/png")})
    assert r.status_code == 202 and r.json()["request_parameters"]["num_inference_steps"] == 12
    client.post(f"/v1/videos/generations/{r.json()['id']}/cancel")


def test_idempotency_key(client: Any) -> None:
    body = {"prompt": "idempotent boat", "num_inference_steps": 4, "model": T2V}
    first = client.post("/v1/videos/generations", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/videos/generations", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/videos/generations", json={**body, "seed": 9}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and other.json()["reason"] == "conflict"
    fresh = client.post("/v1/videos/generations", json=body)
    assert fresh.json()["id"] != first.json()["id"]
    wait_job(client, fresh.json()["id"])


def test_list_is_video_only_newest_first_and_paginated(client: Any) -> None:
    training = client.post("/v1/jobs", json={"max_steps": 1}, headers={"X-TT-Organization": "acme"})
    assert training.status_code == 201
    ids = [create(client)["id"] for _ in range(3)]
    first = client.get("/v1/videos/jobs", params={"limit": 2})
    page = first.json()
    assert isinstance(page, list), "upstream's shape: a bare JSON array"
    assert [j["id"] for j in page] == ids[::-1][:2]
    assert first.headers["link"] == f'</v1/videos/jobs?limit=2&after={ids[1]}>; rel="next"'
    rest = client.get("/v1/videos/jobs", params={"limit": 100, "after": ids[1]})
    assert rest.json()[0]["id"] == ids[0] and "link" not in rest.headers
    everything = [j["id"] for j in client.get("/v1/videos/jobs").json()]
    assert training.json()["id"] not in everything and set(ids) <= set(everything)
    assert all(j["job_type"] == "video" for j in rest.json())
    unknown = client.get("/v1/videos/jobs", params={"after": "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"})
    assert unknown.status_code == 404
    assert client.get("/v1/videos/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/videos/jobs", params={"limit": 1001}).status_code == 422
    for job_id in ids:
        wait_job(client, job_id)


def test_create_while_not_ready_is_503(tmp_path: Any) -> None:
    with app_client(ready=False, models=T2V, sim_warmup_seconds=600, data_dir=str(tmp_path)) as c:
        r = c.post("/v1/videos/generations", json={"prompt": "x"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["reason"] == "warming_up"
        assert c.get("/v1/videos/jobs").status_code == 200  # reads do not need a device
    assert not (tmp_path / "jobs.db").exists()  # nothing was created
    time.sleep(0)
