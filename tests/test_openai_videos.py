"""OpenAI's Videos API through the official openai SDK against a live server: create_and_poll, then
download_content yields an MP4; list, retrieve, delete; image-to-video by file and by data URI.
The jobs are the same ones /v1/videos/generations serves."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import openai
import pytest
from PIL import Image

from tests.helpers import LiveServer, live_server, wait_until
from ttmedia.media.video import probe_mp4

T2V, I2V = "Wan2.2-T2V-A14B-Diffusers", "Wan2.2-I2V-A14B-Diffusers"
KEY = "video-key"

# The SDK marks the Videos API deprecated (OpenAI's Sora shutdown); the calls work all the same.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server({"MODELS": f"{T2V};{I2V}", "API_KEY": KEY}) as srv:
        yield srv


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 36), (30, 160, 220)).save(buffer, "PNG")
    return buffer.getvalue()


def test_create_and_poll_then_download_content_is_an_mp4(client: openai.OpenAI, server: LiveServer) -> None:
    video = client.videos.create_and_poll(prompt="A paper boat on a rainy street", seconds="4", size="1280x720",
                                          poll_interval_ms=100)
    assert video.object == "video" and video.status == "completed" and video.progress == 100
    assert video.model == T2V and video.seconds == "4" and video.error is None
    assert video.completed_at is not None and video.expires_at is not None and video.expires_at > video.completed_at
    width, height = (int(x) for x in video.size.split("x"))
    assert width > height  # 1280x720 is landscape; the simulated device renders its own pixel area

    content = client.videos.download_content(video.id)
    data = content.read()
    info = probe_mp4(data)
    assert data[4:8] == b"ftyp" and info["codec"] == "h264"
    assert (info["width"], info["height"]) == (width, height)
    assert info["frames"] == 64 and abs(info["duration"] - 4.0) < 0.2  # seconds=4 at 16 fps

    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumbnail.format == "WEBP" and thumbnail.size == (width, height)
    sheet = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.width > width

    # The same job through upstream's routes.
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        job = http.get(f"/v1/videos/generations/{video.id}").json()
        assert job["status"] == "completed" and job["result"]["seconds"] == 4.0
        assert http.get(f"/v1/videos/generations/{video.id}/download").content == data

    listed = [v.id for v in client.videos.list(limit=100)]
    assert video.id in listed
    assert client.videos.retrieve(video.id).id == video.id
    deleted = client.videos.delete(video.id)
    assert deleted.deleted is True and deleted.object == "video.deleted" and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_image_to_video_by_file_by_data_uri_and_as_json(client: openai.OpenAI) -> None:
    png = _png()
    by_file = client.videos.create_and_poll(prompt="The sky turns gold", input_reference=("ref.png", png, "image/png"),
                                            seconds="2", poll_interval_ms=100)
    assert by_file.status == "completed" and by_file.model == I2V
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    # The SDK refuses a dict `input_reference` itself; through extra_body its multipart form carries
    # it as `input_reference[image_url]`.
    created = client.videos.create(prompt="The sky turns gold", seconds="2",
                                   extra_body={"input_reference": {"image_url": data_uri}})
    by_uri = client.videos.poll(created.id, poll_interval_ms=100)
    assert by_uri.status == "completed" and by_uri.model == I2V
    as_json = client.post("/videos", cast_to=openai.types.Video,
                          body={"prompt": "The sky turns gold", "input_reference": {"image_url": data_uri}})
    assert as_json.model == I2V and as_json.status in ("queued", "in_progress", "completed")
    a = client.videos.download_content(by_file.id).read()
    b = client.videos.download_content(by_uri.id).read()
    assert probe_mp4(a)["frames"] == probe_mp4(b)["frames"] == 32


def test_errors_in_openai_terms(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError):  # not an image: 422 before any job exists
        client.videos.create(prompt="x", input_reference=("ref.png", b"not a png", "image/png"))
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e")
    with pytest.raises(openai.NotFoundError):  # not an id at all: names no video
        client.videos.retrieve("video_123")
    # One worker: the first long video runs (120 frames take a second to render), the second waits.
    running = client.videos.create(prompt="A long one", seconds="60")
    waiting = client.videos.create(prompt="Another long one", seconds="60")
    assert wait_until(lambda: client.videos.retrieve(running.id).status == "in_progress", 20, 0.02)
    with pytest.raises(openai.ConflictError):  # running: cancel it first
        client.videos.delete(running.id)
    assert client.videos.retrieve(waiting.id).status == "queued"
    assert client.videos.delete(waiting.id).deleted is True  # queued: cancelled and deleted at once
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(waiting.id)
    page = client.videos.list(order="asc", limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].created_at <= running.created_at
    assert client.videos.poll(running.id, poll_interval_ms=100).status == "completed"
    assert client.videos.delete(running.id).deleted is True
