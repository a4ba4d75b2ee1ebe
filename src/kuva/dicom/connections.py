"""How many DICOM connections are open on the archive's port, across every process
serving it (the main process and its DICOM workers share one listening socket:
dicom.workers): the kernel's table of TCP connections (Linux ``/proc/net/tcp`` and
``tcp6``), established ones whose local port is the DICOM port. An association is
one such connection. None where the table cannot be read (not Linux)."""

from __future__ import annotations

from pathlib import Path

ESTABLISHED = "01"
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def established_connections(port: int, tables: tuple[Path, ...] = TABLES) -> int | None:
    """Established TCP connections whose local port is ``port``."""
    count = 0
    read_any = False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != ESTABLISHED:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                count += 1
    return count if read_any else None
