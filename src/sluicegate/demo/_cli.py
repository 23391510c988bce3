"""`sluicegate demo`: overload simulated backends with flow control on, then off, and report.

Signals: the first Ctrl-C (or SIGTERM) stops the traffic, lets the stack shut down, and
still prints the summary and writes the report (exit status 130). A second Ctrl-C
aborts at once without a report.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import click
from rich.console import Console

from ._report import write_report
from ._run import DemoError, DemoOptions, run_demo
from ._summary import reading, summarize_demo, summary_table

if TYPE_CHECKING:
    from ._run import DemoResult

__all__ = ["demo"]

#: The exit status after Ctrl-C, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED: Final = 130
#: The options the flags default to.
_DEFAULTS = DemoOptions()
#: Columns assumed without a terminal: wide enough for the summary table.
_UNWRAPPED_WIDTH: Final = 200


async def _main(options: DemoOptions, console: Console) -> DemoResult:
    """Run the demo, turning the first SIGINT/SIGTERM into a graceful stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def graceful() -> None:
        console.print("\nStopping: cancelling open requests and writing the report...")
        console.print("(press Ctrl-C again to abort without a report)")
        stop.set()
        # The next Ctrl-C gets Python's default handler: KeyboardInterrupt, at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, graceful)
    try:
        return await run_demo(options, console, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run(options: DemoOptions, console: Console) -> DemoResult:
    if sys.platform != "win32":
        import uvloop

        return uvloop.run(_main(options, console))
    return asyncio.run(_main(options, console))  # pragma: no cover - no uvloop on Windows


def _check_writable(path: Path) -> None:
    """Fail before running for two minutes if the report cannot be written.

    Permission bits cannot tell (root passes `os.access` everywhere; /proc, read-only
    mounts and a file where a directory should be refuse anyway), so create the parent
    and open the file for writing; a file that did not exist is removed again.
    """
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory; name a file", param_hint="--out")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {path}: {exc.strerror or exc}", param_hint="--out"
        ) from None
    if not existed:
        path.unlink(missing_ok=True)


def make_console(file: IO[str] | None = None) -> Console:
    """The demo's console. Without a terminal (a pipe, a file, CI) rich would wrap every
    line at 80 columns and split table labels; there, lines are left whole instead."""
    console = Console(highlight=False, file=file)
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = max(console.width, _UNWRAPPED_WIDTH)
    return console


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=1.0),
    default=_DEFAULTS.duration,
    show_default=True,
    help="Seconds of traffic in each run.",
)
@click.option(
    "--backends",
    type=click.IntRange(1, 32),
    default=_DEFAULTS.backends,
    show_default=True,
    help="Simulated model servers behind the gateway.",
)
@click.option(
    "--load",
    type=click.FloatRange(min=0.05, max=20.0),
    default=_DEFAULTS.load,
    show_default=True,
    help="Offered load as a multiple of the backends' estimated capacity.",
)
@click.option(
    "--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seeds the traffic."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=_DEFAULTS.out,
    show_default=True,
    help="Where to write the HTML report.",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also run the same traffic with flow control off.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="The gateway's port on 127.0.0.1 (0: any free port).",
)
def demo(
    duration: float, backends: int, load: float, seed: int, out: Path, compare: bool, port: int
) -> None:
    """Overload simulated backends with and without flow control; write an HTML report.

    Starts simulated vLLM-like servers and a gateway on 127.0.0.1, sends the same seeded
    traffic twice (flow control on, then off), shows a live view, prints a summary and
    writes a self-contained HTML report. Needs no GPU and no network.
    """
    _check_writable(out)
    options = DemoOptions(
        duration=duration,
        backends=backends,
        load=load,
        seed=seed,
        out=out,
        compare=compare,
        port=port,
    )
    console = make_console()
    try:
        result = _run(options, console)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        console.print("Aborted.")
        sys.exit(EXIT_INTERRUPTED)
    summary = summarize_demo(result)
    console.print()
    console.print(summary_table(result, summary))
    objectives = options.workload.objectives
    second = objectives[1].name if len(objectives) > 1 else None
    for sentence in reading(summary, objectives[0].name, second):
        console.print(sentence)
    try:
        path = write_report(out, result, summary)
    except OSError as exc:
        raise click.ClickException(f"cannot write the report to {out}: {exc}") from None
    console.print(f"\nReport: {path}")
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
