"""The directory's entries: customer organisations (register holders) and their
DICOM nodes, and the snapshot of them in force (``Directory``).

``[[organizations]]`` and ``[[nodes]]`` in the configuration file are these models;
so are the rows of the directory in the index (index.directory), which
services.directory keeps in force on every node of a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator
from pydicom.charset import python_encoding

from kuva.model.subject import Subject, SubjectError
from kuva.model.uids import is_valid_uid
from kuva.model.xds import oid_problem


class OrganizationState(StrEnum):
    """Where a customer organisation is in its life with the archive (docs/onboarding.md)."""

    TESTING = "testing"  # acceptance test: test identity codes only, kept apart
    ACTIVE = "active"
    SUSPENDED = "suspended"  # refused everywhere; nothing deleted, duties go on
    TERMINATED = "terminated"  # no new material, no own reads; kept for its retention

    @property
    def refused(self) -> bool:
        """Whether requests acting for an organisation in this state are refused."""
        return self in (OrganizationState.SUSPENDED, OrganizationState.TERMINATED)


class OrganizationLimits(BaseModel):
    """What one organisation may use of a node at once (services.limits), so that
    one customer's runaway system cannot starve the others. None = no limit.

    ``associations``: DICOM associations open at once on a node; ``requests_per_second``:
    HTTP requests, DIMSE requests (but C-ECHO) and HL7 messages per second, in each
    process that serves them (a burst of one second's worth is allowed);
    ``request_bytes``: the body of one STOW-RS or ITI-41 request."""

    model_config = {"extra": "forbid"}

    associations: int | None = Field(default=None, ge=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    request_bytes: int | None = Field(default=None, ge=1024)


class OrganizationSettings(BaseModel):
    oid: str
    name: str
    business_id: str = ""  # Y-tunnus / FO-nummer, e.g. "1234567-8"
    state: OrganizationState = OrganizationState.ACTIVE
    contacts: list[str] = Field(default_factory=list)
    notice_date: date | None = None  # written notice of termination received
    termination_date: date | None = None  # the last day of use
    # The subjects of the client certificates this organisation owns, as RFC 4514
    # strings ("CN=pacs.example.fi,O=Example Hospital District"), matched exactly
    # (kuva.model.subject).
    certificates: list[str] = Field(default_factory=list)
    limits: OrganizationLimits = Field(default_factory=OrganizationLimits)

    @field_validator("certificates")
    @classmethod
    def _certificates(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                Subject.parse(text)
            except SubjectError as exc:
                raise ValueError(f"certificate subject: {exc}") from exc
        return value

    def subjects(self) -> list[Subject]:
        return [Subject.parse(text) for text in self.certificates]

    @field_validator("oid")
    @classmethod
    def _oid(cls, value: str) -> str:
        if not is_valid_uid(value):
            raise ValueError(f"organization oid {value!r} is not a valid OID")
        return value


class NodeSettings(BaseModel):
    ae_title: str
    host: str = "127.0.0.1"
    port: int = 104
    organization: str = ""
    ian: bool = False
    # Objects this node retrieves (as C-MOVE destination or C-GET requester) go out
    # exactly as received, without the patient corrections of the index.
    as_received: bool = False
    # Issuer of Patient ID (an OID) of the objects this node stores without one: the
    # index takes it as their issuer; the stored bytes stay as received. "" = none
    # (such an object is refused while registration is on: model.identity).
    default_issuer: str = ""
    # Specific Character Set (0008,0005) of what this node sends without one (its
    # objects and C-FIND identifiers), e.g. "ISO_IR 100" or "ISO_IR 192". "" = the
    # DICOM default repertoire (PS3.5 6.1.2.2).
    default_character_set: str = ""
    # Associations kuva opens to this node (C-MOVE sub-operations, storage commitment
    # reports, IANs) run over TLS 1.2+ with kuva's [tls] certificate as the client
    # certificate; the node's certificate must chain to [tls] ca_file and name its
    # host (PS3.15 B.1). false = plain TCP.
    tls: bool = False

    @field_validator("default_issuer")
    @classmethod
    def _default_issuer(cls, value: str) -> str:
        problem = oid_problem(value) if value else None
        if problem is not None:
            raise ValueError(f"default_issuer {value!r} is {problem}")
        return value

    @field_validator("default_character_set")
    @classmethod
    def _default_character_set(cls, value: str) -> str:
        value = value.strip()
        if value and value not in python_encoding:
            raise ValueError(
                f"default_character_set {value!r} is not a Defined Term of Specific "
                "Character Set (PS3.3 C.12.1.1.2), e.g. ISO_IR 100 or ISO_IR 192"
            )
        return value


class Directory:
    """The organisations and DICOM nodes in force, one consistent snapshot: first
    ``[[organizations]]`` and ``[[nodes]]``, then the directory in the index, which
    services.directory reads and swaps in whole whenever it changes (on every node
    of a cluster within seconds). Looked up on every association and C-STORE: dicts,
    not scans."""

    def __init__(
        self, organizations: Sequence[OrganizationSettings], nodes: Sequence[NodeSettings]
    ) -> None:
        self.organizations = tuple(organizations)
        self.nodes = tuple(nodes)
        self._organizations = {org.oid: org for org in self.organizations}
        self._nodes = {node.ae_title: node for node in self.nodes}
        self._owners = {
            subject: org.oid for org in self.organizations for subject in org.subjects()
        }
        # In testing: their material is kept from other organisations (services.access).
        self.testing = frozenset(
            org.oid for org in self.organizations if org.state is OrganizationState.TESTING
        )

    def node(self, ae_title: str) -> NodeSettings | None:
        return self._nodes.get(ae_title)

    def organization(self, oid: str) -> OrganizationSettings | None:
        return self._organizations.get(oid)

    def owners(self) -> dict[Subject, str]:
        """Every certificate subject, with the OID of its organisation."""
        return dict(self._owners)

    def owner(self, subject: Subject) -> str | None:
        return self._owners.get(subject)
