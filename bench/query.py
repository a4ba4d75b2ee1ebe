"""Query benchmark: study-level C-FIND and QIDO-RS on an index of a million instances.

Usage::

    .venv/bin/python bench/query.py [--instances N] [--database sqlite|postgresql|both]
                                    [--queries Q] [--quick] [--explain] [--nodes N]

For each database (SQLite in a temporary folder; PostgreSQL at 127.0.0.1:5432 in a
fresh ``kuva_bench_<random>`` database, dropped at the end):

1. Prefill: N synthetic instances (1,000,000 by default; ``--quick`` 20,000) from
   ``kuva.bench_support.synthetic_instance`` - 100 instances per series, 4 series
   per study, 3 studies per patient - are written into the index without sending
   any pixel data. By default with ``kuva.index.bulk.bulk_add`` (``--prefill
   bulk``): the same patient/study/series/instance rows, with the same values and
   keys, that ``InstanceRepository.add`` - the repository the ingest service
   writes through - produces, but many rows per statement. A self-check at the
   start writes a small index both ways and compares every row. ``--prefill
   service`` writes through ``InstanceRepository.add`` itself (about 1 ms per
   instance). Consecutive studies are ``--study-interval-hours`` apart (6), so a
   one-week date range matches about 28 studies whatever N is. Then
   ``kuva.index.bulk.analyze``: SQLite ``ANALYZE`` + ``PRAGMA optimize``,
   PostgreSQL ``VACUUM (ANALYZE)`` (statistics, and the visibility map that
   autovacuum would otherwise set in the middle of the measurement).
2. A real ``kuva serve`` (tests.support.server.KuvaServer) is started on that index.
3. Each query kind - PatientID, PatientName prefix (``Testinen^Potilas12*``,
   matching about ten patients), StudyDate range of one week, AccessionNumber -
   is asked Q times (200; ``--quick`` 40) with values drawn from the synthetic
   data (seeded, the same values for every interface), after 10 warm-up queries:

   * C-FIND, Study Root, STUDY level, with pynetdicom as the SCU on one open
     association (TCP_NODELAY on, as kuva sets it on its sockets); each request
     is timed until its final response, and separately until its first response.
     Keys: StudyInstanceUID, PatientName, PatientID, StudyDate, AccessionNumber,
     NumberOfStudyRelatedInstances, ModalitiesInStudy. One more row shows an SCU
     that leaves Nagle's algorithm on.
   * QIDO-RS ``GET /dicom-web/studies?<key>=<value>`` with httpx on one kept-alive
     connection (the study attributes QIDO-RS returns by default). When the
     server answers 404/405/501 the rows say "QIDO-RS: not available".
   * service: the same C-FIND request to ``QueryService.find`` in this process,
     no network - what the database and the query service take by themselves;
     then as another organisation reading on an access rule (services.access: the
     condition every read carries), and with its disclosures logged as well.

   Every answer is checked against the synthetic data: the Study Instance UIDs
   returned and the NumberOfStudyRelatedInstances of each must be exactly what
   the generator implies ("answers" column; the first differences are printed),
   so no timing is of an empty or wrong answer. Floors: C-ECHO on the same
   association, ``GET /healthz``, and association set-up: a pynetdicom SCU
   opening an association (the same two presentation contexts, TCP_NODELAY on)
   and releasing it, 50 times one after another after 10 warm-up ones (its p50
   is the median of the 50).

With ``--nodes N`` (N > 1; PostgreSQL only, SQLite is one node's own index), N-1
more ``kuva serve`` processes run on the same index (the many-node set-up of
docs/deployment.md), and two more rows per kind ask the same queries from N clients
at once, one association or connection each: all N on the first node, then client i
on node i, each client a process of its own. Their label gives the aggregate rate
(queries/s from the first client's start to the last one's end).

The target is p95 < 20 ms for each query kind (C-FIND and QIDO-RS rows). The plan
(SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN (ANALYZE, BUFFERS)``) of the
C-FIND statement is printed for every kind that misses it, or for all with
``--explain``. Nothing is written to the repository. The exit status is 1 when
an answer was wrong, 0 otherwise (a missed target is a FAIL in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import multiprocessing
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # tests.support (and kuva when not installed)

import httpx  # noqa: E402
from bench.shared import (  # noqa: E402
    SERVER_COMMAND,
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
    server_problems,
    time_queries,
)
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.association import Association  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import Engine, select  # noqa: E402
from tests.support.peers import set_nodelay_handler  # noqa: E402
from tests.support.server import KuvaServer  # noqa: E402

from kuva.bench_support import (  # noqa: E402
    INSTANCES_PER_SERIES,
    SERIES_PER_STUDY,
    SYNTHETIC_BASE,
    prefill_index,
    synthetic_instance,
)
from kuva.config import load_settings  # noqa: E402
from kuva.dicom.datasets import decode as decode_data_set  # noqa: E402
from kuva.dicom.datasets import encode as encode_data_set  # noqa: E402
from kuva.dicom.net import Association as NetAssociation  # noqa: E402
from kuva.dicom.net import CommandField  # noqa: E402
from kuva.dicom.net import associate as net_associate  # noqa: E402
from kuva.dicom.net.dimse import request as dimse_request  # noqa: E402
from kuva.index.bulk import bulk_add  # noqa: E402
from kuva.index.database import make_engine, migrate  # noqa: E402
from kuva.index.schema import instance, patient, series, study  # noqa: E402
from kuva.index.uow import UnitOfWork  # noqa: E402
from kuva.model.access import ANY, AccessRule, AccessScope, Basis, scope_of  # noqa: E402
from kuva.model.query import QueryLevel  # noqa: E402
from kuva.services.disclosure import DisclosureLog  # noqa: E402
from kuva.services.query import FindRequest, QueryService  # noqa: E402

WARMUP = 10
ASSOCIATIONS = 50  # opened and released one after another for the set-up row
SEED = 20_240_101
CALLING_AET = "BENCH"
INSTANCES_PER_STUDY = INSTANCES_PER_SERIES * SERIES_PER_STUDY
PENDING = (0xFF00, 0xFF01)
CFIND_KEYS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "NumberOfStudyRelatedInstances",
    "ModalitiesInStudy",
)
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
STUDY_INSTANCE_UID = "0020000D"
QIDO_UNAVAILABLE = (404, 405, 501)
KINDS = ("PatientID", "PatientName prefix", "StudyDate 1 week", "AccessionNumber")

# --------------------------------------------------------------------------- synthetic data


@dataclasses.dataclass(frozen=True)
class Study:
    """What the prefill wrote for one study (derived from the same generator)."""

    uid: str
    patient_id: str
    patient_name: str
    date: str
    accession: str
    instances: int


@dataclasses.dataclass(frozen=True)
class Query:
    """One query: a key and its value, and what the answer must be."""

    kind: str
    keyword: str
    value: str
    expected: tuple[tuple[str, int], ...]  # (Study Instance UID, instances) of each match


def synthetic_studies(instances: int, interval: timedelta) -> list[Study]:
    """Every study ``prefill_index(config, instances)`` writes, in order."""
    studies = []
    for first in range(0, instances, INSTANCES_PER_STUDY):
        attrs = synthetic_instance(first, SYNTHETIC_BASE, study_interval=interval).attributes
        studies.append(
            Study(
                uid=attrs.study.study_instance_uid,
                patient_id=attrs.patient.patient_id,
                patient_name=attrs.patient.name,
                date=attrs.study.study_date,
                accession=attrs.study.accession_number,
                instances=min(INSTANCES_PER_STUDY, instances - first),
            )
        )
    return studies


def _expect(kind: str, keyword: str, value: str, matching: Sequence[Study]) -> Query:
    return Query(kind, keyword, value, tuple(sorted((s.uid, s.instances) for s in matching)))


def make_queries(
    studies: Sequence[Study], kind: str, count: int, rng: random.Random
) -> list[Query]:
    """``count`` queries of ``kind`` with values drawn from ``studies``."""
    queries = []
    candidates: list[str] = []
    if kind == "PatientName prefix":
        # Keep as many digits of the patient number as make ~10 patients match.
        numbered = [(re.fullmatch(r"(.*?)(\d+)", s.patient_name), s) for s in studies]
        top = max(int(m.group(2)) for m, _ in numbered if m)
        digits = max(1, len(str(top)) - 1)
        candidates = [
            m.group(1) + m.group(2)[:digits] for m, _ in numbered if m and len(m.group(2)) >= digits
        ]
    for _ in range(count):
        pick = rng.choice(studies)
        if kind == "PatientID":
            matching = [s for s in studies if s.patient_id == pick.patient_id]
            queries.append(_expect(kind, "PatientID", pick.patient_id, matching))
        elif kind == "PatientName prefix":
            prefix = rng.choice(candidates)
            matching = [s for s in studies if s.patient_name.upper().startswith(prefix.upper())]
            queries.append(_expect(kind, "PatientName", prefix + "*", matching))
        elif kind == "StudyDate 1 week":
            low = pick.date
            high = (datetime.strptime(low, "%Y%m%d") + timedelta(days=6)).strftime("%Y%m%d")
            matching = [s for s in studies if low <= s.date <= high]
            queries.append(_expect(kind, "StudyDate", f"{low}-{high}", matching))
        elif kind == "AccessionNumber":
            matching = [s for s in studies if s.accession == pick.accession]
            queries.append(_expect(kind, "AccessionNumber", pick.accession, matching))
        else:
            raise ValueError(kind)
    return queries


# --------------------------------------------------------------------------- results


# A runner asks one query; it answers (Study Instance UID, NumberOfStudyRelatedInstances)
# of every match, or None when it has nothing to check (the floors).
Runner = Callable[[Query], list[tuple[str, int]] | None]


def _difference(query: Query, answer: list[tuple[str, int]]) -> str:
    got, expected = sorted(answer), list(query.expected)
    missing = [uid for uid, _ in expected if uid not in {u for u, _ in got}]
    extra = [uid for uid, _ in got if uid not in {u for u, _ in expected}]
    counts = [f"{u}: {n}" for u, n in got if (u, n) not in expected and u not in extra]
    return (
        f"{query.keyword}={query.value}: {len(got)} matches, expected {len(expected)}; "
        f"missing {missing[:3]}, unexpected {extra[:3]}, wrong counts {counts[:3]}"
    )


def _check(query: Query, answer: list[tuple[str, int]] | None) -> tuple[int, str] | None:
    if answer is None:
        return None
    return len(answer), "" if sorted(answer) == list(query.expected) else _difference(query, answer)


def measure(
    kind: str, interface: str, queries: Sequence[Query], warmup: Sequence[Query], run: Runner
) -> LatencyRow:
    """Time ``run`` on each query after the warm-up ones; check every answer."""
    return time_queries(kind, interface, queries, warmup, run, _check)


# --------------------------------------------------------------------------- interfaces


def _identifier(query: Query) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.StudyDate = ""
    ds.AccessionNumber = ""
    ds.add_new(0x00201208, "IS", None)  # NumberOfStudyRelatedInstances
    ds.ModalitiesInStudy = ""
    setattr(ds, query.keyword, query.value)
    return ds


def requestor() -> AE:
    """The benchmark's SCU: C-FIND (Study Root) and C-ECHO."""
    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    ae.dimse_timeout = ae.network_timeout = 120
    return ae


def open_association(
    server: KuvaServer | Target, *, nodelay: bool, ae: AE | None = None
) -> Association | None:
    """An association for C-FIND and C-ECHO; ``nodelay``: TCP_NODELAY on our socket,
    as kuva sets it on its own (kuva.dicom.network)."""
    ae = ae or requestor()
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay_handler)] if nodelay else []
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, ae_title=server.ae_title, evt_handlers=handlers
    )
    return assoc if assoc.is_established else None


def cfind_runner(assoc: Association, first_ms: list[float] | None = None) -> Runner:
    """C-FIND on ``assoc``; ``first_ms`` collects the time to each first response."""

    def run(query: Query) -> list[tuple[str, int]]:
        matches: list[tuple[str, int]] = []
        final = None
        started = time.perf_counter()
        for status, answer in assoc.send_c_find(
            _identifier(query), StudyRootQueryRetrieveInformationModelFind
        ):
            if not status:
                raise RuntimeError("C-FIND: no response (association aborted or timed out)")
            if first_ms is not None and not matches:
                first_ms.append((time.perf_counter() - started) * 1000)
            if status.Status in PENDING:
                uid = str(answer.get("StudyInstanceUID", "")) if answer else ""
                value = answer.get("NumberOfStudyRelatedInstances") if answer else None
                matches.append((uid, int(value) if value not in (None, "") else 0))
            else:
                final = status.Status
        if final != 0x0000:
            raise RuntimeError(f"C-FIND final status 0x{final or 0:04X}")
        return matches

    return run


def kuva_requestor(server: KuvaServer) -> NetAssociation:
    """An association opened with kuva's own requestor (kuva.dicom.net), the client
    that costs least per message: the C-FIND rows measured with it show the server."""
    return net_associate(
        "127.0.0.1",
        server.dicom_port,
        calling_ae=CALLING_AET,
        called_ae=server.ae_title,
        contexts=[(str(StudyRootQueryRetrieveInformationModelFind), [ExplicitVRLittleEndian])],
        dimse_timeout=120,
    )


def kuva_cfind_runner(assoc: NetAssociation) -> Runner:
    """C-FIND through kuva's requestor; the answers decoded with pydicom."""
    context = assoc.context_for(str(StudyRootQueryRetrieveInformationModelFind))
    assert context is not None

    def run(query: Query) -> list[tuple[str, int]]:
        identifier = encode_data_set(_identifier(query), context.transfer_syntax)
        fields = dimse_request(
            CommandField.C_FIND_RQ,
            assoc.next_message_id(),
            affected_sop_class_uid=context.abstract_syntax,
        )
        response = assoc.send_request(context, fields, identifier)
        if response.status != 0x0000:
            raise RuntimeError(f"C-FIND final status {response.status}")
        matches: list[tuple[str, int]] = []
        for pending in response.pending:
            answer = decode_data_set(pending.data_set or b"", context.transfer_syntax)
            value = answer.get("NumberOfStudyRelatedInstances")
            uid = str(answer.get("StudyInstanceUID", ""))
            matches.append((uid, int(value) if value not in (None, "") else 0))
        return matches

    return run


def kuva_association_runner(server: KuvaServer) -> Runner:
    """Open and release an association with kuva's own requestor."""

    def run(query: Query) -> None:
        kuva_requestor(server).release()

    return run


def cecho_runner(assoc: Association) -> Runner:
    def run(query: Query) -> None:
        status = assoc.send_c_echo()
        if not status or status.Status != 0x0000:
            raise RuntimeError("C-ECHO failed")

    return run


def association_runner(server: KuvaServer) -> Runner:
    """Open an association (A-ASSOCIATE, PS3.8 7.1) and release it (A-RELEASE, 7.2)."""
    ae = requestor()

    def run(query: Query) -> None:
        assoc = open_association(server, nodelay=True, ae=ae)
        if assoc is None:
            raise RuntimeError("association refused or failed")
        assoc.release()

    return run


def qido_runner(client: httpx.Client) -> Runner:
    def run(query: Query) -> list[tuple[str, int]]:
        response = client.get("/dicom-web/studies", params={query.keyword: query.value})
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            raise RuntimeError(f"QIDO-RS answered {response.status_code}: {response.text[:200]}")
        matches = []
        for item in response.json():
            uid = (item.get(STUDY_INSTANCE_UID, {}).get("Value") or [""])[0]
            count = (item.get(NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value") or [0])[0]
            matches.append((str(uid), int(count)))
        return matches

    return run


def healthz_runner(client: httpx.Client) -> Runner:
    def run(query: Query) -> None:
        client.get("/healthz").raise_for_status()

    return run


def find_request(query: Query) -> FindRequest:
    """The C-FIND request of ``query`` as the query service takes it."""
    return FindRequest(
        level=QueryLevel.STUDY,
        keys={key: (query.value if key == query.keyword else "") for key in CFIND_KEYS},
        return_keys=CFIND_KEYS,
    )


def service_runner(service: QueryService, scope: AccessScope | None = None) -> Runner:
    def run(query: Query) -> list[tuple[str, int]]:
        return [
            (
                str(result.values["StudyInstanceUID"]),
                int(result.values.get("NumberOfStudyRelatedInstances") or 0),
            )
            for result in service.find(find_request(query), scope=scope)
        ]

    return run


# Another organisation reading every register holder's studies on a basis that
# honours disclosure prohibitions (services.access): the condition each read carries.
OTHER_ORGANIZATION = "1.2.246.10.99999999.10"
OTHER_SCOPE = scope_of(OTHER_ORGANIZATION, [AccessRule(ANY, ANY, Basis("bench"))])


def qido_available(client: httpx.Client, probe: Query) -> tuple[bool, str]:
    """(usable, reason): 404/405/501 mean QIDO-RS is not there (yet)."""
    try:
        response = client.get("/dicom-web/studies", params={probe.keyword: probe.value})
    except httpx.HTTPError as error:
        return False, f"QIDO-RS: not available ({type(error).__name__}: {error})"
    if response.status_code in QIDO_UNAVAILABLE:
        return False, f"QIDO-RS: not available (HTTP {response.status_code})"
    return True, ""


# --------------------------------------------------------------------------- plans


def explain(engine: Engine, query: Query) -> list[str]:
    """The plan of the statement the query service runs for ``query`` (C-FIND keys)."""
    filters = QueryService.matchers(find_request(query))
    with UnitOfWork(engine, write=False) as uow:
        statement = uow.query.statement(QueryLevel.STUDY, filters, list(CFIND_KEYS))
        compiled = statement.compile(dialect=engine.dialect)
        params: Any = (
            tuple(compiled.params[name] for name in compiled.positiontup or ())
            if compiled.positional
            else compiled.params
        )
        return [f"-- {query.keyword}={query.value}", *query_plan(uow.conn, str(compiled), params)]


# --------------------------------------------------------------------------- one database


def bulk_self_check(scratch: Path, instances: int = 1_000) -> str:
    """Write ``instances`` synthetic instances with bulk_add and with the repository;
    compare every row of the four tables. Returns a one-line verdict."""
    engines = {}
    for way in ("repository", "bulk"):
        engines[way] = engine = make_engine(f"sqlite:///{scratch / f'check-{way}.sqlite'}")
        migrate(engine)
        rows = (synthetic_instance(i, SYNTHETIC_BASE) for i in range(instances))
        if way == "bulk":
            bulk_add(engine, rows, chunk_size=150)  # chunks end inside studies and series
        else:
            with UnitOfWork(engine) as uow:
                for new in rows:
                    uow.instances.add(new)
                uow.commit()
    tables = {}
    for way, engine in engines.items():
        with engine.connect() as conn:
            tables[way] = [
                conn.execute(select(table).order_by(table.c.pk)).all()
                for table in (patient, study, series, instance)
            ]
        engine.dispose()
    same = tables["repository"] == tables["bulk"]
    verdict = "identical" if same else "DIFFERENT"
    return (
        f"prefill self-check: bulk_add rows {verdict} to InstanceRepository.add rows "
        f"({instances} instances)"
    )


def run_database(database: str, options: Options, studies: Sequence[Study]) -> LatencyRun:
    result = LatencyRun(database)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kuva-query-")))
        url = stack.enter_context(scratch_database(database, options.pg_admin_url))
        server = KuvaServer(workdir, database_url=url)
        print(
            f"[{database}] prefilling {options.instances} instances ({options.prefill}) ...",
            flush=True,
        )
        started = time.perf_counter()
        prefill_index(
            str(server.config_path),
            options.instances,
            fast=options.prefill == "bulk",
            study_interval=options.study_interval,
        )
        result.prefill_s = time.perf_counter() - started
        engine = make_engine(load_settings(server.config_path).archive.resolved_database_url())
        stack.callback(engine.dispose)
        sqlite_file = None if url else server.data_dir / "index.sqlite"
        analyze_prefilled(result, engine, (patient, study, series, instance), sqlite_file)
        print(
            f"[{database}] prefill {result.prefill_s:.1f} s, ANALYZE {result.analyze_s:.1f} s, "
            f"rows {result.counts}, {result.size_mb:.0f} MB",
            flush=True,
        )

        rng = random.Random(SEED)
        queries = {kind: make_queries(studies, kind, options.queries, rng) for kind in KINDS}
        warmups = {kind: make_queries(studies, kind, WARMUP, rng) for kind in KINDS}

        server.start(timeout=options.server_timeout)
        stack.callback(server.stop)
        result.server_command = SERVER_COMMAND
        others: list[KuvaServer] = []
        if options.nodes > 1 and url:
            for _ in range(1, options.nodes):
                node_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kuva-q-")))
                other = KuvaServer(node_dir, database_url=url)
                other.start(timeout=options.server_timeout)
                stack.callback(other.stop)
                others.append(other)
            print(f"[{database}] {options.nodes} nodes on the one index", flush=True)
        elif options.nodes > 1:
            print(f"[{database}] --nodes: one node (SQLite is one node's own index)", flush=True)

        assoc = open_association(server, nodelay=True)
        if assoc is None:
            result.note = "C-FIND: association refused or failed"
            return result
        stack.callback(assoc.release)
        client = stack.enter_context(
            httpx.Client(
                base_url=server.http,
                headers={"Accept": "application/dicom+json"},
                timeout=120,
            )
        )
        kuva_assoc = kuva_requestor(server)
        stack.callback(kuva_assoc.release)
        service = QueryService(engine)
        qido_ok, qido_note = qido_available(client, queries["AccessionNumber"][0])
        if not qido_ok:
            print(f"[{database}] {qido_note}", flush=True)

        for kind in KINDS:
            print(f"[{database}] {kind} ...", flush=True)
            first_ms: list[float] = []
            runner = cfind_runner(assoc, first_ms)
            cfind = measure(kind, "C-FIND", queries[kind], warmups[kind], runner)
            result.rows.append(cfind)
            first = LatencyRow(kind, "C-FIND, to 1st response", targeted=False)
            first.latencies_ms = first_ms[-len(cfind.latencies_ms) :] if cfind.latencies_ms else []
            result.rows.append(first)
            own = measure(
                kind,
                "C-FIND, kuva requestor",
                queries[kind],
                warmups[kind],
                kuva_cfind_runner(kuva_assoc),
            )
            own.targeted = False
            result.rows.append(own)
            if qido_ok:
                result.rows.append(
                    measure(kind, "QIDO-RS", queries[kind], warmups[kind], qido_runner(client))
                )
            else:
                result.rows.append(LatencyRow(kind, "QIDO-RS", note=qido_note))
            if others:
                result.rows.extend(at_once(kind, [server, *others], queries[kind], warmups[kind]))
            service_row = measure(
                kind, "service", queries[kind], warmups[kind], service_runner(service)
            )
            service_row.targeted = False
            result.rows.append(service_row)
            for interface, logged in (
                ("service, another organisation (access rule)", None),
                ("service, another organisation, disclosures logged", DisclosureLog(engine)),
            ):
                runner = service_runner(QueryService(engine, logged), OTHER_SCOPE)
                row = measure(kind, interface, queries[kind], warmups[kind], runner)
                row.targeted = False
                result.rows.append(row)
        floor = queries["AccessionNumber"]
        nagle = open_association(server, nodelay=False)
        if nagle is not None:
            row = measure(
                "AccessionNumber",
                "C-FIND, SCU without TCP_NODELAY",
                floor[: max(1, options.queries // 4)],
                floor[:WARMUP],
                cfind_runner(nagle),
            )
            nagle.release()
            row.targeted = False
            result.rows.append(row)
        for interface, runner in (
            ("C-ECHO", cecho_runner(assoc)),
            ("GET /healthz", healthz_runner(client)),
        ):
            row = measure("floor", interface, floor, floor[:WARMUP], runner)
            row.targeted = False
            result.rows.append(row)
        setups = [floor[0]] * ASSOCIATIONS
        for interface, runner in (
            ("association open + release", association_runner(server)),
            ("association open + release, kuva requestor", kuva_association_runner(server)),
        ):
            row = measure("floor", interface, setups, setups[:WARMUP], runner)
            row.targeted = False
            result.rows.append(row)

        result.server_problems = server_problems(server.log(), expected=("no [[nodes]]",))
        slow = {row.kind for row in result.rows if row.slow}
        for kind in KINDS:
            if options.explain or kind in slow:
                try:
                    result.plans[kind] = explain(engine, queries[kind][0])
                except Exception as error:
                    result.plans[kind] = [f"EXPLAIN failed: {type(error).__name__}: {error}"]
    return result


@dataclasses.dataclass(frozen=True)
class Target:
    """A node as a client process reaches it (picklable)."""

    dicom_port: int
    ae_title: str
    http: str


@dataclasses.dataclass(frozen=True)
class ClientJob:
    kind: str
    interface: str  # "C-FIND" or "QIDO-RS"
    target: Target
    queries: tuple[Query, ...]
    warmup: tuple[Query, ...]


def _client_process(job: ClientJob, ready: Any, results: Any) -> None:
    """One client of the at-once rows, in a process of its own (the clients must not
    share one interpreter's lock): warm up, wait for the others, time its queries."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        runner: Runner
        if job.interface == "C-FIND":
            assoc = open_association(job.target, nodelay=True)
            if assoc is None:
                results.put((LatencyRow(job.kind, job.interface, note="association refused"), 0, 0))
                ready.wait()
                return
            stack.callback(assoc.release)
            runner = cfind_runner(assoc)
        else:
            client = stack.enter_context(
                httpx.Client(
                    base_url=job.target.http,
                    headers={"Accept": "application/dicom+json"},
                    timeout=120,
                )
            )
            runner = qido_runner(client)
        for query in job.warmup:
            runner(query)
        ready.wait()
        started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        row = measure(job.kind, job.interface, job.queries, [], runner)
        results.put((row, started, time.perf_counter()))


def _together(kind: str, label: str, jobs: Sequence[ClientJob]) -> LatencyRow:
    """The jobs' clients run at once, a process each; one row of all their latencies,
    its label with the aggregate rate (queries over the span from the first start to
    the last end)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(len(jobs))
    results = context.Queue()
    processes = [
        context.Process(target=_client_process, args=(job, ready, results)) for job in jobs
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    span = max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)
    asked = sum(len(job.queries) for job in jobs)
    rate = f"{asked / span:.0f} queries/s" if span > 0 else "no rate"
    merged = LatencyRow(kind, f"{label} ({rate})", targeted=False)
    for row, _, _ in outcomes:
        merged.latencies_ms += row.latencies_ms
        merged.matches += row.matches
        merged.wrong += row.wrong
    merged.note = "; ".join(row.note for row, _, _ in outcomes if row.note)
    return merged


def at_once(
    kind: str, nodes: Sequence[KuvaServer], queries: Sequence[Query], warmup: Sequence[Query]
) -> list[LatencyRow]:
    """C-FIND and QIDO-RS from one client per node at once, each client a process of
    its own: all on the first node, then each on its own node."""
    rows: list[LatencyRow] = []
    count = len(nodes)
    targets = [Target(n.dicom_port, n.ae_title, n.http) for n in nodes]
    for label, chosen in (
        (f"{count} clients at once, 1 node", [targets[0]] * count),
        (f"{count} clients at once, {count} nodes", targets),
    ):
        for interface in ("C-FIND", "QIDO-RS"):
            jobs = [
                ClientJob(kind, interface, target, tuple(queries[i::count]), tuple(warmup))
                for i, target in enumerate(chosen)
            ]
            rows.append(_together(kind, f"{interface}, {label}", jobs))
    return rows


# --------------------------------------------------------------------------- report


def _figures(row: LatencyRow) -> list[str]:
    """matches/query, answers and the target check of a measured row."""
    mean = f"{statistics.fmean(row.matches):.1f}" if row.matches else "-"
    if row.matches and min(row.matches) == 0:
        mean += f" ({row.matches.count(0)} empty)"
    answers = f"{len(row.wrong)} WRONG" if row.wrong else ("ok" if row.matches else "-")
    if row.note:
        answers += f"; stopped: {row.note}"
    check = ("pass" if not row.slow else "FAIL") if row.targeted else "-"
    return [mean, answers, check]


def print_report(run: LatencyRun, options: Options) -> None:
    print()
    print(f"== {run.title}: study-level queries, {options.instances} instances indexed ==")
    if run.note and not run.rows:
        print(run.note)
        return
    print(
        f"prefill ({options.prefill}): {run.prefill_s:.1f} s "
        f"({options.instances / run.prefill_s:,.0f} instances/s), "
        f"ANALYZE/VACUUM {run.analyze_s:.1f} s; "
        f"rows: {run.counts_text}; database {run.size_mb:.0f} MB"
    )
    print_latency_rows(run, "matches/query", _figures)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    instances: int
    databases: tuple[str, ...]
    queries: int
    prefill: str
    study_interval: timedelta
    explain: bool
    pg_admin_url: str
    server_timeout: float
    nodes: int = 1


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, help="instances indexed (1000000; --quick 20000)")
    add_database_argument(parser)
    parser.add_argument(
        "--queries", type=int, help="queries per kind and interface (200; --quick 40)"
    )
    parser.add_argument(
        "--prefill",
        choices=("bulk", "service"),
        default="bulk",
        help="bulk: kuva.index.bulk (default); service: InstanceRepository.add per instance",
    )
    parser.add_argument(
        "--study-interval-hours", type=float, default=6.0, help="between synthetic studies (6)"
    )
    parser.add_argument("--explain", action="store_true", help="print every kind's query plan")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="kuva nodes on the one PostgreSQL index, asked at once (1)",
    )
    add_connection_arguments(parser, kuva_server=True)
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    args = parser.parse_args(argv)

    def pick(value: int | None, normal: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else normal)

    instances = pick(args.instances, 1_000_000, 20_000)
    queries = pick(args.queries, 200, 40)
    if instances < INSTANCES_PER_STUDY or queries < 1:
        parser.error(f"--instances must be at least {INSTANCES_PER_STUDY}, --queries at least 1")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    return Options(
        instances=instances,
        databases=chosen_databases(args.database),
        queries=queries,
        prefill=args.prefill,
        study_interval=timedelta(hours=args.study_interval_hours),
        explain=args.explain,
        pg_admin_url=args.pg_admin_url,
        server_timeout=args.server_timeout,
        nodes=args.nodes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    begun = time.perf_counter()
    studies = synthetic_studies(options.instances, options.study_interval)
    with tempfile.TemporaryDirectory(prefix="kuva-query-check-") as scratch:
        check = bulk_self_check(Path(scratch))
    print(check, flush=True)
    runs = run_each(
        options.databases, lambda database: run_database(database, options, studies), LatencyRun
    )
    print()
    print_command_and_machine("client and server on loopback")
    print(
        f"data: {options.instances} instances = {len(studies)} studies of up to "
        f"{INSTANCES_PER_STUDY} instances ({SERIES_PER_STUDY} series), a study every "
        f"{options.study_interval.total_seconds() / 3600:g} h from "
        f"{studies[0].date} to {studies[-1].date}; {options.queries} timed queries per row "
        f"after {WARMUP} warm-up ones; matches/query = studies per answer"
    )
    print(check)
    for run in runs:
        print_report(run, options)
    print(f"\ntotal {time.perf_counter() - begun:.0f} s")
    return 1 if any(row.wrong for run in runs for row in run.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
