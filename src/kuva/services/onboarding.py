"""A customer organisation's acceptance test (käyttöönottokoe): for every function
the service description asks it to demonstrate, ``passed``, ``failed`` or
``not-run``, with the evidence. Nothing is self-reported: the evidence is what the
organisation's own systems did against the archive since it entered the directory,
read where the archive recorded it:

* the audit trail (its records by ``seq`` and UTC time): ``archive`` (110104
  Instances Transferred, action C, the requestor one of its nodes: C-STORE),
  ``retrieve`` (110104 action R, RAD-16: C-MOVE or C-GET), ``query`` (110112 from one
  of its nodes: C-FIND), ``report-search`` and ``image-search`` (110112 / ITI-18 by
  the organisation; image search when the query names the KOS format code
  1.2.840.10008.5.1.4.1.1.88.59 of XDS-I.b manifests, report search otherwise),
  ``image-retrieve`` (RAD-69 by the organisation), ``patient-merge`` and
  ``name-update`` (110110 Patient Record of an A40, or of an A08/A31, from MSH-4 the
  organisation);
* the storage commitment requests (``commitment``: one verified successfully and its
  report sent), the IAN tasks to its nodes that take IANs (``ian``), its IOCM
  rejections (``metadata-correction``: 113038; ``content-correction``: 113001 or
  113037) and its disclosure notices (``disclosure-notice``).

A function with a successful piece of evidence has passed. One with only failures
has failed, and says why (the latest failure). One with neither has not been run.
At most ``EVIDENCE`` pieces are shown per function, and at most ``AUDIT_RECORDS`` of
the audit trail are read (the newest).

Which functions must pass before ``kuva orgs activate`` is ``[onboarding] required``
(default: all of them); ``ian`` only when a node of the organisation takes IANs.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree
from sqlalchemy import Engine

from kuva.config import ONBOARDING_FUNCTIONS, Settings
from kuva.index.audit import AuditRecord
from kuva.index.uow import UnitOfWork
from kuva.model.directory import NodeSettings, OrganizationSettings, OrganizationState
from kuva.services.commitment import TASK_KIND as COMMITMENT_TASK
from kuva.services.registration import IAN_TASK

log = logging.getLogger(__name__)

FUNCTIONS = ONBOARDING_FUNCTIONS
PASSED, FAILED, NOT_RUN = "passed", "failed", "not-run"
EVIDENCE = 5
AUDIT_RECORDS = 20_000
INDEX_ROWS = 200

INSTANCES_TRANSFERRED, QUERY, PATIENT_RECORD = "110104", "110112", "110110"
EXPORT = "110106"
KOS_FORMAT_CODE = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass(frozen=True)
class Evidence:
    """One thing the organisation's systems did: where it is recorded (``audit``
    record, ``commitment``, ``task``, ``rejection``, ``notice``), its id there, when
    (UTC), and whether it succeeded."""

    source: str
    id: str
    at: datetime
    ok: bool
    reason: str = ""

    def to_json(self) -> dict[str, str | bool]:
        return {
            "source": self.source,
            "id": self.id,
            "time": self.at.isoformat().replace("+00:00", "Z"),
            "ok": self.ok,
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass
class FunctionResult:
    id: str
    required: bool
    evidence: list[Evidence] = field(default_factory=list)
    note: str = ""  # why a function was not run or is not required

    @property
    def status(self) -> str:
        if any(e.ok for e in self.evidence):
            return PASSED
        return FAILED if self.evidence else NOT_RUN

    @property
    def reason(self) -> str:
        if self.status == FAILED:
            return self.evidence[-1].reason
        return self.note

    def add(self, evidence: Evidence) -> None:
        self.evidence.append(evidence)

    def shown(self) -> list[Evidence]:
        """The evidence to show: the latest successes, else the latest failures."""
        return [e for e in self.evidence if e.ok][-EVIDENCE:] or self.evidence[-EVIDENCE:]

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "status": self.status,
            "required": self.required,
            "evidence": [e.to_json() for e in self.shown()],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class OnboardingReport:
    organization: str
    name: str
    state: str
    since: datetime
    functions: tuple[FunctionResult, ...]

    @property
    def missing(self) -> list[str]:
        """The required functions that have not passed."""
        return [f.id for f in self.functions if f.required and f.status != PASSED]

    def to_json(self) -> dict[str, object]:
        return {
            "organization": self.organization,
            "name": self.name,
            "state": self.state,
            "since": self.since.isoformat().replace("+00:00", "Z"),
            "functions": [f.to_json() for f in self.functions],
            "missing": self.missing,
        }


class UnknownOrganization(LookupError):
    pass


class OnboardingService:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def report(self, oid: str) -> OnboardingReport:
        with UnitOfWork(self._engine, write=False) as uow:
            org = uow.directory.organization(oid)
            since = uow.onboarding.since(oid)
            if org is None or since is None:
                raise UnknownOrganization(f"no organisation {oid} in the directory")
            nodes = uow.directory.nodes_of(oid)
            results = self._results(org, nodes)
            records = uow.audit.of_events_since(
                since, (INSTANCES_TRANSFERRED, QUERY, PATIENT_RECORD, EXPORT), limit=AUDIT_RECORDS
            )
            _from_audit(results, records, oid, {node.ae_title for node in nodes})
            evidence = uow.onboarding
            for c in evidence.commitments(oid, since, limit=INDEX_ROWS):
                when = c.reported_at or c.requested_at
                if c.outcome == "success" and c.reported_at is not None:
                    results["commitment"].add(Evidence("commitment", c.transaction_uid, when, True))
                elif c.outcome == "failure":
                    results["commitment"].add(
                        Evidence(
                            "commitment",
                            c.transaction_uid,
                            when,
                            False,
                            f"storage commitment of {c.requester_ae}: "
                            f"{c.failed_count} instance(s) not committed",
                        )
                    )
            titles = [node.ae_title for node in nodes]
            for kind, function in ((COMMITMENT_TASK, "commitment"), (IAN_TASK, "ian")):
                what = "IAN" if kind == IAN_TASK else "storage commitment report"
                for task in evidence.deliveries(kind, titles, since, limit=INDEX_ROWS):
                    # A delivered IAN passes; a failed attempt (given up, or to be
                    # tried again) is a failure either way. A commitment passes by
                    # its request's row, above.
                    if kind == IAN_TASK and task.status == "done":
                        results[function].add(Evidence("task", str(task.pk), task.updated_at, True))
                    elif task.last_error:
                        results[function].add(
                            Evidence(
                                "task",
                                str(task.pk),
                                task.updated_at,
                                False,
                                f"{what} to {task.destination} failed: {task.last_error}",
                            )
                        )
            for r in evidence.rejections(oid, since, limit=INDEX_ROWS):
                function = "metadata-correction" if r.code == "113038" else "content-correction"
                if r.code in ("113038", "113001", "113037"):
                    results[function].add(
                        Evidence("rejection", r.note_sop_instance_uid, r.rejected_at, True)
                    )
            for n in evidence.notices(oid, since, limit=INDEX_ROWS):
                results["disclosure-notice"].add(Evidence("notice", str(n.pk), n.received_at, True))
        for result in results.values():
            result.evidence.sort(key=lambda e: e.at)
        return OnboardingReport(
            org.oid, org.name, str(org.state), since, tuple(results[f] for f in FUNCTIONS)
        )

    def _results(
        self, org: OrganizationSettings, nodes: Sequence[NodeSettings]
    ) -> dict[str, FunctionResult]:
        required = set(self._settings.onboarding.required)
        results = {f: FunctionResult(f, f in required) for f in FUNCTIONS}
        if not any(node.ian for node in nodes):
            results["ian"].required = False
            results["ian"].note = "no node of the organisation takes IANs"
        if not nodes:
            for f in ("archive", "commitment", "retrieve", "query"):
                results[f].note = "the organisation has no DICOM node"
        return results

    def missing(self, oid: str) -> list[str]:
        """The required functions the organisation has not passed (for activation);
        none for an organisation that is not in testing (or not in the directory)."""
        try:
            report = self.report(oid)
        except UnknownOrganization:
            return []
        if report.state != OrganizationState.TESTING:
            return []
        return report.missing


def _from_audit(
    results: dict[str, FunctionResult],
    records: Sequence[AuditRecord],
    oid: str,
    titles: set[str],
) -> None:
    for record in records:
        try:
            root = etree.fromstring(record.message.encode())
        except etree.XMLSyntaxError:
            continue
        function = _function(record.event_id, root, oid, titles)
        if function is None:
            continue
        ok = record.outcome == 0
        results[function].add(
            Evidence(
                "audit",
                str(record.seq),
                record.recorded_at,
                ok,
                "" if ok else _failure(function, record, root),
            )
        )


def _requestors(root: etree._Element) -> list[str]:
    return [
        str(p.get("UserID", ""))
        for p in root.iter("ActiveParticipant")
        if p.get("UserIsRequestor") == "true"
    ]


def _types(root: etree._Element) -> set[str]:
    return {str(c.get("csd-code")) for c in root.iter("EventTypeCode")}


def _function(event_id: str, root: etree._Element, oid: str, titles: set[str]) -> str | None:
    """Which acceptance function an audit record is evidence of, for the
    organisation ``oid`` with the node AE titles ``titles``; None when none."""
    requestors = _requestors(root)
    by_node = any(r in titles for r in requestors)
    by_organization = oid in requestors
    action = root.find("EventIdentification")
    code = action.get("EventActionCode") if action is not None else ""
    types = _types(root)
    if event_id == INSTANCES_TRANSFERRED and by_node:
        if code == "C":
            return "archive"
        if "RAD-16" in types:
            return "retrieve"
    if "RAD-69" in types and by_organization:
        return "image-retrieve"
    if event_id == QUERY:
        if "ITI-18" in types and by_organization:
            return "image-search" if KOS_FORMAT_CODE in _query_text(root) else "report-search"
        if by_node and not types:
            return "query"
    if event_id == PATIENT_RECORD and any(_names_organization(r, oid) for r in requestors):
        # Applied: "merge" / "update"; refused: "ADT^A40... refused: why".
        descriptions = _descriptions(root)
        if "merge" in descriptions or any(d.startswith("ADT^A40") for d in descriptions):
            return "patient-merge"
        if "update" in descriptions or any(
            d.startswith(("ADT^A08", "ADT^A31")) for d in descriptions
        ):
            return "name-update"
    return None


def _names_organization(user_id: str, oid: str) -> bool:
    """An HL7 sender (``application|facility``, the facility an HD with the OID)."""
    return oid in user_id.replace("|", "^").replace("&", "^").split("^")


def _descriptions(root: etree._Element) -> set[str]:
    return {(d.text or "").strip() for d in root.iter("ParticipantObjectDescription")}


def _query_text(root: etree._Element) -> str:
    texts = []
    for query in root.iter("ParticipantObjectQuery"):
        try:
            texts.append(base64.b64decode(query.text or "").decode("utf-8", "replace"))
        except (binascii.Error, ValueError):
            continue
    return " ".join(texts)


def _failure(function: str, record: AuditRecord, root: etree._Element) -> str:
    described = "; ".join(sorted(d for d in _descriptions(root) if d))
    outcome = {4: "minor failure", 8: "serious failure", 12: "major failure"}.get(
        record.outcome, f"outcome {record.outcome}"
    )
    return f"{function}: {outcome}" + (f" ({described})" if described else "")
