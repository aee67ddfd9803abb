"""The localizer node's worker thread: newest-frame mailbox, and never two workers.

The image callback drops each frame into a one-slot mailbox; one worker thread localizes whatever
is newest. Lifecycle transitions must not block the executor (it also runs /diagnostics and every
other callback), but a frame in flight cannot be interrupted (a model call holds no stop points):

- :meth:`FrameWorker.stop` signals the worker and waits at most ``timeout_s``; a worker still busy
  after that keeps running in the background, is reported by :meth:`lingering_s`, and its result
  is discarded (:meth:`is_current` is False for it);
- :meth:`FrameWorker.start` first waits (at most ``timeout_s``) for such a lingering worker and
  raises :class:`WorkerBusyError` if it is still running, so two workers never run at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WorkerBusyError(RuntimeError):
    """The previous worker is still localizing a frame."""


class Mailbox:
    """One slot: ``put`` replaces the waiting item (returns True if one was dropped), ``get`` takes it."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: object | None = None

    def put(self, item: object) -> bool:
        with self._cv:
            dropped = self._item is not None
            self._item = item
            self._cv.notify()
            return dropped

    def get(self, timeout_s: float) -> object | None:
        with self._cv:
            if self._item is None:
                self._cv.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def clear(self) -> bool:
        with self._cv:
            had, self._item = self._item is not None, None
            return had


class FrameWorker:
    """Runs ``process(item)`` on the newest item of the mailbox in one background thread;
    ``on_error(exc)`` is called for an exception of ``process`` (the worker keeps running)."""

    def __init__(self, process: Callable[[object], None], on_error: Callable[[BaseException], None]) -> None:
        self._process = process
        self._on_error = on_error
        self.mailbox = Mailbox()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._busy_since: dict[threading.Thread, float] = {}  # thread -> monotonic start of its frame
        self._guard = threading.Lock()

    # ------------------------------------------------------------------------------- control
    def start(self, timeout_s: float = 2.0) -> None:
        """Start a worker; waits up to ``timeout_s`` for a previous one still finishing a frame."""
        prev = self._thread
        if prev is not None:
            prev.join(timeout_s)
            if prev.is_alive():
                raise WorkerBusyError(
                    f"the previous worker is still localizing a frame (for {self._age(prev):.1f} s); "
                    "activate again when it has finished"
                )
        self._thread = None
        self.mailbox.clear()
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(stop,), name="visloc-localizer", daemon=True)
        with self._guard:
            self._stop, self._thread = stop, thread
        thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Signal the worker and wait up to ``timeout_s``; True when it has ended. A worker still busy
        keeps its thread (joined by the next :meth:`start`) and its result is discarded."""
        with self._guard:
            stop, thread = self._stop, self._thread
            self._stop = None
        if stop is not None:
            stop.set()
        self.mailbox.clear()
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    # ------------------------------------------------------------------------------- queries
    def put(self, item: object) -> bool:
        """Offer a frame; True if it replaced one not yet taken (a dropped frame)."""
        return self.mailbox.put(item)

    def is_current(self) -> bool:
        """True in the running (not stopped) worker thread: only it may publish."""
        with self._guard:
            return self._stop is not None and not self._stop.is_set() and threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        with self._guard:
            return self._stop is not None and self._thread is not None and self._thread.is_alive()

    def lingering_s(self) -> float:
        """Seconds a stopped worker has been busy with its last frame (0 when none lingers)."""
        with self._guard:
            thread, stopped = self._thread, self._stop is None
        if thread is None or not stopped or not thread.is_alive():
            return 0.0
        return self._age(thread)

    def _age(self, thread: threading.Thread) -> float:
        t0 = self._busy_since.get(thread)
        return 0.0 if t0 is None else time.monotonic() - t0

    # ------------------------------------------------------------------------------- thread
    def _run(self, stop: threading.Event) -> None:
        me = threading.current_thread()
        try:
            while not stop.is_set():
                item = self.mailbox.get(0.1)
                if item is None or stop.is_set():
                    continue
                self._busy_since[me] = time.monotonic()
                try:
                    self._process(item)
                except Exception as err:  # never let one frame kill the worker
                    self._on_error(err)
                finally:
                    self._busy_since.pop(me, None)
        finally:
            self._busy_since.pop(me, None)
