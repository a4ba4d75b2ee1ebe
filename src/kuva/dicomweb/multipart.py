"""multipart/related response bodies (RFC 2387, PS3.18 8.6.1.2).

A WADO-RS answer is a sequence of parts, each with its own Content-Type (and a
Content-Length where known), written as the parts' bytes come: one object or
frame in memory at most, a stored file never whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    content_type: str
    chunks: Iterable[bytes]
    length: int | None = None
    location: str | None = None


def new_boundary() -> str:
    return f"kuva-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The response's Content-Type header (PS3.18 8.7.3.1)."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax is not None:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body: delimiter, part headers, part bytes, ..., close delimiter."""
    delimiter = f"--{boundary}\r\n".encode("ascii")
    for part in parts:
        headers = [f"Content-Type: {part.content_type}"]
        if part.length is not None:
            headers.append(f"Content-Length: {part.length}")
        if part.location is not None:
            headers.append(f"Content-Location: {part.location}")
        yield delimiter + ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
        yield from part.chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
