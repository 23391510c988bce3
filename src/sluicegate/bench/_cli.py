"""`sluicegate bench`: run the benchmark suite (or one part), write JSON and a report.

Parts: ``dispatch`` (1), ``overhead`` (2), ``streaming`` (3), ``overload`` (4),
``protection`` (5, issue 13: untuned saturation settings), or ``all``; ``epp`` (the
endpoint picker, needs the ``epp`` extras) and ``lookahead`` (issue 15: early rejection
and Retry-After at 2x overload) run only when named.
``--quick`` is a smoke run of seconds per part; ``--target URL`` adds another
OpenAI-compatible gateway to parts 2 and 4 (part 5 of the issue).
"""

from __future__ import annotations

import dataclasses
import datetime
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, final

import click

from ._dispatch import DispatchError, run_dispatch
from ._figures import load_average, machine
from ._gateway_parts import run_overhead, run_streaming
from ._lookahead import LookaheadOptions, run_lookahead
from ._overhead import OverheadOptions
from ._overload import OverloadOptions, run_overload
from ._protection import (
    ALL_PROTECTION_MODES,
    PROTECTION_MODES,
    ProtectionOptions,
    run_protection,
)
from ._report import Suite, render_report, write_json
from ._upstream import SERVERS

if TYPE_CHECKING:
    from ._figures import PartResult

__all__ = ["bench"]

PARTS: Final = ("dispatch", "overhead", "streaming", "overload", "protection")
#: The report of a full run of every part; other runs write next to the JSON results.
FULL_REPORT: Final = Path("docs/benchmarks.md")


@final
@dataclass(frozen=True, slots=True)
class Settings:
    """The command line, as the parts need it."""

    quick: bool
    target: str | None
    backend_port: int
    arrivals: Literal["poisson", "closed"]
    seed: int
    cores: tuple[int, int]
    modes: tuple[str, ...] = PROTECTION_MODES
    target_pid: int | None = None
    target_key: str | None = None
    upstream: str = "raw"


def overhead_options(settings: Settings) -> OverheadOptions:
    """Parts 2 and 3: the full settings, or seconds-long ones with ``--quick``."""
    target = settings.target
    options = OverheadOptions(
        target=target,
        target_pid=settings.target_pid if target else None,
        target_key=settings.target_key if target else None,
        backend_port=settings.backend_port if target else 0,
        gateway_core=settings.cores[0],
        load_core=settings.cores[1],
        upstream=settings.upstream,
    )
    if settings.quick:
        return dataclasses.replace(
            options,
            rounds=1,
            latency_requests=200,
            throughput_s=1.0,
            streams=(16,),
            events=20,
            open_loop_s=1.0,
        )
    return options


def overload_options(settings: Settings) -> OverloadOptions:
    """Part 4: the full settings, or seconds-long ones with ``--quick``."""
    options = OverloadOptions(
        target=settings.target,
        backend_port=settings.backend_port,
        arrivals=settings.arrivals,
        seed=settings.seed,
    )
    if settings.quick:
        return dataclasses.replace(options, duration=4.0, grace_s=2.0, baseline_s=1.5)
    return options


def protection_options(settings: Settings) -> ProtectionOptions:
    """Part 5: the full settings, or seconds-long ones with ``--quick``."""
    modes = tuple(m for m in ALL_PROTECTION_MODES if m in settings.modes)
    options = ProtectionOptions(seed=settings.seed, modes=modes)
    if settings.quick:
        return dataclasses.replace(
            options, duration=3.0, grace_s=2.0, baseline_s=1.5, loads=(2.0,), patterns=("poisson",)
        )
    return options


def _part_command(part: str, settings: Settings) -> str:
    args = ["sluicegate", "bench", part, *["--quick"] * settings.quick]
    if settings.target and part in {"overhead", "streaming", "overload"}:
        args += ["--target", settings.target, "--backend-port", str(settings.backend_port)]
        if settings.target_pid is not None and part != "overload":
            args += ["--target-pid", str(settings.target_pid)]
        if settings.target_key is not None and part != "overload":
            args += ["--target-key", "<key>"]
    if part in {"overhead", "streaming"} and settings.upstream != "raw":
        args += ["--upstream", settings.upstream]
    if part == "overload" and settings.arrivals != "poisson":
        args += ["--arrivals", settings.arrivals]
    if part == "protection" and tuple(settings.modes) != PROTECTION_MODES:
        args += ["--modes", ",".join(settings.modes)]
    return shlex.join(args)


def run_part(part: str, settings: Settings) -> PartResult:
    """Run one part of the suite.

    Raises:
        DispatchError: the dispatch benchmark failed.
        RuntimeError: a process did not start.
        OSError: a port cannot be bound.
    """
    command = _part_command(part, settings)
    if part == "dispatch":
        result = run_dispatch(quick=settings.quick)
        result.method = f"Runs `{result.command}` in a fresh process. {result.method}"
        result.command = command
        return result
    if part == "overhead":
        return run_overhead(overhead_options(settings), command=command)
    if part == "streaming":
        return run_streaming(overhead_options(settings), command=command)
    if part == "epp":  # imported here: it needs the epp extras (gRPC)
        from ._epp import EppOptions, run_epp

        cores = settings.cores
        options = EppOptions(gateway_core=cores[0], load_core=cores[1], quick=settings.quick)
        return run_epp(options, command=command)
    if part == "protection":
        return run_protection(protection_options(settings), command=command)
    if part == "lookahead":
        ahead = LookaheadOptions(seed=settings.seed)
        if settings.quick:
            ahead = dataclasses.replace(ahead, duration=4.0, grace_s=2.0)
        return run_lookahead(ahead, command=command)
    return run_overload(overload_options(settings), command=command)


def _sample_load(suite: Suite, when: str) -> None:
    avg = load_average()
    if avg is not None:
        suite.load.append((when, avg[0]))


@click.command()
@click.argument("part", type=click.Choice([*PARTS, "epp", "lookahead", "all"]), default="all")
@click.option(
    "--quick", is_flag=True, help="A smoke run: seconds per part, figures not meaningful."
)
@click.option("--target", metavar="URL", help="Another gateway to measure in parts 2, 3 and 4.")
@click.option(
    "--target-pid",
    type=int,
    default=None,
    help="The target's process id: parts 2 and 3 then show its CPU per request and chunk.",
)
@click.option(
    "--target-key",
    default=None,
    metavar="KEY",
    help="Parts 2 and 3 send 'Authorization: Bearer KEY' on every path (the target's key).",
)
@click.option(
    "--backend-port",
    type=click.IntRange(1024, 65000),
    default=18100,
    show_default=True,
    help="With --target: part 2's upstream port; part 4's simulators take it and the next ones.",
)
@click.option(
    "--arrivals",
    type=click.Choice(["poisson", "closed"]),
    default="poisson",
    show_default=True,
    help="Part 4's load: open-loop Poisson arrivals, or closed-loop users.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds part 4's traffic.")
@click.option(
    "--cores",
    default="0,1",
    show_default=True,
    help="GATEWAY,LOAD cores for parts 2 and 3 (pinned with taskset when both are usable).",
)
@click.option(
    "--results",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("benchmarks/results"),
    show_default=True,
    help="Where the JSON results go.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The markdown report [default: docs/benchmarks.md for a full run of all parts, "
    "else next to the JSON results].",
)
@click.option(
    "--modes",
    default=",".join(PROTECTION_MODES),
    show_default=True,
    help="Part 5's gateway modes, comma-separated (off is the baseline of the others; "
    "evict, adaptive with evict_streams, runs only when listed).",
)
@click.option(
    "--upstream",
    type=click.Choice(SERVERS),
    default="raw",
    show_default=True,
    help="Parts 2 and 3's upstream: the raw protocol (the floor) or a minimal aiohttp.web app.",
)
@click.option("--note", default="", help="Conditions of the run, quoted in the report.")
def bench(
    part: str,
    quick: bool,
    target: str | None,
    target_pid: int | None,
    target_key: str | None,
    backend_port: int,
    arrivals: str,
    seed: int,
    cores: str,
    results: Path,
    report: Path | None,
    modes: str,
    upstream: str,
    note: str,
) -> None:
    """Run the benchmark suite and write JSON results and a markdown report."""
    try:
        gateway_core, load_core = (int(c) for c in cores.split(","))
    except ValueError:
        raise click.BadParameter(
            "expected two core numbers, e.g. 0,1", param_hint="--cores"
        ) from None
    parts = PARTS if part == "all" else (part,)
    suite = Suite(
        command=shlex.join(["sluicegate", *sys.argv[1:]]),
        machine=machine(),
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        quick=quick,
        note=note,
    )
    settings = Settings(
        quick,
        target,
        backend_port,
        "closed" if arrivals == "closed" else "poisson",
        seed,
        (gateway_core, load_core),
        tuple(m.strip() for m in modes.split(",") if m.strip()),
        target_pid,
        target_key,
        upstream,
    )
    began = time.monotonic()
    _sample_load(suite, "start")
    for name in parts:
        click.echo(f"== {name} ...", err=True)
        try:
            suite.parts.append(run_part(name, settings))
        except (DispatchError, RuntimeError, OSError) as exc:
            raise click.ClickException(f"{name}: {exc}") from exc
        _sample_load(suite, f"after {name}")
        for figure in suite.parts[-1].figures:
            click.echo(
                f"   {figure.name}: {figure.value:.4g} {figure.unit} {figure.verdict}", err=True
            )
    suite.seconds = time.monotonic() - began
    written = write_json(suite, results)
    if report is None:
        full = part == "all" and not quick
        report = FULL_REPORT if full else results / f"report-{part}{'-quick' * quick}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(suite), encoding="utf-8")
    for path in (*written, report):
        click.echo(f"wrote {path}", err=True)
