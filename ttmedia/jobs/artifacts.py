"""Where job outputs (MP4s, checkpoint zips) live, and how a download reads them.

The job store records each artifact's `uri`; downloads resolve that uri here, so the store,
not the replica's local disk, says where a file is. Today's implementation is a directory
(`ARTIFACT_DIR`, default DATA_DIR): one host's disk, or a ReadWriteMany volume that every
replica mounts. Uris are relative (`file:jobs/<job id>/<name>`), so replicas may mount the
volume at different paths.

The interface is what an object store (S3-compatible) would implement as well:
* `staging_dir(job)`: a local directory the runner writes into (worker processes write files;
  for S3 it would be local scratch space);
* `publish(job, name)`: the run's file becomes an artifact (for S3: upload, then drop the scratch
  copy) and its (uri, size) go to the store;
* `open(uri)`: a reader with `size` and byte-range `chunks` (for S3: GET with a Range header);
* `remove(job)`: every artifact of a job (for S3: delete the prefix).
Every call that touches the disk runs on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

from ttmedia.jobs.models import valid_job_id

_CHUNK = 256 * 1024
#: Below this much free space, a failed run is taken to have failed for want of space.
LOW_SPACE_BYTES = 256 * 1024
_FULL_MESSAGES = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), f"[Errno {errno.ENOSPC}]")


class ArtifactReader(ABC):
    size: int

    @abstractmethod
    def chunks(self, first: int, last: int) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def close(self) -> None: ...


class ArtifactStore(ABC):
    @abstractmethod
    def staging_dir(self, job_id: str) -> Path: ...

    @abstractmethod
    async def publish(self, job_id: str, name: str) -> tuple[str, int]:
        """(uri, size) of the file the run wrote at staging_dir(job_id)/name; raises if missing."""

    @abstractmethod
    async def open(self, uri: str) -> ArtifactReader | None:
        """An open reader, or None if the artifact is gone."""

    @abstractmethod
    async def remove(self, job_id: str) -> None: ...

    def out_of_space(self, job_id: str, message: str) -> bool:
        """Whether a run that failed with `message` failed because its output had no room."""
        return any(text in message for text in _FULL_MESSAGES)


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def staging_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):  # the last line of defence against path traversal
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / "jobs" / job_id

    def uri(self, job_id: str, name: str) -> str:
        return f"file:jobs/{job_id}/{name}"

    def path(self, uri: str) -> Path:
        relative = uri.removeprefix("file:")
        parts = Path(relative).parts
        if len(parts) < 3 or parts[0] != "jobs" or not valid_job_id(parts[1]) or ".." in parts:
            raise ValueError(f"not an artifact uri of this store: {uri!r}")
        return self.root / relative

    async def publish(self, job_id: str, name: str) -> tuple[str, int]:
        path = self.staging_dir(job_id) / name
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        return self.uri(job_id, name), size

    async def open(self, uri: str) -> ArtifactReader | None:
        path = self.path(uri)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        # The descriptor is held from here to the last byte: the file cannot vanish mid-download.
        return _FileReader(fd, os.fstat(fd).st_size)

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.staging_dir(job_id), True)

    def out_of_space(self, job_id: str, message: str) -> bool:
        if super().out_of_space(job_id, message):
            return True
        with contextlib.suppress(OSError):
            st = os.statvfs(self.staging_dir(job_id))
            return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES
        return False


class _FileReader(ArtifactReader):
    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    async def chunks(self, first: int, last: int) -> AsyncIterator[bytes]:
        offset = first
        try:
            while offset <= last:
                chunk = await asyncio.to_thread(os.pread, self.fd, min(_CHUNK, last - offset + 1), offset)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
