"""JSON-lines messages over a pair of pipe file descriptors.

JSON, not pickle: the worker hosts untrusted engine code, and unpickling its bytes in the parent
would hand that code the parent process.
"""

from __future__ import annotations

import json
import os
import select
from typing import Any

MAX_LINE_BYTES = 64 * 1024 * 1024


class ChannelClosed(EOFError):
    """The other end closed its pipe (it exited or crashed)."""


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = bytearray()
        self._closed = False

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]

    def receive(self, timeout: float | None) -> list[dict[str, Any]]:
        """Every complete message available within ``timeout`` seconds (None: wait for one)."""
        messages = self._take_lines()
        if messages:
            return messages
        if self._closed:
            raise ChannelClosed("the other end closed the channel")
        ready, _, _ = select.select([self._read_fd], [], [], timeout)
        while ready:
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                self._closed = True
                break
            self._buffer.extend(chunk)
            if len(self._buffer) > MAX_LINE_BYTES and b"\n" not in self._buffer:
                raise ValueError(f"a message is over {MAX_LINE_BYTES} bytes without a newline")
            ready, _, _ = select.select([self._read_fd], [], [], 0)
        messages = self._take_lines()
        if not messages and self._closed:
            raise ChannelClosed("the other end closed the channel")
        return messages

    def _take_lines(self) -> list[dict[str, Any]]:
        messages = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                messages.append(json.loads(line))
        return messages

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
