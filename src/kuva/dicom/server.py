"""The DICOM listener: one pynetdicom application entity with kuva's services.

Accepts C-ECHO, C-STORE for every storage SOP class of the standard, the
Storage Commitment Push Model, C-FIND, C-GET and C-MOVE (Patient Root and Study
Root). Only configured nodes may associate (A-ASSOCIATE-RJ, reason "calling AE
title not recognized", PS3.8 9.3.4); with no nodes configured (the embedded
default) any calling AE title is accepted into the local organisation. An
association refused for its AE titles is audited as a security alert (110113
Security Alert, 110126 Node Authentication; services.audit).

With ``[dicom] tls`` (PS3.15 B.1): TLS 1.2+ with a client certificate verified
against ``[tls] ca_file``; its subject must belong to an organisation, and the
calling AE title must be a node of that organisation
(services.authentication). A failed handshake closes the connection; a
certificate of no organisation gets A-ASSOCIATE-RJ (rejected permanent, service
user, no reason given), an AE title of another organisation A-ASSOCIATE-RJ
"calling AE title not recognized" (PS3.8 9.3.4). Each is audited.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from kuva import metrics
from kuva.config import Settings
from kuva.dicom import status as st
from kuva.dicom.commitment import StorageCommitmentSCP
from kuva.dicom.contexts import (
    BASIC_TRANSFER_SYNTAXES,
    RETRIEVE_SOP_CLASSES,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
    storage_sop_classes,
)
from kuva.dicom.find_scp import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, FindSCP
from kuva.dicom.network import AssociationServer
from kuva.dicom.retrieve_scp import RetrieveSCP, install_retrieve
from kuva.dicom.storage_scp import StorageSCP, install_streaming_receive
from kuva.services.audit import AuditTrail
from kuva.services.authentication import NodeAuthentication
from kuva.storage import BlobStore
from kuva.tls import peer_subject, server_context

log = logging.getLogger(__name__)


class DicomServer:
    def __init__(
        self,
        settings: Settings,
        storage: StorageSCP,
        commitment: StorageCommitmentSCP,
        blobs: BlobStore,
        find: FindSCP,
        retrieve: RetrieveSCP,
        audit: AuditTrail | None = None,
        authentication: NodeAuthentication | None = None,
    ) -> None:
        self._settings = settings
        self._audit = audit
        self._authentication = authentication or NodeAuthentication(settings, audit)
        self._storage = storage
        self._commitment = commitment
        self._find = find
        self._server: Any = None
        self._thread: threading.Thread | None = None
        dicom = settings.dicom
        ae = AE(ae_title=dicom.ae_title)
        ae.maximum_pdu_size = dicom.max_pdu
        ae.maximum_associations = dicom.max_associations
        ae.network_timeout = dicom.network_timeout
        ae.acse_timeout = dicom.acse_timeout
        ae.dimse_timeout = dicom.dimse_timeout
        ae.require_called_aet = True
        if settings.nodes:
            ae.require_calling_aet = [node.ae_title for node in settings.nodes]
        ae.add_supported_context(VERIFICATION, list(BASIC_TRANSFER_SYNTAXES))
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, list(BASIC_TRANSFER_SYNTAXES))
        for uid in storage_sop_classes():
            # Either role: a C-GET requester proposes the SCP role for the storage
            # SOP classes it wants its objects in (SCP/SCU Role Selection, PS3.7 D.3.3.4).
            ae.add_supported_context(
                uid, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
            )
        for find_model in (PATIENT_ROOT_FIND, STUDY_ROOT_FIND):
            ae.add_supported_context(find_model, list(BASIC_TRANSFER_SYNTAXES))
        install_streaming_receive(ae, blobs)
        # C-GET and C-MOVE (PS3.4 C.4.2, C.4.3): served by kuva's RetrieveSCP.
        for retrieve_model in RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(retrieve_model, list(BASIC_TRANSFER_SYNTAXES))
        install_retrieve(ae, retrieve)
        self.ae = ae

    def handlers(self) -> list[Any]:
        tls = [(evt.EVT_REQUESTED, self._authenticate)] if self._settings.dicom.tls else []
        return [
            *tls,
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._storage.handle_store),
            (evt.EVT_N_ACTION, self._commitment.handle_n_action),
            (evt.EVT_C_FIND, self._find.handle_find),
            (evt.EVT_RELEASED, self._commitment.forget_association),
            (evt.EVT_ABORTED, self._commitment.forget_association),
            (evt.EVT_RELEASED, self._storage.association_closed),
            (evt.EVT_ABORTED, self._storage.association_closed),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]

    def start(self) -> tuple[str, int]:
        dicom = self._settings.dicom
        self._server = self.ae.make_server(
            (dicom.host, dicom.port),
            evt_handlers=self.handlers(),
            server_class=AssociationServer,
            ssl_context=server_context(self._settings.tls) if dicom.tls else None,
        )
        if dicom.tls:
            self._server.handshake_seconds = self._settings.tls.handshake_seconds
            self._server.on_handshake_failed = self._handshake_failed
        # As AE.start_server does: the AE's list of servers is what shutdown() expects.
        self.ae._servers.append(self._server)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kuva-dicom-acceptor", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting; let running associations finish (bounded), then close."""
        if self._server is None:
            return
        self._server.shutdown()
        for assoc in list(self._server.active_associations):
            assoc.join(timeout=10)
        self._server.server_close()
        self._server = None

    @staticmethod
    def _handle_echo(event: Event) -> Dataset:
        return st.status(st.SUCCESS)

    @staticmethod
    def _on_accepted(event: Event) -> None:
        metrics.associations.labels("accepted").inc()
        log.info(
            "association from %s (%s) accepted",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
        )

    def _handshake_failed(self, address: str, reason: str) -> None:
        metrics.associations.labels("rejected").inc()
        self._authentication.refused("dicom", address, reason)

    def _authenticate(self, event: Event) -> None:
        """EVT_REQUESTED with TLS: the certificate's organisation, and the calling AE
        title's, before the association is negotiated."""
        assoc = event.assoc
        requestor = assoc.requestor
        calling = str(getattr(requestor.primitive, "calling_ae_title", "") or "").strip()
        address = str(requestor.address)
        try:
            sock = getattr(assoc.dul.socket, "socket", None)
            subject = peer_subject(sock.getpeercert()) if isinstance(sock, ssl.SSLSocket) else None
            organization = self._authentication.authenticate("dicom", address, subject)
            if organization is None:
                self._refuse(event, calling, 0x01)  # no reason given
            elif not self._authentication.ae_title_allowed(calling, address, subject, organization):
                self._refuse(event, calling, 0x03)  # calling AE title not recognized
        except Exception:
            # pynetdicom would log a handler's error and go on negotiating: refuse instead.
            log.exception("association from %s: node authentication failed", address)
            if not assoc.is_rejected:
                self._refuse(event, calling, 0x01)

    @staticmethod
    def _refuse(event: Event, calling: str, diagnostic: int) -> None:
        """A-ASSOCIATE-RJ, rejected permanent by the service user (PS3.8 9.3.4), as
        pynetdicom's own negotiation refuses; already audited."""
        assoc = event.assoc
        assoc.requestor.ae_title = calling or "UNKNOWN"
        assoc._kuva_authenticated_refusal = True  # type: ignore[attr-defined]
        assoc.acse.send_reject(0x01, 0x01, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_rejected(self, event: Event) -> None:
        metrics.associations.labels("rejected").inc()
        requestor = event.assoc.requestor
        log.warning("association from %s (%s) rejected", requestor.ae_title, requestor.address)
        if getattr(event.assoc, "_kuva_authenticated_refusal", False):
            return  # refused for its certificate: audited by services.authentication
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        reason = self._refused_titles(requestor.ae_title, called)
        if reason is None or self._audit is None:
            return  # not refused for who asked (e.g. too many associations)
        try:
            self._audit.association_rejected(requestor.ae_title, str(requestor.address), reason)
        except Exception:
            log.exception("the refused association could not be audited")

    def _refused_titles(self, calling: str, called: str) -> str | None:
        """Why the AE titles were refused (PS3.8 9.3.4; the called AE title is checked
        last and wins, as in pynetdicom), or None when they were not."""
        if called != self._settings.dicom.ae_title:
            return "called AE title not recognized"
        if self._settings.nodes and self._settings.node(calling) is None:
            return "calling AE title not recognized"
        return None
