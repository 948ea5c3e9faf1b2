"""ruff's default rules (pyflakes and the E4/E7/E9 errors) hold across the tree, and mypy finds no
type error in the package (its configuration is pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "ttmedia", "contract", "bench", "tests"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    mypy = shutil.which("mypy") or str(Path(sys.executable).parent / "mypy")
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_spec_has_no_duplicated_mapping_keys():
    # PyYAML keeps the last of two equal keys silently; every JS tool (Redocly, openapi-typescript)
    # refuses the file. Two branches adding the same key in different places did exactly that.
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            assert key not in seen, f"openapi.yaml:{key_node.start_mark.line + 1}: {key!r} appears twice"
            seen[key] = True
        return yaml.SafeLoader.construct_mapping(loader, node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load((ROOT / "openapi.yaml").read_text(), Loader=StrictLoader)  # noqa: S506 - a SafeLoader
