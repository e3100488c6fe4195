"""Ctrl-C from the first instant of `cityos serve`: never lost, whenever it lands.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be, and
one raised inside a finalizer or a weakref callback is printed as "Exception ignored" and dropped.
During the demo load (which runs before the port opens) a collection runs many such callbacks, so
a Ctrl-C could vanish: the load went on and the server started as if nothing was pressed. Here
the signal only sets a flag and cancels the running load's task through the event loop (as
asyncio.Runner does); the code that follows reads the flag, and the flag is handed to uvicorn once
it listens for signals itself, so a Ctrl-C between the load and serving stops the server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Generator
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from uvicorn.supervisors import Multiprocess

T = TypeVar("T")

STARTUP_FAILURE = 3
"""uvicorn's exit code when the application did not start."""


class Interrupts:
    """Remembers a SIGINT from install() until uvicorn listens for it (see the module's text)."""

    def __init__(self) -> None:
        self.seen = False
        self._task: asyncio.Task[Any] | None = None
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True
        task = self._task
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)

    def run(self, work: Callable[[], Awaitable[T]]) -> T | None:
        """asyncio.run(work()), cancelled by a Ctrl-C at any point of it; None when it was."""

        async def cancellable() -> T | None:
            self._task = asyncio.current_task()
            try:
                if self.seen:  # pressed before the loop ran
                    return None
                return await work()
            finally:
                self._task = None

        try:
            result = asyncio.run(cancellable())
        except asyncio.CancelledError:
            if not self.seen:
                raise
            return None
        return None if self.seen else result

    def serve(self, config: uvicorn.Config) -> int:
        """uvicorn.run for a Config: one process, or a supervisor of config.workers; a Ctrl-C seen
        before uvicorn listened stops it at once. The exit code as uvicorn.run gives it."""
        if config.workers > 1:
            supervisor = Multiprocess(config, sockets=[config.bind_socket()])  # listens for signals from here
            self.uninstall()
            if self.seen:
                return 0
            with contextlib.suppress(KeyboardInterrupt):
                supervisor.run()
            return 0
        if self.seen:
            return 0
        config.load_app()
        server = _Server(config, self)
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        self.uninstall()
        return 0 if server.started or self.seen else STARTUP_FAILURE


class _Server(uvicorn.Server):
    """uvicorn's server, told of a Ctrl-C that came before it listened for one."""

    def __init__(self, config: uvicorn.Config, interrupts: Interrupts) -> None:
        super().__init__(config)
        self._interrupts = interrupts

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            if self._interrupts.seen:
                self.handle_exit(signal.SIGINT, None)
            yield
