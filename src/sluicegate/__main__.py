"""`python -m sluicegate`, and the `sluicegate` script's entry point (`run`)."""

from __future__ import annotations

import sys
from typing import Final

__all__ = ["run"]

#: Modules of the ``server`` extras the command line itself needs at import.
_CLI_MODULES: Final = frozenset({"click"})


def run() -> None:
    """Run the command line, or say which extra to install when it is missing.

    ``pip install sluicegate`` installs the standard-library-only core; the command
    line comes with ``sluicegate[server]``.
    """
    try:
        from .cli import main
    except ModuleNotFoundError as exc:
        if exc.name not in _CLI_MODULES:
            raise
        sys.stderr.write(
            f"sluicegate: the command line needs the 'server' extras (no module {exc.name!r})."
            " Install them: pip install 'sluicegate[server]'\n"
        )
        raise SystemExit(1) from None
    main()


if __name__ == "__main__":
    run()
