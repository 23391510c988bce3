"""Request classification: flow key, TTL and SLO from the request's headers.

Header values are validated (length, characters, number format) before they become
metric labels or dictionary keys; a bad one is a 400 naming the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from ._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_FAIRNESS_ID",
    "FAIRNESS_HEADERS",
    "OBJECTIVE_HEADERS",
    "SLO_HEADER",
    "TTL_HEADER",
    "Classification",
    "classify",
]

FAIRNESS_HEADERS: Final = (b"x-gateway-inference-fairness-id", b"x-llm-d-inference-fairness-id")
OBJECTIVE_HEADERS: Final = (b"x-gateway-inference-objective", b"x-llm-d-inference-objective")
TTL_HEADER: Final = b"x-sluicegate-ttl-ms"
SLO_HEADER: Final = b"x-slo-ttft-ms"
DEFAULT_FAIRNESS_ID: Final = "default-flow"

_INTERESTING: Final = frozenset({*FAIRNESS_HEADERS, *OBJECTIVE_HEADERS, TTL_HEADER, SLO_HEADER})
_NAME: Final = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}\Z")
_MILLIS: Final = re.compile(rb"[0-9]{1,10}(?:\.[0-9]{1,3})?\Z")


@final
@dataclass(frozen=True, slots=True)
class Classification:
    """What flow control needs to know about one request."""

    fairness_id: str
    priority: int
    #: The objective named by the client (None when absent); unknown ones map to 0.
    objective: str | None
    #: Seconds it may wait in the queue (None = the configured default).
    ttl: float | None
    #: Seconds from arrival to its TTFT target (None = no target).
    slo: float | None


def _bad(name: bytes, reason: str) -> GatewayError:
    header = name.decode()
    return GatewayError(
        400, f"invalid header {header}: {reason}", code="invalid_header", param=header
    )


def _name(name: bytes, value: bytes) -> str:
    if not _NAME.match(value):
        raise _bad(
            name,
            "use 1-128 characters from A-Z a-z 0-9 . _ : / @ + = -, "
            "starting with a letter or digit",
        )
    return value.decode("ascii")


def _millis(name: bytes, value: bytes, *, positive: bool) -> float:
    if not _MILLIS.match(value):
        raise _bad(name, "expected a number of milliseconds, like 1500")
    ms = float(value)
    if positive and ms <= 0:
        raise _bad(name, "must be > 0 milliseconds")
    return ms / 1000.0


#: A request with none of the headers (frozen: one instance serves them all).
_UNCLASSIFIED: Final = Classification(DEFAULT_FAIRNESS_ID, 0, None, None, None)


def classify(
    headers: list[tuple[bytes, bytes]], objectives: Mapping[str, int], max_ttl: float
) -> Classification:
    """Classify a request from its (lower-case, ASGI) headers.

    Args:
        headers: the ASGI header list.
        objectives: objective name -> priority.
        max_ttl: cap, in seconds, on the TTL a client may ask for.

    Raises:
        GatewayError: a header value is malformed (400, naming the header).
    """
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _INTERESTING and name not in found:
            found[name] = value.strip()
    if not found:
        return _UNCLASSIFIED
    fairness_id = DEFAULT_FAIRNESS_ID
    objective: str | None = None
    for header in FAIRNESS_HEADERS:
        if (raw := found.get(header)) is not None:
            fairness_id = _name(header, raw)
            break
    for header in OBJECTIVE_HEADERS:
        if (raw := found.get(header)) is not None:
            objective = _name(header, raw)
            break
    ttl = slo = None
    if (raw := found.get(TTL_HEADER)) is not None:
        ttl = min(_millis(TTL_HEADER, raw, positive=True), max_ttl)
    if (raw := found.get(SLO_HEADER)) is not None:
        slo = _millis(SLO_HEADER, raw, positive=False)
    priority = objectives.get(objective, 0) if objective is not None else 0
    return Classification(fairness_id, priority, objective, ttl, slo)
