"""Image-to-image and edits through HTTP, and multi-model dispatch with per-model readiness."""

from __future__ import annotations

import io

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
