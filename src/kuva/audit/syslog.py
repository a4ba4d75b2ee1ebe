"""Delivery of audit messages to an audit record repository by syslog (IHE ITI-20).

Each message is an RFC 5424 syslog message (6) whose MSG is the AuditMessage XML
in UTF-8 with a BOM (6.4): PRI 85 = facility 10 (security/authorization) and
severity 5 (notice), MSGID ``IHE+RFC-3881``, no structured data.

- ``udp://host:port``: one message per datagram (RFC 5426 3.1). UDP says nothing
  of arrival: a message counts as sent when the datagram left.
- ``tls://host:port``: TLS 1.2 (RFC 5425 4.2; IHE ITI TF-2 3.19.6 ATX: TLS 1.2
  Floor), one connection per message, framed by octet counting (``MSG-LEN SP
  SYSLOG-MSG``, RFC 5425 4.3). Not TLS 1.3: it checks the client's certificate
  after the handshake, and a syslog sender, which reads no reply, cannot tell a
  repository that refused kuva's certificate from one that took the message (on
  loopback most such refusals looked like a clean close); in TLS 1.2 a refused
  certificate fails the handshake, and the message is sent again. The
  repository's certificate is verified against ``[audit] ca_file`` (or the
  system's CAs) and its host name; ``cert_file``/``key_file`` authenticate kuva
  (mutual TLS). RFC 5425 has no acknowledgement: a message counts as delivered
  when the session that carried it was closed, by kuva (close_notify answered) or
  by the repository after reading it.

A message that cannot be sent raises ``OSError``: the outbox task that carries it
is retried (services.audit).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
from datetime import UTC, datetime

from kuva.config import AuditSettings
from kuva.tasks.worker import PermanentFailure

# RFC 5424 6.2.1: facility 10 (security/authorization messages), severity 5 (notice).
PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
APP_NAME = "kuva"
BOM = b"\xef\xbb\xbf"
# The largest UDP payload over IPv4 (RFC 5426 3.2: larger messages cannot be sent).
MAX_DATAGRAM = 65507
TIMEOUT_SECONDS = 10.0

_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


class MessageTooLarge(PermanentFailure):
    """A message longer than one datagram (UDP): sending it again will not help;
    TLS carries any length."""


def _header_field(value: str, limit: int) -> str:
    """A header field as RFC 5424 6.2 allows: PRINTUSASCII, at most ``limit``, or NILVALUE."""
    return _NOT_PRINTUSASCII.sub("_", value)[:limit] or "-"


def syslog_message(
    xml: str, *, timestamp: datetime, hostname: str | None = None, procid: int | None = None
) -> bytes:
    """The RFC 5424 message that carries ``xml``."""
    instant = timestamp.astimezone(UTC).isoformat(timespec="microseconds")
    header = " ".join(
        (
            f"<{PRI}>1",
            instant.replace("+00:00", "Z"),
            _header_field(hostname or socket.gethostname(), 255),
            APP_NAME,
            _header_field(str(procid if procid is not None else os.getpid()), 128),
            MSGID,
            "-",  # STRUCTURED-DATA: none
        )
    )
    return header.encode("ascii") + b" " + BOM + xml.encode("utf-8")


class SyslogSender:
    """Sends syslog messages to the repository of ``[audit] repository``."""

    def __init__(self, settings: AuditSettings) -> None:
        scheme, _, address = settings.repository.partition("://")
        host, _, port = address.rpartition(":")
        self.scheme = scheme
        self.host = host.strip("[]")
        self.port = int(port)
        self._context: ssl.SSLContext | None = None
        if scheme == "tls":
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=str(settings.ca_file) if settings.ca_file is not None else None,
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.maximum_version = ssl.TLSVersion.TLSv1_2  # see the module's doc
            if settings.cert_file is not None:
                context.load_cert_chain(
                    str(settings.cert_file),
                    str(settings.key_file) if settings.key_file is not None else None,
                )
            self._context = context

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def send(self, xml: str, recorded_at: datetime) -> None:
        """Send the AuditMessage ``xml`` recorded at ``recorded_at``; raises OSError
        when it could not be."""
        message = syslog_message(xml, timestamp=recorded_at)
        if self._context is None:
            self._send_udp(message)
        else:
            self._send_tls(message, self._context)

    def _send_udp(self, message: bytes) -> None:
        if len(message) > MAX_DATAGRAM:
            raise MessageTooLarge(
                f"audit message of {len(message)} bytes does not fit a UDP datagram; use tls://"
            )
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.sendto(message, address)

    def _send_tls(self, message: bytes, context: ssl.SSLContext) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT_SECONDS)
        with context.wrap_socket(raw, server_hostname=self.host) as tls:
            tls.sendall(str(len(message)).encode("ascii") + b" " + message)
            # Close the session: close_notify, then the repository's own close (one
            # that closes without close_notify has read what was sent).
            with contextlib.suppress(ssl.SSLEOFError):
                tls.unwrap()
