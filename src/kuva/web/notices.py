"""Disclosure notices as JSON (``POST /disclosures/notices``): the wire models.

The JSON Schema of a notice is docs/disclosure-notice.schema.json; the rules are
in docs/disclosures.md. A body is one notice (an object) or a list of 1 to
``MAX_NOTICES`` notices. Every notice is validated strictly (unknown fields
refused, strings bounded to the disclosure log's columns, OIDs and UIDs checked);
a body with any bad notice is refused whole, each problem named by the notice's
position and field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kuva.model.disclosure import (
    BASIS_LENGTH,
    CHANNEL_LENGTH,
    DOCUMENT_ID_LENGTH,
    INTERFACE_NOTICE,
    MAX_ITEMS,
    OID_LENGTH,
    PATIENT_ID_LENGTH,
    PERSON_LENGTH,
    UID_LENGTH,
    ReportedDisclosure,
    Source,
    check_not_future,
)
from kuva.model.patient import PatientKey
from kuva.model.uids import is_valid_uid

MAX_NOTICES = 1000
MAX_BODY_BYTES = 4 * 1024 * 1024

# CX.1 (HL7 v2): no component, subcomponent or escape delimiters, no control characters.
_PATIENT_ID = re.compile(r"^[^\^&\\~|\x00-\x1f\x7f]+$")
# An XDS uniqueId (ITI TF-3 4.2.3.2.26): printable, no spaces.
_DOCUMENT_ID = re.compile(r"^[\x21-\x7e]+$")
_TEXT = re.compile(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")


def _oid(value: str) -> str:
    if not is_valid_uid(value):
        raise ValueError("not a valid OID (digits and dots, at most 64 characters)")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("empty")
    if not _TEXT.match(value):
        raise ValueError("contains control characters")
    return value


Oid = Annotated[str, Field(max_length=OID_LENGTH), AfterValidator(_oid)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Recipient(_Strict):
    """Who received: an organisation (OID), optionally a person or role there."""

    organization: Oid
    person: Annotated[str, Field(min_length=1, max_length=PERSON_LENGTH)] | None = None

    @field_validator("person")
    @classmethod
    def _person(cls, value: str | None) -> str | None:
        return _text(value) if value is not None else None


class Patient(_Strict):
    """The patient: Patient ID (CX.1) and its assigning authority (an OID)."""

    id: Annotated[str, Field(min_length=1, max_length=PATIENT_ID_LENGTH)]
    issuer: Oid

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _PATIENT_ID.match(value):
            raise ValueError("contains ^ & \\ ~ | or control characters")
        return value


def _document_id(value: str) -> str:
    if not _DOCUMENT_ID.match(value):
        raise ValueError("must be printable ASCII without spaces")
    return value


StudyUid = Annotated[str, Field(max_length=UID_LENGTH), AfterValidator(_oid)]
DocumentId = Annotated[
    str, Field(min_length=1, max_length=DOCUMENT_ID_LENGTH), AfterValidator(_document_id)
]


class Notice(_Strict):
    """One disclosure notice (docs/disclosure-notice.schema.json)."""

    notice_id: UUID | None = None
    recipient: Recipient
    patient: Patient
    studies: Annotated[list[StudyUid], Field(max_length=MAX_ITEMS)] = []
    documents: Annotated[list[DocumentId], Field(max_length=MAX_ITEMS)] = []
    disclosed_at: AwareDatetime
    channel: Annotated[str, Field(min_length=1, max_length=CHANNEL_LENGTH)]
    basis: Annotated[str, Field(min_length=1, max_length=BASIS_LENGTH)]

    @field_validator("channel", "basis")
    @classmethod
    def _free_text(cls, value: str) -> str:
        return _text(value)

    @field_validator("disclosed_at")
    @classmethod
    def _not_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        context = info.context or {}
        now = context.get("now")
        if not isinstance(now, datetime):
            raise ValueError("no clock to check the time against")  # a programming error
        try:
            return check_not_future(value, now)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00: before the year 1 in UTC
            raise ValueError("not a time of the years 1-9999 in UTC") from None

    @model_validator(mode="after")
    def _something(self) -> Notice:
        if not self.studies and not self.documents:
            raise ValueError("names no study and no document: give studies and/or documents")
        if len(self.studies) + len(self.documents) > MAX_ITEMS:
            raise ValueError(f"more than {MAX_ITEMS} studies and documents")
        return self

    def reported_by(self, reporter: str) -> ReportedDisclosure:
        return ReportedDisclosure(
            reporter=reporter,
            recipient_organization=self.recipient.organization,
            recipient_person=self.recipient.person,
            patient=PatientKey(self.patient.id, self.patient.issuer),
            disclosed_at=self.disclosed_at,
            channel=self.channel,
            basis=self.basis,
            source=Source.NOTICE,
            interface=INTERFACE_NOTICE,
            studies=tuple(self.studies),
            documents=tuple(self.documents),
            notice_id=str(self.notice_id) if self.notice_id is not None else None,
        )


_NOTICES = TypeAdapter(
    Annotated[list[Notice], Field(min_length=1, max_length=MAX_NOTICES)],
    config=ConfigDict(strict=True),
)


class NoticeProblem(Exception):
    """A body refused: ``status`` 400 (not JSON) or 422 (a notice is invalid);
    ``errors``: each with the notice's position (None: the body), field and message."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        self.status = status
        self.errors = errors
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        first = self.errors[0]
        where = [f"notice {first['notice']}"] if first["notice"] is not None else []
        if first["field"]:
            where.append(str(first["field"]))
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return ": ".join([*where, str(first["message"])]) + more


def parse_notices(body: bytes, reporter: str, now: datetime) -> list[ReportedDisclosure]:
    """The notices of a request body, reported by ``reporter``; raises NoticeProblem."""
    text = body.lstrip()
    single = text.startswith(b"{")
    try:
        if single:
            notices = [Notice.model_validate_json(body, strict=True, context={"now": now})]
        else:
            notices = _NOTICES.validate_json(body, strict=True, context={"now": now})
    except ValidationError as exc:
        raise _problem(exc, single) from None
    return [notice.reported_by(reporter) for notice in notices]


def _problem(exc: ValidationError, single: bool) -> NoticeProblem:
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["type"] in ("json_invalid", "json_type"):
            return NoticeProblem(
                400, [{"notice": None, "field": "", "message": f"not JSON: {error['msg']}"}]
            )
        loc = list(error["loc"])
        position: int | None = 0 if single else None
        if not single and loc and isinstance(loc[0], int):
            position = int(loc.pop(0))
        field = ".".join(str(part) for part in loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        if not single and position is None and not field:
            message = f"the body must be a notice or a list of 1-{MAX_NOTICES}: {message}"
        errors.append({"notice": position, "field": field, "message": message})
    return NoticeProblem(422, errors)
