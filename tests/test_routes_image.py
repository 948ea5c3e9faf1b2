"""Image-to-image and edits through HTTP, and multi-model dispatch with per-model readiness."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.helpers import app_client, wait_until
from tests.routes_support import b64, decode_b64_image, png_bytes
from ttmedia.testing import assert_problem

SOURCE = b64(png_bytes(96, 64))


def _pixels(text: str) -> np.ndarray:
    return np.asarray(decode_b64_image(text).convert("RGB"), np.float32)


def test_image_to_image_decodes_and_strength_moves_away_from_the_source(media_client):
    source = np.asarray(decode_b64_image(SOURCE).convert("RGB").resize((512, 512)), np.float32)
    distances = []
    for strength in (0.0, 0.5, 1.0):
        r = media_client.post("/v1/images/image-to-image", json={
            "prompt": "the same scene in winter", "image": SOURCE, "strength": strength, "seed": 3,
            "size": "512x512", "image_return_format": "PNG"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "stable-diffusion-xl-base-1.0" and len(body["images"]) == 1
        img = decode_b64_image(body["images"][0])
        assert img.format == "PNG" and img.size == (512, 512)
        distances.append(float(np.abs(_pixels(body["images"][0]) - source).mean()))
    assert distances[0] < 2.0 < distances[1] < distances[2]


def test_edit_repaints_only_the_white_part_of_the_mask(media_client):
    mask = np.zeros((64, 96), np.uint8)
    mask[:, 48:] = 255  # repaint the right half
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    r = media_client.post("/v1/images/edits", json={
        "prompt": "a red door", "image": SOURCE, "mask": b64(buf.getvalue()), "size": "512x512",
        "image_return_format": "PNG", "number_of_images": 2, "seed": 1})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2 and images[0] != images[1]  # seeds 1 and 2
    out = _pixels(images[0])
    source = np.asarray(decode_b64_image(SOURCE).convert("RGB").resize((512, 512)), np.float32)
    kept = np.abs(out[:, :240] - source[:, :240]).mean()
    repainted = np.abs(out[:, 272:] - source[:, 272:]).mean()
    assert kept < 2.0 and repainted > 10.0



def test_a_large_base64_edit_is_parsed_in_pieces_and_decodes_the_same(media_client):
    from ttmedia.web import large_json

    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)  # noise: the PNG stays large
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=1)
    mask = np.zeros((700, 700), np.uint8)
    mask[:, 350:] = 255
    mask_buf = io.BytesIO()
    Image.fromarray(mask, "L").save(mask_buf, "PNG")
    body = {"prompt": "a red door", "image": b64(buf.getvalue()), "mask": b64(mask_buf.getvalue()),
            "size": "512x512", "image_return_format": "PNG", "seed": 1}
    assert len(body["image"]) > large_json.LARGE_BODY_BYTES
    r = media_client.post("/v1/images/edits", json=body)
    assert r.status_code == 200, r.text
    out = _pixels(r.json()["images"][0])
    source = np.asarray(Image.fromarray(noise).resize((512, 512)), np.float32)
    assert np.abs(out[:, :240] - source[:, :240]).mean() < 2.0  # the kept half is the image sent
    # A control character inside the long string: the body is not JSON, as for a small body.
    raw = json.dumps(body).encode()
    at = raw.index(b'"image": "') + 5000
    bad = raw[:at] + b"\x01" + raw[at + 1:]
    r = media_client.post("/v1/images/edits", content=bad, headers={"Content-Type": "application/json"})
    assert_problem(r, 400, "malformed_body")


def test_undecodable_inputs_are_422_not_500(media_client):
    for bad in ("bm90IGFuIGltYWdl", "%%% not base64 %%%", "data:text/plain;base64,aGVsbG8="):
        r = media_client.post("/v1/images/image-to-image", json={"prompt": "x", "image": bad})
        assert_problem(r, 422, "invalid_request")
    r = media_client.post("/v1/images/edits", json={"prompt": "x", "image": SOURCE, "mask": "bm9wZQ=="})
    body = assert_problem(r, 422, "invalid_request")
    assert "mask" in body["detail"]
    assert_problem(media_client.post("/v1/images/edits", json={"prompt": "x", "image": SOURCE}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/images/image-to-image", json={"prompt": "x", "image": SOURCE, "strength": 2}),
                   422, "invalid_request")


def test_two_image_models_dispatch_by_model_and_warm_independently():
    models = "stable-diffusion-xl-base-1.0;FLUX.1-schnell;Z-Image-Turbo~warmup=600;Qwen3-8B"
    with app_client(ready=False, models=models) as c:
        def served() -> dict[str, bool]:
            return {m["id"]: m["ready"] for m in c.get("/v1/models").json()["data"]}
        assert wait_until(lambda: served() == {"stable-diffusion-xl-base-1.0": True, "FLUX.1-schnell": True,
                                               "Z-Image-Turbo": False, "Qwen3-8B": True})
        body = {"prompt": "a lighthouse", "num_inference_steps": 4, "size": "512x512"}
        # FLUX accepts 4 steps, SDXL needs 12: each request meets its own model's rules.
        r = c.post("/v1/images/generations", json={**body, "model": "FLUX.1-schnell"})
        assert r.status_code == 200 and r.json()["model"] == "FLUX.1-schnell"
        assert decode_b64_image(r.json()["images"][0]).size == (512, 512)
        assert_problem(c.post("/v1/images/generations", json=body), 422, "invalid_request")  # default: SDXL
        r = c.post("/v1/images/image-to-image", json={"prompt": "x", "image": SOURCE, "size": "512x512",
                                                      "model": "black-forest-labs/FLUX.1-schnell"})
        assert r.status_code == 200 and r.json()["model"] == "FLUX.1-schnell"
        # The warming model answers 503 for itself only; its family and other families keep serving.
        problem = assert_problem(c.post("/v1/images/generations", json={**body, "model": "Z-Image-Turbo"}),
                                 503, "warming_up")
        assert problem["model"] == "Z-Image-Turbo"
        assert c.post("/v1/images/generations", json={**body, "num_inference_steps": 12}).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
        assert_problem(c.get("/health"), 503, "warming_up")
        routes = {m["id"]: m["routes"] for m in c.get("/v1/models").json()["data"]}
        assert "/v1/images/edits" in routes["FLUX.1-schnell"] and "/v1/tokenize" in routes["Qwen3-8B"]
