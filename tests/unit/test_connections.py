"""dicom.connections: established TCP connections on a port, from the kernel's table,
whichever process holds them."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from kuva.dicom.connections import established_connections

TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:2B67 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:2B67 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D431 0100007F:2B67 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:2B67 0100007F:D432 06 00000000:00000000 00:00000000 00000000     0        0 4 1
"""


def test_counts_established_connections_on_the_local_port(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(TABLE)
    # 0x2B67 = 11111: one established (the listening and TIME_WAIT rows are not).
    assert established_connections(11111, (table,)) == 1
    assert established_connections(54321, (table,)) == 1  # 0xD431, the client's side
    assert established_connections(11111, (tmp_path / "absent",)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/tcp is Linux's")
def test_a_real_connection_is_counted() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        before = established_connections(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert established_connections(port) == (before or 0) + 1
        del client
