"""Query/Retrieve C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root.

Each identifier key is matched by the query service; every requested key is
returned, empty when the index does not hold it (PS3.4 C.4.1.1.3.2), and every
answer says Instance Availability ONLINE (everything kuva holds is). Responses
are Pending (0xFF00) one per match; C-CANCEL ends the search with 0xFE00.
Answers use the requester's character set when it can carry every value,
otherwise UTF-8 (ISO_IR 192); an identifier without Specific Character Set from a
node with ``default_character_set`` is read in that one, and answered in it, with
(0008,0005) set. Every request is audited when its answer is
complete: a 110112 Query message with the identifier as received, queued for the
audit trail's writer thread (services.audit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.uid import UID

from kuva.codec.find_answers import FindAnswers, value_text
from kuva.codec.part10 import apply_sender_defaults
from kuva.config import Settings
from kuva.dicom import datasets
from kuva.dicom import status as st
from kuva.dicom.contexts import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from kuva.dicom.net import Association, Request
from kuva.model.query import QueryError, QueryLevel
from kuva.services.access import AccessPolicy
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.disclosure import Interface
from kuva.services.query import FindRequest, QueryService

log = logging.getLogger(__name__)

LEVELS: dict[str, set[QueryLevel]] = {
    PATIENT_ROOT_FIND: {QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE},
    STUDY_ROOT_FIND: {QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE},
}
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
_NOT_KEYS = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "RetrieveAETitle",
    "InstanceAvailability",
}


# What ``FindSCP._find`` yields: a status, its Error Comment and, for a Pending
# response, the identifier's bytes.
_Answer = tuple[int, str, bytes | None]


class FindSCP:
    def __init__(
        self,
        settings: Settings,
        query: QueryService,
        audit: AuditTrail | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._query = query
        self._audit = audit
        # What each calling node may read (services.access); None = everything.
        self._access = access

    def handle_find(self, assoc: Association, req: Request) -> None:
        """Answer one C-FIND-RQ: a Pending response per match, then the final one. The
        request is audited before the final response. The engine's send is bounded, so
        answers wait while the peer is slow to take them, and a C-CANCEL is seen at the
        next match."""
        code, comment = st.SUCCESS, ""
        for status, text, identifier in self._find(assoc, req):
            if status == PENDING:
                assoc.respond(req, PENDING, data_set=identifier)
                continue
            code, comment = status, text  # a failure or the cancel: the end
            break
        self._audited(assoc, req, ok=code in (st.SUCCESS, CANCEL))
        if comment:
            assoc.respond(req, code, error_comment=comment)
        else:
            assoc.respond(req, code)

    def _audited(self, assoc: Association, req: Request, *, ok: bool) -> None:
        if self._audit is None:
            return
        try:
            self._audit.queried(
                assoc.calling_ae,
                assoc.peer_address[0],
                sop_class_uid=req.command.affected_sop_class_uid,
                identifier=req.data_set or b"",
                transfer_syntax=req.context.transfer_syntax,
                ok=ok,
            )
        except Exception as exc:
            audit_failed(log, f"the C-FIND of {assoc.calling_ae}", exc)

    def _find(self, assoc: Association, req: Request) -> Iterator[_Answer]:
        model = req.command.affected_sop_class_uid
        calling_ae = assoc.calling_ae
        syntax = req.context.transfer_syntax
        try:
            identifier = datasets.decode(req.data_set or b"", syntax)
        except datasets.DataSetError:
            yield UNABLE_TO_PROCESS, "identifier cannot be parsed", None
            return
        node = self._settings.node(calling_ae)
        if node is not None:
            # Decoded, and answered, in the node's default_character_set when the
            # identifier declares none (the answers then declare it: PS3.5 6.1.2.2).
            apply_sender_defaults(identifier, character_set=node.default_character_set)
        level_text = str(identifier.get("QueryRetrieveLevel", "")).strip()
        try:
            level = QueryLevel(level_text)
        except ValueError:
            yield (
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"QueryRetrieveLevel {level_text!r} not supported",
                None,
            )
            return
        if level not in LEVELS.get(model, set()):
            yield (
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"level {level.value} not in this information model",
                None,
            )
            return

        elements = [e for e in identifier if e.keyword and e.keyword not in _NOT_KEYS]
        keys = {e.keyword: value_text(e) for e in elements if e.VR != "SQ"}
        find = FindRequest(level=level, keys=keys, return_keys=tuple(e.keyword for e in elements))
        try:
            QueryService.matchers(find)  # refuse malformed keys before the first answer
            scope = None
            if self._access is not None:
                scope = self._access.scope_of_node(calling_ae)
            results = self._query.find(find, scope=scope, interface=Interface.C_FIND)
            # Each match's identifier is joined as bytes from its index row.
            answers = FindAnswers(
                identifier,
                elements,
                level,
                self._settings.dicom.ae_title,
                implicit_vr=UID(syntax).is_implicit_VR,
            )
            count = 0
            for result in results:
                if req.cancelled.is_set():
                    log.info("C-FIND cancelled by %s after %d match(es)", calling_ae, count)
                    yield CANCEL, "", None
                    return
                count += 1
                yield PENDING, "", answers.encode(result)
        except QueryError as exc:
            yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc), None
            return
        except Exception:
            log.exception("C-FIND failed")
            yield UNABLE_TO_PROCESS, "query failed", None
            return
        log.info("C-FIND %s from %s: %d match(es)", level.value, calling_ae, count)
