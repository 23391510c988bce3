"""Suite-wide fixtures."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _loop_for_sync_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give each synchronous test an event loop, and close it afterwards.

    looptime's pytest hook asks the event-loop policy for the current loop on every
    test, which makes asyncio create one for synchronous tests and never close it;
    its garbage collection later raises a ResourceWarning (an error here) inside
    whichever test happens to run. A loop we create is a loop we close.
    """
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()
