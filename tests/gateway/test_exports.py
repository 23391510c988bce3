"""The public surface of `sluicegate.gateway`."""

from __future__ import annotations

import pytest

import sluicegate.gateway as gateway


@pytest.mark.asyncio
async def test_all_names_import_and_report_their_public_home() -> None:
    """Every name in __all__ exists, and classes/functions claim the public module."""
    for name in gateway.__all__:
        obj = getattr(gateway, name)
        assert getattr(obj, "__module__", gateway.__name__) == gateway.__name__, name
