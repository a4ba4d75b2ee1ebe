"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, HL7 TF v2.5.1 Appendix C):
a message is <VT> bytes <FS><CR>. Bytes outside a frame are garbage: dropped and
counted, never fatal. A frame longer than the limit ends the connection."""

from __future__ import annotations

from dataclasses import dataclass, field

START = b"\x0b"
END = b"\x1c\x0d"


class FrameTooLong(Exception):
    """A frame grew past the limit before its end: the peer is not speaking MLLP."""


@dataclass
class MllpFramer:
    """Feed it what the socket gives; it hands back complete frames."""

    max_bytes: int
    garbage: int = 0  # bytes dropped outside frames
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            start = self._buffer.find(START)
            if start < 0:
                self.garbage += len(self._buffer)
                self._buffer.clear()
                return frames
            if start:
                self.garbage += start
                del self._buffer[:start]
            end = self._buffer.find(END, 1)
            if end < 0:
                if len(self._buffer) > self.max_bytes:
                    raise FrameTooLong(f"no frame end within {self.max_bytes} bytes")
                return frames
            frames.append(bytes(self._buffer[1:end]))
            del self._buffer[: end + len(END)]


def frame(message: bytes) -> bytes:
    return START + message + END
