"""Fine-tuning jobs through HTTP: lifecycle with metrics, logs and checkpoint zips; validation;
organisation scoping; cancel in every state; idempotency; the catalog."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import app_client, wait_until

TRAINER = "Llama-3.2-3B-Instruct"
#: Simulated time ×0.1: a training step is 5 ms.
SETTINGS = {"models": TRAINER, "sim_speed": 0.1, "log_level": "warning"}
ACME, OTHER = {"X-TT-Organization": "acme"}, {"X-TT-Organization": "globex"}
TERMINAL = {"completed", "failed", "cancelled"}
UNKNOWN = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with app_client(data_dir=str(tmp_path_factory.mktemp("data")), **SETTINGS) as c:
        yield c


def wait_job(client: Any, job_id: str, statuses: set[str] = TERMINAL, headers: dict[str, str] = ACME,
             timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(client.get(f"/v1/jobs/{job_id}", headers=headers).json())
        return seen["status"] in statuses

    assert wait_until(reached, timeout), f"job {job_id} stuck in {seen.get('status')}"
    return seen


def create(client: Any, headers: dict[str, str] = ACME, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"max_steps": 40, "save_interval": 20, "steps_freq": 5, **body},
                    headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_training_lifecycle(client: Any) -> None:
    job = create(client, lora_r=8, val_steps_freq=10)
    assert job["status"] == "queued" and job["object"] == "fine_tuning.job" and job["org_id"] == "acme"
    assert job["request_parameters"]["device_type"] == "n150" and job["model"] == TRAINER
    done = wait_job(client, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["result"]["steps"] == 40

    metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=ACME).json()
    train = [m for m in metrics if m["metric_name"] == "train_loss"]
    assert [m["global_step"] for m in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert train[0]["value"] > train[len(train) // 2]["value"] > train[-1]["value"]
    assert {m["global_step"] for m in metrics if m["metric_name"] == "val_loss"} == {10, 20, 30, 40}

    logs = client.get(f"/v1/jobs/{job['id']}/logs", headers=ACME).json()
    assert logs and all({"timestamp", "type", "message"} <= set(line) for line in logs)
    assert "finished" in logs[-1]["message"]

    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=ACME).json()["checkpoints"]
    assert [c["id"] for c in checkpoints] == ["checkpoint-20", "checkpoint-40"]
    r = client.get(f"/v1/jobs/{job['id']}/checkpoints/checkpoint-20", headers=ACME)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "adapter_checkpoint-20.zip" in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        config = json.loads(zf.read("adapter_config.json"))
        weights = zf.read("adapter_model.safetensors")
    assert config["r"] == 8 and config["target_modules"] == ["q_proj", "v_proj"]
    (header_len,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + header_len])
    tensor = next(v for k, v in header.items() if k.endswith("lora_A.weight"))
    assert tensor["dtype"] == "F32" and tensor["shape"][0] == 8
    assert len(weights) == 8 + header_len + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")

    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/checkpoint-7", headers=ACME).status_code == 404


def test_request_validation(client: Any) -> None:
    r = client.post("/v1/jobs", json={"device_type": "p150"}, headers=ACME)
    assert r.status_code == 422 and "does not match server device 'n150'" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"dataset_loader": "Custom", "file_type": "jsonl"}, headers=ACME)
    assert r.status_code == 422 and "train_dataset_path, template" in r.json()["detail"]
    for bad in ({"weight_decay": -1}, {"gradient_accumulation_steps": 0}, {"save_interval": -1},
                {"max_steps": -1}, {"dataset_loader": "Imagenet"}, {"learning_rate": 0}):
        assert client.post("/v1/jobs", json=bad, headers=ACME).status_code == 422, bad
    # The only training model served takes any name (upstream ignores `model`); the job names it.
    r = client.post("/v1/jobs", json={"model": "no-such-model", "max_steps": 1}, headers=ACME)
    assert r.status_code == 201 and r.json()["model"] == TRAINER


def test_organisation_scoping(client: Any) -> None:
    job = create(client, max_steps=2)
    path = f"/v1/jobs/{job['id']}"
    for suffix in ("", "/metrics", "/logs", "/checkpoints", "/checkpoints/checkpoint-2"):
        assert client.get(path + suffix, headers=OTHER).status_code == 404, suffix
    assert client.post(path + "/cancel", headers=OTHER).status_code == 404
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=OTHER).json()["jobs"]]
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs", params={"limit": 100}, headers=ACME).json()["jobs"]]
    for headers in ({}, {"X-TT-Organization": ""}, {"X-TT-Organization": "   "}):
        for method, url in (("get", "/v1/jobs"), ("get", path), ("post", "/v1/jobs"), ("post", path + "/cancel")):
            r = client.request(method, url, headers=headers, json={} if method == "post" else None)
            assert r.status_code == 401 and r.json()["reason"] == "unauthorized", (method, url, headers)
    wait_job(client, job["id"])


def test_cancel_in_every_state(client: Any) -> None:
    running = create(client, max_steps=2000, save_interval=0)  # 10 s of device time
    queued = create(client, max_steps=5)  # one worker: waits behind `running`
    r = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=ACME)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    wait_job(client, running["id"], {"in_progress"})
    assert wait_until(lambda: client.get(f"/v1/jobs/{running['id']}", headers=ACME).json()["progress"] > 0)
    r = client.post(f"/v1/jobs/{running['id']}/cancel", headers=ACME)
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    final = wait_job(client, running["id"])
    assert final["status"] == "cancelled" and final["progress"] < 100
    for job in (running, queued):
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=ACME).status_code == 409
    assert client.post(f"/v1/jobs/{UNKNOWN}/cancel", headers=ACME).status_code == 404
    assert client.get(f"/v1/jobs/{UNKNOWN}", headers=ACME).status_code == 404
    # The device is free again: the next job runs to the end.
    assert wait_job(client, create(client, max_steps=3)["id"])["status"] == "completed"


def test_idempotency_key_is_per_organisation(client: Any) -> None:
    body = {"max_steps": 3, "lora_r": 2}
    key = {"Idempotency-Key": "train-1"}
    first = client.post("/v1/jobs", json=body, headers={**ACME, **key})
    again = client.post("/v1/jobs", json=body, headers={**ACME, **key})
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    conflict = client.post("/v1/jobs", json={**body, "lora_r": 4}, headers={**ACME, **key})
    assert conflict.status_code == 409
    theirs = client.post("/v1/jobs", json=body, headers={**OTHER, **key})
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    wait_job(client, first.json()["id"])
    wait_job(client, theirs.json()["id"], headers=OTHER)


def test_catalog(client: Any) -> None:
    catalog = client.get("/v1/catalog").json()
    assert {"supported", "models", "datasets", "trainers", "optimizers", "clusters"} <= set(catalog)
    served = {m["id"]: m["supported"] for m in catalog["models"]}
    assert served[TRAINER] is True and served["gemma-1.1-2b-it"] is False
    assert {d["id"] for d in catalog["datasets"]} == {"SST2", "Alpaca", "Custom"}
    assert catalog["clusters"][0]["id"] == "n150"


def test_create_while_not_ready_is_503(tmp_path: Any) -> None:
    with app_client(ready=False, models=TRAINER, sim_warmup_seconds=600, data_dir=str(tmp_path)) as c:
        r = c.post("/v1/jobs", json={}, headers=ACME)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert c.post("/v1/jobs", json={}).status_code == 401  # identity before readiness
        assert c.get("/v1/jobs", headers=ACME).json()["jobs"] == []
