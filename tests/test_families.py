"""One family vocabulary: the spec's `x-ttmedia-family`, FAMILY_ROUTES and the catalog use
exactly the families of ttmedia.runners.types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ttmedia.runners.catalog import CATALOG, FAMILY_ROUTES
from ttmedia.runners.types import FAMILIES

SPEC: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())


def _operations() -> list[tuple[str, dict[str, Any]]]:
    return [(path, op) for path, item in SPEC["paths"].items() for op in item.values() if isinstance(op, dict)]


def test_the_spec_tags_exactly_the_runner_families() -> None:
    assert {op["x-ttmedia-family"] for _, op in _operations() if "x-ttmedia-family" in op} == set(FAMILIES)


def test_family_routes_and_the_catalog_use_the_same_families() -> None:
    assert set(FAMILY_ROUTES) == set(FAMILIES)
    assert {info.family for info in CATALOG.values()} <= set(FAMILIES)


def test_each_family_route_is_in_the_spec_and_gated_by_that_family() -> None:
    for family, routes in FAMILY_ROUTES.items():
        for route in routes:
            assert route in SPEC["paths"], route
            gated = {op["x-ttmedia-family"] for op in SPEC["paths"][route].values()
                     if isinstance(op, dict) and "x-ttmedia-family" in op}
            assert gated <= {family}, (route, gated)
