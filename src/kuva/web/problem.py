"""HTTP error answers: a JSON problem body (RFC 9457, ``application/problem+json``)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        media_type="application/problem+json",
        content={
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            **extra,
        },
    )
