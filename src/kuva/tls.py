"""Mutual TLS of the listeners (PS3.15 B.1 Basic TLS Secure Transport Connection
Profile; IHE ITI-19 Authenticate Node): the server context every
listener with ``tls = true`` uses, the handshake of the threaded listeners, and the
subject of a peer's certificate as Python's ssl module gives it.

What a subject means (which organisation it belongs to) is decided in
services.authentication; this module only reads it off the connection.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuva.model.subject import Subject
from kuva.tasks.periodic import Periodic

if TYPE_CHECKING:
    from kuva.config import TlsSettings

log = logging.getLogger(__name__)

# The server contexts that check revocation, for CrlWatcher to load a changed CRL into.
_CHECKING: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS 1.2 or newer, kuva's certificate, client certificates required and
    verified against ``[tls] ca_file`` (CERT_REQUIRED). Raises ValueError with
    OpenSSL's reason when a file cannot be used (not PEM, key not matching the
    certificate)."""
    if tls.cert_file is None or tls.key_file is None or tls.ca_file is None:
        raise ValueError("[tls] cert_file, key_file and ca_file are all needed")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except ssl.SSLError as exc:
        raise ValueError(
            f"[tls] cert_file {tls.cert_file} / key_file {tls.key_file}: {_reason(exc)}"
            + (" (the key does not belong to the certificate)" if "MISMATCH" in str(exc) else "")
        ) from exc
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except ssl.SSLError as exc:
        raise ValueError(f"[tls] ca_file {tls.ca_file}: {_reason(exc)}") from exc
    if tls.crl_file is not None:
        load_crl(context, tls.crl_file)
        # The client's (leaf) certificate is checked against its CA's CRL; with no
        # CRL of that CA the handshake fails (fail closed).
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        _CHECKING.add(context)
    return context


def load_crl(context: ssl.SSLContext, path: Path) -> None:
    """Add the CRLs of ``path`` (PEM) to ``context``'s store. OpenSSL keeps the CRLs
    loaded before and uses the newest of an issuer (latest thisUpdate), so loading a
    newer CRL replaces the older one's verdicts, revocations lifted included."""
    try:
        context.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"[tls] crl_file {path}: {_reason(exc)}") from exc


class CrlWatcher:
    """Reads ``[tls] crl_file`` again when it changes (its modification time or
    size), into every server context of this process that checks revocation; a file
    that cannot be read is logged and the CRLs loaded before stay in force."""

    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self._seen = self._stamp()
        self._periodic = Periodic(
            "kuva-crl", self.check, interval, failure="the CRL could not be checked"
        )

    def _stamp(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self._path)
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size

    def check(self) -> bool:
        """Load the file when it changed; whether it was loaded."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        try:
            for context in list(_CHECKING):
                load_crl(context, self._path)
        except ValueError as exc:
            log.error("the changed CRL was not loaded (the previous stays in force): %s", exc)
            return False
        self._seen = stamp
        log.warning("CRL %s read again: revocations in force for new connections", self._path)
        return True

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop(5.0)


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS 1.2 or newer for associations kuva opens to a node with ``tls = true``:
    kuva's certificate as the client certificate, the node's certificate verified
    against ``[tls] ca_file`` and checked to name the host kuva connects to."""
    if tls.cert_file is None or tls.key_file is None or tls.ca_file is None:
        raise ValueError("[tls] cert_file, key_file and ca_file are all needed")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        context.load_verify_locations(cafile=str(tls.ca_file))
    except ssl.SSLError as exc:
        raise ValueError(f"[tls]: {_reason(exc)}") from exc
    return context


def handshake(sock: ssl.SSLSocket, seconds: float) -> None:
    """Finish the server side of the handshake of a socket wrapped with
    ``do_handshake_on_connect=False``, within ``seconds``. Raises OSError
    (ssl.SSLError, TimeoutError) when it fails."""
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        sock.do_handshake()
    finally:
        sock.settimeout(previous)


def wrap_accepted(context: ssl.SSLContext, sock: socket.socket) -> ssl.SSLSocket:
    """An accepted socket, wrapped without its handshake: that runs in the
    connection's own thread (``handshake``), never in the accepting one, so that a
    slow or silent client holds up nobody else."""
    return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def peer_subject(peer: Any) -> Subject | None:
    """The subject of a verified peer certificate (``getpeercert()`` of an SSL
    socket or object), or None when there is none."""
    if not isinstance(peer, dict) or not peer.get("subject"):
        return None
    return Subject.of([[(str(k), str(v)) for k, v in rdn] for rdn in peer["subject"]])


def failure_reason(exc: BaseException) -> str:
    """Why a handshake failed, for the log and the audit trail."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = _reason(exc)
        if "PEER DID NOT RETURN A CERTIFICATE" in reason.upper().replace("_", " "):
            return "no client certificate"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TLS handshake not finished in time"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}"


def _reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
