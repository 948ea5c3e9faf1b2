"""Upstream's unversioned routes (`/tokenize`, `/image/*`, `/cnn/*`, `/audio/*`, `/video/*`): the
same handlers as their /v1 successors under their own operationIds (`legacy_<operationId>`).

The Deprecation, Sunset and Link headers every answer on these paths carries are added by
ttmedia.web.deprecation.DeprecationHeaders, so errors (401, 404, 503) carry them too.
"""

from __future__ import annotations

from ttmedia.handlers.audio import create_transcription as legacy_create_transcription
from ttmedia.handlers.audio import create_translation as legacy_create_translation
from ttmedia.handlers.cnn import search_image as legacy_search_image
from ttmedia.handlers.images import create_image as legacy_create_image
from ttmedia.handlers.images import create_image_edit as legacy_create_image_edit
from ttmedia.handlers.images import create_image_to_image as legacy_create_image_to_image
from ttmedia.handlers.speech import create_speech as legacy_create_speech
from ttmedia.handlers.text import detokenize as legacy_detokenize
from ttmedia.handlers.text import tokenize as legacy_tokenize
from ttmedia.handlers.videos import cancel_video_generation as legacy_cancel_video_generation
from ttmedia.handlers.videos import create_video_generation as legacy_create_video_generation
from ttmedia.handlers.videos import create_video_generation_i2v as legacy_create_video_generation_i2v
from ttmedia.handlers.videos import create_video_generation_i2v_upload as legacy_create_video_generation_i2v_upload
from ttmedia.handlers.videos import download_video_generation as legacy_download_video_generation
from ttmedia.handlers.videos import get_video_generation as legacy_get_video_generation
from ttmedia.handlers.videos import list_video_jobs as legacy_list_video_jobs

__all__ = [
    "legacy_cancel_video_generation", "legacy_create_image", "legacy_create_image_edit",
    "legacy_create_image_to_image", "legacy_create_speech", "legacy_create_transcription",
    "legacy_create_translation", "legacy_create_video_generation", "legacy_create_video_generation_i2v",
    "legacy_create_video_generation_i2v_upload", "legacy_detokenize", "legacy_download_video_generation",
    "legacy_get_video_generation", "legacy_list_video_jobs", "legacy_search_image", "legacy_tokenize",
]
