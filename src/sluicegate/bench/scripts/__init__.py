"""The measurement code of the command-line benchmarks in `benchmarks/`.

Each ``benchmarks/<name>.py`` is a thin wrapper that calls `run_script` (``<name>``): the
measurement lives here, in the package, so it runs from an installed wheel too
(``python -m sluicegate.bench.scripts <name> [args]``), and `sluicegate bench` imports
it instead of locating a file. Each script keeps its own command line and output format.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from ..._exports import publish

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SCRIPTS", "run_script"]

#: The scripts by name; imported only when run, as each needs its own extras.
SCRIPTS: Final = (
    "auth_overhead",
    "core_memory",
    "dispatch",
    "fairness",
    "gateway_hardening",
    "gateway_hostile",
    "gateway_overhead",
    "lookahead_calibration",
    "open_loop_sweep",
    "resume_splice",
    "sim_engine_tokens",
    "sim_streams",
)


def run_script(name: str, argv: Sequence[str] | None = None) -> None:
    """Run the command line of ``benchmarks/<name>.py`` with `argv` (default: sys.argv[1:]).

    Raises:
        ValueError: there is no such script.
    """
    if name not in SCRIPTS:
        raise ValueError(f"no benchmark script {name!r}; there are {', '.join(SCRIPTS)}")
    module = importlib.import_module(f"._{name}", __name__)
    module.main(argv)


# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
