"""POST /v1/tokenize and /v1/detokenize: exact round trip, no auth, no readiness gate."""

from __future__ import annotations

from tests.helpers import app_client
from ttmedia.testing import assert_problem
from ttmedia.runners.sim import tokenizer

TEXT = "The Tensix core hums. Ünïcode, digits 42 and\ttabs\n\nround-trip!"


def test_round_trip_is_exact_with_token_strings(media_client):
    r = media_client.post("/v1/tokenize", json={"prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tokenizer.encode(TEXT) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 4096 and len(body["token_strs"]) == body["count"]
    assert media_client.post("/v1/tokenize", json={"prompt": TEXT}).json()["token_strs"] is None
    back = media_client.post("/v1/detokenize", json={"tokens": body["tokens"], "model": "Qwen/Qwen3-8B"})
    assert back.status_code == 200 and back.json() == {"prompt": TEXT}


def test_out_of_vocabulary_and_wrong_model(media_client):
    assert_problem(media_client.post("/v1/detokenize", json={"tokens": [tokenizer.vocab_size()]}),
                   422, "invalid_request")
    assert_problem(media_client.post("/v1/detokenize", json={"tokens": [-1]}), 422, "invalid_request")
    # One LLM is served, so any model name reaches it (upstream's clients send "test").
    r = media_client.post("/v1/tokenize", json={"prompt": "x", "model": "nope"})
    assert r.status_code == 200, r.text
    with app_client(models="Qwen3-8B;Llama-3.1-8B-Instruct") as two:
        r = two.post("/v1/detokenize", json={"tokens": [1], "model": "nope"})
        assert_problem(r, 404, "model_not_found")
        assert "Qwen3-8B" in r.json()["detail"] and "Llama-3.1-8B-Instruct" in r.json()["detail"]


def test_no_api_key_and_no_readiness_gate():
    with app_client(ready=False, models="Qwen3-8B", api_key="secret", sim_warmup_seconds=600) as c:
        assert_problem(c.post("/v1/completions", json={"prompt": "hi"}), 401, "unauthorized")
        r = c.post("/v1/completions", json={"prompt": "hi"}, headers={"Authorization": "Bearer secret"})
        assert_problem(r, 503, "warming_up")
        r = c.post("/v1/tokenize", json={"prompt": "the device"})
        assert r.status_code == 200 and r.json()["count"] == 2
        assert c.post("/v1/detokenize", json={"tokens": r.json()["tokens"]}).json() == {"prompt": "the device"}
