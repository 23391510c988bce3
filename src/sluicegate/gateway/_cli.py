"""`sluicegate serve`: run the gateway from a YAML file or from a list of backends."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Final

import click

import sluicegate as sg

from ._config import GatewayConfig, GatewayConfigError, load_config
from ._server import run

__all__ = ["GC_YOUNG_THRESHOLD", "serve"]

#: Net container allocations between two young collections in `sluicegate serve`.
GC_YOUNG_THRESHOLD: Final = 10_000


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML configuration file (reloaded on SIGHUP and when it changes).",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    metavar="URL",
    help="A backend base URL (repeatable); one pool serving every model. Ignored with --config.",
)
@click.option("--host", default=None, help="Listening address (overrides the config).")
@click.option("--port", type=int, default=None, help="Listening port; 0 picks a free one.")
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="With --backend: a fixed in-flight limit per backend instead of the learned one.",
)
@click.option(
    "--http",
    type=click.Choice(["builtin", "uvicorn"]),
    default=None,
    help="The HTTP server facing clients (overrides server.http; default builtin).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_path: Path | None,
    backends: tuple[str, ...],
    host: str | None,
    port: int | None,
    max_in_flight: int | None,
    http: str | None,
    log_level: str,
) -> None:
    """Run the OpenAI-compatible flow-control gateway."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        if config_path is not None:
            config = load_config(config_path)
        elif backends:
            config = GatewayConfig.simple(list(backends), max_in_flight=max_in_flight)
        else:
            raise click.UsageError("give --config FILE or at least one --backend URL")
        given = (("host", host), ("port", port), ("http", http))
        overrides = {k: v for k, v in given if v is not None}
        if overrides:
            server = config.server.model_copy(update=overrides)
            config = config.model_copy(update={"server": server})
    except GatewayConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _settle_gc()
    try:
        run(config, config_path=config_path)
    except sg.ConfigError as exc:  # e.g. a public address without server.auth_token
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the listening port is taken or not ours to bind
        raise click.ClickException(
            f"{exc.strerror or exc}. Pick another --port or server.port."
        ) from None


def _settle_gc() -> None:
    """Tune the cyclic garbage collector for a long-running server (this process only;
    an application embedding `Gateway` keeps its own policy).

    Under load most of the gateway's young objects are alive (the in-flight requests'
    tasks, futures, frames and buffers), and a young collection every 700 net
    allocations walked them all again: 13 % of the CPU at concurrency 64 (profiled).
    Requests free almost everything by reference counting, so a threshold of 10,000
    makes young collections rare while cyclic garbage stays bounded. Everything loaded
    at start (modules, the validated config) lives as long as the process: frozen, the
    full collections never walk it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
