"""The queue of one batcher: accepted requests not yet taken by its worker, in earliest-
deadline-first order, with the one lock (a condition) that guards the queue, the count of
requests in flight and every decision taken on them. The batcher's admission (event
loop) and its worker thread (batches, or decode.py's loop for generation) both go
through it, so the locking rules live here:

- `with queue:` holds the lock; the items, `inflight` and `stopping` are read and changed
  only with it held, and so is the batcher's own state that is decided together with the
  queue (busy time, admission memo, the ladder);
- a model call never runs with the lock held (`with queue.unlocked():` inside a locked
  block), so admission never waits on the model;
- a request is answered on its own event loop (`answer`), never on the worker thread.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .metrics import Metrics
from .request import Request


class RequestQueue:
    def __init__(self, model: str, metrics: Metrics):
        self.model, self.metrics = model, metrics
        self.items: list[Request] = []  # never rebound: admission reads this very list
        self._cond = threading.Condition()
        self.inflight = 0  # accepted, not yet answered
        self.stopping = False

    # -- the lock -------------------------------------------------------------------------
    def __enter__(self) -> RequestQueue:
        self._cond.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cond.release()

    @contextmanager
    def unlocked(self) -> Iterator[None]:
        """Lock held: let it go for the body (a model call), take it back after."""
        self._cond.release()
        try:
            yield
        finally:
            self._cond.acquire()

    def wait(self, timeout: float | None = None) -> None:
        """Lock held: sleep until woken or `timeout` seconds."""
        self._cond.wait(timeout)

    def wake(self) -> None:
        """Lock held: wake every waiter (new work, a stop, an estimate to re-time)."""
        self._cond.notify_all()

    # -- the items (lock held) -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def edf(self) -> list[Request]:
        """The queued requests, earliest deadline first."""
        return sorted(self.items, key=lambda r: r.job.deadline)

    def waiting_items(self) -> int:
        """Items (texts, images, generations) waiting."""
        return sum(r.job.items for r in self.items)

    def push(self, req: Request) -> None:
        """An admitted request joins: it is in flight until answered."""
        self.items.append(req)
        self.inflight += 1
        self._gauge()
        self._cond.notify_all()

    def take(self, reqs: list[Request]) -> None:
        """The worker took `reqs` off the queue (it answers them later)."""
        for r in reqs:
            self.items.remove(r)
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.queue_length.set(self.waiting_items(), model=self.model)

    # -- lifecycle (lock free) -------------------------------------------------------------
    def stop(self) -> None:
        """No new work: the worker ends once the queue is empty."""
        with self:
            self.stopping = True
            self._cond.notify_all()

    def answer(self, req: Request, value: Any = None, exc: BaseException | None = None) -> None:
        """Settle `req` on its event loop with `value` or `exc`; it leaves the flight."""
        def settle() -> None:
            if req.future.done():
                return
            if exc is not None:
                req.future.set_exception(exc)
            else:
                req.future.set_result(value)

        call_on(req.loop, settle)
        with self:
            self.inflight -= 1
            self._cond.notify_all()


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    """Run `fn(*args)` on `loop` (from the worker thread); nothing if the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: the client is gone
        pass
