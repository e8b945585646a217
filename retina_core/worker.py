"""The one background-thread lifecycle: ``start()``, ``stop(timeout_s)``, ``alive()``.

Every long-running part (ring-buffer readers, the enricher, the metrics module, pollers, informers, sources) is a
:class:`Worker`: it owns one daemon thread running :meth:`Worker._run` and a stop flag (``self._stop``, a
``threading.Event`` the loop checks or waits on). Subclasses implement ``_run`` and, where the loop blocks on
something other than the flag, :meth:`Worker._wake_thread` to interrupt it.
"""

from __future__ import annotations

import threading

__all__ = ["Worker"]


class Worker:
    """A daemon thread with a stop flag. ``thread_name`` names the thread (``ps -T``, logs, tracebacks)."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wake_thread(self) -> None:
        """Interrupt a blocking wait in :meth:`_run` after the stop flag is set (default: nothing to do)."""

    def start(self) -> None:
        """Start the thread. Raises ``RuntimeError`` while a thread of this worker is still running."""
        if self.alive():
            raise RuntimeError(f"{self.thread_name} already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Set the stop flag, wake the thread and wait up to ``timeout_s`` seconds for it to end (not when called
        from the thread itself). Returns True when no thread of this worker is left running."""
        self._stop.set()
        self._wake_thread()
        t, self._thread = self._thread, None
        if t is None or t is threading.current_thread():
            return True
        t.join(timeout_s)
        return not t.is_alive()

    def alive(self) -> bool:
        """True while the thread runs."""
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (until the next :meth:`start`)."""
        return self._stop.is_set()
