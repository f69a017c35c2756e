"""Stopping: how a command, its ingest and its worker processes answer Ctrl-C (SIGINT) and SIGTERM.

One place for every signal rule, because they depend on each other:

* the command's process turns both signals into a ``KeyboardInterrupt`` and sets its ``cancel`` event,
  which ingest checks between files (:class:`StopSignals`);
* once the command's work is done (an ingest published), a signal ends the process at once with the
  command's status instead (:meth:`StopSignals.work_done`);
* while a process pool forks its workers, both signals are held and raised again afterwards
  (:func:`stop_signals_held`);
* a worker ignores Ctrl-C (the parent stops it), ends quietly on SIGTERM, and dies with its parent
  (:func:`init_worker_signals`).
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StopSignals", "COMMAND", "stop_signals_held", "init_worker_signals", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
_WATCHDOG_S = 1.0


def _on_stop_signals(handler: Callable[[int, Any], None]) -> None:
    """``handler`` for SIGTERM and SIGINT (handlers can only be set from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)


class StopSignals:
    """A command's answer to SIGTERM (``docker stop``, ``kill``) and Ctrl-C: stop the way Ctrl-C does, so
    nothing half-written stays.

    Attributes:
        cancel: Set when a stop was asked for; ingest checks it between files, so an interrupt that lands
            where Python swallows exceptions (e.g. inside fork handlers) still stops the run.
        own_process: The command runs as its process's own (``zhrag …``, not ``main(argv)`` from Python):
            only then may it end the process itself.
    """

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.own_process = False

    def install(self) -> None:
        """Turn both signals into ``KeyboardInterrupt`` (and ``cancel``) in this process. A forked worker
        inherits the handler until its initializer replaces it; a signal in that window (Ctrl-C reaches the
        whole process group) ends the worker quietly instead of raising a traceback there."""
        owner = os.getpid()

        def interrupt(signum: int, _frame: object) -> None:
            if os.getpid() != owner:
                os._exit(128 + signum)
            self.cancel.set()
            raise KeyboardInterrupt

        _on_stop_signals(interrupt)

    @staticmethod
    def dump_stacks_on_sigusr1() -> None:
        """``kill -USR1 PID`` prints every thread's stack to stderr (a command that seems stuck says where)."""
        if hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, all_threads=True)

    def work_done(self, code: int) -> None:
        """The command's work is done (an ingest has published): from now on a signal ends the process at
        once with ``code``. Before, one that landed while the summary was printed or the interpreter tore
        down (torch's and the threads' exit hooks take a moment) said "the index was not changed" after a
        publish, or printed a traceback after a successful run. Only for the process's own command."""

        def leave(_signum: int, _frame: object) -> None:
            self.leave_now(code)

        if self.own_process:
            _on_stop_signals(leave)

    @staticmethod
    def leave_now(code: int) -> None:
        """End the process with ``code`` without the interpreter's teardown. After an interrupt a native
        thread may still be inside the model (torch's); tearing down around it aborted with "terminate called
        without an active exception" (exit 134) instead of the documented 1. Everything to keep was already
        cleaned up."""
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a pool forks workers and starts its manager thread; a held signal is
    raised again on leaving, when the pool is whole.

    An interrupt that landed between the two left a thread that ``shutdown`` cannot join ("cannot join thread
    before it is started"), and that RuntimeError replaced the KeyboardInterrupt; one that landed between
    two forks left workers no thread would ever stop, and the command hung on exit. The Python-level
    handlers are swapped rather than the thread's signal mask: any other thread (torch's, a tokenizer's) may
    take the signal, and Python then runs its handler in the main thread all the same.
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield  # handlers can only be swapped from the main thread, and one installed outside Python not at all
        return
    owner, held = os.getpid(), []

    def hold(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a worker forked in this window does what init_worker_signals makes it do
            if signum == signal.SIGTERM:
                os._exit(128 + signum)
            return
        held.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


def init_worker_signals(parent: int | None) -> None:
    """A pool worker's signals: stopping is the parent's job. Ctrl-C reaches the whole process group, so a
    worker ignores SIGINT and is shut down by the parent; SIGTERM (``pkill``) ends it silently instead of
    through the parent's inherited handler (which printed a traceback from every worker). With ``parent``,
    the worker also dies with it."""
    if parent is not None:
        _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` dies, however it dies (``kill -9``, the OOM killer): a worker blocked
    on a pipe or a lock would otherwise live on forever, holding its memory.

    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); everywhere a daemon thread also
    watches for the worker being handed to another parent. A parent that died before this ran is caught by
    the first check.
    """
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog alone
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCHDOG_S)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="zhrag-parent-watchdog", daemon=True).start()


COMMAND = StopSignals()
"""How this process answers Ctrl-C and SIGTERM when it runs a ``zhrag`` command (``app.cli`` installs it)."""
