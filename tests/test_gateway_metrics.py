"""/metrics carries the Gateway API Inference Extension's model-server gauges with vLLM's names and
meaning: `vllm:num_requests_waiting` (queued in the scheduler) and `vllm:num_requests_running`
(on the devices), per model, beside ttmedia's own."""

from __future__ import annotations

import threading
from typing import Any

from tests.helpers import app_client, wait_until
from ttmedia.testing import metric_value

SDXL = "stable-diffusion-xl-base-1.0"


def gauge(text: str, name: str, model: str) -> float | None:
    return metric_value(text, name, model_name=model)


def test_waiting_and_running_follow_the_scheduler() -> None:
    # One SDXL worker at real simulated speed: 12 steps ≈ 1.4 s a request, one at a time.
    with app_client(models=SDXL, sim_speed=1.0) as c:
        text = c.get("/metrics").text
        assert gauge(text, "vllm:num_requests_waiting", SDXL) == 0
        assert gauge(text, "vllm:num_requests_running", SDXL) == 0
        assert "# TYPE vllm:num_requests_waiting gauge" in text and "ttmedia_queue_depth" in text
        answers: list[Any] = []

        def generate(seed: int) -> None:
            answers.append(c.post("/v1/images/generations",
                                  json={"prompt": "gauges", "num_inference_steps": 12, "seed": seed}))

        threads = [threading.Thread(target=generate, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()

        def busy() -> bool:
            text = c.get("/metrics").text
            return (gauge(text, "vllm:num_requests_running", SDXL) == 1
                    and gauge(text, "vllm:num_requests_waiting", SDXL) == 2)

        assert wait_until(busy, 10, 0.02)
        for t in threads:
            t.join()
        assert [r.status_code for r in answers] == [200, 200, 200]
        text = c.get("/metrics").text
        assert gauge(text, "vllm:num_requests_running", SDXL) == 0
        assert gauge(text, "vllm:num_requests_waiting", SDXL) == 0
