"""Ctrl-C is never lost (serving/interrupts.py): a SIGINT that lands inside a finalizer, where a
KeyboardInterrupt would be printed as "Exception ignored" and dropped, still stops the work under
way; one that lands before uvicorn listens for signals still stops the server."""

from __future__ import annotations

import asyncio
import signal
import time

import uvicorn

from cityos.serving.interrupts import Interrupts, _Server


class SignalsWhenCollected:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_inside_a_finalizer_outside_any_event_loop_is_remembered() -> None:
    """Where it was lost: after the demo load's event loop closed, in a weakref callback, the
    KeyboardInterrupt was printed as "Exception ignored" and the server started regardless."""
    interrupts = Interrupts()
    interrupts.install()
    try:
        SignalsWhenCollected()  # collected at once: the signal is handled inside its __del__
        assert interrupts.seen
    finally:
        interrupts.uninstall()


def test_a_ctrl_c_inside_a_finalizer_cancels_the_work_under_way() -> None:
    interrupts = Interrupts()
    interrupts.install()
    try:

        async def work() -> str:
            SignalsWhenCollected()  # collected at once: the signal is handled inside its __del__
            await asyncio.sleep(30)
            return "finished"

        started = time.monotonic()
        assert interrupts.run(work) is None
        assert time.monotonic() - started < 5
        assert interrupts.seen
    finally:
        interrupts.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_ctrl_c_the_work_returns_its_result() -> None:
    interrupts = Interrupts()
    interrupts.install()
    try:

        async def work() -> str:
            await asyncio.sleep(0)
            return "finished"

        assert interrupts.run(work) == "finished"
        assert not interrupts.seen
    finally:
        interrupts.uninstall()


def test_a_ctrl_c_pressed_before_the_work_began_skips_it() -> None:
    interrupts = Interrupts()
    interrupts.install()
    ran: list[bool] = []
    try:
        signal.raise_signal(signal.SIGINT)

        async def work() -> None:
            ran.append(True)

        assert interrupts.run(work) is None
    finally:
        interrupts.uninstall()
    assert not ran


async def app(scope: dict[str, object], receive: object, send: object) -> None:  # a bare ASGI app
    return None


def test_a_ctrl_c_before_uvicorn_listened_stops_it_once_it_does() -> None:
    """The window between the demo load and uvicorn's own signal handlers: the flag is handed over."""
    interrupts = Interrupts()
    interrupts.install()
    try:
        interrupts.seen = True  # as a SIGINT in that window leaves it
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
        config.load_app()
        server = _Server(config, interrupts)
        started = time.monotonic()
        server.run()  # returns once it has shut down, instead of serving until the next Ctrl-C
        assert time.monotonic() - started < 5
        assert server.should_exit
    finally:
        interrupts.uninstall()
    # and the whole serve() does not start at all
    interrupts = Interrupts()
    interrupts.seen = True
    assert interrupts.serve(uvicorn.Config(app, host="127.0.0.1", port=0)) == 0
