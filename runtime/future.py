"""The answer to an `ask`: a small thread-safe future with a deadline.

Rules: every future carries the deadline of the ask that made it; `get()` never waits past it
and raises `AskTimeout` there. Callbacks run on the thread that resolves the future (usually
the transport thread), so they must be short and must not block.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from protocols.wire import REPLY, ErrorRecord


class AskTimeout(TimeoutError):
    """No answer arrived before the ask's deadline."""


class RemoteError(Exception):
    """The other side answered with an error record (unknown actor, handler error, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


_UNSET = object()


def reply_value(kind: int, body: Any) -> Any:
    """The value a REPLY envelope carries, or the RemoteError an ERROR one carries (raised).
    The one decoder of answers, for the transport's futures and the client's direct asks."""
    if kind == REPLY:
        return body
    if isinstance(body, ErrorRecord):
        raise RemoteError(body.kind, body.message)
    raise RemoteError("bad_error", repr(body)[:200])


def settle(future: Future, kind: int, body: Any) -> None:
    """Resolve ``future`` with the answer in a REPLY or ERROR envelope."""
    try:
        future.set_result(reply_value(kind, body))
    except RemoteError as error:
        future.set_exception(error)


class Future:
    """Waiting is one lock acquire (a single futex), cheaper than an Event's condition variable:
    ``_signal`` is held from creation until the answer arrives."""

    __slots__ = ("_signal", "_done", "_value", "_error", "_callbacks", "_lock", "deadline")

    def __init__(self, deadline: float | None = None) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self._done = False
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []
        self._lock = threading.Lock()
        self.deadline = deadline  # time.monotonic() value, or None for no deadline

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._resolve(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._resolve(_UNSET, error)

    def _resolve(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return  # first answer wins: a late reply after a timeout is dropped
            self._value, self._error = value, error
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        self._signal.release()
        for callback in callbacks:
            callback(self)

    def add_done_callback(self, callback: Callable[[Future], None]) -> None:
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def _wait(self, timeout_s: float | None) -> bool:
        if self._done:
            return True
        if not self._signal.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)):
            return False
        self._signal.release()  # let every other waiter through too
        return True

    def get(self, timeout: float | None = None) -> Any:
        """The answer; raises the remote error, or AskTimeout at the deadline or after `timeout` s."""
        wait_s = timeout
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            wait_s = remaining if wait_s is None else min(wait_s, remaining)
        if not self._wait(wait_s):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.set_exception(AskTimeout("no answer before the ask's deadline"))
            else:
                raise AskTimeout(f"no answer within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value
