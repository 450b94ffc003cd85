"""Run core task generators off the GUI thread, one at a time, newest request wins.

Modelled on Orange3's ConcurrentWidgetMixin and napari's thread_worker: a task is a generator
function taking a ``cancel`` token; what it yields arrives on ``progress`` and what it returns
on ``finished``, both through queued signals carrying plain data. Submitting a new task cancels
the running one; results of a superseded task are dropped, never shown.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from cxr_viewer.common.errors import UserError
from cxr_viewer.common.tasks import Cancelled, CancelToken

log = logging.getLogger(__name__)


class _Job(QRunnable):
    """A runnable calling ``fn``. A Python subclass, not ``QRunnable.create``: the pool deletes a
    created runnable behind PySide's back, its wrapper stays registered at the freed address, and a
    QObject allocated there later comes back to Python as that QRunnable (PySide6 6.12; seen as
    "'QRunnable' object has no attribute 'connect'" when pyqtgraph built an ROI's menu)."""

    def __init__(self, fn: Callable[[], None]):
        super().__init__()
        self._fn = fn

    def run(self) -> None:
        self._fn()


class TaskRunner(QObject):
    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    busy_changed = Signal(bool)

    # (generation, kind, payload), emitted from the worker thread, delivered queued
    _event = Signal(int, str, object)

    def __init__(self, parent: QObject | None = None, name: str = "task", threads: int = 1):
        """``threads`` > 1 lets a new task start while a cancelled one is still stuck in a blocking
        call (a network read waiting for its timeout); the stuck one's results are dropped."""
        super().__init__(parent)
        self.name = name
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(threads)
        self._generation = 0
        self._token: CancelToken | None = None
        self._busy = False
        self._event.connect(self._on_event)

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, task: Callable, *args, **kwargs) -> int:
        """Start ``task(*args, cancel=token, **kwargs)``; cancels what was running."""
        self.cancel()
        self._generation += 1
        generation = self._generation
        token = CancelToken()
        self._token = token
        self._set_busy(True)
        self._pool.start(_Job(lambda: self._run(generation, token, task, args, kwargs)))
        return generation

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()
            self._token = None
            self._generation += 1  # whatever it still sends is dropped
        self._pool.clear()  # drop queued, not yet started
        if self._busy:
            self._set_busy(False)
            self.cancelled.emit()

    def shutdown(self, timeout_ms: int = 10000) -> bool:
        """Cancel and wait for the worker thread; call before the owner is destroyed."""
        self.cancel()
        self._generation += 1
        return self._pool.waitForDone(timeout_ms)

    def _run(self, generation: int, token: CancelToken, task: Callable, args, kwargs) -> None:
        # Runs in the pool thread: touches no widget, only emits plain data.
        try:
            gen = task(*args, cancel=token, **kwargs)
            while True:
                try:
                    item = next(gen)
                except StopIteration as stop:
                    self._event.emit(generation, "finished", stop.value)
                    return
                if token.cancelled:
                    gen.close()
                    raise Cancelled()
                self._event.emit(generation, "progress", item)
        except Cancelled:
            self._event.emit(generation, "cancelled", None)
        except (UserError, OSError) as exc:  # one line for the user: bad input, PACS, export, disk
            self._event.emit(generation, "failed", str(exc))
        except MemoryError:
            self._event.emit(generation, "failed", "out of memory: close other images or programs and try again")
        except Exception as exc:  # report, keep the app alive
            log.error("%s task failed:\n%s", self.name, traceback.format_exc())
            self._event.emit(generation, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    @Slot(int, str, object)
    def _on_event(self, generation: int, kind: str, payload: object) -> None:
        if generation != self._generation:
            return  # a superseded task: its results are never shown
        if kind == "progress":
            self.progress.emit(payload)
            return
        self._token = None
        self._set_busy(False)
        if kind == "finished":
            self.finished.emit(payload)
        elif kind == "failed":
            self.failed.emit(payload)
        elif kind == "cancelled":
            self.cancelled.emit()
