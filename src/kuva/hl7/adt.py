"""HL7 v2 ADT messages to patient corrections, and their acknowledgements.

Accepted: HL7 v2.3, 2.3.1, 2.4, 2.5, 2.5.1; ADT^A40 (merge patient: each PID-3
survives, the MRG-1 after it is merged into it), ADT^A08 and ADT^A31 (update patient
information: PID-5 name, PID-7 birth date, PID-8 sex, PID-29 death date and time,
its date taken, ``""`` clearing it), ADT^A47 (change patient
identifier list: MRG-1 becomes PID-3) and ADT^A37 (unlink: undo a merge between the
patients of its two PID segments). Parsing is python-hl7's.

Character sets (MSH-18): ``UNICODE UTF-8`` and ``8859/1`` (also ``8859/15``); with
none, UTF-8 when the bytes are valid UTF-8, else ISO-8859-1. The ACK goes back in the
message's character set.

Identifiers: the first repetition of PID-3 / MRG-1 (CX); Patient ID = CX.1, issuer =
the universal id of CX.4 (HD.2, e.g. ``&1.2.246.21&ISO``), else its namespace id
(HD.1) — the same value DICOM's Issuer of Patient ID holds for the study.

Sending organisation: MSH-4 Sending Facility (HD) by its universal id (HD.2, the
organisation's OID; ``HOSP^1.2.246.10.12345678.10^ISO``); services.patients
decides whom a message may act for.

Acknowledgement (original mode): MSA-1 AA when applied; AE with an ERR segment (table
0357 code, the segment/field at fault, a text) when the content is wrong; AR for an
unsupported message type, event or version, a message that cannot be parsed, or
one from no organisation it may act for. An AA that applied nothing (the sender
archives no study of the patient) carries an ERR of severity W (warning, HL7 v2.5
table 0516) saying so. MSA-2 echoes MSH-10.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import hl7

from kuva.model.patient import (
    ChangeIdentifier,
    Demographics,
    MergePatients,
    PatientCommand,
    PatientCorrectionError,
    PatientKey,
    SenderRefused,
    UnlinkPatients,
    UpdatePatient,
)
from kuva.model.retention import parse_dicom_date
from kuva.services.patients import MessageRef

log = logging.getLogger(__name__)

VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
EVENTS = frozenset({"A40", "A08", "A31", "A47", "A37"})
_CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
}
_TEXTS = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}
_SEX = {"M": "M", "F": "F", "O": "O", "U": "O", "A": "O", "N": "O"}

Handler = Callable[[MessageRef, list[PatientCommand], Callable[..., str]], str]

WARNING = "W"  # ERR-4 severity (HL7 v2.5 table 0516)
# The longest MSH-3, MSH-4 (HD.1) and MSH-10 a message is told apart by: what the
# index keeps of each (index.schema hl7_message); a longer one is answered AE.
_MAX_SENDING_APPLICATION = 180
_MAX_SENDING_FACILITY = 180
_MAX_CONTROL_ID = 199
# The longest patient name (PID-5 as DICOM PN) the index keeps: five components of 64.
_MAX_NAME = 324


@dataclass(frozen=True)
class Rejected(Exception):
    """The message is refused as a whole (AR): type, event or version not supported."""

    code: str
    text: str
    where: str = "MSH^1^9"


def charset_of(frame: bytes) -> str:
    """The Python codec of a message: its MSH-18, read from the raw bytes."""
    head = frame.split(b"\r", 1)[0]
    if len(head) < 4 or not head.startswith(b"MSH"):
        return "iso-8859-1"
    fields = head.split(head[3:4])
    declared = (
        fields[17].decode("ascii", "replace").split("^")[0].strip() if len(fields) > 17 else ""
    )
    if declared:
        return _CHARSETS.get(declared.upper(), "iso-8859-1")
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return "iso-8859-1"
    return "utf-8"


def _value(segment: hl7.Segment, *path: int) -> str:
    """A (sub)component of a segment by HL7 position, "" when absent."""
    part: object = segment
    try:
        for index in path:
            if isinstance(part, str):  # a plain value is its own first component
                return part.strip() if index == 1 else ""
            part = part(index)  # type: ignore[operator]
    except (IndexError, KeyError, TypeError):
        return ""
    return str(part).strip()


def _key(segment: hl7.Segment, field: int, where: str) -> PatientKey:
    patient_id = _value(segment, field, 1, 1)
    if not patient_id:
        raise PatientCorrectionError(
            f"{where} (patient identifier) is missing", field=where, code="101"
        )
    issuer = _value(segment, field, 1, 4, 2) or _value(segment, field, 1, 4, 1)
    return PatientKey(patient_id[:64], issuer[:64])


def _person_name(segment: hl7.Segment) -> str | None:
    """PID-5 (XPN: family^given^middle^suffix^prefix) as DICOM PN
    (family^given^middle^prefix^suffix), or None when absent."""
    parts = [_value(segment, 5, 1, n) for n in (1, 2, 3, 5, 4)]
    if not any(parts):
        return None
    name = "^".join(parts).rstrip("^")
    if max(len(name), len(name.upper())) > _MAX_NAME:  # the index keeps it upper-cased too
        raise PatientCorrectionError(
            f"PID-5 (patient name) longer than {_MAX_NAME} characters", field="PID-5", code="102"
        )
    return name


def _death_date(pid: hl7.Segment) -> str | None:
    """PID-29 Patient Death Date and Time (DTM) as YYYYMMDD; "" for the HL7 null
    ``""`` (the date is no longer known); None when absent."""
    value = _value(pid, 29, 1, 1)
    if not value:
        return None
    if value == '""':
        return ""
    day = value[:8]
    if parse_dicom_date(day) is None:
        raise PatientCorrectionError(
            "PID-29 (patient death date and time) is not a date", field="PID-29", code="102"
        )
    return day


def _demographics(pid: hl7.Segment) -> Demographics:
    birth = _value(pid, 7, 1, 1)[:8]
    sex = _value(pid, 8, 1, 1).upper()
    return Demographics(
        name=_person_name(pid),
        birth_date=birth or None,
        sex=_SEX.get(sex) if sex else None,
        death_date=_death_date(pid),
    )


def commands(message: hl7.Message, event: str) -> list[PatientCommand]:
    """The corrections an ADT message asks for (PatientCorrectionError: it is wrong)."""
    pids = _segments(message, "PID")
    if not pids:
        raise PatientCorrectionError("PID segment missing", field="PID", code="100")
    if event in ("A08", "A31"):
        return [UpdatePatient(_key(pids[0], 3, "PID-3"), _demographics(pids[0]))]
    if event == "A37":
        if len(pids) < 2:
            raise PatientCorrectionError("A37 needs two PID segments", field="PID", code="100")
        return [UnlinkPatients(_key(pids[0], 3, "PID-3"), _key(pids[1], 3, "PID-3"))]
    mrgs = _segments(message, "MRG")
    if not mrgs or len(mrgs) != len(pids):
        raise PatientCorrectionError("each PID needs its MRG segment", field="MRG", code="100")
    if event == "A47":
        return [
            ChangeIdentifier(old=_key(mrg, 1, "MRG-1"), new=_key(pid, 3, "PID-3"))
            for pid, mrg in zip(pids, mrgs, strict=True)
        ]
    return [
        MergePatients(target=_key(pid, 3, "PID-3"), source=_key(mrg, 1, "MRG-1"))
        for pid, mrg in zip(pids, mrgs, strict=True)
    ]


def _segments(message: hl7.Message, name: str) -> list[hl7.Segment]:
    """The segments called ``name``, read as the text of their first field (python-hl7's
    own ``segments`` compares otherwise when MSH-2 makes a letter of the name a
    delimiter, and raises KeyError)."""
    return [segment for segment in message if str(segment[0]) == name]


def _location(field: str) -> str:
    """``MRG-1`` as an ERR-2 error location (segment^sequence^field)."""
    segment, _, number = field.partition("-")
    return f"{segment}^1^{number}" if number else f"{segment}^1"


def ack(
    message: hl7.Message | None,
    code: str,
    *,
    error: tuple[str, str, str] | None = None,
    severity: str = "E",
) -> str:
    """An ACK (MSA-1 ``code``); ``error`` = (table 0357 code, location, text) adds ERR
    of ``severity`` (ERR-4, table 0516)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    head = message.segment("MSH") if message is not None else None

    def msh(*path: int) -> str:
        return _value(head, *path) if head is not None else ""

    event = msh(9, 1, 2)
    # MSH-3..6 swapped (the answer goes back), MSH-9 ACK, MSH-10 a new control id,
    # MSH-12 and MSH-18 as in the message.
    header = [
        "MSH",
        "^~\\&",
        msh(5, 1, 1) or "KUVA",
        msh(6, 1, 1),
        msh(3, 1, 1),
        msh(4, 1, 1),
        now,
        "",
        f"ACK^{event}^ACK" if event else "ACK",
        uuid.uuid4().hex[:20],
        "P",
        msh(12, 1, 1) or "2.5",
        "",
        "",
        "",
        "",
        "",
        msh(18, 1, 1),
    ]
    segments = ["|".join(header).rstrip("|")]
    segments.append(f"MSA|{code}|{msh(10, 1, 1)}")
    if error is not None:
        number, location, text = error
        label = _TEXTS.get(number, "")
        clean = text.replace("|", " ").replace("^", " ").replace("&", " ").replace("~", " ")
        segments.append(
            f"ERR|{location}^{number}&{label}|{location}|{number}^{label}^HL70357|{severity}"
            f"||||{clean}"
        )
    return "\r".join(segments) + "\r"


def handle(frame: bytes, apply: Handler) -> bytes:
    """One MLLP frame in, the ACK bytes out (in the message's character set)."""
    codec = charset_of(frame)
    text = frame.decode(codec, "replace")
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception as exc:
        log.warning("HL7: a message that cannot be parsed (%s)", type(exc).__name__)
        return ack(None, "AR", error=("100", "MSH^1", "not an HL7 v2 message")).encode(
            codec, "replace"
        )
    msh = message.segment("MSH")
    try:
        event = _accepted(msh)
    except Rejected as refused:
        log.warning("HL7 message refused: %s", refused.text)
        reply = ack(message, "AR", error=(refused.code, refused.where, refused.text))
        return reply.encode(codec, "replace")
    ref = MessageRef(
        sending_application=_value(msh, 3, 1, 1),
        sending_facility=_value(msh, 4, 1, 1),
        control_id=_value(msh, 10, 1, 1),
        message_type=f"ADT^{event}",
        sending_organization=_value(msh, 4, 1, 2),
    )
    if not ref.control_id:
        reply = ack(message, "AE", error=("101", "MSH^1^10", "MSH-10 (message control id) missing"))
        return reply.encode(codec, "replace")
    for field, value, limit in (
        ("MSH-3", ref.sending_application, _MAX_SENDING_APPLICATION),
        ("MSH-4", ref.sending_facility, _MAX_SENDING_FACILITY),
        ("MSH-10", ref.control_id, _MAX_CONTROL_ID),
    ):
        if len(value) > limit:
            reason = f"{field} longer than {limit} characters"
            reply = ack(message, "AE", error=("102", _location(field), reason))
            return reply.encode(codec, "replace")
    if "\x00" in text:  # no HL7 data type holds one, and the index cannot keep one
        reply = ack(message, "AE", error=("102", "MSH^1", "the message contains a NUL character"))
        return reply.encode(codec, "replace")
    try:
        asked = commands(message, event)
    except PatientCorrectionError as wrong:
        log.warning("HL7 %s %s refused: %s", ref.message_type, ref.control_id, wrong)
        reply = ack(message, "AE", error=(wrong.code, _location(wrong.field), str(wrong)))
        return reply.encode(codec, "replace")

    def render(error: PatientCorrectionError | None, note: str = "") -> str:
        if error is None:
            if note:
                return ack(message, "AA", error=("204", "PID^1^3", note), severity=WARNING)
            return ack(message, "AA")
        code = "AR" if isinstance(error, SenderRefused) else "AE"
        return ack(message, code, error=(error.code, _location(error.field), str(error)))

    return apply(ref, asked, render).encode(codec, "replace")


def _accepted(msh: hl7.Segment) -> str:
    """The event of a supported message; Rejected otherwise."""
    kind = _value(msh, 9, 1, 1)
    event = _value(msh, 9, 1, 2)
    version = _value(msh, 12, 1, 1)
    if version not in VERSIONS:
        raise Rejected("203", f"HL7 version {version or '(none)'} not supported", "MSH^1^12")
    if kind != "ADT":
        raise Rejected("200", f"message type {kind or '(none)'} not supported")
    if event not in EVENTS:
        raise Rejected("201", f"event {event or '(none)'} not supported")
    return event
