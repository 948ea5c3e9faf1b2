"""Scale-out: three `ttmedia serve` replicas on loopback share one PostgreSQL and one artifact
directory, each with its own simulated devices. Any replica answers any job; nothing runs twice;
a replica killed with -9 loses nothing (its jobs run again elsewhere once their lease expires);
a cancel through one replica stops the run on another at once; one Idempotency-Key is one job
fleet-wide. The tests run in file order: the kill comes last."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import LiveServer, wait_until
from ttmedia.media.video import probe_mp4
from ttmedia.testing import start_server, ttmedia_command

pytestmark = pytest.mark.timeout(240)

T2V, TRAINER = "Wan2.2-T2V-A14B-Diffusers", "Llama-3.2-3B-Instruct"
FRAMES = 9
#: Short leases keep the kill test short (a dead replica's jobs wait at most this long).
LEASE_S = 6.0
ORG = {"X-TT-Organization": "acme"}
TERMINAL = {"completed", "failed", "cancelled"}


class Fleet:
    def __init__(self, servers: list[LiveServer], url: str, artifacts: Path) -> None:
        self.servers, self.url, self.artifacts = servers, url, artifacts
        self.clients = [s.client() for s in servers]

    def __len__(self) -> int:
        return len(self.servers)

    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.servers) if s.proc.poll() is None]

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql, args))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    name = "replicas_" + str(os.getpid())
    with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = str(postgres.get_uri(name))
    artifacts = tmp_path_factory.mktemp("artifacts")
    procs: list[LiveServer] = []
    try:
        for index in range(3):  # started together: they migrate the empty database at once
            env = {"JOB_STORE_URL": url, "ARTIFACT_DIR": str(artifacts),
                   "DATA_DIR": str(tmp_path_factory.mktemp(f"data{index}")), "REPLICA_ID": f"replica-{index}",
                   "MODELS": f"{T2V}@(0),(1);{TRAINER}@(2)", "SIM_SPEED": "0.25", "SIM_WARMUP_SECONDS": "0",
                   "SIM_VIDEO_FRAMES": str(FRAMES), "SIM_VIDEO_WIDTH": "64", "SIM_VIDEO_HEIGHT": "48",
                   "JOB_LEASE_SECONDS": str(LEASE_S), "LOG_LEVEL": "warning", "VALIDATE_RESPONSES": "1"}
            procs.append(start_server(ttmedia_command("--log-level", "warning"), env=env, wait="none",
                                      log="inherit"))
        for server in procs:
            server.wait("ready", 90, poll=0.2)
        fleet = Fleet(procs, url, artifacts)
        yield fleet
        for c in fleet.clients:
            c.close()
    finally:
        for server in procs:
            server.stop()


def create_video(client: httpx.Client, steps: int, **headers: str) -> str:
    r = client.post("/v1/videos/generations", json={"prompt": f"fleet {time.time()}", "num_inference_steps": steps},
                    headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/videos/generations/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def assert_never_ran_twice_at_once(fleet: Fleet, job_id: str) -> list[tuple[str, int, str]]:
    """From the event log: every claim is attempt n+1 and follows the end of attempt n."""
    events = fleet.db("SELECT event, attempt, replica FROM job_events WHERE job_id=%s ORDER BY seq", job_id)
    running: int | None = None
    attempt = 0
    for event, number, _replica in events:
        if event == "claimed":
            assert running is None, f"{job_id}: attempt {number} claimed while attempt {running} ran: {events}"
            assert number == attempt + 1, events
            running = attempt = number
        elif event in ("completed", "failed", "cancelled", "requeue", "requeue_free") or event.startswith(
                "lease_expired"):
            if running is not None:
                assert number == running, events
            running = None
    return events


def test_any_replica_answers_any_job_and_nothing_runs_twice(fleet: Fleet) -> None:
    n = len(fleet)
    ids = [create_video(fleet.clients[i % n], steps=8) for i in range(12)]
    for i, job_id in enumerate(ids):
        poller = fleet.clients[(i + 1) % n]  # never the replica that created it
        assert wait_until(lambda j=job_id, c=poller: status(c, j)["status"] in TERMINAL, 90, 0.1)
        assert status(poller, job_id)["status"] == "completed"
        assert status(poller, job_id)["attempts"] == 1
    ran_on = {r for job_id in ids for (event, _a, r) in assert_never_ran_twice_at_once(fleet, job_id)
              if event == "claimed"}
    assert len(ran_on) >= 2, ran_on  # the fleet shared the work
    for i, job_id in enumerate(ids):
        video = fleet.clients[(i + 2) % n].get(f"/v1/videos/generations/{job_id}/download")
        assert video.status_code == 200 and probe_mp4(video.content)["frames"] == FRAMES
    first = [c.get(f"/v1/videos/generations/{ids[0]}/download").content for c in fleet.clients]
    assert first[0] == first[1] == first[2]
    for client in fleet.clients:
        listed = {j["id"] for j in client.get("/v1/videos/jobs", params={"limit": 100}).json()}
        assert set(ids) <= listed


def test_training_job_metrics_logs_and_checkpoints_from_any_replica(fleet: Fleet) -> None:
    a, b, c = fleet.clients
    r = a.post("/v1/jobs", json={"max_steps": 20, "save_interval": 10, "steps_freq": 5}, headers=ORG)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert wait_until(lambda: b.get(f"/v1/jobs/{job_id}", headers=ORG).json()["status"] in TERMINAL, 60, 0.1)
    assert c.get(f"/v1/jobs/{job_id}", headers=ORG).json()["status"] == "completed"
    assert [m["global_step"] for m in b.get(f"/v1/jobs/{job_id}/metrics", headers=ORG).json()
            if m["metric_name"] == "train_loss"] == [5, 10, 15, 20]
    assert "finished" in c.get(f"/v1/jobs/{job_id}/logs", headers=ORG).json()[-1]["message"]
    checkpoints = [x["id"] for x in a.get(f"/v1/jobs/{job_id}/checkpoints", headers=ORG).json()["checkpoints"]]
    assert checkpoints == ["checkpoint-10", "checkpoint-20"]
    for client in fleet.clients:
        zipped = client.get(f"/v1/jobs/{job_id}/checkpoints/checkpoint-20", headers=ORG)
        assert zipped.status_code == 200 and zipped.content[:2] == b"PK"
    assert job_id in {j["id"] for j in c.get("/v1/jobs", headers=ORG).json()["jobs"]}
    assert b.get(f"/v1/jobs/{job_id}", headers={"X-TT-Organization": "globex"}).status_code == 404


def test_cancel_through_one_replica_stops_the_run_on_another_at_once(fleet: Fleet) -> None:
    for _round in range(3):
        job_id = create_video(fleet.clients[0], steps=50)  # 5 s of device time
        assert wait_until(lambda j=job_id: status(fleet.clients[0], j)["progress"] > 0, 30, 0.05)
        (owner,) = fleet.db("SELECT owner FROM jobs WHERE id=%s", job_id)[0]
        runner = int(owner.rsplit("-", 1)[1])
        other = fleet.clients[(runner + 1) % len(fleet)]
        asked = time.monotonic()
        r = other.post(f"/v1/videos/generations/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
        assert wait_until(lambda j=job_id: status(other, j)["status"] == "cancelled", 5, 0.01)
        took = time.monotonic() - asked
        # Renewals (every LEASE_S/3 = 2 s) are only the backstop: the notification stops it sooner.
        assert took < 1.0, f"the run on replica {runner} stopped {took:.2f} s after the cancel"
        print(f"cancel via replica {(runner + 1) % len(fleet)} of a job on replica {runner}: cancelled "
              f"after {took * 1000:.0f} ms")
        events = [e for e, _a, _r in fleet.db("SELECT event, attempt, replica FROM job_events WHERE job_id=%s "
                                              "ORDER BY seq", job_id)]
        assert events[-2:] == ["cancel_requested", "cancelled"]


def test_one_idempotency_key_sent_to_two_replicas_at_once_is_one_job(fleet: Fleet) -> None:
    for attempt in range(3):
        key = f"fleet-key-{attempt}-{time.time()}"
        body = {"prompt": "same request", "num_inference_steps": 4, "seed": attempt}
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(3)

        def send(index: int) -> None:
            with httpx.Client(base_url=fleet.servers[index].url, timeout=30) as client:
                barrier.wait()
                answers.append(client.post("/v1/videos/generations", json=body, headers={"Idempotency-Key": key}))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in answers] == [202, 202, 202], [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert fleet.db("SELECT COUNT(*) FROM jobs WHERE idempotency_key=%s", key) == [(1,)]


def test_kill_9_of_a_replica_its_jobs_run_again_elsewhere(fleet: Fleet) -> None:
    a = fleet.clients[0]
    # 3 replicas × 2 video workers: six run at once, the rest wait in the store.
    long_jobs = [create_video(fleet.clients[i % 3], steps=50) for i in range(6)]  # 5 s each
    queued = [create_video(fleet.clients[i % 3], steps=4) for i in range(3)]

    def owners() -> dict[str, str]:
        return {job_id: owner for job_id, owner in fleet.db(
            "SELECT id, owner FROM jobs WHERE status='in_progress' AND id = ANY(%s)", long_jobs)}

    assert wait_until(lambda: len(owners()) == 6, 30, 0.05), owners()
    victim_name = "replica-2"
    victims = [job_id for job_id, owner in owners().items() if owner == victim_name]
    assert len(victims) == 2, owners()
    assert all(status(a, q)["status"] == "queued" for q in queued)
    victim = fleet.servers[2]
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the replica and its workers, mid-job
    victim.proc.wait(10)
    killed = time.monotonic()

    def taken_over() -> bool:
        return all(status(a, v)["attempts"] == 2 and status(a, v)["status"] != "queued" for v in victims)

    assert wait_until(taken_over, LEASE_S + 20, 0.05)
    takeover = time.monotonic() - killed
    print(f"kill -9 -> both interrupted jobs running again on a survivor after {takeover:.2f} s "
          f"(lease {LEASE_S:g} s, renewed every {LEASE_S / 3:g} s)")
    assert takeover >= LEASE_S / 3  # not before the lease could have expired
    for job_id in [*long_jobs, *queued]:
        assert wait_until(lambda j=job_id: status(a, j)["status"] in TERMINAL, 90, 0.1)
        done = status(fleet.clients[1], job_id)
        assert done["status"] == "completed", done
        assert done["attempts"] == (2 if job_id in victims else 1), (job_id, done)
        assert_never_ran_twice_at_once(fleet, job_id)
        video = fleet.clients[1].get(f"/v1/videos/generations/{job_id}/download")
        assert video.status_code == 200 and probe_mp4(video.content)["frames"] == FRAMES
    for victim_job in victims:
        events = fleet.db("SELECT event, replica FROM job_events WHERE job_id=%s ORDER BY seq", victim_job)
        assert ("claimed", victim_name) in events and ("lease_expired:requeued", victim_name) not in events
        assert [e for e, _r in events].count("claimed") == 2
        assert events[-1][1] != victim_name
