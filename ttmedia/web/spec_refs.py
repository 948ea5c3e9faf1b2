"""Following local `$ref`s in the parsed spec (JSON Pointer, RFC 6901), shared by the served-spec
narrowing and the handler-stub generator."""

from __future__ import annotations

from typing import Any

#: Far more than the spec's deepest chain; a longer one can only be a cycle.
MAX_HOPS = 32


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """`node`, or what its `#/...` reference (and theirs, in turn) points at."""
    for _ in range(MAX_HOPS):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/")):
            return node
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    raise ValueError("a $ref cycle")
