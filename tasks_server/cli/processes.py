"""``serve`` with API_PROCESSES > 1: prepare the database once, bind the listening socket
once, fork the processes that serve it (the kernel hands each connection to one of them)
and watch them. A process that ends unasked is started again; one that keeps ending
(RESTARTS within RESTART_WINDOW_S) stops the whole server with exit code 1, so it is never
left half alive. SIGTERM or SIGINT stops every process gracefully; the exit code is 0 when
all of them stopped cleanly. How the processes share the work: tasks_server/processes.py.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from ..config import Settings
from ..processes import Channels

logger = logging.getLogger(__name__)

ServeOne = Callable[[Settings, socket.socket, Channels], int]

RESTARTS = 5
RESTART_WINDOW_S = 60.0
BACKLOG = 2048  # as uvicorn's own listener
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve_processes(settings: Settings, serve_one: ServeOne) -> int:
    _prepare_database(settings)
    listener = _bind(settings.host, settings.port)
    channels = Channels.make(settings.api_processes)
    return _Supervisor(settings, listener, channels, serve_one).run()


def _prepare_database(settings: Settings) -> None:
    """The key file and the schema, made once here rather than raced for by the
    processes as they start."""
    from ..cipher_key import resolve
    from ..store.migrate import migrate
    from ..store.sqlite import connect

    resolve(settings.cipher_key, settings.database_path)
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.database_path, settings.sqlite_synchronous)
    try:
        migrate(conn)
    finally:
        conn.close()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(BACKLOG)
    listener.set_inheritable(True)
    return listener


class _Supervisor:
    def __init__(
        self, settings: Settings, listener: socket.socket, channels: Channels, serve: ServeOne
    ) -> None:
        self._settings = settings
        self._listener = listener
        self._channels = channels
        self._serve = serve
        self._children: dict[int, int] = {}  # pid → process number
        self._restarts: collections.deque[float] = collections.deque()
        self._stopping = False
        self._failed = False

    def run(self) -> int:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._stop)
        logger.info(
            "serving %s:%d with %d API processes",
            self._settings.host,
            self._settings.port,
            self._settings.api_processes,
        )
        for index in range(self._settings.api_processes):
            self._start(index)
        while self._children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid in self._children:
                index = self._children.pop(pid)
                self._ended(index, pid, os.waitstatus_to_exitcode(status))
        self._listener.close()
        return 1 if self._failed else 0

    def _ended(self, index: int, pid: int, code: int) -> None:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if self._stopping:
            # ended by the SIGTERM: uvicorn stops gracefully on it and then raises the
            # signal it stopped on again, so a process stopped this way ends by it
            if code not in (0, -signal.SIGTERM):
                logger.error("API process %d (pid %d) stopped with %s", index, pid, how)
                self._failed = True
            return
        logger.error("API process %d (pid %d) ended with %s", index, pid, how)
        if self._may_restart():
            self._start(index)
            return
        logger.critical(
            "API processes ended %d times within %.0f s; stopping the server",
            RESTARTS,
            RESTART_WINDOW_S,
        )
        self._failed = True
        self._stop()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= RESTARTS:
            return False
        self._restarts.append(now)
        return True

    def _stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stopping = True
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _start(self, index: int) -> None:
        parent = os.getpid()
        # No stop signal between the fork and the bookkeeping: the parent would not know
        # the new process (and would wait for it forever), and the child would run the
        # parent's handler. A signal that comes meanwhile is taken when unblocked.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(index, parent, mask)
            self._children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _child(self, index: int, parent: int, mask: set[int | signal.Signals]) -> None:
        code = 1
        try:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _end_with(parent)
            code = self._serve(self._settings, self._listener, self._channels.of_process(index))
        except BaseException:
            logger.exception("API process %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)


def _end_with(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when the parent ends (Linux), so that
    a parent killed outright does not leave its processes serving on their own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)
