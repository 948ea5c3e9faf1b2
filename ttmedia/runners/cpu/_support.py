"""What the CPU runners share: finding model packages, offline mode, CPU thread counts."""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata
from pathlib import Path

INSTALL_HINT = "pip install 'ttmedia[cpu]'"

#: Hugging Face libraries look for updates and files online unless told not to. Nothing may
#: download at run time, so every CPU runner sets these before importing them.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" bars would fill the worker's log
    "TOKENIZERS_PARALLELISM": "false",  # the worker forks nothing, but the warning is noise
}


class ModelPackageMissing(RuntimeError):
    """A Python package that carries the model's code or weights is not installed."""


def go_offline() -> None:
    os.environ.update(OFFLINE_ENV)


def quiet_transformers() -> None:
    """No progress bars from transformers (it reads the variable above only at import)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def require_package(module: str, distribution: str, what: str) -> Path:
    """The directory of an installed package, without importing it (weights packages are data)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"{what} needs the Python package {distribution!r}, which is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, distribution: str, what: str) -> None:
    """Fail with the install hint, before a deep ImportError would, when a library is missing."""
    if importlib.util.find_spec(module) is None:
        raise ModelPackageMissing(
            f"{what} needs the Python package {distribution!r}, which is not installed: {INSTALL_HINT}")


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def cpu_threads(value: object, default: int = 1) -> int:
    """The `threads` option: a positive count, or 0 for every core this process may use."""
    if value in (None, ""):
        return default
    count = int(value)  # type: ignore[call-overload]
    if count < 0:
        raise ValueError(f"threads must be 0 (all cores) or a positive count, not {count}")
    return count or len(os.sched_getaffinity(0))


def set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
    try:
        # Only settable before torch's first parallel region; a second runner in the same
        # process (tests) finds it already set, which is harmless.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
