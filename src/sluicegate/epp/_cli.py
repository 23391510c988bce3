"""`sluicegate epp`: run the Envoy ext_proc endpoint picker from a YAML file."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from sluicegate.gateway import GatewayConfigError, load_config

from ._objectives import load_objectives
from ._protocol import FULL_DUPLEX
from ._server import DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT, run

__all__ = ["epp"]

#: ``ProcessingMode.BUFFERED``: the pick rides on the body reply.
_BUFFERED = 2


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML configuration, the `sluicegate serve` schema (reloaded on SIGHUP and change).",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_GRPC_PORT,
    show_default=True,
    help="The ext_proc and grpc.health.v1 port; 0 picks a free one.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_METRICS_PORT,
    show_default=True,
    help="HTTP port of /metrics, /debug/flowcontrol, /healthz and /readyz.",
)
@click.option(
    "--objectives",
    "objectives_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A directory of InferenceObjective manifests (objective -> priority), watched.",
)
@click.option("--host", default=None, help="Listening address [default: server.host].")
@click.option(
    "--body-mode",
    type=click.Choice(["full-duplex", "buffered"]),
    default="full-duplex",
    show_default=True,
    help="Body mode assumed when Envoy does not announce its own (protocol_config).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def epp(
    config_path: Path,
    grpc_port: int,
    metrics_port: int,
    objectives_dir: Path | None,
    host: str | None,
    body_mode: str,
    log_level: str,
) -> None:
    """Run as the Gateway API Inference Extension's endpoint picker (Envoy ext_proc)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = load_config(config_path)
        if objectives_dir is not None:
            load_objectives(objectives_dir)  # refuse a bad directory before listening
    except GatewayConfigError as exc:
        raise click.ClickException(str(exc)) from None
    run(
        config,
        host=host,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        config_path=config_path,
        objectives_dir=objectives_dir,
        body_mode=FULL_DUPLEX if body_mode == "full-duplex" else _BUFFERED,
    )
