"""Worker processes end with their supervisor. `cityos serve --workers N` runs uvicorn's supervisor
and N worker processes sharing the listening socket; if only the supervisor dies (SIGKILL, the OOM
killer), orphaned workers would keep serving and hold the port, so a restart failed with "Address
already in use". Each worker asks Linux to send it SIGTERM when its parent dies (PR_SET_PDEATHSIG)
and, portably, watches its parent's sentinel (a pipe that closes when the parent ends): either way
the worker stops gracefully, and is ended outright if that takes longer than a grace period."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading

log = logging.getLogger("cityos.lifeline")

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
GRACE_SECONDS = 10.0  # a graceful stop that takes longer than this is cut short


def exit_with_supervisor(grace: float = GRACE_SECONDS, *, use_prctl: bool = True) -> bool:
    """In a worker started by a supervisor (a multiprocessing child): arrange to stop when the
    supervisor dies. A process run on its own (no multiprocessing parent) is left alone, so a
    server started from a shell does not end with the shell. True when the watch was set up.
    use_prctl=False leaves only the portable watch (its test)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False
    if use_prctl and sys.platform.startswith("linux"):
        _ask_for_sigterm_on_parent_death()
    if os.getppid() != parent.pid:  # the parent died before the request above took effect
        _stop(grace)
        return True
    sentinel = parent.sentinel
    threading.Thread(target=_watch, args=(sentinel, grace), name="cityos-lifeline", daemon=True).start()
    return True


def _ask_for_sigterm_on_parent_death() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d; relying on the parent watch", ctypes.get_errno())
    except OSError as exc:  # no libc to load: the watch thread still works
        log.warning("prctl is not available (%s); relying on the parent watch", exc)


def _watch(sentinel: int, grace: float) -> None:
    multiprocessing.connection.wait([sentinel])  # returns when the parent process has ended
    _stop(grace)


def _stop(grace: float) -> None:
    """A graceful stop (uvicorn's SIGTERM handling), then a hard exit if it does not finish."""
    log.warning("the supervisor process has gone; this worker (pid %d) stops", os.getpid())
    timer = threading.Timer(grace, os._exit, args=(1,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)
