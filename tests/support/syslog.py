"""Audit record repositories for tests: syslog receivers on loopback over UDP
(RFC 5426) and TLS (RFC 5425, octet counting), and a CA with certificates made with
``cryptography``."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from tests.support.pki import CertificateAuthority

LOOPBACK = "127.0.0.1"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SyslogMessage:
    """One RFC 5424 message: its header fields and the AuditMessage it carries."""

    pri: str
    version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    xml: bytes

    @classmethod
    def parse(cls, data: bytes) -> SyslogMessage:
        header, sep, rest = data.partition(b" " + BOM)
        assert sep, "MSG does not start with a BOM"
        fields = header.decode("ascii").split(" ")
        assert len(fields) == 7, fields
        pri_version = fields[0]
        assert pri_version.startswith("<") and ">" in pri_version
        pri, version = pri_version[1:].split(">")
        return cls(pri, version, *fields[1:], xml=rest)

    @property
    def root(self) -> etree._Element:
        return etree.fromstring(self.xml)

    @property
    def event_id(self) -> str:
        return str(self.root.find("EventIdentification/EventID").get("csd-code"))  # type: ignore[union-attr]

    def event_types(self) -> list[str]:
        """The csd-code of each EventTypeCode."""
        return [str(c.get("csd-code")) for c in self.root.iter("EventTypeCode")]


class _Receiver:
    def __init__(self) -> None:
        self.messages: list[SyslogMessage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _add(self, data: bytes) -> None:
        message = SyslogMessage.parse(data)
        with self._lock:
            self.messages.append(message)

    def wait_for(
        self,
        event_id: str,
        count: int = 1,
        timeout: float = 20.0,
        *,
        event_type: str | None = None,
    ) -> list[SyslogMessage]:
        """The messages of ``event_id`` (and EventTypeCode ``event_type``, when
        given) once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [
                    m
                    for m in self.messages
                    if m.event_id == event_id
                    and (event_type is None or event_type in m.event_types())
                ]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, (
                    f"{len(found)} of {count} {event_id} message(s); have "
                    f"{[m.event_id for m in self.messages]}"
                )
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class UdpSyslogReceiver(_Receiver):
    """RFC 5426: one message per datagram."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, port))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self._add(data)
        self.sock.close()


class TlsSyslogReceiver(_Receiver):
    """RFC 5425: TLS, octet-counted frames (``MSG-LEN SP SYSLOG-MSG``); the client
    must present a certificate of the CA (mutual TLS) when ``require_client_cert``."""

    def __init__(self, context: ssl.SSLContext, port: int = 0) -> None:
        super().__init__()
        self.context = context
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.handshake_failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()
        self.sock.close()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            raw.close()
            return
        with conn:
            buffer = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except (ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self._add(rest[: int(length)])
                    buffer = rest[int(length) :]
            with contextlib.suppress(ssl.SSLError, OSError):
                conn.unwrap()


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client one (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.server_cert), str(self.server_key))
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.ca))
        return context


def make_pki(directory: Path) -> Pki:
    """A fresh CA and two leaf certificates under ``directory``: the audit
    repository's (a server's, for 127.0.0.1 / localhost) and kuva's (a client's)."""
    ca = CertificateAuthority(directory, "kuva test CA")
    server = ca.issue("server", server=True, CN="audit repository")
    client = ca.issue("client", CN="kuva")
    return Pki(
        ca=ca.cert,
        server_cert=server.cert,
        server_key=server.key,
        client_cert=client.cert,
        client_key=client.key,
    )
