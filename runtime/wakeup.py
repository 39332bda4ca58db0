"""A wake-up pipe: how another thread wakes a loop that waits in poll/select.

Rules: ``wake()`` may be called from any thread and never blocks or raises (a pipe that is full
already wakes the reader; one that is closed belongs to a stopped loop). Only the loop's own thread
calls ``drain()`` and ``close()``; ``fileno`` is what it registers with its poller.
"""

from __future__ import annotations

import os


class WakePipe:
    def __init__(self) -> None:
        self.fileno, self._write_end = os.pipe()
        os.set_blocking(self.fileno, False)
        os.set_blocking(self._write_end, False)

    def wake(self) -> None:
        try:
            os.write(self._write_end, b"\0")
        except (BlockingIOError, OSError, ValueError):
            pass

    def drain(self) -> None:
        try:
            while os.read(self.fileno, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fileno)
        os.close(self._write_end)
