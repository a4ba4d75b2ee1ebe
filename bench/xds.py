"""XDS registry benchmark: ITI-18 stored queries on a registry of a million documents.

Usage::

    .venv/bin/python bench/xds.py [--documents N] [--patients P]
                                  [--database sqlite|postgresql|both]
                                  [--queries Q] [--quick] [--explain] [--no-http]

For each database (SQLite in a temporary folder; PostgreSQL at 127.0.0.1:5432 in a
fresh ``kuva_bench_<random>`` database, dropped at the end):

1. Prefill: N registered DocumentEntries (1,000,000 by default; ``--quick``
   20,000) across P patients (100,000; ``--quick`` 2,000; Finnish test identity
   codes), each registered as the Patient Data Archive registers a report: a
   submission of one SubmissionSet, the DocumentEntry and their HasMember
   Association (so 3N registry objects). Document ``n`` belongs to patient
   ``n mod P`` - a patient's entries are scattered over the table, as entries
   registered over years are. Its classCode is one of four, its creationTime one
   year later than the patient's previous entry (from 2015), with an event code, a
   confidentiality code, an author and an accession number in referenceIdList.
   The rows are written with ``kuva.index.registry_bulk.bulk_register``: through
   the registry's own ``RegistryRepository.add``, many submissions per statement.
   The ebRIM XML of the objects is filled into templates made by
   ``kuva.xds.ebrim.render`` (rendering a million objects takes longer than
   writing them). A self-check at the start registers a few hundred submissions
   through ``RegistryService.register`` and through ``bulk_register`` and compares
   every row of the nine ``xds_*`` tables, and compares the filled-in XML with
   ``ebrim.render``. Then ``kuva.index.bulk.analyze`` (SQLite ``ANALYZE``,
   PostgreSQL ``VACUUM (ANALYZE)``).
2. Three query kinds, Q times each (200; ``--quick`` 40) with values drawn from
   the synthetic data (seeded), after 10 warm-up queries:

   * FindDocuments by patient ($XDSDocumentEntryPatientId, Status Approved):
     about N/P entries each;
   * FindDocuments by patient + classCode + creationTime range (three years);
   * GetDocuments by one entryUUID;

   all LeafClass (the full objects, the heavier answer), each asked

   * through ``StoredQueryService.query`` in this process (the database and the
     service, no XML written);
   * over HTTP: a SOAP 1.2 AdhocQueryRequest (WS-Addressing) to ``/xds/registry``
     of a real HTTP server - this script started again with ``--serve``, in its
     own process: ``kuva.xds.endpoint.soap_router`` with the ITI-18 transaction
     (``kuva.xds.iti18``) under uvicorn, as ``kuva serve`` runs its HTTP
     listener - with httpx on one kept-alive connection.

   Every answer is checked against the synthetic data: the entryUUIDs returned
   must be exactly those the generator implies ("answers" column).

The target is p95 < 20 ms for each query kind and interface. The plans of the
statements a query runs (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN
(ANALYZE, BUFFERS)``) are printed for every kind that misses it, or for all with
``--explain``. Nothing is written to the repository. The exit status is 1 when an
answer was wrong, 0 otherwise (a missed target is a FAIL in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # kuva when not installed

import httpx  # noqa: E402
from bench.shared import (  # noqa: E402
    LatencyRow,
    LatencyRun,
    add_connection_arguments,
    add_database_argument,
    analyze_prefilled,
    chosen_databases,
    print_command_and_machine,
    print_latency_rows,
    query_plan,
    run_each,
    scratch_database,
    time_queries,
)
from lxml import etree  # noqa: E402
from rich.progress import Progress  # noqa: E402
from sqlalchemy import Engine, event, select  # noqa: E402

from kuva.bench_support import ROOT, _test_identity_code  # noqa: E402
from kuva.config import Settings  # noqa: E402
from kuva.index import schema  # noqa: E402
from kuva.index.database import make_engine, migrate  # noqa: E402
from kuva.index.registry_bulk import bulk_register  # noqa: E402
from kuva.model.xds import (  # noqa: E402
    ORIGINAL,
    AssociationType,
    Author,
    AvailabilityStatus,
    Code,
    DocumentEntry,
    NewDocumentEntry,
    NewSubmissionSet,
    PatientId,
    RegistryObject,
    ResponseStatus,
    Submission,
    SubmissionSet,
    new_association,
)
from kuva.services.registry import RegistryService  # noqa: E402
from kuva.services.stored_query import (  # noqa: E402
    QueryParameter,
    StoredQueryId,
    StoredQueryRequest,
    StoredQueryService,
)
from kuva.xds import ebrim  # noqa: E402
from kuva.xds.namespaces import (  # noqa: E402
    NSMAP,
    QUERY,
    REGISTRY_STORED_QUERY,
    RIM,
    SOAP,
    WSA,
    q,
)

WARMUP = 10
SEED = 20_260_314
ORGANIZATION = "1.2.246.10.1234567.10"
REGISTERED_AT = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
AUTHORITY = "1.2.246.21"  # Finnish personal identity codes
REPOSITORY = "1.2.246.10.0.10.1.1"
SOURCE_ID = "1.2.246.10.1234567"
APPROVED = AvailabilityStatus.APPROVED.value
FIRST_YEAR = 2015
CLASS_SCHEME = "1.3.6.1.4.1.19376.1.2.6.1"
CLASSES = tuple(
    Code(code, CLASS_SCHEME, name)
    for code, name in (
        ("REPORTS", "Reports"),
        ("IMAGES", "Images"),
        ("LABORATORY", "Laboratory"),
        ("SUMMARIES", "Summaries"),
    )
)
REPORT_TYPE = Code("11528-7", "2.16.840.1.113883.6.1", "Radiology report")
KINDS = ("FindDocuments patient", "FindDocuments patient+class+time", "GetDocuments uuid")
DE = "$XDSDocumentEntry"
_NAMESPACE = uuid.UUID("8a1f2c5e-0b7d-4c1e-9f3a-5d6e7f809a1b")
_TOKEN = re.compile(r"@[A-Z]\d*@")

# --------------------------------------------------------------------------- synthetic data


def entry_uuid(kind: str, n: int) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{kind}-{n}')}"


@dataclasses.dataclass(frozen=True)
class Document:
    """What the generator registers as document ``n`` (and what queries must find)."""

    n: int
    patient: int
    entry_uuid: str
    class_code: Code
    creation_time: str


class Synthetic:
    """Documents, patients and their submissions; each object's ebRIM XML filled into
    a template rendered once by ``ebrim.render`` from an object of the same shape."""

    def __init__(self, documents: int, patients: int) -> None:
        if patients < 1 or documents < patients:
            raise ValueError("need at least one patient and one document per patient")
        self.documents = documents
        self.patients = patients
        self._entry_templates = {c.code: self._entry_template(c) for c in CLASSES}
        self._set_template = self._template(self._submission_set("@P@", "@E@", "@U@", "@T@", "@A@"))
        self._link_template = self._template(
            new_association(
                AssociationType.HAS_MEMBER,
                "@F@",
                "@G@",
                entry_uuid="@E@",
                submission_set_status=ORIGINAL,
            )
        )

    # the data

    def patient_id(self, p: int) -> str:
        return _test_identity_code(p)

    def document(self, n: int) -> Document:
        p = n % self.patients
        k = n // self.patients  # the patient's k-th entry
        day = 1 + (p * 7) % 28
        month = 1 + (p // 28) % 12
        return Document(
            n=n,
            patient=p,
            entry_uuid=entry_uuid("de", n),
            class_code=CLASSES[(p + k) % len(CLASSES)],
            creation_time=f"{FIRST_YEAR + k}{month:02d}{day:02d}{(n % 24):02d}{(n % 60):02d}00",
        )

    def documents_of(self, p: int) -> list[Document]:
        return [self.document(n) for n in range(p, self.documents, self.patients)]

    # the objects

    @staticmethod
    def _entry(
        d: Document,
        patient: str,
        unique_id: str,
        creation: str,
        author: str,
        accession: str,
        me: str,
    ) -> DocumentEntry:
        pid = PatientId(patient, AUTHORITY)
        return NewDocumentEntry(
            entry_uuid=me,
            patient=pid,
            unique_id=unique_id,
            mime_type="text/xml",
            class_code=d.class_code,
            type_code=REPORT_TYPE,
            format_code=Code(
                "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1.4.1.19376.1.2.3"
            ),
            healthcare_facility_type_code=Code("22232009", "2.16.840.1.113883.6.96", "Hospital"),
            practice_setting_code=Code("394914008", "2.16.840.1.113883.6.96", "Radiology"),
            confidentiality_codes=(Code("N", "2.16.840.1.113883.5.25", "normal"),),
            event_codes=(Code("CT", "1.2.840.10008.2.16.4", "Computed Tomography"),),
            creation_time=creation,
            language_code="fi-FI",
            source_patient_id=str(pid),
            hash="e543712c0e10501972de13a5bfcbe826c49feb75",
            size=4096,
            repository_unique_id=REPOSITORY,
            reference_ids=(accession,),
            authors=(
                Author(
                    person=author, institutions=("Testisairaala^^^^^^^^^1.2.246.10.1234567.10",)
                ),
            ),
            title="Radiologinen lausunto",
        ).build()

    @staticmethod
    def _submission_set(
        patient: str, me: str, unique_id: str, submitted: str, author: str
    ) -> SubmissionSet:
        return NewSubmissionSet(
            entry_uuid=me,
            patient=PatientId(patient, AUTHORITY),
            unique_id=unique_id,
            source_id=SOURCE_ID,
            submission_time=submitted,
            content_type_code=REPORT_TYPE,
            authors=(Author(person=author),),
        ).build()

    @staticmethod
    def _template(prototype: RegistryObject) -> str:
        """The object's XML with its inner ids as tokens @C<i>@ / @X<i>@."""
        classifications = tuple(
            dataclasses.replace(c, id=f"@C{i}@") for i, c in enumerate(prototype.classifications)
        )
        identifiers = tuple(
            dataclasses.replace(x, id=f"@X{i}@")
            for i, x in enumerate(prototype.external_identifiers)
        )
        shaped = dataclasses.replace(
            prototype, classifications=classifications, external_identifiers=identifiers
        )
        return ebrim.render(shaped)

    def _entry_template(self, code: Code) -> str:
        shape = Document(0, 0, "@E@", code, "@T@")
        return self._template(self._entry(shape, "@P@", "@U@", "@T@", "@A@", "@R@", "@E@"))

    @staticmethod
    def _fill(template: str, obj: RegistryObject, values: dict[str, str]) -> str:
        tokens = {f"@{k}@": escape(v) for k, v in values.items()}
        tokens.update({f"@C{i}@": c.id for i, c in enumerate(obj.classifications)})
        tokens.update({f"@X{i}@": x.id for i, x in enumerate(obj.external_identifiers)})
        return _TOKEN.sub(lambda m: tokens[m.group()], template)

    def submission(self, n: int, *, xml: bool = True) -> Submission:
        """Document ``n``'s submission; ``xml``: fill in the objects' ebRIM XML."""
        d = self.document(n)
        patient = self.patient_id(d.patient)
        author = f"^Testaaja{d.patient % 1000}^Tero^^^"
        accession = f"A{n:09d}^^^&{ORGANIZATION}.1&ISO^urn:ihe:iti:xds:2013:accession"
        entry = self._entry(
            d, patient, f"{ROOT}.7.{n}", d.creation_time, author, accession, d.entry_uuid
        )
        set_uuid = entry_uuid("ss", n)
        submitted = d.creation_time[:12] + "30"
        subset = self._submission_set(patient, set_uuid, f"{ROOT}.8.{n}", submitted, author)
        link = new_association(
            AssociationType.HAS_MEMBER,
            set_uuid,
            d.entry_uuid,
            entry_uuid=entry_uuid("as", n),
            submission_set_status=ORIGINAL,
        )
        if xml:
            common = {"P": patient, "A": author}
            entry = dataclasses.replace(
                entry,
                ebxml=self._fill(
                    self._entry_templates[d.class_code.code],
                    entry,
                    {
                        **common,
                        "E": d.entry_uuid,
                        "U": f"{ROOT}.7.{n}",
                        "T": d.creation_time,
                        "R": accession,
                    },
                ),
            )
            subset = dataclasses.replace(
                subset,
                ebxml=self._fill(
                    self._set_template,
                    subset,
                    {**common, "E": set_uuid, "U": f"{ROOT}.8.{n}", "T": submitted},
                ),
            )
            link = dataclasses.replace(
                link,
                ebxml=self._fill(
                    self._link_template, link, {"E": link.id, "F": set_uuid, "G": d.entry_uuid}
                ),
            )
        return Submission(
            submission_sets=(subset,), document_entries=(entry,), associations=(link,)
        )

    def submissions(self) -> Iterator[Submission]:
        return (self.submission(n) for n in range(self.documents))


# --------------------------------------------------------------------------- self-check


XDS_TABLES = (
    schema.xds_object,
    schema.xds_document_entry,
    schema.xds_code,
    schema.xds_author,
    schema.xds_reference_id,
    schema.xds_submission_set,
    schema.xds_folder,
    schema.xds_association,
)


def self_check(scratch: Path, count: int = 300) -> str:
    """Register ``count`` synthetic submissions through RegistryService.register and
    through bulk_register; compare every row of the registry tables, and the
    template XML with ebrim.render. Returns a one-line verdict."""
    synthetic = Synthetic(documents=count, patients=max(1, count // 10))
    given = list(synthetic.submissions())
    rendered = all(
        obj.ebxml == ebrim.render(dataclasses.replace(obj, ebxml=""))
        for submission in given
        for obj in submission.objects
    )
    engines = {}
    for way in ("service", "bulk"):
        engines[way] = engine = make_engine(f"sqlite:///{scratch / f'check-{way}.sqlite'}")
        migrate(engine)
        if way == "bulk":
            bulk_register(
                engine,
                given,
                organization_oid=ORGANIZATION,
                created_at=REGISTERED_AT,
                render=ebrim.render,
                chunk_size=70,
            )
        else:
            service = RegistryService(
                engine,
                trusted_assigning_authorities=[AUTHORITY],
                render=ebrim.render,
                clock=lambda: REGISTERED_AT,
            )
            for submission in given:
                outcome = service.register(submission, organization_oid=ORGANIZATION)
                if outcome.status is not ResponseStatus.SUCCESS:
                    return (
                        f"prefill self-check: the registry refused a submission: {outcome.errors}"
                    )
    tables = {}
    for way, engine in engines.items():
        with engine.connect() as conn:
            tables[way] = [conn.execute(select(t).order_by(t.c.pk)).all() for t in XDS_TABLES]
        engine.dispose()
    same = tables["service"] == tables["bulk"] and all(tables["bulk"][:2])
    return (
        f"prefill self-check: bulk_register rows {'identical' if same else 'DIFFERENT'} to "
        f"RegistryService.register rows ({count} submissions, "
        f"{sum(len(rows) for rows in tables['bulk'])} rows); template XML "
        f"{'identical' if rendered else 'DIFFERENT'} to ebrim.render"
    )


# --------------------------------------------------------------------------- queries


@dataclasses.dataclass(frozen=True)
class Query:
    kind: str
    request: StoredQueryRequest
    expected: tuple[str, ...]  # entryUUIDs, in order


def _param(name: str, *values: str) -> QueryParameter:
    return QueryParameter(name, values)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def make_queries(synthetic: Synthetic, kind: str, count: int, rng: random.Random) -> list[Query]:
    queries = []
    for _ in range(count):
        p = rng.randrange(synthetic.patients)
        patient = _quoted(str(PatientId(synthetic.patient_id(p), AUTHORITY)))
        status = f"({_quoted(APPROVED)})"
        if kind == "FindDocuments patient":
            request = StoredQueryRequest(
                StoredQueryId.FIND_DOCUMENTS,
                (_param(f"{DE}PatientId", patient), _param(f"{DE}Status", status)),
            )
            expected = tuple(d.entry_uuid for d in synthetic.documents_of(p))
        elif kind == "FindDocuments patient+class+time":
            code = rng.choice(CLASSES)
            years = max(1, synthetic.documents // synthetic.patients)
            low = FIRST_YEAR + rng.randrange(max(1, years - 2))
            high = low + 3
            request = StoredQueryRequest(
                StoredQueryId.FIND_DOCUMENTS,
                (
                    _param(f"{DE}PatientId", patient),
                    _param(f"{DE}Status", status),
                    _param(f"{DE}ClassCode", f"({_quoted(str(code))})"),
                    _param(f"{DE}CreationTimeFrom", str(low)),
                    _param(f"{DE}CreationTimeTo", str(high)),
                ),
            )
            expected = tuple(
                d.entry_uuid
                for d in synthetic.documents_of(p)
                if d.class_code == code and str(low) <= d.creation_time < str(high)
            )
        elif kind == "GetDocuments uuid":
            d = synthetic.document(rng.randrange(synthetic.documents))
            request = StoredQueryRequest(
                StoredQueryId.GET_DOCUMENTS,
                (_param(f"{DE}EntryUUID", f"({_quoted(d.entry_uuid)})"),),
            )
            expected = (d.entry_uuid,)
        else:
            raise ValueError(kind)
        queries.append(Query(kind, request, expected))
    return queries


# --------------------------------------------------------------------------- results


Runner = Callable[[Query], list[str]]


def _check(query: Query, answer: list[str]) -> tuple[int, str]:
    if tuple(answer) == query.expected:
        return len(answer), ""
    return len(answer), (
        f"{len(answer)} entries, expected {len(query.expected)}: "
        f"{answer[:2]} / {list(query.expected[:2])}"
    )


def measure(
    kind: str, interface: str, queries: Sequence[Query], warmup: Sequence[Query], run: Runner
) -> LatencyRow:
    return time_queries(kind, interface, queries, warmup, run, _check)


def service_runner(service: StoredQueryService) -> Runner:
    def run(query: Query) -> list[str]:
        result = service.query(query.request)
        if result.status is not ResponseStatus.SUCCESS:
            raise RuntimeError(f"{result.status.value}: {result.errors}")
        return [o.entry_uuid for o in result.objects]

    return run


def envelope(request: StoredQueryRequest) -> bytes:
    """A SOAP 1.2 envelope with the AdhocQueryRequest of ``request``."""
    env = etree.Element(q("soap", "Envelope"), nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(env, q("soap", "Header"))
    etree.SubElement(header, q("wsa", "Action")).text = REGISTRY_STORED_QUERY
    etree.SubElement(header, q("wsa", "MessageID")).text = f"urn:uuid:{uuid.uuid4()}"
    body = etree.SubElement(env, q("soap", "Body"))
    adhoc = etree.SubElement(
        body, q("query", "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM}
    )
    etree.SubElement(
        adhoc, q("query", "ResponseOption"), returnComposedObjects="true", returnType="LeafClass"
    )
    query = etree.SubElement(adhoc, q("rim", "AdhocQuery"), id=request.query_id)
    for parameter in request.parameters:
        slot = etree.SubElement(query, q("rim", "Slot"), name=parameter.name)
        values = etree.SubElement(slot, q("rim", "ValueList"))
        for value in parameter.values:
            etree.SubElement(values, q("rim", "Value")).text = value
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def http_runner(client: httpx.Client) -> Runner:
    def run(query: Query) -> list[str]:
        response = client.post(
            "/xds/registry",
            content=envelope(query.request),
            headers={
                "Content-Type": "application/soap+xml; charset=UTF-8; "
                f'action="{REGISTRY_STORED_QUERY}"'
            },
        )
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        answer = etree.fromstring(response.content).find(
            f"{{{SOAP}}}Body/query:AdhocQueryResponse", NSMAP
        )
        if answer is None or answer.get("status") != ResponseStatus.SUCCESS.value:
            raise RuntimeError(f"not a Success: {response.text[:300]}")
        listing = answer.find("rim:RegistryObjectList", NSMAP)
        return [element.get("id", "") for element in (listing if listing is not None else [])]

    return run


# --------------------------------------------------------------------------- plans


def explain(engine: Engine, service: StoredQueryService, query: Query) -> list[str]:
    """The plans of the statements ``query`` runs (captured while it runs)."""
    statements: list[tuple[str, Any]] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "xds_" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        service.query(query.request)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    lines = [f"-- {query.kind}: {len(query.expected)} entries"]
    with engine.connect() as conn:
        for statement, parameters in statements:
            lines.append("   " + " ".join(statement.split())[:400])
            lines.extend(query_plan(conn, statement, parameters, postgres_indent="  "))
    return lines


# --------------------------------------------------------------------------- the HTTP server


def serve(database_url: str, port: int) -> int:
    """``--serve``: the registry's SOAP endpoint with ITI-18 on ``port`` (blocks)."""
    import uvicorn
    from fastapi import FastAPI

    from kuva.xds.endpoint import soap_router
    from kuva.xds.iti18 import registry_stored_query

    settings = Settings()
    engine = make_engine(database_url)
    app = FastAPI()
    transaction = registry_stored_query(StoredQueryService(engine), settings)
    app.include_router(
        soap_router({"/xds/registry": [transaction]}, settings.xds.max_request_bytes)
    )
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def registry_server(database_url: str) -> Iterator[tuple[str, list[str]]]:
    """The ``--serve`` process on a free port; yields its base URL and command line."""
    port = free_port()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        database_url,
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = process.stderr.read().decode()[-500:] if process.stderr else ""
                raise RuntimeError(f"registry server exited: {said}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.2),
            ):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("registry server did not start")
        yield (
            f"http://127.0.0.1:{port}",
            ["python", "bench/xds.py", "--serve", "<database>", "--port", str(port)],
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- one database


def run_database(database: str, options: Options, synthetic: Synthetic) -> LatencyRun:
    result = LatencyRun(database)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kuva-xds-")))
        url = stack.enter_context(scratch_database(database, options.pg_admin_url))
        sqlite_file = None if url else workdir / "index.sqlite"
        url = url or f"sqlite:///{sqlite_file}"
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate(engine)
        print(f"[{database}] registering {synthetic.documents} documents ...", flush=True)
        started = time.perf_counter()
        with Progress() as progress:
            bar = progress.add_task(f"[{database}] bulk_register", total=synthetic.documents)
            bulk_register(
                engine,
                synthetic.submissions(),
                organization_oid=ORGANIZATION,
                created_at=REGISTERED_AT,
                render=ebrim.render,
                chunk_size=options.chunk,
                progress=lambda done: progress.update(bar, advance=done),
            )
        result.prefill_s = time.perf_counter() - started
        analyze_prefilled(result, engine, XDS_TABLES, sqlite_file)
        print(
            f"[{database}] prefill {result.prefill_s:.0f} s, ANALYZE {result.analyze_s:.0f} s, "
            f"{result.size_mb:.0f} MB",
            flush=True,
        )

        rng = random.Random(SEED)
        queries = {kind: make_queries(synthetic, kind, options.queries, rng) for kind in KINDS}
        warmups = {kind: make_queries(synthetic, kind, WARMUP, rng) for kind in KINDS}
        service = StoredQueryService(engine)
        for kind in KINDS:
            print(f"[{database}] {kind} ...", flush=True)
            result.rows.append(
                measure(kind, "service", queries[kind], warmups[kind], service_runner(service))
            )
        if options.http:
            try:
                base, command = stack.enter_context(registry_server(url))
                result.server_command = shlex.join(command)
                client = stack.enter_context(httpx.Client(base_url=base, timeout=120))
                for kind in KINDS:
                    print(f"[{database}] {kind} over HTTP ...", flush=True)
                    result.rows.append(
                        measure(
                            kind, "HTTP SOAP", queries[kind], warmups[kind], http_runner(client)
                        )
                    )
            except Exception as error:
                result.rows.append(
                    LatencyRow("all", "HTTP SOAP", note=f"{type(error).__name__}: {error}")
                )
        slow = {row.kind for row in result.rows if row.slow}
        for kind in KINDS:
            if options.explain or kind in slow:
                try:
                    result.plans[kind] = explain(engine, service, queries[kind][0])
                except Exception as error:
                    result.plans[kind] = [f"EXPLAIN failed: {type(error).__name__}: {error}"]
    return result


# --------------------------------------------------------------------------- report


def _figures(row: LatencyRow) -> list[str]:
    """entries/query, answers and the target check of a measured row."""
    answers = f"{len(row.wrong)} WRONG" if row.wrong else "ok"
    if row.note:
        answers += f"; stopped: {row.note}"
    return [
        f"{statistics.fmean(row.matches):.1f}" if row.matches else "-",
        answers,
        "FAIL" if row.slow else "pass",
    ]


def print_report(run: LatencyRun, options: Options, synthetic: Synthetic) -> None:
    print()
    print(
        f"== {run.title}: ITI-18 stored queries, {synthetic.documents} DocumentEntries "
        f"of {synthetic.patients} patients =="
    )
    if run.note and not run.rows:
        print(run.note)
        return
    print(
        f"prefill (bulk_register): {run.prefill_s:.0f} s "
        f"({synthetic.documents / run.prefill_s:,.0f} documents/s), ANALYZE/VACUUM "
        f"{run.analyze_s:.0f} s; rows: {run.counts_text}; database {run.size_mb:.0f} MB"
    )
    print_latency_rows(run, "entries/query", _figures)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    documents: int
    patients: int
    databases: tuple[str, ...]
    queries: int
    chunk: int
    explain: bool
    http: bool
    pg_admin_url: str


def parse_args(argv: Sequence[str] | None = None) -> Options | tuple[str, int]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--documents", type=int, help="DocumentEntries (1000000; --quick 20000)")
    parser.add_argument("--patients", type=int, help="patients (100000; --quick 2000)")
    add_database_argument(parser)
    parser.add_argument(
        "--queries", type=int, help="queries per kind and interface (200; --quick 40)"
    )
    parser.add_argument(
        "--chunk", type=int, default=2000, help="submissions per bulk statement (2000)"
    )
    parser.add_argument("--explain", action="store_true", help="print every kind's query plans")
    parser.add_argument("--no-http", action="store_true", help="measure the service only")
    add_connection_arguments(parser, kuva_server=False)
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return args.serve, args.port

    def pick(value: int | None, normal: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else normal)

    documents = pick(args.documents, 1_000_000, 20_000)
    patients = pick(args.patients, 100_000, 2_000)
    queries = pick(args.queries, 200, 40)
    if patients < 1 or documents < patients or queries < 1 or patients > 100_000:
        parser.error("need 1 <= patients <= min(documents, 100000) and queries >= 1")
    return Options(
        documents=documents,
        patients=patients,
        databases=chosen_databases(args.database),
        queries=queries,
        chunk=args.chunk,
        explain=args.explain,
        http=not args.no_http,
        pg_admin_url=args.pg_admin_url,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if isinstance(options, tuple):
        return serve(*options)
    logging.getLogger("kuva").setLevel(logging.WARNING)
    begun = time.perf_counter()
    synthetic = Synthetic(options.documents, options.patients)
    with tempfile.TemporaryDirectory(prefix="kuva-xds-check-") as scratch:
        check = self_check(Path(scratch))
    print(check, flush=True)
    runs = run_each(
        options.databases, lambda database: run_database(database, options, synthetic), LatencyRun
    )
    print()
    print_command_and_machine("client and server on loopback")
    print(
        f"data: {synthetic.documents} DocumentEntries of {synthetic.patients} patients "
        f"(~{synthetic.documents / synthetic.patients:.0f} each), one submission each "
        f"(SubmissionSet + DocumentEntry + HasMember); {options.queries} timed LeafClass "
        f"queries per row after {WARMUP} warm-up ones"
    )
    print(check)
    for run in runs:
        print_report(run, options, synthetic)
    print(f"\ntotal {time.perf_counter() - begun:.0f} s")
    wrong = any(row.wrong for run in runs for row in run.rows)
    return 1 if wrong or "DIFFERENT" in check else 0


if __name__ == "__main__":
    sys.exit(main())
