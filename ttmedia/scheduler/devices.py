"""Device groups and the MODELS setting: which model runs on which TT devices.

`(0),(1)` is two groups of one device each; `(0,1),(2,3)` is two groups of two. One worker
process serves each group. MODELS lists models with optional groups:
`stable-diffusion-xl-base-1.0@(0),(1);Qwen3-8B@(2)`. A model without groups gets the next free
device. Unset, one simulated model per implemented family is served.

An entry may end in options after `~`: `FLUX.1-schnell@(1)~warmup=30` overrides that model's
warmup (seconds, unscaled, winning over SIM_WARMUP_SECONDS), e.g. to watch one model warm
while the others serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ttmedia.runners import registry
from ttmedia.runners.catalog import CATALOG, ModelInfo, lookup
from ttmedia.settings import Settings

DeviceGroup = tuple[int, ...]

#: The model served for each implemented family when MODELS and MODEL are unset.
#: Six workers in all: the machines this is developed on have two cores.
DEFAULT_MODELS = ("stable-diffusion-xl-base-1.0", "Qwen3-8B", "bge-m3", "resnet-50", "whisper-large-v3",
                  "speecht5_tts")

_GROUP = re.compile(r"\(\s*(\d+(?:\s*,\s*\d+)*)\s*\)")


class ConfigError(ValueError):
    """A setting that cannot be served; the message says what to change."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    info: ModelInfo
    groups: tuple[DeviceGroup, ...]
    warmup_s: float | None = None  # `~warmup=` override from MODELS

    @property
    def family(self) -> str:
        return self.info.family


def parse_groups(text: str) -> list[DeviceGroup]:
    text = text.strip()
    if not text:
        return []
    groups = [tuple(int(d) for d in m.group(1).split(",")) for m in _GROUP.finditer(text)]
    leftover = _GROUP.sub("", text).replace(",", "").strip()
    if not groups or leftover:
        raise ConfigError(f"cannot parse device groups {text!r}; expected e.g. (0),(1) or (0,1),(2,3)")
    return groups


def format_group(group: DeviceGroup) -> str:
    return ",".join(str(d) for d in group)


def _options(text: str) -> dict[str, float]:
    """`warmup=30` → {"warmup": 30.0}; only known options, so a typo is an error, not ignored."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split("~"))):
        key, _, value = item.partition("=")
        if key.strip() != "warmup":
            raise ConfigError(f"unknown MODELS option {item!r}; known: warmup=<seconds>")
        try:
            out["warmup"] = float(value)
        except ValueError:
            raise ConfigError(f"MODELS option {item!r} needs a number of seconds") from None
        if out["warmup"] < 0:
            raise ConfigError(f"MODELS option {item!r} must not be negative")
    return out


def _entries(settings: Settings) -> list[tuple[str, str, dict[str, float]]]:
    if settings.models.strip():
        out = []
        for entry in settings.models.split(";"):
            if entry.strip():
                main, _, options = entry.partition("~")
                name, _, groups = main.partition("@")
                out.append((name.strip(), groups, _options(options)))
        return out
    if settings.model.strip():
        return [(settings.model.strip(), settings.device_ids or "(0)", {})]
    return [(name, "", {}) for name in DEFAULT_MODELS]


def served_models(settings: Settings) -> list[ServedModel]:
    """Resolve MODELS / MODEL / defaults into served models with disjoint device groups."""
    runners = registry.available()
    models: list[ServedModel] = []
    used: set[int] = set()
    pending: list[tuple[ModelInfo, list[DeviceGroup], dict[str, float]]] = []
    for name, group_text, options in _entries(settings):
        info = lookup(name)
        if info is None:
            raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOG))}")
        if info.runner not in runners:
            raise ConfigError(
                f"model {name!r} needs runner {info.runner!r}, which is not installed "
                f"(installed runners: {', '.join(sorted(runners))})"
            )
        if any(m.name == info.name for m, _, _ in pending):
            raise ConfigError(f"model {info.name!r} is listed twice")
        groups = parse_groups(group_text)
        for group in groups:
            clash = used.intersection(group)
            if clash:
                raise ConfigError(f"device {sorted(clash)[0]} is assigned to more than one worker")
            used.update(group)
        pending.append((info, groups, options))
    next_free = 0
    for info, groups, options in pending:
        if not groups:
            while next_free in used:
                next_free += 1
            groups = [(next_free,)]
            used.add(next_free)
        display = settings.served_model_name if (settings.served_model_name and len(pending) == 1) else info.name
        models.append(ServedModel(display, info, tuple(groups), options.get("warmup")))
    return models
