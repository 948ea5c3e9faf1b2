"""Device groups and the MODELS setting: which model runs on which TT devices, with which runner.

`(0),(1)` is two groups of one device each; `(0,1),(2,3)` is two groups of two. One worker
process serves each group. MODELS lists models separated by `;`:

    NAME[=RUNNER][@GROUPS][~KEY=VALUE...]

* NAME: a catalog model (docs/models.md), which brings its family, runner and options; or any
  other name, which then needs `~family=F`.
* RUNNER: a registered runner name (`faster-whisper`, `sim-llm`, an entry point of an installed
  package) or an import target `package.module:Class`. Default: the catalog's runner.
* GROUPS: the device groups, e.g. `@(0),(1)`. A model without groups gets the next free device.
* `~key=value` options go to the runner (`~model_path=/models/qwen`); values that read as
  numbers or true/false become those. The server itself reads `family`, `warmup` (expected
  warmup in seconds: what a simulator takes, what Retry-After estimates for a real model) and
  `max_batch_size`.

Unset, one model per family is served: the real CPU model where its packages are installed
(the `cpu` extra), the simulated one otherwise. MODEL (with DEVICE_IDS and MODEL_RUNNER) is
upstream's single-model form of the same.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ttmedia.runners import registry
from ttmedia.runners.catalog import CATALOG, ModelInfo, Timing, lookup
from ttmedia.runners.types import FAMILIES
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.scheduler")

DeviceGroup = tuple[int, ...]

#: The model served for each family when MODELS and MODEL are unset, with the simulated model
#: that stands in when the real one's packages are missing. Eight workers in all.
DEFAULT_MODELS: tuple[tuple[str, str | None], ...] = (
    ("stable-diffusion-xl-base-1.0", None),
    ("Qwen3-8B", None),
    ("all-MiniLM-L6-v2", "bge-m3"),
    ("resnet-50", None),
    ("whisper-base", "whisper-large-v3"),
    ("espeak-ng", "speecht5_tts"),
    ("Wan2.2-T2V-A14B-Diffusers", None),
    ("Llama-3.2-3B-Instruct", None),
)

#: Expected warmup of a model the catalog does not know, until it says otherwise (`~warmup=`).
UNKNOWN_WARMUP_S = 10.0

#: Options the server reads; every other option is the runner's.
SERVER_OPTIONS = ("family", "warmup", "max_batch_size", "max_batch_delay_ms")

_GROUP = re.compile(r"\(\s*(\d+(?:\s*,\s*\d+)*)\s*\)")


class ConfigError(ValueError):
    """A setting that cannot be served; the message says what to change."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    info: ModelInfo  # family, runner and options, with MODELS' choices applied
    groups: tuple[DeviceGroup, ...]
    warmup_s: float | None = None  # `~warmup=` override from MODELS
    runner_target: str = ""  # `module:Class` of the runner
    simulated: bool = False
    max_batch_size: int | None = None  # None: what the runner asks for
    max_batch_delay_ms: float = 0.0  # how long a partial batch may wait for more requests
    missing: tuple[str, ...] = field(default=())  # Python packages the runner needs and cannot import

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def runner(self) -> str:
        return self.info.runner


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


def _value(text: str) -> Any:
    """Option values: integers, numbers and true/false as such, anything else as text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _options(items: list[str], entry: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in items)):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"MODELS entry {entry!r}: option {item!r} must be key=value")
        out[key] = _value(value.strip())
    if "warmup" in out and (not isinstance(out["warmup"], int | float) or out["warmup"] < 0):
        raise ConfigError(f"MODELS entry {entry!r}: warmup must be a number of seconds >= 0")
    if "max_batch_size" in out and (not isinstance(out["max_batch_size"], int) or out["max_batch_size"] < 1):
        raise ConfigError(f"MODELS entry {entry!r}: max_batch_size must be a whole number >= 1")
    if "max_batch_delay_ms" in out and (not isinstance(out["max_batch_delay_ms"], int | float)
                                        or out["max_batch_delay_ms"] < 0):
        raise ConfigError(f"MODELS entry {entry!r}: max_batch_delay_ms must be a number of milliseconds >= 0")
    if "family" in out and out["family"] not in FAMILIES:
        raise ConfigError(f"MODELS entry {entry!r}: unknown family {out['family']!r}; "
                          f"known: {', '.join(FAMILIES)}")
    return out


@dataclass
class _Entry:
    name: str
    runner: str | None
    groups: str
    options: dict[str, Any]


def _entries(settings: Settings) -> list[_Entry]:
    if settings.models.strip():
        out = []
        for raw in settings.models.split(";"):
            if raw.strip():
                main, *options = raw.split("~")
                head, _, groups = main.partition("@")
                name, _, runner = head.partition("=")
                out.append(_Entry(name.strip(), runner.strip() or None, groups, _options(options, raw.strip())))
        return out
    if settings.model.strip():
        return [_Entry(settings.model.strip(), settings.model_runner.strip() or None, settings.device_ids or "(0)", {})]
    return [_Entry(name, None, "", {}) for name in _default_models()]


def _default_models() -> list[str]:
    chosen = []
    for name, stand_in in DEFAULT_MODELS:
        missing = _missing_packages(CATALOG[name].runner)
        if missing and stand_in:
            log.warning("%s needs the Python package(s) %s (pip install 'ttmedia[cpu]'); serving the "
                        "simulated %s instead", name, ", ".join(missing), stand_in)
            chosen.append(stand_in)
        else:
            chosen.append(name)
    return chosen


def _missing_packages(runner: str) -> tuple[str, ...]:
    try:
        cls = registry.load(runner)
    except (registry.UnknownRunner, ImportError):
        return (runner,)
    return tuple(pkg for pkg in cls.requires if importlib.util.find_spec(pkg) is None)


def _resolve(entry: _Entry) -> tuple[ModelInfo, str, bool, tuple[str, ...]]:
    """The entry's model info (runner chosen, options merged), the runner's import target,
    whether it is simulated, and the packages it misses."""
    info = lookup(entry.name)
    options = entry.options
    if info is None:
        if "family" not in options:
            raise ConfigError(
                f"unknown model {entry.name!r}: name a catalog model ({', '.join(sorted(CATALOG))}) or give "
                f"its family and runner, e.g. {entry.name}=RUNNER~family=llm")
        if entry.runner is None:
            raise ConfigError(f"model {entry.name!r} is not in the catalog: say which runner serves it "
                              f"({entry.name}=RUNNER)")
        info = ModelInfo(entry.name, str(options["family"]), entry.runner,
                         Timing(float(options.get("warmup", UNKNOWN_WARMUP_S))), entry.name, {})
    elif "family" in options and options["family"] != info.family:
        raise ConfigError(f"model {info.name!r} is a {info.family} model; ~family={options['family']} "
                          f"does not apply to it")
    runner = entry.runner or info.runner
    try:
        cls = registry.load(runner)
    except registry.UnknownRunner as exc:
        raise ConfigError(f"model {entry.name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an import error in a runner module is a setting to fix
        raise ConfigError(f"model {entry.name!r}: runner {runner!r} cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from None
    if cls.family is not None and cls.family != info.family:
        raise ConfigError(f"model {entry.name!r} is a {info.family} model, but runner {runner!r} serves "
                          f"the {cls.family} family")
    runner_options = {k: v for k, v in options.items() if k not in SERVER_OPTIONS}
    info = replace(info, runner=runner, options={**info.options, **runner_options})
    missing = tuple(pkg for pkg in cls.requires if importlib.util.find_spec(pkg) is None)
    return info, f"{cls.__module__}:{cls.__qualname__}", cls.simulated, missing


def served_models(settings: Settings) -> list[ServedModel]:
    """Resolve MODELS / MODEL / defaults into served models with disjoint device groups."""
    models: list[ServedModel] = []
    used: set[int] = set()
    pending: list[tuple[_Entry, ModelInfo, str, bool, tuple[str, ...], list[DeviceGroup]]] = []
    for entry in _entries(settings):
        info, target, simulated, missing = _resolve(entry)
        if any(other.name == info.name for _, other, *_ in pending):
            raise ConfigError(f"model {info.name!r} is listed twice")
        groups = parse_groups(entry.groups)
        for group in groups:
            clash = used.intersection(group)
            if clash:
                raise ConfigError(f"device {sorted(clash)[0]} is assigned to more than one worker")
            used.update(group)
        pending.append((entry, info, target, simulated, missing, groups))
    # Precedence for both batch limits: the MODELS entry, then the environment setting when it
    # is set, then the catalog's choice for the model, then the runner's (or none).
    explicit_batch = settings.max_batch_size if "max_batch_size" in settings.model_fields_set else None
    explicit_delay = settings.max_batch_delay_ms if "max_batch_delay_ms" in settings.model_fields_set else None
    next_free = 0
    for entry, info, target, simulated, missing, groups in pending:
        if not groups:
            while next_free in used:
                next_free += 1
            groups = [(next_free,)]
            used.add(next_free)
        display = settings.served_model_name if (settings.served_model_name and len(pending) == 1) else info.name
        batch = entry.options.get("max_batch_size") or explicit_batch or info.options.get("max_batch_size")
        delay = next((d for d in (entry.options.get("max_batch_delay_ms"), explicit_delay,
                                  info.options.get("max_batch_delay_ms")) if d is not None), 0.0)
        warmup = entry.options.get("warmup")
        models.append(ServedModel(display, info, tuple(groups), None if warmup is None else float(warmup),
                                  target, simulated, int(batch) if batch else None, float(delay), missing))
    return models
