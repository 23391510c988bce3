"""Token fairness between tenants under overload: token-fair vs round-robin vs global-strict.

Three processes on loopback: the simulator (small batch, so it saturates), the gateway in
front of it (`sluicegate serve`, concurrency limit = the simulator's batch, so the backlog
waits in the gateway where the fairness policy decides), and this open-loop load
generator. Two tenants send at the same seeded Poisson times in every run:

* ``small``: 400-character prompts (100 tokens), no ``max_tokens`` (the simulator draws
  1..16 output tokens; the gateway estimates from the flow's average and corrects);
* ``large``: 4,000-character prompts (1,000 tokens), ``max_tokens: 8``.

Each tenant alone arrives at about the simulator's capacity, so together they are at about
2x overload and both stay backlogged. Service is measured on the client side, from the
``usage`` the simulator returns (the ground truth), as weighted tokens
(w_in x prompt + w_out x completion, band weights 1 and 2) divided by the tenant's weight,
attributed to the request's dispatch time (send time + ``x-sluicegate-queue-ms``), when the
scheduler charges it. Reported per policy:

* Jain's index of that service per 10 s window (target >= 0.99 for token-fair);
* the largest service gap between the two tenants over any interval (the range of
  S_small(t) - S_large(t)) and per 10 s window, against the VTC bound of 2x the largest
  single request's cost;
* tokens per second served to each tenant;
* cross-checks from ``/debug/flowcontrol`` (sampled each second): the gateway's own Jain
  index and gap, how often each tenant was backlogged, and its per-tenant service at the
  end of the measured span against the client's figure.

    .venv/bin/python benchmarks/fairness.py [--duration 42] [--seed 1] [--no-weighted]

Runs are bounded: `--duration` seconds of load per policy (+ ~3 s of start-up), measured
over [0, duration - 2) so every request dispatched in it has completed. The machine is a
shared 2-core one: absolute rates vary run to run; the fairness figures should not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sluicegate.testbed import jain_index

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = ["main"]

W_IN, W_OUT = 1.0, 2.0
WINDOW = 10.0
SIM_ARGS = [
    "--max-num-seqs", "4", "--time-to-first-token", "20", "--inter-token-latency", "20",
    "--prefill-time-per-token", "0.1", "--time-factor-under-load", "1.5",
    "--random-output-max", "16", "--seed", "7",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    prompt_chars: int
    max_tokens: int | None
    rate: float  # requests per second


TENANTS = (Tenant("small", 400, None, 22.0), Tenant("large", 4000, 8, 7.0))


@dataclass(slots=True)
class Run:
    policy: str
    weights: dict[str, float]
    #: (tenant, dispatched at, prompt tokens, completion tokens) of completed requests.
    done: list[tuple[str, float, int, int]] = field(default_factory=list)
    failed: int = 0
    #: (seconds since start, /debug/flowcontrol pool document).
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


# -- processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _process(args: list[str], ready: bytes) -> Iterator[str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if ready not in line:
            raise RuntimeError(f"{args[:4]} did not start: {line!r}")
        yield line.decode().rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _gateway_config(sim_url: str, policy: str, weights: dict[str, float], path: Path) -> None:
    doc = {
        "server": {"host": "127.0.0.1", "port": _free_port()},
        "pools": [
            {
                "name": "sim",
                "backends": [sim_url],
                # The simulator's batch size: the backlog waits in the gateway.
                "saturation": {"type": "concurrency", "max_in_flight": 4},
            }
        ],
        "flow_control": {
            "default_ttl": 600,
            "default_band": {
                "fairness": policy,
                "input_token_weight": W_IN,
                "output_token_weight": W_OUT,
            },
            "flow_weights": weights,
            "fairness_window": WINDOW,
        },
    }
    path.write_bytes(orjson.dumps(doc))  # JSON is YAML


# -- load ----------------------------------------------------------------------------------


async def _request(
    session: aiohttp.ClientSession, url: str, tenant: Tenant, sent: float, run: Run
) -> None:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "w" * tenant.prompt_chars}],
    }
    if tenant.max_tokens is not None:
        body["max_tokens"] = tenant.max_tokens
    headers = {"x-gateway-inference-fairness-id": tenant.name}
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
            data = await r.read()
            if r.status != 200:
                run.failed += 1
                return
            queue_s = float(r.headers["x-sluicegate-queue-ms"]) / 1000.0
    except aiohttp.ClientError:
        run.failed += 1
        return
    usage = orjson.loads(data)["usage"]
    run.done.append(
        (tenant.name, sent + queue_s, usage["prompt_tokens"], usage["completion_tokens"])
    )


async def _arrivals(
    session: aiohttp.ClientSession, url: str, tenant: Tenant, seed: int, duration: float, run: Run
) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(f"{seed}-{tenant.name}")
    start = loop.time()
    at = 0.0
    async with asyncio.TaskGroup() as tg:
        while True:
            at += rng.expovariate(tenant.rate)
            if at >= duration:
                return
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            tg.create_task(_request(session, url, tenant, at, run))


async def _sample(session: aiohttp.ClientSession, url: str, run: Run) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:  # a benchmark's observer, not part of the system under test
        await asyncio.sleep(1.0)
        async with session.get(url + "/debug/flowcontrol") as r:
            doc = orjson.loads(await r.read())
        run.samples.append((loop.time() - start, doc["pools"]["sim"]))


async def _load(gw_url: str, run: Run, seed: int, duration: float) -> None:
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        url = gw_url + "/v1/chat/completions"
        sampler = asyncio.ensure_future(_sample(session, gw_url, run))
        arrivals = [_arrivals(session, url, t, seed, duration, run) for t in TENANTS]
        try:
            # Arrivals stop at `duration`; requests still waiting then are abandoned.
            await asyncio.wait_for(asyncio.gather(*arrivals), timeout=duration)
        except TimeoutError:
            pass
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler


def run_policy(policy: str, weights: dict[str, float], seed: int, duration: float) -> Run:
    run = Run(policy, weights)
    with tempfile.TemporaryDirectory() as tmp:
        sim_cmd = [sys.executable, "-m", "sluicegate", "sim", "--port", str(_free_port())]
        with _process([*sim_cmd, *SIM_ARGS], b"listening") as sim_url:
            path = Path(tmp) / "gateway.yaml"
            _gateway_config(sim_url, policy, weights, path)
            gw_cmd = [sys.executable, "-m", "sluicegate", "serve", "--config", str(path)]
            with _process([*gw_cmd, "--log-level", "warning"], b"listening") as gw_url:
                asyncio.run(_load(gw_url, run, seed, duration))
    return run


# -- analysis ------------------------------------------------------------------------------


def _cost(run: Run, tenant: str, prompt: int, completion: int) -> float:
    return (W_IN * prompt + W_OUT * completion) / run.weights.get(tenant, 1.0)


def _range(values: Iterable[float]) -> float:
    xs = list(values)
    return max(xs) - min(xs) if xs else 0.0


def analyse(run: Run, end: float, warmup: float) -> dict[str, Any]:
    names = [t.name for t in TENANTS]
    events = sorted((at, name, p, c) for name, at, p, c in run.done if at < end)
    windows = [(w, min(w + WINDOW, end)) for w in range(0, int(end), int(WINDOW))]
    per_window = {w: dict.fromkeys(names, 0.0) for w in windows}
    cumulative = dict.fromkeys(names, 0.0)
    steady = dict.fromkeys(names, 0.0)
    diffs = [(0.0, 0.0)]
    tokens = {n: [0, 0] for n in names}
    largest = 0.0
    for at, name, prompt, completion in events:
        cost = _cost(run, name, prompt, completion)
        largest = max(largest, cost)
        cumulative[name] += cost
        if at >= warmup:
            steady[name] += cost
        diffs.append((at, cumulative[names[0]] - cumulative[names[1]]))
        tokens[name][0] += prompt
        tokens[name][1] += completion
        for w in windows:
            if w[0] <= at < w[1]:
                per_window[w][name] += cost
    full = [w for w in windows if w[1] - w[0] == WINDOW]
    jains = [jain_index(list(per_window[w].values())) for w in full]
    window_gaps = [max(per_window[w].values()) - min(per_window[w].values()) for w in full]
    late = [(t, s) for t, s in run.samples if WINDOW <= t <= end]
    gw_jain = [b["jain_index"] for _, s in late for b in s["bands"] if b["jain_index"]]
    gw_gap = [b["max_service_gap"] for _, s in late for b in s["bands"] if b["max_service_gap"]]
    backlogged = {
        n: sum(any(f["fairness_id"] == n and f["queued_requests"] for f in s["flows"])
               for _, s in late) / max(len(late), 1)
        for n in names
    }  # fmt: skip
    at_end = min(run.samples, key=lambda ts: abs(ts[0] - end))[1] if run.samples else None
    gw_service = {f["fairness_id"]: f["service"] for f in (at_end or {}).get("flows", [])}
    return {
        "policy": run.policy,
        "weights": run.weights,
        "jains": jains,
        "gap_any_interval": _range(d for _, d in diffs),
        "gap_after_warmup": _range(d for at, d in diffs if at >= warmup),
        "window_gaps": window_gaps,
        "vtc_bound": 2 * largest,
        "tokens_per_s": {n: (tokens[n][0] / end, tokens[n][1] / end) for n in names},
        "service": dict(cumulative),
        "steady_service": steady,
        "requests": {n: sum(1 for e in events if e[1] == n) for n in names},
        "failed": run.failed,
        "gw_jain_mean": sum(gw_jain) / len(gw_jain) if gw_jain else None,
        "gw_gap_max": max(gw_gap) if gw_gap else None,
        "backlogged": backlogged,
        "gw_service": gw_service,
    }


def _fmt(r: dict[str, Any]) -> str:
    s, lg = r["tokens_per_s"]["small"], r["tokens_per_s"]["large"]
    service, steady = r["service"], r["steady_service"]
    norm = service["small"] / service["large"] if service["large"] else 0.0
    norm_steady = steady["small"] / steady["large"] if steady["large"] else 0.0
    w = r["weights"]
    scale = w.get("small", 1.0) / w.get("large", 1.0)
    gw = r["gw_service"]
    cross = " / ".join(
        f"{gw.get(n, 0) / service[n]:.3f}" if service[n] else "-" for n in ("small", "large")
    )
    weights = ",".join(f"{k}={v:g}" for k, v in w.items()) or "equal"
    jains = " ".join(f"{j:.4f}" for j in r["jains"])
    gaps = " ".join(f"{g:,.0f}" for g in r["window_gaps"])
    return (
        f"| {r['policy']} | {weights} | {jains} "
        f"| {r['gap_any_interval']:,.0f} / {r['gap_after_warmup']:,.0f} "
        f"| {gaps} | {r['vtc_bound']:,.0f} "
        f"| {s[0]:,.0f}+{s[1]:,.0f} | {lg[0]:,.0f}+{lg[1]:,.0f} "
        f"| {norm:.3f} / {norm_steady:.3f} ({norm * scale:.3f} / {norm_steady * scale:.3f}) "
        f"| {r['requests']['small']} / {r['requests']['large']} "
        f"| {r['gw_jain_mean'] or 0:.4f} / {r['gw_gap_max'] or 0:,.0f} "
        f"| {r['backlogged']['small']:.0%} / {r['backlogged']['large']:.0%} | {cross} "
        f"| {r['failed']} |"
    )


HEADER = (
    "| policy | weights | Jain's index per 10 s window | max gap, any interval: "
    "whole run / after warm-up | gap per 10 s window | VTC bound (2x largest request) "
    "| small tok/s (in+out) | large tok/s (in+out) | service small/large, whole run / after "
    "warm-up: normalised (raw weighted tokens) "
    "| requests small / large | gateway: Jain mean / gap max | backlogged small / large "
    "| gateway/client service small / large | failed |\n" + "|---" * 14 + "|"
)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/fairness.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(prog="fairness.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=42.0, help="seconds of load per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds before the steady-state gap counts"
    )
    parser.add_argument("--policies", default="token-fair,round-robin,global-strict")
    parser.add_argument("--no-weighted", action="store_true", help="skip the 2:1 weighted run")
    args = parser.parse_args(argv)
    end = args.duration - 2.0
    plan: list[tuple[str, dict[str, float]]] = [(p, {}) for p in args.policies.split(",")]
    if not args.no_weighted:
        plan.append(("token-fair", {"small": 2.0}))
    rows = []
    for policy, weights in plan:
        print(f"running {policy} weights={weights or 'equal'} ...", file=sys.stderr, flush=True)
        rows.append(
            analyse(run_policy(policy, weights, args.seed, args.duration), end, args.warmup)
        )
        print(_fmt(rows[-1]), file=sys.stderr, flush=True)
    print(HEADER)
    for row in rows:
        print(_fmt(row))
