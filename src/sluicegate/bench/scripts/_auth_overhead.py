"""What authentication and per-tenant limits add per request (issue 14: <= 10 us).

Measures, in one process and interleaved rounds, the code a request runs with auth on
against the same request with auth off (mode open, no tenants):

* gateway side: `Auth.classify` in mode keys (bearer parse, SHA-256, dict lookup,
  objective check, token budget) plus the forwarded-header rewrite and the two budget
  charges, against `Auth.classify` in mode open (today's `classify`);
* core side: a scheduler submit -> dispatch -> release cycle for a tenant with
  `max_in_flight`/`max_queued` (counted, checked) against one without tenants, with 500
  other tenants parked at their ceiling in the same band (so the figure also shows
  that blocked tenants cost nothing per dispatch).

Usage:
    python benchmarks/auth_overhead.py [--rounds 7] [--n 20000]

Prints per-request microseconds (median over rounds) for each side, on and off, the
difference and the same-run ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import TYPE_CHECKING, Any

import sluicegate as sg
from sluicegate._core._scheduler import Scheduler
from sluicegate.gateway._auth import Auth, AuthSettings
from sluicegate.testing import ManualDetector

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

OBJECTIVES = {"interactive": 10, "standard": 0, "batch": -10}
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-team-a-0123456789abcdef0123456789abcdef"),
    (b"x-gateway-inference-objective", b"standard"),
    (b"content-length", b"120"),
]


def _auth(mode: str) -> Auth:
    keys = [
        {
            "key_sha256": hashlib.sha256(f"sk-team-{i}".encode()).hexdigest(),
            "tenant": f"team-{i}",
            "max_in_flight": 8,
            "tokens_per_minute": 10**9,
        }
        for i in range(1000)
    ]
    keys.append(
        {
            "key_sha256": hashlib.sha256(HEADERS[2][1][7:]).hexdigest(),
            "tenant": "team-a",
            "objectives": ["standard", "batch"],
            "max_in_flight": 8,
            "max_queued": 100,
            "tokens_per_minute": 10**12,
        }
    )
    section: dict[str, Any] = {"mode": mode, "keys": keys} if mode == "keys" else {}
    return Auth(AuthSettings.model_validate(section), OBJECTIVES, {"default": None})


def gateway_side(auth: Auth, n: int) -> float:
    """Seconds per request of what `_inference` runs for auth."""
    scope: dict[str, Any] = {"headers": HEADERS, "client": ("127.0.0.1", 5000)}
    began = time.perf_counter()
    for i in range(n):
        now = i * 1e-3
        classified = auth.classify(scope, OBJECTIVES, 600.0, now)
        if auth.rewrites:
            auth.outbound(HEADERS, "default")
        auth.spend(classified.fairness_id, 300, now)
        auth.spend(classified.fairness_id, -20, now)
    return (time.perf_counter() - began) / n


def core_side(tenants: bool, n: int) -> float:
    """Seconds per submit -> dispatch -> release cycle in the scheduler."""
    limits = {f"blocked-{i}": sg.TenantLimits(max_in_flight=1) for i in range(500)}
    if tenants:
        limits["team-a"] = sg.TenantLimits(max_in_flight=8, max_queued=100)
    else:
        limits = {}
    core = Scheduler(sg.FlowControlConfig(default_ttl=None, tenants=limits))
    gate = ManualDetector()
    if tenants:  # 500 tenants at their ceiling, each with 3 queued (parked on 1st pass)
        for i in range(500):
            for _ in range(4):
                core.submit(sg.FlowKey(f"blocked-{i}", 0), 100, None, None, 0.0, gate)
        core.dispatch(0.0, gate)
    key = sg.FlowKey("team-a", 0)
    began = time.perf_counter()
    for i in range(n):
        now = float(i)
        gate.saturated = True
        ticket = core.submit(key, 100, None, None, now, gate, 30, 10)
        gate.saturated = False
        core.dispatch(now, gate)
        core.release(ticket, now, gate)
    return (time.perf_counter() - began) / n


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/auth_overhead.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(prog="auth_overhead.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args(argv)
    on_auth, off_auth = _auth("keys"), _auth("open")
    rows: dict[str, list[float]] = {k: [] for k in ("gw_on", "gw_off", "core_on", "core_off")}
    gateway_side(on_auth, 1000)  # warm-up
    for _ in range(args.rounds):
        rows["gw_off"].append(gateway_side(off_auth, args.n))
        rows["gw_on"].append(gateway_side(on_auth, args.n))
        rows["core_off"].append(core_side(False, args.n))
        rows["core_on"].append(core_side(True, args.n))
    med = {k: statistics.median(v) * 1e6 for k, v in rows.items()}
    added = (med["gw_on"] - med["gw_off"]) + (med["core_on"] - med["core_off"])
    print(f"rounds={args.rounds} n={args.n} (median us per request)")
    for side in ("gw", "core"):
        on, off = med[f"{side}_on"], med[f"{side}_off"]
        print(
            f"{side:5} auth off {off:7.2f}  on {on:7.2f}  "
            f"added {on - off:6.2f}  ratio {on / off:5.2f}"
        )
    print(f"added per request, both sides: {added:.2f} us (budget 10 us)")
