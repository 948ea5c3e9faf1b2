"""Runner registry: names → Runner classes, from the `ttmedia.runners` entry-point group.

Real TT runners live in their own distribution and register under the same group, e.g.
`[project.entry-points."ttmedia.runners"] tt-sdxl-trace = "tt_runners.sdxl:SDXLRunner"`.
The built-in simulated runners are listed here too, so a source checkout works uninstalled.
"""

from __future__ import annotations

import importlib

from ttmedia.runners.base import Runner

BUILTIN: dict[str, str] = {
    "sim-llm": "ttmedia.runners.sim.llm:SimLLMRunner",
    "sim-image": "ttmedia.runners.sim.image:SimImageRunner",
    "sim-embedding": "ttmedia.runners.sim.embedding:SimEmbeddingRunner",
    "sim-cnn": "ttmedia.runners.sim.cnn:SimCNNRunner",
    "sim-whisper": "ttmedia.runners.sim.whisper:SimWhisperRunner",
    "sim-tts": "ttmedia.runners.sim.tts:SimTTSRunner",
    "sim-video": "ttmedia.runners.sim.video:SimVideoRunner",
    "sim-trainer": "ttmedia.runners.sim.trainer:SimTrainerRunner",
    # Real models on the CPU (the `cpu` extra: pip install 'ttmedia[cpu]').
    "faster-whisper": "ttmedia.runners.cpu.whisper:FasterWhisperRunner",
    "espeak-ng": "ttmedia.runners.cpu.espeak:ESpeakRunner",
    "sentence-transformers": "ttmedia.runners.cpu.sentence:SentenceTransformerRunner",
    "hf-causal-lm": "ttmedia.runners.cpu.hf_llm:HFCausalLMRunner",
}


class UnknownRunner(LookupError):
    pass


def available() -> dict[str, str]:
    """Every runner name with its import target."""
    from importlib.metadata import entry_points  # 20 ms to import: only when a name is not built in

    found = dict(BUILTIN)
    for ep in entry_points(group="ttmedia.runners"):
        found.setdefault(ep.name, ep.value)
    return found


def target_of(name: str) -> str:
    """The `module:Class` import target of a runner name (or of a target, which is its own)."""
    if ":" in name:
        return name
    # Built-in names need no entry-point scan: reading every installed distribution's metadata
    # costs ~0.1 s, paid by every worker at start-up.
    target = BUILTIN.get(name) or available().get(name)
    if target is None:
        raise UnknownRunner(f"no runner named {name!r}; known: {', '.join(sorted(available()))} "
                            "(or give an import target, package.module:Class)")
    return target


def load(name: str) -> type[Runner]:
    """The Runner class of a registered name or a `package.module:Class` import target."""
    target = target_of(name)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UnknownRunner(f"runner {name!r} cannot be imported: no module {module_name!r}") from None
        raise
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise UnknownRunner(f"runner {name!r}: {target} is not a ttmedia Runner subclass")
    return cls
