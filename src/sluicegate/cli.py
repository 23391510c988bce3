"""The `sluicegate` command. Subcommands load lazily, so `sluicegate --help` stays fast
and the flow-control core never imports an HTTP stack."""

from __future__ import annotations

import importlib
from typing import Final

import click

__all__ = ["main"]

#: Subcommand name -> "module:attribute" of a click command.
COMMANDS: Final[dict[str, str]] = {
    "sim": "sluicegate.sim._cli:sim",
    "serve": "sluicegate.gateway._cli:serve",
    "demo": "sluicegate.demo._cli:demo",
    "bench": "sluicegate.bench._cli:bench",
    "epp": "sluicegate.epp._cli:epp",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            extra = "epp" if cmd_name == "epp" else "server"
            raise click.ClickException(
                f"'{cmd_name}' is not available: {exc}. "
                f"Install its extras: pip install 'sluicegate[{extra}]'"
            ) from exc
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="sluicegate")
def main() -> None:
    """sluicegate: flow control for LLM inference."""
