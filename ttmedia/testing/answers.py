"""Reading a server's answers in tests: problem+json bodies and Prometheus samples.

One copy of each, shared by tests/, contract/ and bench/, so a change to the problem shape or the
metrics format is fixed in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def assert_problem(response: Any, status: int, reason: str) -> dict[str, Any]:
    """`response` (httpx's or Starlette's) is an RFC 9457 problem with this status and ttmedia `reason`;
    returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["reason"] == reason and isinstance(body["detail"], str), body
    return body


def samples(text: str | bytes) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition. A real parser, not a
    line split: a malformed exposition raises instead of reading as zero."""
    from prometheus_client.parser import text_string_to_metric_families  # only when a test reads metrics

    if isinstance(text, bytes):
        text = text.decode("utf-8")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def metric_value(text: str | bytes, name: str, **labels: str) -> float | None:
    """The sum of the samples called `name` whose labels include `labels`; None if there is none
    (so a missing series never passes for a zero)."""
    matched = [value for sample_name, sample_labels, value in samples(text)
               if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())]
    return sum(matched) if matched else None
