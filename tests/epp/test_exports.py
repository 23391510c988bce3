"""The public surface of `sluicegate.epp`."""

from __future__ import annotations

import sluicegate.epp as epp


def test_all_names_import_and_report_their_public_home() -> None:
    """Every name in __all__ exists, and classes/functions claim the public module."""
    for name in epp.__all__:
        obj = getattr(epp, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == epp.__name__, name
