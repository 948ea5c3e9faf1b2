"""POST /v1/embeddings through HTTP: OpenAI shape, unit vectors, dimensions, base64, token input."""

from __future__ import annotations

import base64

import numpy as np

from ttmedia.testing import assert_problem


def _vectors(body: dict) -> list[np.ndarray]:
    return [np.asarray(d["embedding"], np.float32) for d in body["data"]]


def test_list_input_gives_unit_vectors_in_order_with_usage(media_client):
    texts = ["A quiet river at night", "A quiet river after dark", "Compile the Tensix kernel"]
    r = media_client.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "bge-m3"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    a, b, c = _vectors(body)
    assert a.shape == (1024,)
    for v in (a, b, c):
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    # Texts sharing words are closer than unrelated ones.
    assert float(a @ b) > float(a @ c) + 0.2
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_deterministic_and_dimensions_shorten_the_same_vector(media_client):
    full = _vectors(media_client.post("/v1/embeddings", json={"input": "golden light"}).json())[0]
    again = _vectors(media_client.post("/v1/embeddings", json={"input": "golden light"}).json())[0]
    assert np.array_equal(full, again)
    short = _vectors(media_client.post("/v1/embeddings", json={"input": "golden light", "dimensions": 64}).json())[0]
    assert short.shape == (64,) and abs(float(np.linalg.norm(short)) - 1.0) < 1e-4
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)


def test_base64_is_little_endian_float32_of_the_float_answer(media_client):
    as_float = media_client.post("/v1/embeddings", json={"input": ["tile mesh"], "dimensions": 32}).json()
    r = media_client.post("/v1/embeddings", json={"input": ["tile mesh"], "dimensions": 32,
                                                  "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(decoded, np.asarray(as_float["data"][0]["embedding"], np.float32))


def test_token_id_inputs_embed_like_their_text(media_client):
    tokens = media_client.post("/v1/tokenize", json={"prompt": "warm stone"}).json()["tokens"]
    by_text = media_client.post("/v1/embeddings", json={"input": "warm stone"}).json()
    by_ids = media_client.post("/v1/embeddings", json={"input": tokens}).json()
    by_lists = media_client.post("/v1/embeddings", json={"input": [tokens, tokens]}).json()
    assert by_ids["data"][0]["embedding"] == by_text["data"][0]["embedding"]
    assert len(by_lists["data"]) == 2 and by_ids["usage"]["prompt_tokens"] == len(tokens)


def test_invalid_requests(media_client):
    assert_problem(media_client.post("/v1/embeddings", json={"input": "x", "dimensions": 4096}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/embeddings", json={"input": "x", "dimensions": 0}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/embeddings", json={"input": [10 ** 6]}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}),
                   422, "invalid_request")
    # One embedding model is served: any name reaches it, and the answer names the model that served.
    served = media_client.post("/v1/embeddings", json={"input": "x", "model": "Qwen3-8B"})
    assert served.status_code == 200 and served.json()["model"] != "Qwen3-8B"
