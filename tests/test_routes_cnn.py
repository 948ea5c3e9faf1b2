"""POST /v1/cnn/search-image: JSON and multipart, real ImageNet labels, deterministic scores."""

from __future__ import annotations

import re

from tests.routes_support import b64, png_bytes
from ttmedia.runners.sim.cnn import labels
from ttmedia.testing import assert_problem

RED = png_bytes(120, 90, (210, 30, 30))
BLUE = png_bytes(120, 90, (30, 60, 220))


def test_json_and_multipart_agree_and_labels_are_imagenet(media_client):
    names = labels()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
    r = media_client.post("/v1/cnn/search-image", json={"prompt": b64(RED), "top_k": 5, "min_confidence": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and len(body["image_data"]) == 1
    item = body["image_data"][0]
    out = item["output"]
    assert len(out["labels"]) == 5 and [names[i] for i in out["indices"]] == out["labels"]
    assert item["top1_class_label"] == out["labels"][0]
    probs = [float(p.rstrip("%")) for p in out["probabilities"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.001
    assert re.fullmatch(r"\d+\.\d\d%", item["top1_class_probability"])
    r = media_client.post("/v1/cnn/search-image", files={"file": ("red.png", RED, "image/png")},
                          data={"top_k": "5", "min_confidence": "0"})
    assert r.status_code == 200 and r.json() == body  # same pixels, same answer
    other = media_client.post("/v1/cnn/search-image", json={"prompt": b64(BLUE), "top_k": 5, "min_confidence": 0})
    assert other.json()["image_data"][0]["output"]["indices"] != out["indices"]


def test_min_confidence_filters_and_verbose_is_csv(media_client):
    item = media_client.post("/v1/cnn/search-image", json={"prompt": b64(RED), "top_k": 10}).json()["image_data"][0]
    top1 = float(item["top1_class_probability"].rstrip("%"))
    assert all(float(p.rstrip("%")) >= 70 for p in item["output"]["probabilities"])  # default 70
    assert len(item["output"]["labels"]) == (1 if top1 >= 70 else 0)
    r = media_client.post("/v1/cnn/search-image", files={"file": ("b.png", BLUE, "image/png")},
                          data={"response_format": "verbose_json", "top_k": "2", "min_confidence": "0"})
    assert r.status_code == 200, r.text
    fields = r.json()["image_data"][0].split(",")
    assert len(fields) == 2 + 3 * 2 and fields[0] == fields[2] and fields[1].endswith("%")


def test_bad_inputs(media_client):
    assert_problem(media_client.post("/v1/cnn/search-image", json={"prompt": "bm90IGFuIGltYWdl"}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/cnn/search-image", files={"file": ("x.png", b"junk", "image/png")}),
                   422, "invalid_request")
    assert_problem(media_client.post("/v1/cnn/search-image", json={"prompt": b64(RED), "top_k": 0}), 422, "invalid_request")
    assert_problem(media_client.post("/v1/cnn/search-image", json={"prompt": b64(RED), "min_confidence": 101}),
                   422, "invalid_request")
    assert_problem(media_client.post("/v1/cnn/search-image", content=b"x", headers={"content-type": "text/plain"}),
                   415, "unsupported_media_type")
