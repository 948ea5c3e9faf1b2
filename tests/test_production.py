"""What operators rely on: manifests, metrics, request ids, probes, auth on every protected route, limits."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import ValidationError, validate

from tests.helpers import app_client, wait_until
from ttmedia.web.app import load_spec
from ttmedia.settings import Settings
from ttmedia.testing import metric_value

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml"))
K8S_VERSION = "1.33.0"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT / "deploy" / "kubernetes")))
def test_manifests_validate_against_kubernetes_schemas(path):
    for document in yaml.safe_load_all(path.read_text()):
        validate(document, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"bad": 1}
    with pytest.raises(ValidationError):
        validate(deployment, K8S_VERSION, strict=True)


def test_deployment_probes_and_grace_period_match_the_server():
    spec = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    drain = float(yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())["data"]["DRAIN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > drain
    assert {"configMapRef", "secretRef"} <= {k for ref in container["envFrom"] for k in ref}


def test_replica_manifests_spread_share_and_drain():
    """deploy/kubernetes/replicas: N replicas, never two on one host, one RWX artifact volume,
    the job store from a Secret, a PodDisruptionBudget, and a preStop pause before the drain."""
    folder = ROOT / "deploy/kubernetes/replicas"
    deployment = yaml.safe_load((folder / "deployment.yaml").read_text())
    labels = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] > 1 and deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(term["topologyKey"] == "kubernetes.io/hostname" for term in anti)
    assert any(c["topologyKey"] == "kubernetes.io/hostname" and c["whenUnsatisfiable"] == "DoNotSchedule"
               for c in pod["topologySpreadConstraints"])
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "ttmedia-job-store"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["artifacts"] == env["ARTIFACT_DIR"]["value"]
    claim = next(v for v in pod["volumes"] if v["name"] == "artifacts")["persistentVolumeClaim"]["claimName"]
    pvc = yaml.safe_load((folder / "pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    secret = yaml.safe_load((folder / "secret.yaml").read_text())
    assert secret["stringData"]["JOB_STORE_URL"].startswith("postgresql://")
    Settings(job_store_url=secret["stringData"]["JOB_STORE_URL"])  # a URL the server accepts
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())["data"]["DRAIN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    pdb = yaml.safe_load((folder / "pdb.yaml").read_text())
    service = yaml.safe_load((folder / "service.yaml").read_text())
    assert pdb["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]


def test_every_response_carries_a_request_id_and_a_given_one_is_echoed():
    with app_client() as c:
        for response in (c.get("/health"), c.get("/nope"), c.delete("/health"),
                         c.post("/v1/completions", json={"prompt": 1}),
                         c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})):
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.status_code
        r = c.get("/health", headers={"X-Request-ID": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
        r = c.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
        assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_follow_requests_503s_and_restarts():
    with app_client(ready=False, models="Qwen3-8B~warmup=1") as c:
        c.post("/v1/completions", json={"prompt": "x"})  # 503 while warming
        assert wait_until(lambda: c.get("/health").status_code == 200)
        for _ in range(3):
            assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        text = c.get("/metrics").text
        assert metric_value(text, "ttmedia_http_requests_total", operation="create_completion", status="200") == 3
        assert metric_value(text, "ttmedia_not_ready_responses_total", reason="warming_up") >= 1
        assert metric_value(text, "ttmedia_queue_wait_seconds_count", model="Qwen3-8B") == 3
        assert metric_value(text, "ttmedia_worker_warmup_duration_seconds_count", model="Qwen3-8B") == 1
        assert metric_value(text, "ttmedia_model_state", model="Qwen3-8B", state="ready") == 1
        pid = c.get("/tt-liveness").json()["worker_info"]["0"]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: metric_value(c.get("/metrics").text, "ttmedia_worker_restarts_total", model="Qwen3-8B") == 1)


def test_livez_stays_200_while_a_model_warms_and_health_is_503():
    with app_client(ready=False, sim_warmup_seconds=600) as c:
        assert c.get("/livez").status_code == 200 and c.get("/livez").json()["live"] is True
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/health").status_code == 503
        ready = c.get("/v2/health/ready")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        assert c.get("/v2/models/Qwen3-8B/ready").status_code == 503


def _protected_operations() -> list[tuple[str, str]]:
    spec = load_spec()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and op.get("security", spec.get("security")):
                out.append((method.upper(), re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)))
    return out


def test_every_protected_operation_refuses_missing_and_wrong_keys():
    operations = _protected_operations()
    assert ("POST", "/tt-deep-reset") in operations and ("POST", "/tt-reset-device") in operations
    with app_client(api_key="right-key") as c:
        for method, path in operations:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic cmlnaHQta2V5"}):
                r = c.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")


def test_oversize_body_is_413_before_it_is_read():
    with app_client(max_request_body_bytes=2048) as c:
        r = c.post("/v1/completions", json={"prompt": "x" * 5000})
        assert r.status_code == 413 and r.json()["reason"] == "payload_too_large"


def test_cors_is_off_unless_configured():
    with app_client() as c:
        r = c.get("/health", headers={"Origin": "https://example.com"})
        assert "access-control-allow-origin" not in r.headers
    with app_client(cors_allow_origins="https://ui.example.com") as c:
        r = c.get("/health", headers={"Origin": "https://ui.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example.com"


def test_settings_documented_in_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README Configuration table: {missing}"
