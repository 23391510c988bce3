"""A tour of the flow-control core in a few seconds, no GPU and no network.

Forty requests from four tenants at four priorities arrive at once in front of a
backend that serves two at a time. Bands appear on first sight, and requests are
served strictly by priority, round-robin between the tenants of a band; the batch
tenant's band (priority -1, sheddable) holds at most 8 waiting requests and rejects
the rest at once.
"""

from __future__ import annotations

import asyncio
import random

import sluicegate as sg

TENANTS = {"alice": 10, "bob": 0, "carol": 0, "batch-bot": -1}


async def request(
    ctl: sg.FlowController, tenant: str, n: int, log: list[str], results: dict[str, int]
) -> None:
    """One request: wait for a slot, 'generate' for a while, release."""
    key = sg.FlowKey(tenant, TENANTS[tenant])
    try:
        async with ctl.admit(key, size=512) as ticket:
            log.append(f"{tenant}#{n}")
            results["Dispatched"] = results.get("Dispatched", 0) + 1
            await asyncio.sleep(0.05 if ticket.priority > 0 else 0.1)
    except sg.FlowControlError as exc:
        results[exc.outcome.value] = results.get(exc.outcome.value, 0) + 1


async def main() -> None:
    config = sg.FlowControlConfig(
        default_ttl=5.0,
        default_band=sg.BandConfig(fairness="round-robin"),
        negative_band=sg.BandConfig(fairness="round-robin", max_requests=8),
    )
    ctl = sg.FlowController(config, saturation=sg.ConcurrencyLimit(2))
    rng = random.Random(1)
    arrivals = [(tenant, n) for tenant in TENANTS for n in range(10)]
    rng.shuffle(arrivals)
    log: list[str] = []
    results: dict[str, int] = {}
    async with ctl:
        print(f"bands before any request: {sorted(ctl.statistics().bands)}")
        tasks = [asyncio.create_task(request(ctl, t, n, log, results)) for t, n in arrivals]
        await asyncio.sleep(0)
        stats = ctl.statistics()
        print(f"bands after the burst:    {sorted(stats.bands)} (created on first sight)")
        for priority, band in sorted(stats.bands.items(), reverse=True):
            print(
                f"  band {priority:>3}: {band.queued_requests:>2} queued, {band.in_flight} in"
                f" flight, {band.flows} flows, limit {band.max_requests}"
            )
        await asyncio.gather(*tasks)
        final = ctl.statistics()
    print("\ndispatch order (2 at a time):")
    for i in range(0, len(log), 10):
        print("  " + " ".join(log[i : i + 10]))
    print(f"\noutcomes: {dict(sorted(results.items()))}")
    print(f"submitted={final.submitted} dispatched={final.dispatched} rejected={final.rejected}")
    print("the interactive tenant (priority 10) went first; tenants of one band took turns;")
    print("the batch band (-1) holds at most 8 waiting requests, so the rest were rejected (429).")


if __name__ == "__main__":
    asyncio.run(main())
