"""The config-file watch: one inotify watch, replace-by-rename, no loop on a log file."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sluicegate.gateway._server import _watch_file

from .conftest import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="counts inotify watches")


class Reloads:
    """Stands in for the gateway: counts `reload_from_file` calls."""

    def __init__(self) -> None:
        self.count = 0

    def reload_from_file(self) -> bool:
        self.count += 1
        return True


def inotify_watches() -> int:
    """Inotify watches this process holds (from /proc/self/fdinfo)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                total += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
    return total


def rewrite(path: Path, n: int) -> None:
    path.write_text(f"start: {n}\n")


def swap(mounted: Path, n: int) -> None:
    """Publish a new version the way Kubernetes updates a mounted ConfigMap."""
    version = mounted / f"v{n}"
    version.mkdir()
    (version / "gw.yaml").write_text(f"version: {n}\n")
    (mounted / "..data_tmp").symlink_to(version.name)
    (mounted / "..data_tmp").replace(mounted / "..data")


@contextlib.asynccontextmanager
async def watching(
    path: Path, change: Callable[[int], None] | None = None
) -> AsyncIterator[Reloads]:
    """Run the watch on `path`; yields once it demonstrably sees a `change`."""
    reloads = Reloads()
    change = change or functools.partial(rewrite, path)
    task = asyncio.ensure_future(_watch_file(reloads, path))  # type: ignore[arg-type]
    try:
        # The watcher starts in a thread; change the file until a reload shows it runs.
        async def started() -> None:
            n = 0
            while reloads.count == 0:
                n += 1
                change(n)
                await asyncio.sleep(0.2)

        await asyncio.wait_for(started(), 10)
        yield reloads
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_the_watch_holds_one_inotify_watch(tmp_path: Path) -> None:
    """It watched the file's whole directory tree: one watch per subdirectory."""
    for i in range(50):
        (tmp_path / f"sub{i}" / "deeper").mkdir(parents=True)
    config = tmp_path / "gw.yaml"
    config.write_text("a: 1\n")
    before = inotify_watches()
    async with watching(config):
        assert inotify_watches() - before == 1


@pytest.mark.asyncio
async def test_a_log_file_beside_the_config_causes_no_reload_and_no_log_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, log = tmp_path / "gw.yaml", tmp_path / "gw.log"
    config.write_text("a: 1\n")
    handler = logging.FileHandler(log)
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.INFO)
    try:
        async with watching(config) as reloads:
            started = reloads.count
            caplog.clear()
            for i in range(20):
                logging.getLogger("test").info("a line in the log %d", i)
                (tmp_path / "other.txt").write_text(str(i))
                await asyncio.sleep(0.02)
            config.write_text("a: 2\n")
            await eventually(lambda: reloads.count == started + 1)
            # Changes are reported in order: a loop on the log file would show by the
            # time a second config change is seen.
            config.write_text("a: 3\n")
            await eventually(lambda: reloads.count == started + 2)
            noise = [r for r in caplog.records if r.name.startswith("watchfiles")]
            assert len(noise) <= 2  # at most one line per config change
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@pytest.mark.asyncio
async def test_a_file_replaced_by_rename_and_a_swapped_symlink_are_seen(tmp_path: Path) -> None:
    """Editors save by writing a temporary file and renaming it over the config;
    Kubernetes swaps a `..data` symlink the config file points through."""
    config = tmp_path / "gw.yaml"
    config.write_text("a: 1\n")
    async with watching(config) as reloads:
        started = reloads.count
        temporary = tmp_path / ".gw.yaml.swp"
        temporary.write_text("a: 3\n")
        temporary.replace(config)
        await eventually(lambda: reloads.count == started + 1)

    mounted = tmp_path / "mounted"
    (mounted / "v0").mkdir(parents=True)
    (mounted / "v0" / "gw.yaml").write_text("version: 0\n")
    (mounted / "..data").symlink_to("v0")
    (mounted / "gw.yaml").symlink_to("..data/gw.yaml")
    async with watching(mounted / "gw.yaml", functools.partial(swap, mounted)) as reloads:
        started = reloads.count
        swap(mounted, 100)
        await eventually(lambda: reloads.count == started + 1)
