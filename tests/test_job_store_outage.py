"""PostgreSQL goes away and comes back: every job route answers 503 `job_store_unavailable` with
Retry-After (never a 500: an unreachable database is not a bug), the synchronous routes and the
devices are unaffected, and the same server serves jobs again once the database is back."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from typing import Any

from tests.helpers import app_client, wait_until

T2V = "Wan2.2-T2V-A14B-Diffusers"
UNKNOWN = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"


def start_postgres(pgdata: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(pgdata, cleanup_mode="stop")


def test_job_routes_answer_503_while_postgresql_is_down_then_recover() -> None:
    pgdata = tempfile.mkdtemp(prefix="ttmedia-pg-outage-")
    server = start_postgres(pgdata)
    try:
        with app_client(models=f"{T2V};Qwen3-8B", job_store_url=server.get_uri(), sim_video_frames=9,
                        sim_video_width=64, sim_video_height=48, log_level="critical") as c:
            job = c.post("/v1/videos/generations", json={"prompt": "before", "num_inference_steps": 4}).json()
            assert wait_until(lambda: c.get(f"/v1/videos/generations/{job['id']}").json()["status"] == "completed")
            server.cleanup()  # PostgreSQL stops
            for method, path in (("get", f"/v1/videos/generations/{job['id']}"), ("get", "/v1/videos/jobs"),
                                 ("get", f"/v1/videos/generations/{job['id']}/download"),
                                 ("post", f"/v1/videos/generations/{UNKNOWN}/cancel"),
                                 ("post", "/v1/videos/generations")):
                r = c.request(method, path, json={"prompt": "during"} if method == "post" else None)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.json()["reason"] == "job_store_unavailable" and int(r.headers["retry-after"]) >= 1
            r = c.get("/v1/jobs", headers={"X-TT-Organization": "acme"})
            assert r.status_code == 503 and r.json()["reason"] == "job_store_unavailable"
            # Everything that does not need the store goes on.
            assert c.get("/health").status_code == 200
            assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
            server = start_postgres(pgdata)  # back, same data

            def served_again() -> bool:
                return c.get(f"/v1/videos/generations/{job['id']}").status_code == 200

            assert wait_until(served_again, 30, 0.2)
            video = c.get(f"/v1/videos/generations/{job['id']}/download")
            assert video.status_code == 200 and video.content
            after = c.post("/v1/videos/generations", json={"prompt": "after", "num_inference_steps": 4})
            assert after.status_code == 202
            assert wait_until(lambda: c.get(f"/v1/videos/generations/{after.json()['id']}").json()["status"]
                              == "completed", 30)
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
