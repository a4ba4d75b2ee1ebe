"""The DICOM listener: kuva's engine (kuva.dicom.net) with the archive's services.

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

This module is the engine's ``AssociationHandler``: it decides who may
associate and hands each DIMSE request to the SCP of its service
(storage_scp, find_scp, retrieve_scp, commitment).
"""

from __future__ import annotations

import logging
import socket

from kuva import metrics
from kuva.config import Settings
from kuva.dicom import status as st
from kuva.dicom.commitment import StorageCommitmentSCP
from kuva.dicom.contexts import SUPPORTED_CONTEXTS
from kuva.dicom.find_scp import FindSCP
from kuva.dicom.net import (
    Acceptor,
    AcceptorConfig,
    Association,
    CommandField,
    DataSink,
    Rejection,
    Request,
)
from kuva.dicom.observer import NET_METRICS
from kuva.dicom.retrieve_scp import RetrieveSCP
from kuva.dicom.storage_scp import StorageSCP, StoreSink
from kuva.model.directory import OrganizationState
from kuva.model.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from kuva.services.audit import AuditTrail
from kuva.services.authentication import NodeAuthentication
from kuva.services.limits import AssociationSlot, OrganizationLimiter
from kuva.tls import failure_reason, peer_subject, server_context

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): rejected permanent by the service user.
_REJECTED_PERMANENT = 1
_REJECTED_TRANSIENT = 2
_SERVICE_USER = 1
_NO_REASON = 1
_CALLING_AE_NOT_RECOGNIZED = 3
_CALLED_AE_NOT_RECOGNIZED = 7
# Source 3, the service provider (presentation related function), reason 2.
_SERVICE_PROVIDER_PRESENTATION = 3
_LOCAL_LIMIT_EXCEEDED = 2
# PS3.7 C.4.2 general status, and the Out of Resources statuses of C.4.1-C.4.3.
RESOURCE_LIMITATION = 0x0213
OUT_OF_RESOURCES_RETRIEVE = 0xA701  # C-MOVE/C-GET: unable to calculate number of matches
# The busy status of each request refused for its organisation's rate.
_BUSY: dict[int, int] = {
    CommandField.C_STORE_RQ: st.OUT_OF_RESOURCES,
    CommandField.C_FIND_RQ: st.OUT_OF_RESOURCES,
    CommandField.C_MOVE_RQ: OUT_OF_RESOURCES_RETRIEVE,
    CommandField.C_GET_RQ: OUT_OF_RESOURCES_RETRIEVE,
}
_SLOT = "limit slot"
_ORGANIZATION = "organization"

UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.4.2 (general DIMSE status)


class DicomServer:
    """The acceptor and what it does with each association and request."""

    def __init__(
        self,
        settings: Settings,
        storage: StorageSCP,
        commitment: StorageCommitmentSCP,
        find: FindSCP,
        retrieve: RetrieveSCP,
        audit: AuditTrail | None = None,
        authentication: NodeAuthentication | None = None,
        limiter: OrganizationLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._audit = audit
        self._authentication = authentication or NodeAuthentication(settings, audit)
        self._storage = storage
        self._commitment = commitment
        self._find = find
        self._retrieve = retrieve
        dicom = settings.dicom
        self.config = AcceptorConfig(
            ae_title=dicom.ae_title,
            supported=SUPPORTED_CONTEXTS,
            max_pdu=dicom.max_pdu,
            max_associations=dicom.max_associations,
            acse_timeout=dicom.acse_timeout,
            network_timeout=dicom.network_timeout,
            dimse_timeout=dicom.dimse_timeout,
            handler_threads=dicom.max_associations,
            # A data set other than a C-STORE's (which streams to the blob store) is
            # held in memory to be decoded: identifiers, commitment requests (16 MiB is
            # a request for about 120,000 instances). A bigger one aborts the association.
            max_dataset_bytes=16 << 20,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            ssl_context=server_context(settings.tls) if dicom.tls else None,
            handshake_timeout=settings.tls.handshake_seconds,
            on_handshake_failed=self._handshake_failed,
            observer=NET_METRICS,
        )
        self._acceptor: Acceptor | None = None

    # -- life --------------------------------------------------------------------------
    def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on ``[dicom] host/port``, or on ``sock``: a listening socket this
        process shares with others (kuva.dicom.workers)."""
        dicom = self._settings.dicom
        self._acceptor = Acceptor(self.config, self)
        return self._acceptor.start(dicom.host, dicom.port, sock=sock)

    def stop(self) -> None:
        """Stop accepting; let running associations finish (bounded), then close."""
        if self._acceptor is None:
            return
        self._acceptor.stop(timeout=10.0)
        self._acceptor = None

    @property
    def associations(self) -> list[Association]:
        return [] if self._acceptor is None else self._acceptor.associations

    # -- AssociationHandler: who may associate ------------------------------------------
    def on_request(self, assoc: Association) -> Rejection | None:
        """Before negotiation: the calling AE title (a configured node, when there are
        nodes) and, with TLS, the certificate's organisation (services.authentication)."""
        calling = assoc.calling_ae
        address = assoc.peer_address[0]
        if self._settings.dicom.tls:
            subject = peer_subject(assoc.peer_certificate)
            organization = self._authentication.authenticate("dicom", address, subject)
            if organization is None:
                assoc.info["audited"] = True  # by services.authentication
                return Rejection(_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON)
            if not self._authentication.ae_title_allowed(calling, address, subject, organization):
                assoc.info["audited"] = True
                return Rejection(_REJECTED_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNIZED)
        else:
            if not self._settings.open_access and self._settings.node(calling) is None:
                return Rejection(_REJECTED_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNIZED)
            organization = self._settings.organization_of(calling)
        return self._organization_refusal(assoc, organization) or self._over_limit(
            assoc, organization
        )

    def _over_limit(self, assoc: Association, organization: str | None) -> Rejection | None:
        """The organisation's associations are all open (services.limits): rejected
        transient, "local-limit-exceeded" (PS3.8 9.3.4); it may try again later."""
        assoc.info[_ORGANIZATION] = organization
        if self._limiter is None:
            return None
        slot = self._limiter.open_association(organization)
        if slot is None:
            return Rejection(
                _REJECTED_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED
            )
        assoc.info[_SLOT] = slot
        return None

    def _organization_refusal(
        self, assoc: Association, organization: str | None
    ) -> Rejection | None:
        """A suspended organisation's association is rejected transient (it may come
        back), a terminated one's permanent (services.directory); audited."""
        state = self._settings.organization_state(organization)
        if state is OrganizationState.SUSPENDED:
            rejection = Rejection(_REJECTED_TRANSIENT, _SERVICE_USER, _NO_REASON)
        elif state is OrganizationState.TERMINATED:
            rejection = Rejection(_REJECTED_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNIZED)
        else:
            return None
        reason = f"organisation {organization} {state}"
        log.warning("association from %s refused: %s", assoc.calling_ae, reason)
        assoc.info["audited"] = True
        if self._audit is not None:
            try:
                # The node is known; its organisation may not use the archive now.
                self._audit.access_refused(
                    f"{assoc.calling_ae}@{assoc.peer_address[0]}", assoc.calling_ae, reason
                )
            except Exception:
                log.exception("the refused association could not be audited")
        return rejection

    def on_accepted(self, assoc: Association) -> None:
        metrics.associations.labels("accepted").inc()
        log.info("association from %s (%s) accepted", assoc.calling_ae, assoc.peer_address[0])

    def on_rejected(self, assoc: Association, rejection: Rejection) -> None:
        metrics.associations.labels("rejected").inc()
        address = assoc.peer_address[0]
        log.warning(
            "association from %s (%s) rejected (result %d, source %d, reason %d)",
            assoc.calling_ae,
            address,
            rejection.result,
            rejection.source,
            rejection.reason,
        )
        if assoc.info.get("audited") or self._audit is None:
            return
        reason = {
            (_SERVICE_USER, _CALLING_AE_NOT_RECOGNIZED): "calling AE title not recognized",
            (_SERVICE_USER, _CALLED_AE_NOT_RECOGNIZED): "called AE title not recognized",
        }.get((rejection.source, rejection.reason))
        if reason is None:
            return  # not refused for who asked (e.g. too many associations)
        try:
            self._audit.association_rejected(assoc.calling_ae or "UNKNOWN", address, reason)
        except Exception:
            log.exception("the refused association could not be audited")

    def on_closed(self, assoc: Association, *, aborted: bool) -> None:
        slot = assoc.info.pop(_SLOT, None)
        if isinstance(slot, AssociationSlot):
            slot.release()
        self._commitment.forget_association(assoc)
        self._storage.association_closed(assoc)

    def _handshake_failed(self, host: str, exc: BaseException) -> None:
        metrics.associations.labels("rejected").inc()
        self._authentication.refused("dicom", host, failure_reason(exc))

    def _over_rate(self, assoc: Association, req: Request) -> bool:
        """Whether the request is refused for its organisation's requests per second
        (services.limits): answered Out of Resources (C-STORE, C-FIND 0xA700; C-MOVE,
        C-GET 0xA701) or Resource limitation (0x0213, N-ACTION) naming the limit."""
        if self._limiter is None:
            return False
        organization = assoc.info.get(_ORGANIZATION)
        wait = self._limiter.request(
            organization if isinstance(organization, str) else None, "dimse"
        )
        if not wait:
            return False
        field = req.command.command_field
        if isinstance(req.sink, StoreSink):
            req.sink.discard()
        status = _BUSY.get(int(field), RESOURCE_LIMITATION)
        log.warning(
            "DIMSE 0x%04X from %s refused: organisation %s over its requests per second",
            int(field),
            assoc.calling_ae,
            organization,
        )
        assoc.respond(
            req,
            status,
            error_comment=f"organisation request rate limit exceeded; retry in {wait:.1f} s",
        )
        return True

    # -- AssociationHandler: requests ---------------------------------------------------
    def store_sink(self, assoc: Association, req: Request) -> DataSink:
        return self._storage.sink(assoc, req)

    def handle(self, assoc: Association, req: Request) -> None:
        field = req.command.command_field
        if field != CommandField.C_ECHO_RQ and self._over_rate(assoc, req):
            return
        if field == CommandField.C_STORE_RQ:
            self._storage.handle_store(assoc, req)
        elif field == CommandField.C_FIND_RQ:
            self._find.handle_find(assoc, req)
        elif field in (CommandField.C_GET_RQ, CommandField.C_MOVE_RQ):
            self._retrieve.serve(assoc, req)
        elif field == CommandField.N_ACTION_RQ:
            self._commitment.handle_n_action(assoc, req)
        elif field == CommandField.C_ECHO_RQ:
            assoc.respond(req, st.SUCCESS)  # Verification (PS3.4 A.4)
        else:
            log.warning("DIMSE command 0x%04X from %s not supported", int(field), assoc.calling_ae)
            assoc.respond(req, UNRECOGNIZED_OPERATION, error_comment="operation not supported")
