"""Configuration: a TOML file plus ``KUVA_<SECTION>__<KEY>`` environment overrides.

Every key has a default, so the archive runs with no file at all on its embedded
default (SQLite + a local folder). The shape follows the outside contract
(docs/contract.md, "kuva serve --config FILE").
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kuva.model.directory import Directory, NodeSettings, OrganizationSettings, OrganizationState
from kuva.model.retention import Anchor, Period, RetentionPolicy
from kuva.model.subject import Subject
from kuva.model.uids import is_valid_uid
from kuva.model.xds import Code
from kuva.tls import server_context

DEFAULT_DATA_DIR = "var/kuva"


class ArchiveSettings(BaseModel):
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str = ""  # "" = SQLite in data_dir
    blob_url: str = ""  # "" = data_dir/blobs; or s3://bucket/prefix
    # A second copy of every blob (file:///path or s3://bucket/prefix), written and
    # made durable with the first before an object is acknowledged; "" = none.
    replica_url: str = ""
    # This node's name in its cluster (services.cluster); "" = host:port of its DICOM
    # listener. Recorded on the tasks it runs.
    node_name: str = Field(default="", max_length=128)
    # How often the node's heartbeat is written; three missed beats and it is gone.
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    # Patient corrections (HL7 merge, update, identifier change) applied to every
    # outgoing object, with the values as stored in its Original Attributes Sequence.
    # false: every object goes out exactly as received (nodes can ask this alone:
    # [[nodes]] as_received).
    apply_corrections: bool = True
    # The IANA time zone of the archive's customers (zoneinfo): a study's dates and
    # times without their own Timezone Offset From UTC (0008,0201) are read in it,
    # daylight saving time included (model.local_time).
    local_time_zone: str = "Europe/Helsinki"

    @field_validator("local_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"local_time_zone {value!r} is not a known time zone") from exc
        return value

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.local_time_zone)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    def resolved_blob_url(self) -> str:
        """Where the blobs are: ``file:///folder`` (default data_dir/blobs) or
        ``s3://bucket/prefix``."""
        return self.blob_url or f"file://{(self.data_dir / 'blobs').resolve()}"

    def resolved_blob_dir(self) -> Path:
        """The blobs' folder, when they are kept in one."""
        url = self.resolved_blob_url()
        if not url.startswith("file://"):
            raise ValueError(f"blob_url {url!r} is not a folder")
        return Path(url.removeprefix("file://"))

    @field_validator("blob_url", "replica_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value and not value.startswith(("file://", "s3://")):
            raise ValueError(f"{value!r}: a blob store is file:///folder or s3://bucket/prefix")
        return value


class DicomSettings(BaseModel):
    ae_title: str = "KUVA"
    host: str = "127.0.0.1"
    port: int = 11112
    # A large maximum PDU means fewer, bigger reads per object (PS3.8 9.3.1).
    max_pdu: int = 4 * 1024 * 1024
    max_associations: int = 64
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    # Mutual TLS on this listener ([tls]; PS3.15 B.1): every association comes in
    # over TLS 1.2+ with a client certificate of a configured organisation, and its
    # calling AE title must be a node of that organisation. false = plain TCP.
    tls: bool = False
    # Processes that accept associations on the one listening socket (every core
    # serves DICOM; kuva.dicom.workers). 0 = one per core on PostgreSQL, one on the
    # embedded SQLite index (Settings.dicom_processes). The first is the main
    # process itself, which alone runs the background duties.
    workers: int = Field(default=0, ge=0)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not value or len(value) > 16 or "\\" in value:
            raise ValueError("AE title must be 1-16 characters without backslash")
        return value


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL clients reach this listener at (e.g. behind a reverse proxy), used
    # in RetrieveURL and BulkDataURI values; "" = taken from each request.
    base_url: str = ""
    # The organisation (register holder) that HTTP clients store for (STOW-RS)
    # when the listener is plain HTTP, which carries no client identity. "" = the
    # local organisation on the embedded default (no [[nodes]]); with nodes
    # configured and this empty, STOW-RS is refused (403). With tls = true the
    # client certificate's organisation is used instead (kuva.web.identity).
    organization: str = ""
    # Mutual TLS on this listener ([tls]): HTTPS, a client certificate required,
    # its organisation the one every request acts for. false = plain HTTP.
    tls: bool = False
    # Origins whose browser pages may call this listener (CORS, e.g. a separately
    # hosted OHIF viewer: "https://viewer.example.fi"); [] = none, "*" = any.
    cors_origins: list[str] = Field(default_factory=list)


class Hl7SenderSettings(BaseModel):
    """``[[hl7.senders]]``: an organisation's HL7 senders on the plain MLLP listener,
    by the addresses they connect from (IP addresses or CIDR networks)."""

    model_config = {"extra": "forbid"}

    organization: str
    addresses: list[str] = Field(min_length=1)

    @field_validator("addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                raise ValueError(f"hl7.senders address {text!r}: {exc}") from None
        return value


class Hl7Settings(BaseModel):
    """The MLLP listener of HL7 v2 ADT (kuva.hl7)."""

    host: str = "127.0.0.1"
    port: int = 2575
    # A40 for a source patient the archive does not hold: refused (AE) when true;
    # when false its record is made, merged, and its future studies go to the survivor.
    strict_merge: bool = False
    # A frame longer than this closes the connection.
    max_message_bytes: int = 16 * 1024 * 1024
    # A connection silent this long is closed.
    idle_seconds: float = 300.0
    # Mutual TLS on this listener ([tls]): MLLP over TLS 1.2+, a client certificate
    # of a configured organisation required. false = plain TCP.
    tls: bool = False
    # On the plain listener: who may send for which organisation, by source address.
    # Listed: a message whose MSH-4 organisation has no entry covering the
    # connection's address is refused (AR). None listed: MSH-4 is taken as sent.
    senders: list[Hl7SenderSettings] = Field(default_factory=list)


class XuaIssuerSettings(BaseModel):
    """``[[xds.xua_issuers]]``: an identity provider whose XUA assertions kuva trusts:
    its Issuer name, exactly as the assertion's ``saml2:Issuer`` gives it, and its
    signing certificate (PEM)."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    certificate: Path


class XdsSettings(BaseModel):
    """XDS.b registry/repository and XDS-I.b imaging document source (kuva.xds)."""

    # Repository Unique ID (ITI TF-3 4.2.3.2.18) of kuva's document repository, and
    # the Retrieve Location UID of its imaging document source (RAD TF-3 4.68.4.1.2.3).
    repository_unique_id: str = "1.2.246.10.0.10.1.1"
    imaging_source_unique_id: str = "1.2.246.10.0.10.1.2"
    home_community_id: str = "urn:oid:1.2.246.10.0.10.1"
    # A patient is known to the registry (else XDSUnknownPatientId) when the index
    # holds them, or when their assigning authority is one of these: the national
    # identity register stands in for a patient identity feed. 1.2.246.21 = the
    # Finnish personal identity code. So are temporary ids of a configured
    # organisation: 1.2.246.10.<business id>.22.<year>, the business id that of
    # its OID 1.2.246.10.<business id>.… (model.identity).
    trusted_assigning_authorities: list[str] = Field(default_factory=lambda: ["1.2.246.21"])
    # Largest SOAP request accepted (bytes); larger ones get a SOAP fault.
    max_request_bytes: int = 64 * 1024 * 1024
    # XUA (IHE ITI-40, kuva.xds.xua): the identity providers whose signed SAML 2.0
    # assertions are trusted. A request's assertion must verify against one of
    # them, else the request gets a wsse fault; the user it names then acts. With
    # none listed an assertion is never trusted: its claims are ignored and the
    # request acts for the HTTP organisation (kuva.web.identity).
    xua_issuers: list[XuaIssuerSettings] = Field(default_factory=list)
    # true: every XDS request must carry a verified assertion (needs xua_issuers).
    require_xua: bool = False
    # The audience an assertion must be addressed to (its AudienceRestriction,
    # SAML 2.0 Core 2.5.1.4), e.g. this endpoint's URL; "" = not checked.
    xua_audience: str = ""
    # How far the clocks of kuva and an identity provider may differ (NotBefore,
    # NotOnOrAfter).
    xua_clock_skew_seconds: int = Field(default=60, ge=0, le=3600)
    # false: an assertion is accepted once within its lifetime (a second request
    # with it is a replay). true: it may be reused for several requests, each
    # with its own wsa:MessageID; the same assertion and MessageID twice is a replay.
    xua_assertion_reuse: bool = False

    @model_validator(mode="after")
    def _xua_needs_issuers(self) -> XdsSettings:
        if self.require_xua and not self.xua_issuers:
            raise ValueError("[xds] require_xua = true needs [[xds.xua_issuers]] to verify with")
        names = [issuer.name for issuer in self.xua_issuers]
        if len(set(names)) != len(names):
            raise ValueError("[[xds.xua_issuers]]: an issuer name is listed twice")
        return self


class CodeSettings(BaseModel):
    """A coded value of XDS metadata (ITI TF-3 4.2.3.1.2)."""

    model_config = {"extra": "forbid"}

    code: str = Field(min_length=1)
    scheme: str = Field(min_length=1)  # codingScheme, usually an OID
    display_name: str = Field(min_length=1)

    @field_validator("code", "scheme", "display_name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if value != value.strip() or "^" in value:
            raise ValueError(f"{value!r}: no surrounding spaces, no ^ (ITI TF-2a 3.18.4.1.2.3.7)")
        return value

    def value(self) -> Code:
        return Code(self.code, self.scheme, self.display_name)


LOINC = "2.16.840.1.113883.6.1"
SNOMED_CT = "2.16.840.1.113883.6.96"


class RegistrationSettings(BaseModel):
    """Registration of studies and IAN (services/registration)."""

    # false: studies are archived and retrievable only - no manifests, no IAN.
    enabled: bool = True
    # A study is registered this long after its last instance arrived (or at once
    # when a storage commitment covered all of it).
    stable_seconds: float = 60
    # Modalities whose studies are published in the XDS registry (a study is when
    # any of its series has one); [] = every study. Studies of other modalities
    # are archived, retrievable and announced by IAN, but not published.
    modalities: list[str] = Field(default_factory=list)
    # An IAN a node does not take is tried again for this long after it was made
    # (a weekend of the node's maintenance), then waits as a failed task for
    # ``kuva tasks retry``; a newer IAN of the study to the node replaces it.
    ian_retry_hours: float = Field(default=72.0, gt=0)
    # The cap of the IAN's backoff between attempts ([tasks] backoff_base_seconds
    # doubling from there).
    ian_backoff_max_seconds: float = Field(default=900.0, gt=0)
    # The manifest's DocumentEntry codes an affinity domain agrees on (ITI TF-3
    # 4.2.3.2: classCode, typeCode, practiceSettingCode, healthcareFacilityTypeCode).
    class_code: CodeSettings = CodeSettings(
        code="18726-0", scheme=LOINC, display_name="Radiology studies (set)"
    )
    type_code: CodeSettings = CodeSettings(
        code="55113-5", scheme=LOINC, display_name="Key images Document Radiology"
    )
    practice_setting_code: CodeSettings = CodeSettings(
        code="394914008", scheme=SNOMED_CT, display_name="Radiology"
    )
    healthcare_facility_type_code: CodeSettings = CodeSettings(
        code="22232009", scheme=SNOMED_CT, display_name="Hospital"
    )

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: list[str]) -> list[str]:
        return [modality.strip().upper() for modality in value if modality.strip()]


class RetentionPeriodSettings(BaseModel):
    """``years`` after ``after`` (study_date, death or birth)."""

    after: Anchor
    years: int = Field(ge=0)


class RetentionPolicySettings(BaseModel):
    """A retention policy (model.retention): the studies it covers (empty = any) and
    its periods, the first whose anchor date is known applying."""

    name: str
    periods: list[RetentionPeriodSettings] = Field(min_length=1)
    organizations: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(
            name=self.name,
            periods=tuple(Period(p.after, p.years) for p in self.periods),
            organizations=frozenset(self.organizations),
            modalities=frozenset(m.strip().upper() for m in self.modalities),
            sop_classes=frozenset(self.sop_classes),
        )


class RetentionSettings(BaseModel):
    """Retention policies (``[[retention.policies]]``); none: every study is kept."""

    policies: list[RetentionPolicySettings] = Field(default_factory=list)
    # ``kuva serve`` destroys what has expired this often (services.retention), the
    # first run a minute after start; 0 = never (``kuva retention run`` by hand).
    run_every_hours: float = Field(default=24.0, ge=0)

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, value: list[RetentionPolicySettings]) -> list[RetentionPolicySettings]:
        names = [policy.name for policy in value]
        if len(set(names)) != len(names):
            raise ValueError("retention policy names must be unique")
        return value

    def rules(self) -> list[RetentionPolicy]:
        return [policy.policy() for policy in self.policies]


class TaskSettings(BaseModel):
    """The outbox workers (tasks/)."""

    workers: int = 2
    poll_seconds: float = 1.0
    max_attempts: int = 10
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    lease_seconds: float = 300.0
    # Done tasks are deleted this many days after they finished (hourly, by serve;
    # `kuva tasks purge` at will); 0 keeps them.
    keep_done_days: float = Field(default=30.0, ge=0)


class AuditSettings(BaseModel):
    """The audit trail (PS3.15 A.5, IHE ATNA; kuva.services.audit)."""

    # false: nothing is audited (never in production). true: every audited event is
    # appended to the local, hash-chained trail (the index table audit_record) and,
    # when a repository is set, sent to it too.
    enabled: bool = True
    # The audit record repository: "" = the local trail only; "udp://host:port"
    # (syslog over UDP, RFC 5426) or "tls://host:port" (syslog over TLS, RFC 5425).
    repository: str = ""
    # AuditSourceID of every message; "" = this node's name ([archive] node_name,
    # default host:port), so that each node of a cluster is its own audit source
    # (as dcm4chee names each device).
    source_id: str = ""
    # AuditEnterpriseSiteID of every message; "" = none given.
    enterprise_site_id: str = ""
    # tls: CA certificates (PEM) the repository's certificate must chain to
    # (None = the system's), and kuva's own certificate and key (PEM) for mutual
    # TLS (ATNA node authentication; None = no client certificate).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    # The queued writer (kuva.services.audit_writer): records of queries and of
    # retrieves and stores that need no transaction of their own wait on a queue of
    # at most queue_size records and are appended in batches of at most batch_size,
    # or what came within batch_seconds of the first. A record still queued when
    # the process is killed (not stopped) is lost; a full queue writes on the
    # request path instead, never drops. queue_size = 0: no queue, every record
    # written on the request path.
    queue_size: int = Field(default=10000, ge=0)
    batch_size: int = Field(default=200, ge=1)
    batch_seconds: float = Field(default=0.05, ge=0, le=5)

    # Syslog listeners for customers' ATNA Export messages (kuva.audit.listener;
    # RFC 5426 UDP, RFC 5425 TLS): "udp://host:port" and/or "tls://host:port", one
    # string or a list; "" or [] = none (the default). A TLS listener presents
    # cert_file/key_file and requires a client certificate of ca_file.
    listen: list[str] = Field(default_factory=list)
    # Largest syslog message a listener takes (bytes); a TLS frame announcing more
    # closes its connection.
    listen_max_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        value = value.strip()
        if value:
            _syslog_address(value, "audit repository")
        return value

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = [item.strip() for item in value if isinstance(item, str) and item.strip()]
            for item in value:
                _syslog_address(item, "audit listen")
        return value

    @model_validator(mode="after")
    def _tls_listen(self) -> AuditSettings:
        if any(item.startswith("tls://") for item in self.listen) and (
            self.cert_file is None or self.ca_file is None
        ):
            raise ValueError(
                "audit listen tls:// needs cert_file, key_file (kuva's certificate) and "
                "ca_file (the CA of the clients' certificates)"
            )
        return self


def _syslog_address(value: str, what: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``udp://host:port`` or ``tls://host:port``."""
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme not in ("udp", "tls") or not sep or not colon or not host or not port.isdigit():
        raise ValueError(f"{what} must be udp://host:port or tls://host:port")
    return scheme, host.strip("[]"), int(port)


def syslog_address(value: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a validated ``[audit]`` syslog address."""
    return _syslog_address(value, "syslog address")


class IntegritySettings(BaseModel):
    """The continuous integrity check of ``kuva serve`` (services.integrity)."""

    # Bytes read per second by the background check (every copy counts); 0 = off.
    # Low by default, so that it never competes with ingest and retrieval.
    scrub_bytes_per_second: int = Field(default=1024 * 1024, ge=0)
    # At the end of a pass, at most this often, the check also lists every copy's
    # blobs and looks for orphans (blobs no index row references); 0 = never (then
    # only ``kuva verify`` looks for them).
    orphan_check_hours: float = Field(default=24.0, ge=0)


class AccessRuleSettings(BaseModel):
    """A basis for reading another organisation's material (services.access):
    ``recipient`` reads what ``register_holder`` archived ("*" = any), and each
    such read is logged as a disclosure on ``basis``. With ``honour_prohibition``
    a patient's disclosure prohibition keeps their material from the recipient."""

    model_config = {"extra": "forbid"}

    register_holder: str = "*"
    recipient: str = "*"
    basis: str = Field(min_length=1, max_length=1000)
    honour_prohibition: bool = True

    @field_validator("register_holder", "recipient")
    @classmethod
    def _oid_or_any(cls, value: str) -> str:
        value = value.strip()
        if value != "*" and not is_valid_uid(value):
            raise ValueError(f"{value!r} is neither an OID nor *")
        return value


# The functions of a customer's acceptance test (services.onboarding).
ONBOARDING_FUNCTIONS = (
    "archive",
    "commitment",
    "ian",
    "retrieve",
    "query",
    "metadata-correction",
    "content-correction",
    "report-search",
    "image-search",
    "image-retrieve",
    "patient-merge",
    "name-update",
    "disclosure-notice",
)


class OnboardingSettings(BaseModel):
    """[onboarding]: the acceptance test (docs/onboarding.md)."""

    # The functions that must pass before ``kuva orgs activate`` takes an organisation
    # in testing into use (``ian`` only when one of its nodes takes IANs).
    required: list[str] = Field(default_factory=lambda: list(ONBOARDING_FUNCTIONS))

    @field_validator("required")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ONBOARDING_FUNCTIONS))
        if unknown:
            raise ValueError(f"unknown acceptance functions {unknown}: {ONBOARDING_FUNCTIONS}")
        return value


class AccessSettings(BaseModel):
    """Access control by register holder (``[[access.rules]]``). Without rules an
    organisation reads only its own organisation's material (with no [[nodes]]
    configured, everything belongs to one local organisation)."""

    rules: list[AccessRuleSettings] = Field(default_factory=list)
    # The archive's operators (OIDs; e.g. the national service answering patients'
    # requests): their HTTP clients may use the admin API (/admin: disclosure
    # prohibitions) and see every disclosure-log record of a patient over GET
    # /disclosures; another organisation sees the records where it is the register
    # holder or the recipient. On the embedded default (no [[nodes]]) the local
    # client may use the admin API.
    operators: list[str] = Field(default_factory=list)

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: list[str]) -> list[str]:
        for oid in value:
            if not is_valid_uid(oid):
                raise ValueError(f"access operator {oid!r} is not a valid OID")
        return value


class S3Endpoint(BaseModel):
    """How an S3-compatible store is reached. Empty values come from the standard
    environment: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY."""

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    # Never logged or shown; better kept in the environment than in the file.
    secret_access_key: str = Field(default="", repr=False)
    # "path": endpoint/bucket/key (SeaweedFS, MinIO, Ceph RGW); "virtual": bucket.endpoint/key.
    addressing_style: Literal["path", "virtual"] = "path"


class S3Settings(S3Endpoint):
    """[s3]: the store of an s3:// blob_url; [s3.replica]: of an s3:// replica_url
    on another endpoint or account (default: the same as [s3])."""

    # Objects above this go up as multipart uploads of parts this size (S3: >= 5 MiB).
    part_size_mb: int = Field(default=8, ge=5, le=512)
    replica: S3Endpoint | None = None


class TlsSettings(BaseModel):
    """Mutual TLS of the listeners that have ``tls = true`` (kuva.tls; PS3.15 B.1,
    IHE ATNA node authentication): kuva's certificate and key, and the CAs a client
    certificate must chain to. Clients are mapped to organisations by their
    certificate's subject (``[[organizations]] certificates``)."""

    cert_file: Path | None = None  # PEM: kuva's certificate (and any intermediates)
    key_file: Path | None = None  # PEM: its private key (unencrypted)
    ca_file: Path | None = None  # PEM: the CAs trusted to issue client certificates
    # PEM: a CRL of every CA in ca_file (concatenated). A client certificate it
    # revokes is refused at the handshake; read again when the file changes (checked
    # every crl_check_seconds). A CRL past its nextUpdate refuses every client of
    # its CA (fail closed): publish a new one before. None = no revocation check.
    crl_file: Path | None = None
    crl_check_seconds: float = Field(default=10.0, gt=0)
    # A client that has not finished its TLS handshake this long after connecting
    # is disconnected (and audited).
    handshake_seconds: float = Field(default=30.0, gt=0)


LOCAL_ORGANIZATION_OID = "1.2.246.10.0.10"


class Settings(BaseSettings):
    """All of kuva's settings. See docs/contract.md for the meaning of each key."""

    model_config = SettingsConfigDict(env_prefix="KUVA_", env_nested_delimiter="__", extra="forbid")

    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    xds: XdsSettings = Field(default_factory=XdsSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    integrity: IntegritySettings = Field(default_factory=IntegritySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    onboarding: OnboardingSettings = Field(default_factory=OnboardingSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    organizations: list[OrganizationSettings] = Field(default_factory=list)
    nodes: list[NodeSettings] = Field(default_factory=list)

    _toml_file: Path | None = None
    _directory: Directory | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get("path")
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def tls_listeners(self) -> list[str]:
        """The listeners with mutual TLS on."""
        switches = (("dicom", self.dicom.tls), ("http", self.http.tls), ("hl7", self.hl7.tls))
        return [name for name, on in switches if on]

    def certificate_organizations(self) -> dict[Subject, str]:
        """Every certificate subject in the directory, with the OID of its organisation."""
        return self.directory.owners()

    @property
    def node_name(self) -> str:
        """``[archive] node_name``, or this host and its DICOM port."""
        return self.archive.node_name or f"{socket.gethostname()}:{self.dicom.port}"

    @property
    def dicom_processes(self) -> int:
        """How many processes serve DICOM: ``[dicom] workers``, or when 0 one per core
        on PostgreSQL and one on SQLite. SQLite takes one writer at a time; measured
        with bench/ingest.py (4 associations), one process writing through its group
        commit took 125 objects/s, two processes contending for the lock 105."""
        if self.dicom.workers:
            return self.dicom.workers
        if self.archive.resolved_database_url().startswith("sqlite"):
            return 1
        return os.cpu_count() or 1

    @property
    def open_access(self) -> bool:
        """True on the embedded default: no nodes in the directory, any calling AE
        accepted."""
        return not self.directory.nodes

    def model_post_init(self, context: Any, /) -> None:
        self._directory = Directory(self.organizations, self.nodes)

    @property
    def directory(self) -> Directory:
        """The organisations and nodes in force (``[[organizations]]`` and ``[[nodes]]``
        seed it; services.directory keeps it in step with the index)."""
        assert self._directory is not None
        return self._directory

    def use_directory(self, directory: Directory) -> None:
        """Put ``directory`` in force (one assignment: readers see the old snapshot
        or the new one, never a mix)."""
        self._directory = directory

    def node(self, ae_title: str) -> NodeSettings | None:
        return self.directory.node(ae_title)

    def organization_state(self, oid: str | None) -> OrganizationState:
        """The state of an organisation; one not in the directory (the local
        organisation of the embedded default) is active."""
        org = self.directory.organization(oid) if oid else None
        return org.state if org is not None else OrganizationState.ACTIVE

    def organization_of(self, ae_title: str) -> str | None:
        """The OID of the organisation (register holder) a calling AE belongs to."""
        node = self.node(ae_title)
        if node is not None:
            return node.organization or LOCAL_ORGANIZATION_OID
        if self.open_access:
            return LOCAL_ORGANIZATION_OID
        return None

    def organization_oids(self) -> frozenset[str]:
        """The organisations (register holders) the archive knows: ``[[organizations]]``
        and the local one when a node belongs to it (or on the embedded default)."""
        oids = {org.oid for org in self.directory.organizations}
        if self.open_access or any(not node.organization for node in self.directory.nodes):
            oids.add(LOCAL_ORGANIZATION_OID)
        return frozenset(oids)

    def ian_nodes(self, organization_oid: str) -> list[NodeSettings]:
        """The nodes of an organisation that want Instance Availability Notifications."""
        return [
            node
            for node in self.directory.nodes
            if node.ian and (node.organization or LOCAL_ORGANIZATION_OID) == organization_oid
        ]

    def http_organization(self) -> str | None:
        """The organisation an HTTP client stores for, or None when none is configured."""
        if self.http.organization:
            return self.http.organization
        if self.open_access:
            return LOCAL_ORGANIZATION_OID
        return None


_CONFIG_FILE: dict[str, Path | None] = {"path": None}


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and the environment; environment wins."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
    _CONFIG_FILE["path"] = path
    try:
        settings = Settings(**overrides)
    finally:
        _CONFIG_FILE["path"] = None
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    known = {org.oid for org in settings.organizations}
    for node in settings.nodes:
        if node.organization and known and node.organization not in known:
            raise ValueError(
                f"node {node.ae_title}: organization {node.organization} is not configured"
            )
    if settings.http.organization and known and settings.http.organization not in known:
        raise ValueError(f"http.organization {settings.http.organization} is not configured")
    titles = [node.ae_title for node in settings.nodes]
    if len(titles) != len(set(titles)):
        raise ValueError("node AE titles must be unique")
    _check_tls(settings)


def _check_tls(settings: Settings) -> None:
    owners: dict[Subject, str] = {}
    for org in settings.organizations:
        for subject in org.subjects():
            if subject in owners:
                raise ValueError(
                    f"certificate subject {subject} is listed by organizations "
                    f"{owners[subject]} and {org.oid}: a certificate maps to one organisation"
                )
            owners[subject] = org.oid
    listeners = settings.tls_listeners
    if not listeners:
        return
    on = ", ".join(f"[{name}] tls" for name in listeners)
    tls = settings.tls
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(tls, key)
        if path is None:
            raise ValueError(f"{on} needs [tls] {key}")
        if not Path(path).is_file():
            raise ValueError(f"[tls] {key}: file not found: {path}")
    if settings.dicom.tls and not settings.nodes:
        raise ValueError(
            "[dicom] tls needs [[nodes]]: a calling AE title must belong to the "
            "organisation of the client certificate"
        )
    if not owners:
        raise ValueError(
            f"{on}: no [[organizations]] lists certificates, so no client could connect"
        )
    # Load them as the listeners will: a key that does not match the certificate, or
    # a file that is not PEM, fails here, at start, with OpenSSL's reason.
    server_context(tls)
