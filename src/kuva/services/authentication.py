"""Node authentication on the mutual TLS listeners: which organisation a peer is.

The one place where a client certificate becomes an organisation (register
holder): its subject, read off the connection by the adapter (kuva.tls), is looked
up among the subjects ``[[organizations]] certificates`` lists, exactly
(kuva.model.subject). A certificate of no organisation is refused, and so is a
DICOM calling AE title of another organisation than the certificate's. Every
refusal is an ATNA Security Alert (110113 / 110126 Node Authentication,
PS3.15 A.5.3.11) in the audit trail.
"""

from __future__ import annotations

import logging

from kuva.config import Settings
from kuva.model.subject import Subject
from kuva.services.audit import AuditTrail

log = logging.getLogger(__name__)


class NodeAuthentication:
    def __init__(self, settings: Settings, audit: AuditTrail | None = None) -> None:
        self._settings = settings
        self._audit = audit

    def organization_of(self, subject: Subject | None) -> str | None:
        """The OID of the organisation that owns a certificate subject, or None."""
        if subject is None:
            return None
        return self._settings.directory.owner(subject)

    def authenticate(self, listener: str, address: str, subject: Subject | None) -> str | None:
        """The organisation of a peer that finished its TLS handshake with a verified
        certificate of ``subject``; None (refused and audited) when it has none."""
        organization = self.organization_of(subject)
        if organization is None:
            reason = "client certificate of no configured organisation"
            self.refused(listener, address, reason, "" if subject is None else str(subject))
        return organization

    def ae_title_allowed(
        self, calling_ae: str, address: str, subject: Subject | None, organization: str
    ) -> bool:
        """Whether a DICOM calling AE title belongs to ``organization`` (the
        certificate's); when not, the refusal is audited. An AE title of no
        configured node is left to the AE title check of the listener."""
        node = self._settings.node(calling_ae)
        if node is None:
            return True
        own = self._settings.organization_of(calling_ae)
        if own == organization:
            return True
        self.refused(
            "dicom",
            address,
            f"calling AE title {calling_ae} is a node of organisation {own}, "
            f"the client certificate of organisation {organization}",
            "" if subject is None else str(subject),
        )
        return False

    def refused(self, listener: str, address: str, reason: str, certificate: str = "") -> None:
        """Log and audit a peer refused on a TLS listener (a failed handshake among them)."""
        log.warning(
            "%s: connection from %s refused: %s%s",
            listener.upper(),
            address,
            reason,
            f" (certificate {certificate})" if certificate else "",
        )
        if self._audit is None:
            return
        try:
            self._audit.node_authentication_failed(listener, address, reason, certificate)
        except Exception:
            log.exception("the refused %s connection could not be audited", listener)
