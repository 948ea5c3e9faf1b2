"""SIM_FAULTS: fault injection for device workers.

Grammar (entries separated by commas or semicolons)::

    entry  := [model ":"] fault ["@" group]
    fault  := "init_fail"            warmup raises: the worker never becomes ready
            | "crash_after=" N       the worker process dies on receiving its (N+1)-th request
            | "hang_after=" N        the (N+1)-th request blocks the whole worker (a wedged device)
            | "error_after=" N       every request after the N-th fails with a runner error
            | "crash_rate=" P        each request kills the worker with probability P
            | "error_rate=" P        each request fails with a runner error with probability P
            | "hang_rate=" P         each request wedges the worker with probability P
    group  := "(" id {"," id} ")"    only the worker of that device group

Examples: ``init_fail``, ``Qwen3-8B:crash_after=3@(0)``, ``error_rate=0.05,crash_rate=0.01``.
Counters restart with each worker process, so ``crash_after=3`` crashes every incarnation.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

COUNT_FAULTS = ("crash_after", "hang_after", "error_after")
RATE_FAULTS = ("crash_rate", "error_rate", "hang_rate")
FLAG_FAULTS = ("init_fail",)

_ENTRY = re.compile(
    r"^(?:(?P<model>[^:@=]+):)?(?P<name>[a-z_]+)(?:=(?P<value>[0-9.]+))?(?:@(?P<group>\([0-9, ]+\)))?$"
)


class FaultSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    name: str
    value: float = 0.0
    model: str | None = None
    group: tuple[int, ...] | None = None

    def applies_to(self, model: str, group: tuple[int, ...]) -> bool:
        return (self.model is None or self.model == model) and (self.group is None or self.group == group)


def parse_faults(text: str) -> list[Fault]:
    faults = []
    for raw in re.split(r"[,;](?![^(]*\))", text or ""):
        entry = raw.strip()
        if not entry:
            continue
        m = _ENTRY.match(entry)
        if not m:
            raise FaultSyntaxError(f"SIM_FAULTS: cannot parse {entry!r}")
        name, value = m["name"], m["value"]
        if name in FLAG_FAULTS:
            if value is not None:
                raise FaultSyntaxError(f"SIM_FAULTS: {name} takes no value")
            number = 0.0
        elif name in COUNT_FAULTS + RATE_FAULTS:
            if value is None:
                raise FaultSyntaxError(f"SIM_FAULTS: {name} needs a value, e.g. {name}=3")
            number = float(value)
            if name in RATE_FAULTS and not 0.0 <= number <= 1.0:
                raise FaultSyntaxError(f"SIM_FAULTS: {name} must be between 0 and 1")
        else:
            known = ", ".join(FLAG_FAULTS + COUNT_FAULTS + RATE_FAULTS)
            raise FaultSyntaxError(f"SIM_FAULTS: unknown fault {name!r} (known: {known})")
        group = None
        if m["group"]:
            group = tuple(int(x) for x in m["group"].strip("()").split(",") if x.strip())
        faults.append(Fault(name, number, m["model"].strip() if m["model"] else None, group))
    return faults


class FaultPlan:
    """The faults of one worker incarnation; decides, per request, what goes wrong."""

    def __init__(self, faults: list[Fault], seed: str) -> None:
        self.faults = faults
        self.requests_seen = 0
        self._rng = random.Random(seed)

    @property
    def init_fails(self) -> bool:
        return any(f.name == "init_fail" for f in self.faults)

    def next_request(self) -> str | None:
        """Count one request; return "crash", "hang", "error" or None."""
        self.requests_seen += 1
        for f in self.faults:
            kind = f.name.split("_")[0]
            if f.name in COUNT_FAULTS and self.requests_seen > f.value:
                return kind
            if f.name in RATE_FAULTS and self._rng.random() < f.value:
                return kind
        return None
