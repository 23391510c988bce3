"""`sluicegate sim`: run one or more simulated vLLM servers from the command line.

Flag names and units (milliseconds) follow llm-d-inference-sim where it has the flag.
With `--replicas N`, N independent instances (own engine, own metrics, seed + i) listen
on consecutive ports in this one process and event loop. Each prints
`sim listening on http://HOST:PORT` once its port is bound.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click
from uvicorn.config import LOGGING_CONFIG

from ..asgi import run
from ._app import create_app
from ._config import FAILURE_TYPES, SimConfig
from ._serve import serve_many

__all__ = ["sim"]

_D = SimConfig()  # the defaults shown in --help


def _types(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Accept repeated flags and comma-separated lists alike."""
    out = tuple(t.strip() for value in values for t in value.split(",") if t.strip())
    unknown = [t for t in out if t not in FAILURE_TYPES]
    if unknown:
        raise click.BadParameter(f"{unknown} not in {', '.join(FAILURE_TYPES)}")
    return out or FAILURE_TYPES


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port of the first replica.")
@click.option(
    "--replicas",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Instances on consecutive ports, in this one process.",
)
@click.option("--model", default=_D.model, show_default=True, help="Model name.")
@click.option(
    "--served-model-name",
    "served_model_names",
    multiple=True,
    help="Name accepted in requests (repeatable); defaults to --model.",
)
@click.option(
    "--max-num-seqs",
    default=_D.max_num_seqs,
    show_default=True,
    help="Most requests in the running batch.",
)
@click.option(
    "--kv-cache-size",
    default=_D.kv_cache_size,
    show_default=True,
    help="KV cache capacity in tokens (prompt + generated of running requests).",
)
@click.option(
    "--max-model-len",
    default=_D.max_model_len,
    show_default=True,
    help="Longest prompt + output per request.",
)
@click.option(
    "--max-waiting-queue-length",
    type=int,
    default=None,
    help="Most requests waiting in the engine; beyond it, 429. Default: unbounded.",
)
@click.option(
    "--time-to-first-token",
    default=_D.time_to_first_token,
    show_default=True,
    help="ms from admission to the first token, before prefill.",
)
@click.option(
    "--inter-token-latency",
    default=_D.inter_token_latency,
    show_default=True,
    help="ms per decode step with a batch of one.",
)
@click.option(
    "--prefill-time-per-token",
    default=_D.prefill_time_per_token,
    show_default=True,
    help="ms of prefill per prompt token.",
)
@click.option(
    "--time-factor-under-load",
    default=_D.time_factor_under_load,
    show_default=True,
    help="Decode step multiplier at a full batch (>= 1).",
)
@click.option(
    "--scheduling-policy",
    type=click.Choice(["fcfs", "priority"]),
    default="fcfs",
    show_default=True,
    help="Engine queue order; priority: lower `priority` first.",
)
@click.option(
    "--mode",
    type=click.Choice(["random", "echo"]),
    default="random",
    show_default=True,
    help="Response content.",
)
@click.option("--seed", default=_D.seed, show_default=True, help="Seed (replica i uses seed+i).")
@click.option(
    "--random-output-max",
    default=_D.random_output_max,
    show_default=True,
    help="Upper bound of the random output length when max_tokens is unset.",
)
@click.option(
    "--failure-injection-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Percent of requests that fail (0..100).",
)
@click.option(
    "--failure-types",
    multiple=True,
    callback=_types,
    help=f"Failures to inject, repeatable or comma-separated: "
    f"{', '.join(FAILURE_TYPES)}. Default: all.",
)
@click.option("--freeze-metrics", is_flag=True, help="Serve stale /metrics (first snapshot).")
@click.option(
    "--enable-prefix-caching/--no-enable-prefix-caching",
    default=_D.enable_prefix_caching,
    show_default=True,
    help="vLLM's automatic prefix caching: cached leading blocks skip their prefill.",
)
@click.option(
    "--enable-prompt-tokens-details",
    is_flag=True,
    help="Report usage.prompt_tokens_details.cached_tokens.",
)
@click.option(
    "--block-size",
    default=_D.block_size,
    show_default=True,
    help="Tokens per KV block (the prefix cache's granularity).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def sim(host: str, port: int, replicas: int, log_level: str, **fields: Any) -> None:
    """Run a simulated vLLM-compatible model server (OpenAI API, vLLM metrics)."""
    fields["served_model_names"] = tuple(fields["served_model_names"])
    try:
        config = SimConfig(**fields)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    configs = [config.replace(seed=config.seed + i) for i in range(replicas)]
    ports = [port + i if port else 0 for i in range(replicas)]
    log_config = {**LOGGING_CONFIG}
    log_config["loggers"] = {
        name: {**logger, "level": log_level.upper()}
        for name, logger in LOGGING_CONFIG["loggers"].items()
    }
    try:
        run(_serve_until_signal(configs, host, ports, log_config))
    except OSError as exc:  # the port is taken or not ours to bind
        raise click.ClickException(f"{exc.strerror or exc}. Pick another --port.") from None


async def _serve_until_signal(
    configs: list[SimConfig], host: str, ports: list[int], log_config: dict[str, Any]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    apps = [create_app(config) for config in configs]
    async with serve_many(apps, host, ports, log_config=log_config) as urls:
        for url in urls:
            click.echo(f"sim listening on {url}")
        await stop.wait()
