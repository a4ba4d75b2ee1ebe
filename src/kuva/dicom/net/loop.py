"""The engine's event loop thread: one asyncio loop per process carries every
association, accepted or requested (PS3.8 upper layer); application threads reach it
through :meth:`EngineLoop.run` and :meth:`EngineLoop.call`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["EngineLoop", "engine_loop"]

T = TypeVar("T")

#: Threads of the pool that runs handlers of associations this process requested
#: (C-STORE sub-operations of a C-GET arriving on an outgoing association).
REQUESTOR_HANDLER_THREADS = 16


class EngineLoop:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self, name: str = "kuva-dicom-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.get_ident() == self.thread.ident

    def check_not_loop_thread(self, what: str) -> None:
        """Raise RuntimeError if a blocking call is made on the loop thread (it would
        wait for the very loop it blocks)."""
        if threading.get_ident() == self.thread.ident:
            raise RuntimeError(
                f"{what} blocks: call it from another thread, or use its _async twin"
            )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (any thread but the loop's)."""
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise RuntimeError("a blocking engine call was made on the engine's loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, callback: Callable[..., object], *args: Any) -> None:
        """Schedule ``callback(*args)`` on the loop (thread-safe, returns at once)."""
        self.loop.call_soon_threadsafe(callback, *args)

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The process-wide pool for handlers of requested associations (created lazily)."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    REQUESTOR_HANDLER_THREADS, thread_name_prefix="kuva-dicom-requestor"
                )
            return self._executor


_engine_loop: EngineLoop | None = None
_engine_loop_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked worker has no loop thread: it starts its own on first use."""
    global _engine_loop, _engine_loop_lock
    _engine_loop = None
    _engine_loop_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def engine_loop() -> EngineLoop:
    """The process-wide engine loop, started on first use (daemon thread
    ``kuva-dicom-loop``)."""
    global _engine_loop
    loop = _engine_loop
    if loop is not None:
        return loop
    with _engine_loop_lock:
        if _engine_loop is None:
            _engine_loop = EngineLoop()
        return _engine_loop
