"""Registration benchmark: studies arriving from several senders at once, each
registered (XDS-I.b manifest) and announced by IAN ``stable_seconds`` after its
last instance.

Usage::

    .venv/bin/python bench/registration.py [--studies N] [--instances I] [--senders S]
                                           [--database sqlite|postgresql|both]
                                           [--workers W] [--stable-seconds T]
                                           [--association study|sender]
                                           [--backlog-studies B] [--timeout S] [--keep DIR]

For each database (SQLite in a temporary folder; PostgreSQL at 127.0.0.1:5432 in a
fresh ``kuva_bench_<random>`` database, dropped at the end):

1. Data: N studies (1000) of I instances (20) each, small synthetic CTs (64 x 64,
   ``tests.support.synthetic.make_ct_series``), one patient per study with a
   Finnish *test* identity code; generated once into a temporary folder before
   any server starts, and sent to every database's server alike.
2. A real ``kuva serve`` (tests.support.server.KuvaServer) with S sender nodes
   (``SENDER1`` ...) and one IAN node (``ian = true``), all of one organisation,
   the IAN node being an Instance Availability Notification SCP in this process
   (tests.support.ian.IanReceiver). ``[registration] enabled = true``,
   ``stable_seconds = T`` (1); ``[tasks]`` kuva's defaults but ``workers = W``
   (2).
3. S sender threads (4), each a pynetdicom SCU (TCP_NODELAY) sending its share of
   the studies (study k goes to sender k mod S) one after another: one
   association per study (``--association study``, the default: as a modality
   sends an examination) or one for all its studies (``sender``). Each study's
   last C-STORE response is timed with ``time.time()``.
4. The script waits until every study's IAN has arrived (``--timeout``, 600 s
   after the last instance) and every registration and IAN task has stopped
   running, then reads the index of the stopped server.
5. Workers' capacity (the rate above is bounded by what ingest feeds them): on a
   fresh server and database, the first B studies (200; ``--backlog-studies 0``
   skips it) are stored with ``[tasks] workers = 0``; once every registration is
   due, kuva is started again on the same data with W workers, and the rate is
   taken from the first task done to the last (task table), with the same
   checks.

Figures: the time from each study's last instance (its C-STORE response) to
its IAN (the N-CREATE's arrival at the SCP), p50 / p95 / max; kuva's own figure
for the same (its log line "IAN of study ... s after its last instance",
measured from the instance's ``received_at``); ingest studies/s; registration +
IAN tasks done per second over the registration phase (from the first
registration task falling due to the last task done), and how long tasks waited
from falling due to being done (the workers keep up when that stays small);
the workers' capacity (step 5).

Checks, counted per study: an IAN received, and only one; every IAN lists
exactly the instances sent, all ONLINE; exactly one registration and one IAN
task, both done; exactly one kuva-made KOS instance in the study, and exactly
one manifest DocumentEntry of the study in the registry, Approved (a second one
would be a re-registration). "lost" counts the studies missing any of these,
"duplicated" those with more than one; no task may be failed. The target is
p95 < stable_seconds + 2 s, lost == 0, duplicated == 0.

Nothing is written to the repository; everything lives in a temporary folder
that is removed at the end, except the servers' folders (configuration,
``kuva.log``, SQLite index) with ``--keep DIR``. The exit status is 1 when a
study was lost or duplicated, an IAN listed wrong instances or a task failed; 0
otherwise (a missed latency target is a FAIL in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import logging
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # tests.support (and kuva when not installed)

from bench.shared import (  # noqa: E402
    SERVER_COMMAND,
    BaseRun,
    add_connection_arguments,
    add_database_argument,
    chosen_databases,
    database_version,
    failure_note,
    percentile,
    print_command_and_machine,
    print_rows,
    print_server_problems,
    scratch_database,
    server_problems,
)
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.association import Association  # noqa: E402
from sqlalchemy import Engine  # noqa: E402
from tests.support.ian import IanReceiver, ReceivedIan  # noqa: E402
from tests.support.peers import set_nodelay_handler  # noqa: E402
from tests.support.server import KuvaServer  # noqa: E402
from tests.support.synthetic import finnish_test_pic, make_ct_series, write_series  # noqa: E402

from kuva.config import TaskSettings, load_settings  # noqa: E402
from kuva.index.database import make_engine  # noqa: E402
from kuva.index.manifests import StudyHoldings  # noqa: E402
from kuva.index.outbox import DONE, FAILED, PENDING, RUNNING, Task  # noqa: E402
from kuva.index.uow import UnitOfWork  # noqa: E402
from kuva.model.availability import ONLINE  # noqa: E402
from kuva.model.uids import made_by_kuva  # noqa: E402
from kuva.model.xds import AvailabilityStatus, ObjectKind  # noqa: E402
from kuva.services.manifest_metadata import DICOM_MIME_TYPE  # noqa: E402
from kuva.services.registration import IAN_TASK, REGISTRATION_TASK  # noqa: E402

KUVA_AET = "KUVA"
IAN_AET = "IANSCP"
ORGANIZATION_OID = "1.2.246.10.12345678.10"
ORGANIZATION_NAME = "Testisairaala"
SLACK_SECONDS = 2.0  # target: p95 < stable_seconds + this
IMAGE_SIZE = 64
FIRST_BIRTH_DATE = dt.date(1940, 1, 1)
SETTLE_SECONDS = 60.0  # after the last IAN: for the tasks to be recorded done
KUVA_LATENCY = re.compile(
    r"IAN of study (\S+) \((\d+) instances\) acknowledged by (\S+), ([\d.]+) s after"
)

# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Study:
    """One synthetic study: its files in sending order and who sends it."""

    index: int
    uid: str
    patient_id: str
    sender: int
    files: tuple[Path, ...]
    sop_uids: frozenset[str]


def generate_studies(folder: Path, options: Options) -> list[Study]:
    """Write every study's Part 10 files under ``folder``."""
    started = time.perf_counter()
    studies = []
    for index in range(options.studies):
        born = FIRST_BIRTH_DATE + dt.timedelta(days=index % 20_000)
        patient_id = finnish_test_pic(born, 900 + (index // 20_000) % 100)
        datasets = make_ct_series(
            options.instances,
            rows=IMAGE_SIZE,
            cols=IMAGE_SIZE,
            patient_id=patient_id,
            patient_name=f"Testinen^Potilas{index + 1}",
            seed=index,
        )
        paths = write_series(datasets, folder / f"study-{index:05d}")
        studies.append(
            Study(
                index=index,
                uid=str(datasets[0].StudyInstanceUID),
                patient_id=patient_id,
                sender=index % options.senders,
                files=tuple(paths),
                sop_uids=frozenset(str(ds.SOPInstanceUID) for ds in datasets),
            )
        )
    megabytes = sum(path.stat().st_size for s in studies for path in s.files) / 1e6
    print(
        f"generated {len(studies)} studies x {options.instances} instances "
        f"({IMAGE_SIZE} x {IMAGE_SIZE} CT), {megabytes:.0f} MB in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return studies


def sender_aet(sender: int) -> str:
    return f"SENDER{sender + 1}"


# --------------------------------------------------------------------------- sending


@dataclasses.dataclass
class Sent:
    """What one study's sending went like (wall clock, ``time.time()``)."""

    started: float = 0.0
    last_response: float = 0.0  # C-STORE response of its last instance
    max_gap: float = 0.0  # longest time between two of its C-STORE responses
    responses: list[float] = dataclasses.field(default_factory=list)  # each C-STORE response
    stored: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


class Sender(threading.Thread):
    """One SCU sending its share of the studies one after another."""

    def __init__(
        self, sender: int, studies: Sequence[Study], port: int, per_study: bool, timeout: float
    ) -> None:
        super().__init__(name=f"bench-{sender_aet(sender)}", daemon=True)
        self.studies = studies
        self.port = port
        self.per_study = per_study
        self.results: dict[str, Sent] = {}
        self.error = ""
        self.associations = 0
        self.ae = AE(ae_title=sender_aet(sender))
        self.ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout

    def _associate(self) -> Association:
        assoc = self.ae.associate(
            "127.0.0.1",
            self.port,
            ae_title=KUVA_AET,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_handler)],
        )
        if not assoc.is_established:
            raise RuntimeError(f"{self.ae.ae_title}: association refused or failed")
        self.associations += 1
        return assoc

    def run(self) -> None:
        assoc: Association | None = None
        try:
            for study in self.studies:
                sent = self.results[study.uid] = Sent(started=time.time())
                if assoc is None or not assoc.is_established:
                    assoc = self._associate()
                previous = sent.started
                for path in study.files:
                    status = assoc.send_c_store(path)
                    now = time.time()
                    sent.max_gap = max(sent.max_gap, now - previous)
                    sent.responses.append(now)
                    previous = now
                    code = getattr(status, "Status", None)
                    if code == 0x0000:
                        sent.stored += 1
                    else:
                        shown = "no response" if code is None else f"0x{int(code):04X}"
                        sent.failures.append(f"{path.name}: {shown}")
                sent.last_response = previous
                if self.per_study:
                    assoc.release()
                    assoc = None
        except Exception as error:  # reported with the results
            self.error = f"{type(error).__name__}: {error}"
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Check:
    """Per study counts of what must be there exactly once."""

    name: str
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DatabaseRun(BaseRun):
    """Everything measured on one database."""

    seconds: float = 0.0
    sent: dict[str, Sent] = dataclasses.field(default_factory=dict)
    sender_errors: list[str] = dataclasses.field(default_factory=list)
    associations: int = 0
    ingest_seconds: float = 0.0
    received: list[ReceivedIan] = dataclasses.field(default_factory=list)
    wait_note: str = ""
    latencies: list[float] = dataclasses.field(default_factory=list)  # s, first IAN of a study
    latency_of: dict[str, float] = dataclasses.field(default_factory=dict)  # by study
    kuva_latencies: list[float] = dataclasses.field(default_factory=list)
    counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    tasks: dict[str, list[Task]] = dataclasses.field(default_factory=dict)
    phase_seconds: float = 0.0
    waits: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    retried: int = 0
    checks: list[Check] = dataclasses.field(default_factory=list)
    wrong_listings: list[str] = dataclasses.field(default_factory=list)
    regrown: list[str] = dataclasses.field(default_factory=list)  # gap > stable_seconds
    backlog: DatabaseRun | None = None
    details: list[str] = dataclasses.field(default_factory=list)  # of duplicated studies

    def studies_with(self, attribute: str) -> set[str]:
        found: set[str] = set()
        for check in self.checks:
            found.update(getattr(check, attribute))
        return found

    @property
    def lost(self) -> set[str]:
        return self.studies_with("missing")

    @property
    def duplicated(self) -> set[str]:
        """More than one of something, but for a study its sender paused on."""
        return self.studies_with("extra") - set(self.regrown)

    @property
    def registered_again(self) -> set[str]:
        """Studies registered twice because their sender paused stable_seconds or more."""
        return self.studies_with("extra") & set(self.regrown)

    @property
    def failed_tasks(self) -> int:
        return sum(n for (kind, status), n in self.counts.items() if status == FAILED)

    @property
    def broken(self) -> bool:
        return bool(self.lost or self.duplicated or self.wrong_listings or self.failed_tasks)


# --------------------------------------------------------------------------- one database


def server_for(
    workdir: Path, url: str, receiver: IanReceiver, options: Options, workers: int
) -> KuvaServer:
    """The kuva server: sender nodes and the IAN node, one organisation."""
    nodes: list[dict[str, object]] = [
        {"ae_title": sender_aet(n), "organization": ORGANIZATION_OID}
        for n in range(options.senders)
    ]
    nodes.append(
        {
            "ae_title": IAN_AET,
            "host": "127.0.0.1",
            "port": receiver.port,
            "organization": ORGANIZATION_OID,
            "ian": True,
        }
    )
    # kuva's own [tasks] defaults (KuvaServer shortens lease and backoff for tests).
    tasks: dict[str, object] = {**TaskSettings().model_dump(), "workers": workers}
    extra: dict[str, dict[str, object]] = {
        "registration": {"enabled": True, "stable_seconds": options.stable_seconds},
        "tasks": tasks,
    }
    return KuvaServer(
        workdir,
        database_url=url,
        nodes=[dict(node) for node in nodes],
        organizations=[{"oid": ORGANIZATION_OID, "name": ORGANIZATION_NAME}],
        extra={name: dict(values) for name, values in extra.items()},
        ae_title=KUVA_AET,
    )


def send_all(studies: Sequence[Study], port: int, options: Options, run: DatabaseRun) -> None:
    shares = [[s for s in studies if s.sender == n] for n in range(options.senders)]
    senders = [
        Sender(n, share, port, options.association == "study", options.dimse_timeout)
        for n, share in enumerate(shares)
    ]
    started = time.time()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for sender in senders:
        run.sent.update(sender.results)
        run.associations += sender.associations
        if sender.error:
            run.sender_errors.append(f"{sender.ae.ae_title}: {sender.error}")
    last = max((sent.last_response for sent in run.sent.values()), default=started)
    run.ingest_seconds = last - started


def wait_for_ians(
    receiver: IanReceiver, engine: Engine, expected: int, options: Options, run: DatabaseRun
) -> None:
    """Until every IAN has arrived, then until no registration/IAN task is left to run."""
    try:
        receiver.wait_for(expected, timeout=options.timeout)
    except TimeoutError as error:
        run.wait_note = f"stopped waiting after {options.timeout:.0f} s: {error}"
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        with UnitOfWork(engine, write=False) as uow:
            counts = uow.tasks.counts()
        busy = sum(
            n
            for (kind, status), n in counts.items()
            if kind in (REGISTRATION_TASK, IAN_TASK) and status in (PENDING, RUNNING)
        )
        if not busy:
            break
        time.sleep(0.5)
    time.sleep(options.stable_seconds + 1.0)  # a late second IAN would come by now


def read_index(
    engine: Engine, studies: Sequence[Study], run: DatabaseRun, options: Options
) -> None:
    """Tasks, manifests and KOS instances per study, from the index."""
    run.regrown = [uid for uid, sent in run.sent.items() if sent.max_gap >= options.stable_seconds]
    manifests: dict[str, int] = {}
    approved: dict[str, int] = {}
    kos: dict[str, int] = {}
    with UnitOfWork(engine, write=False) as uow:
        run.counts = uow.tasks.counts()
        for kind in (REGISTRATION_TASK, IAN_TASK):
            run.tasks[kind] = uow.tasks.list(kind=kind, limit=10 * len(studies) + 100)
        for study in studies:
            holdings = uow.manifests.holdings(study.uid)
            held = holdings.instances if holdings is not None else []
            kos[study.uid] = sum(made_by_kuva(h.sop_instance_uid) for h in held)
            ours = [
                document.unique_id
                for document in uow.documents.of_study(study.uid, DICOM_MIME_TYPE)
                if made_by_kuva(document.unique_id)
            ]
            entries = [
                found
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
            ]
            manifests[study.uid] = len(entries)
            approved[study.uid] = sum(e.status is AvailabilityStatus.APPROVED for e in entries)

    by_study: dict[str, dict[str, list[Task]]] = defaultdict(lambda: defaultdict(list))
    for kind, tasks in run.tasks.items():
        for task in tasks:
            by_study[task.subject][kind].append(task)
    ians: Counter[str] = Counter(ian.study_uid for ian in run.received)

    def check(name: str, count: dict[str, int]) -> Check:
        result = Check(name)
        for study in studies:
            n = count.get(study.uid, 0)
            if n < 1:
                result.missing.append(study.uid)
            elif n > 1:
                result.extra.append(study.uid)
        return result

    def done(kind: str) -> dict[str, int]:
        return {uid: sum(t.status == DONE for t in tasks[kind]) for uid, tasks in by_study.items()}

    def all_tasks(kind: str) -> dict[str, int]:
        return {uid: len(tasks[kind]) for uid, tasks in by_study.items()}

    run.checks = [
        check("IAN received", dict(ians)),
        check("registration task done", done(REGISTRATION_TASK)),
        check("registration tasks", all_tasks(REGISTRATION_TASK)),
        check("IAN task done", done(IAN_TASK)),
        check("IAN tasks", all_tasks(IAN_TASK)),
        check("kuva KOS instance", kos),
        check("manifest DocumentEntry, Approved", approved),
        check("manifest DocumentEntries, any status", manifests),
    ]
    with UnitOfWork(engine, write=False) as uow:
        for uid in sorted(run.studies_with("extra"))[:3]:
            holdings = uow.manifests.holdings(uid)
            run.details.extend(timeline(run, uid, holdings, by_study[uid]))


def timeline(
    run: DatabaseRun,
    uid: str,
    holdings: StudyHoldings | None,
    tasks: dict[str, list[Task]],
) -> list[str]:
    """What happened to a duplicated study, in seconds after its association opened."""
    sent = run.sent.get(uid)
    if sent is None:
        return [f"duplicated: study {uid} (not sent by this run)"]
    zero = sent.started

    def at(instant: float) -> str:
        return f"{instant - zero:+.2f}"

    lines = [f"duplicated: study {uid}, times in s after its association was requested:"]
    lines.append("  C-STORE responses: " + " ".join(at(t) for t in sent.responses))
    if holdings is not None:
        lines.append(
            "  kuva received_at:  "
            + " ".join(
                at(h.received_at.timestamp())
                for h in holdings.instances
                if not made_by_kuva(h.sop_instance_uid)
            )
        )
    for task in sorted((t for kind in tasks.values() for t in kind), key=lambda t: t.pk):
        covered = task.payload.get("last_received_at")
        last = at(dt.datetime.fromisoformat(covered).timestamp()) if covered else ""
        lines.append(
            f"  task {task.pk} {task.kind}: created {at(task.created_at.timestamp())}, "
            f"due {at(task.next_attempt_at.timestamp())}, "
            f"{task.status} {at(task.updated_at.timestamp())}, attempts {task.attempts}"
            + (f", covers instances received up to {last}" if last else "")
        )
    for ian in run.received:
        if ian.study_uid == uid:
            lines.append(f"  IAN received {at(ian.at)}: {len(ian.instances())} instances listed")
    return lines


def analyse(studies: Sequence[Study], run: DatabaseRun, options: Options) -> None:
    """Latencies, listings, task rates and waits from what was recorded."""
    expected = {study.uid: study for study in studies}
    complete: dict[str, float] = {}  # first IAN listing the whole study
    regrown = set(run.regrown)
    for ian in sorted(run.received, key=lambda ian: ian.at):
        study = expected.get(ian.study_uid)
        listed = ian.instances()
        if study is None:
            run.wrong_listings.append(f"IAN of an unknown study {ian.study_uid}")
            continue
        whole = set(listed) == study.sop_uids and set(listed.values()) == {ONLINE}
        if whole:
            complete.setdefault(study.uid, ian.at)
        elif study.uid in regrown and set(listed) < study.sop_uids:
            continue  # registered before its sender's pause: a part is right then
        else:
            run.wrong_listings.append(
                f"study {study.uid}: {len(listed)} listed, "
                f"{len(set(listed) & study.sop_uids)} of the {len(study.sop_uids)} sent, "
                f"availability {sorted(set(listed.values()))}"
            )
    for uid, at in complete.items():
        sent = run.sent.get(uid)
        if sent is not None and sent.last_response:
            run.latency_of[uid] = at - sent.last_response
    run.latencies = list(run.latency_of.values())

    registrations = run.tasks.get(REGISTRATION_TASK, [])
    everything = [t for tasks in run.tasks.values() for t in tasks]
    finished = [t for t in everything if t.status == DONE]
    if registrations and finished:
        begin = min(t.next_attempt_at for t in registrations).timestamp()
        end = max(t.updated_at for t in finished).timestamp()
        run.phase_seconds = max(end - begin, 1e-9)
    for kind, tasks in run.tasks.items():
        # next_attempt_at: when the task fell due (moved later by each instance for a
        # registration); updated_at of a done task: when it was recorded done.
        run.waits[kind] = [
            (t.updated_at - t.next_attempt_at).total_seconds() for t in tasks if t.status == DONE
        ]
    run.retried = sum(t.attempts > 1 for t in everything)


def _workdir(name: str, options: Options, scratch: Path) -> Path:
    if options.keep is None:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    workdir = options.keep / name
    workdir.mkdir(parents=True, exist_ok=False)
    return workdir


def prepare(
    stack: contextlib.ExitStack[bool | None],
    folder: str,
    database: str,
    options: Options,
    scratch: Path,
    workers: int,
) -> tuple[KuvaServer, IanReceiver, Engine]:
    """A kuva server (not started) with ``workers`` task workers in ``folder`` on a
    fresh database, the IAN receiver it sends to and an engine on its index; ``stack``
    closes both and drops the database."""
    workdir = _workdir(folder, options, scratch)
    url = stack.enter_context(scratch_database(database, options.pg_admin_url))
    receiver = IanReceiver(ae_title=IAN_AET)
    stack.callback(receiver.close)
    server = server_for(workdir, url, receiver, options, workers)
    engine = make_engine(load_settings(server.config_path).archive.resolved_database_url())
    stack.callback(engine.dispose)
    return server, receiver, engine


def run_database(
    database: str, studies: Sequence[Study], options: Options, scratch: Path
) -> DatabaseRun:
    run = DatabaseRun(database)
    begun = time.perf_counter()
    with contextlib.ExitStack() as stack:
        server, receiver, engine = prepare(
            stack, f"server-{database}", database, options, scratch, options.workers
        )
        print(f"[{database}] starting kuva ...", flush=True)
        server.start(timeout=options.server_timeout)
        try:
            run.version = database_version(engine)
            run.server_command = SERVER_COMMAND
            print(
                f"[{database}] sending {len(studies)} studies from {options.senders} senders ...",
                flush=True,
            )
            send_all(studies, server.dicom_port, options, run)
            stored = sum(sent.stored for sent in run.sent.values())
            print(
                f"[{database}] {stored} instances stored in {run.ingest_seconds:.1f} s; "
                f"{len(receiver.received)} IANs so far, waiting for the rest ...",
                flush=True,
            )
            wait_for_ians(receiver, engine, len(studies), options, run)
            run.received = list(receiver.received)
        finally:
            server.stop()
        log = server.log()
        for match in KUVA_LATENCY.finditer(log):
            run.kuva_latencies.append(float(match.group(4)))
        run.server_problems = server_problems(log)
        read_index(engine, studies, run, options)
        analyse(studies, run, options)
        run.seconds = time.perf_counter() - begun
    return run


def run_drain(
    database: str, studies: Sequence[Study], options: Options, scratch: Path
) -> DatabaseRun:
    """Worker capacity: the studies are stored with no task worker running, so that
    every registration is due when kuva starts again with ``--workers``; the rate is
    taken from the first task done to the last."""
    run = DatabaseRun(f"{database}, backlog")
    begun = time.perf_counter()
    with contextlib.ExitStack() as stack:
        idle, receiver, engine = prepare(
            stack, f"backlog-{database}", database, options, scratch, 0
        )
        print(f"[{database}] backlog: {len(studies)} studies with no task worker ...", flush=True)
        idle.start(timeout=options.server_timeout)
        try:
            send_all(studies, idle.dicom_port, options, run)
            time.sleep(options.stable_seconds + 1.0)  # every registration due
        finally:
            idle.stop()
        server = server_for(idle.workdir, idle.database_url, receiver, options, options.workers)
        print(f"[{database}] backlog: kuva again with {options.workers} workers ...", flush=True)
        server.start(timeout=options.server_timeout)
        try:
            wait_for_ians(receiver, engine, len(studies), options, run)
            run.received = list(receiver.received)
        finally:
            server.stop()
        run.server_problems = server_problems(server.log())
        read_index(engine, studies, run, options)
        analyse(studies, run, options)
        finished = sorted(
            t.updated_at.timestamp()
            for tasks in run.tasks.values()
            for t in tasks
            if t.status == DONE
        )
        # From the first task done to the last: (n - 1) tasks in that time.
        run.phase_seconds = finished[-1] - finished[0] if len(finished) > 1 else 0.0
        run.seconds = time.perf_counter() - begun
    return run


# --------------------------------------------------------------------------- report


def _seconds(values: Sequence[float], p: int) -> str:
    return f"{percentile(values, p):.2f} s" if values else "-"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def slowest(run: DatabaseRun, count: int) -> list[str]:
    """The studies whose IAN came last after their last instance, and their tasks."""
    tasks: dict[str, list[Task]] = defaultdict(list)
    for task in (t for kind_tasks in run.tasks.values() for t in kind_tasks):
        tasks[task.subject].append(task)
    lines = []
    ranked = sorted(run.latency_of.items(), key=lambda item: item[1], reverse=True)
    for uid, latency in ranked[:count]:
        sent = run.sent[uid]
        steps = []
        for task in sorted(tasks[uid], key=lambda t: t.pk):
            due = task.next_attempt_at.timestamp() - sent.last_response
            done = task.updated_at.timestamp() - sent.last_response
            name = "registration" if task.kind == REGISTRATION_TASK else "IAN"
            steps.append(f"{name} due {due:+.2f} s, done {done:+.2f} s, attempts {task.attempts}")
        lines.append(f"slow: study {uid}: IAN {latency:.2f} s after; " + "; ".join(steps))
    return lines


def _ian_rows(run: DatabaseRun, expected: int) -> list[list[str]]:
    """The rows of the IANs received (``expected`` of them) and of those listing the
    instances sent."""
    return [
        [
            "IANs received",
            str(len(run.received)),
            str(expected),
            _verdict(len(run.received) == expected),
            "IanReceiver",
        ],
        [
            "IANs listing exactly their instances, ONLINE",
            str(len(run.received) - len(run.wrong_listings)),
            str(len(run.received)),
            _verdict(not run.wrong_listings),
            "IanReceiver vs the SOP Instance UIDs sent",
        ],
    ]


def _print_check_studies(run: DatabaseRun) -> None:
    """The first studies each per-study check found none or more than one of."""
    for check in run.checks:
        for uid in check.missing[:3]:
            print(f"  {check.name}: none for study {uid}")
        for uid in check.extra[:3]:
            print(f"  {check.name}: more than one for study {uid}")


def print_report(run: DatabaseRun, studies: Sequence[Study], options: Options) -> None:
    print()
    print(
        f"== {run.title}: {options.studies} studies x {options.instances} instances from "
        f"{options.senders} senders, stable_seconds {options.stable_seconds:g}, "
        f"{options.workers} task workers =="
    )
    if run.note:
        print(run.note)
        return
    n = len(studies)
    target = options.stable_seconds + SLACK_SECONDS
    stored = sum(sent.stored for sent in run.sent.values())
    refused = sum(len(sent.failures) for sent in run.sent.values())
    done = {kind: run.counts.get((kind, DONE), 0) for kind in (REGISTRATION_TASK, IAN_TASK)}
    total_done = sum(done.values())
    other = {
        f"{kind} {status}": count
        for (kind, status), count in sorted(run.counts.items())
        if kind in (REGISTRATION_TASK, IAN_TASK) and status != DONE
    }
    lost, duplicated = run.lost, run.duplicated
    expected = n + len(run.registered_again)  # registrations and IANs
    receiver = "IanReceiver arrival - last C-STORE response"
    tasks_source = "TaskRepository.counts() (kuva tasks list: totals)"
    index_source = "UnitOfWork on the index (see below)"
    rows: list[list[str]] = [
        [
            "instances stored",
            f"{stored} of {n * options.instances}" + (f", {refused} refused" if refused else ""),
            "all",
            _verdict(stored == n * options.instances),
            "C-STORE responses",
        ],
        [
            "ingest",
            f"{n / run.ingest_seconds:.1f} studies/s, "
            f"{stored / run.ingest_seconds:.0f} instances/s ({run.ingest_seconds:.1f} s)",
            "-",
            "-",
            f"first association to last C-STORE response, {run.associations} association(s)",
        ],
        ["last instance -> IAN, p50", _seconds(run.latencies, 50), "-", "-", receiver],
        [
            "last instance -> IAN, p95",
            _seconds(run.latencies, 95),
            f"< {target:g} s",
            _verdict(bool(run.latencies) and percentile(run.latencies, 95) < target),
            receiver,
        ],
        [
            "last instance -> IAN, max",
            f"{max(run.latencies):.2f} s" if run.latencies else "-",
            "-",
            "-",
            receiver,
        ],
        [
            "kuva's own, p50 / p95",
            f"{_seconds(run.kuva_latencies, 50)} / {_seconds(run.kuva_latencies, 95)} "
            f"({len(run.kuva_latencies)} lines)",
            "-",
            "-",
            "kuva log: 'IAN of study ... s after its last instance'",
        ],
        [
            "tasks done",
            f"{done[REGISTRATION_TASK]} registration + {done[IAN_TASK]} IAN",
            f"{expected} + {expected}",
            _verdict(done[REGISTRATION_TASK] == expected and done[IAN_TASK] == expected),
            tasks_source,
        ],
        [
            "tasks not done",
            ", ".join(f"{k}: {v}" for k, v in other.items()) or "none",
            "none",
            _verdict(not other),
            tasks_source,
        ],
        [
            "failed tasks",
            str(run.failed_tasks),
            "0",
            _verdict(run.failed_tasks == 0),
            tasks_source,
        ],
        [
            "tasks retried (attempts > 1)",
            str(run.retried),
            "-",
            "-",
            "TaskRepository.list()",
        ],
        [
            "registration phase",
            f"{total_done / run.phase_seconds:.1f} tasks/s "
            f"({total_done} in {run.phase_seconds:.1f} s)"
            if run.phase_seconds
            else "-",
            "-",
            "-",
            "first registration due -> last task done (task table)",
        ],
        [
            "registration task due -> done, p50 / p95",
            f"{_seconds(run.waits.get(REGISTRATION_TASK, []), 50)} / "
            f"{_seconds(run.waits.get(REGISTRATION_TASK, []), 95)}",
            "-",
            "-",
            "task table: updated_at - next_attempt_at",
        ],
        [
            "IAN task due -> done, p50 / p95",
            f"{_seconds(run.waits.get(IAN_TASK, []), 50)} / "
            f"{_seconds(run.waits.get(IAN_TASK, []), 95)}",
            "-",
            "-",
            "task table: updated_at - next_attempt_at",
        ],
        *_ian_rows(run, expected),
    ]
    for check in run.checks:
        rows.append(
            [
                f"studies with exactly one: {check.name}",
                f"{n - len(check.missing) - len(check.extra)} "
                f"(none: {len(check.missing)}, more: {len(check.extra)})",
                str(n),
                _verdict(not check.missing and not check.extra),
                "IanReceiver" if check.name.startswith("IAN received") else index_source,
            ]
        )
    rows.append(["lost studies", str(len(lost)), "0", _verdict(not lost), "any 'none' above"])
    rows.append(
        [
            "duplicated studies",
            str(len(duplicated))
            + (
                f" (and {len(run.registered_again)} registered again after a pause of "
                f"their sender, as they should be)"
                if run.registered_again
                else ""
            ),
            "0",
            _verdict(not duplicated),
            "any 'more' above",
        ]
    )
    print_rows(["figure", "value", "target", "check", "from"], rows)
    for line in slowest(run, 3):
        print(line)
    for line in run.details:
        print(line)
    if run.regrown:
        print(
            f"note: {len(run.regrown)} studies had {options.stable_seconds:g} s or more between "
            "two of their instances (the sender was that slow): kuva rightly registers such "
            "a study again; not counted as duplicated, an IAN listing part of it not as wrong"
        )
    for error in run.sender_errors:
        print(f"sender error: {error}")
    failures = [f for sent in run.sent.values() for f in sent.failures]
    for failure in failures[:5]:
        print(f"C-STORE failure: {failure}")
    if run.wait_note:
        print(f"note: {run.wait_note}")
    for wrong in run.wrong_listings[:5]:
        print(f"wrong IAN: {wrong}")
    _print_check_studies(run)
    print(f"server: {run.server_command} ({run.seconds:.0f} s for this database)")
    print(
        "index figures: UnitOfWork(engine): tasks.counts(), tasks.list(kind=...), "
        "manifests.holdings(study) (KOS instances: made_by_kuva SOP Instance UIDs), "
        "documents.of_study(study, 'application/dicom') + registry.find_by_unique_ids() "
        "(DocumentEntries); the same totals: python -m kuva tasks list --config <tmp>/kuva.toml"
    )
    print_server_problems(run.server_problems)


def print_backlog(run: DatabaseRun, studies: Sequence[Study], options: Options) -> None:
    """The workers' capacity: a backlog of due registrations worked off."""
    n = len(studies)
    print()
    print(
        f"-- {run.database}: {n} studies stored with [tasks] workers = 0, then kuva "
        f"restarted with {options.workers} workers: every registration due at once --"
    )
    if run.note:
        print(run.note)
        return
    done = sum(run.counts.get((kind, DONE), 0) for kind in (REGISTRATION_TASK, IAN_TASK))
    lost, duplicated = run.lost, run.duplicated
    tasks_source = "TaskRepository.counts() (kuva tasks list: totals)"
    rate = (done - 1) / run.phase_seconds if run.phase_seconds > 0 and done > 1 else 0.0
    rows = [
        [
            "workers' capacity",
            f"{rate:.1f} tasks/s = {rate / 2:.1f} studies/s ({done} tasks in "
            f"{run.phase_seconds:.1f} s)"
            if rate
            else "-",
            "-",
            "-",
            "task table: first task done -> last task done",
        ],
        ["tasks done", str(done), str(2 * n), _verdict(done == 2 * n), tasks_source],
        ["failed tasks", str(run.failed_tasks), "0", _verdict(run.failed_tasks == 0), tasks_source],
        *_ian_rows(run, n),
        ["lost studies", str(len(lost)), "0", _verdict(not lost), "the per-study checks above"],
        [
            "duplicated studies",
            str(len(duplicated)),
            "0",
            _verdict(not duplicated),
            "the per-study checks above",
        ],
    ]
    print_rows(["figure", "value", "target", "check", "from"], rows)
    if run.wait_note:
        print(f"note: {run.wait_note}")
    for error in run.sender_errors:
        print(f"sender error: {error}")
    _print_check_studies(run)
    print_server_problems(run.server_problems)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    studies: int
    instances: int
    senders: int
    databases: tuple[str, ...]
    workers: int
    stable_seconds: float
    association: str
    timeout: float
    dimse_timeout: float
    pg_admin_url: str
    server_timeout: float
    keep: Path | None
    backlog_studies: int


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000, help="studies sent (1000)")
    parser.add_argument("--instances", type=int, default=20, help="instances per study (20)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders (4)")
    add_database_argument(parser)
    parser.add_argument("--workers", type=int, default=2, help="kuva [tasks] workers (2)")
    parser.add_argument(
        "--stable-seconds", type=float, default=1.0, help="[registration] stable_seconds (1)"
    )
    parser.add_argument(
        "--association",
        choices=("study", "sender"),
        default="study",
        help="one association per study (default) or one per sender for all its studies",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="wait for the IANs after sending (600 s)"
    )
    parser.add_argument(
        "--dimse-timeout", type=float, default=120.0, help="senders' DIMSE/ACSE timeout (120 s)"
    )
    add_connection_arguments(parser, kuva_server=True)
    parser.add_argument(
        "--backlog-studies",
        type=int,
        default=200,
        help="studies of the workers' capacity run (200; 0 skips it)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep each server's folder (config, kuva.log, SQLite index) in DIR/server-<db>",
    )
    args = parser.parse_args(argv)
    if args.studies < 1 or args.instances < 1 or args.senders < 1 or args.workers < 1:
        parser.error("--studies, --instances, --senders and --workers must be at least 1")
    return Options(
        studies=args.studies,
        instances=args.instances,
        senders=args.senders,
        databases=chosen_databases(args.database),
        workers=args.workers,
        stable_seconds=args.stable_seconds,
        association=args.association,
        timeout=args.timeout,
        dimse_timeout=args.dimse_timeout,
        pg_admin_url=args.pg_admin_url,
        server_timeout=args.server_timeout,
        keep=args.keep,
        backlog_studies=min(max(args.backlog_studies, 0), args.studies),
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    begun = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kuva-registration-") as tmp:
        scratch = Path(tmp)
        studies = generate_studies(scratch / "studies", options)
        for database in options.databases:
            try:
                run = run_database(database, studies, options, scratch)
            except Exception as error:  # one database failing leaves the other's table
                run = DatabaseRun(database, note=failure_note(error))
            if options.backlog_studies > 0:
                share = studies[: options.backlog_studies]
                try:
                    run.backlog = run_drain(database, share, options, scratch)
                except Exception as error:
                    run.backlog = DatabaseRun(f"{database}, backlog", note=failure_note(error))
            runs.append(run)
    print()
    print_command_and_machine("senders, IAN SCP and kuva on loopback")
    association = (
        "one association per study"
        if options.association == "study"
        else "one association per sender for all its studies"
    )
    tasks = TaskSettings()
    print(
        f"data: {options.studies} studies x {options.instances} CT instances "
        f"({IMAGE_SIZE} x {IMAGE_SIZE}, one patient per study), study k from "
        f"SENDER<k mod {options.senders} + 1>, each sender its studies one after another, "
        f"{association}; IAN to {IAN_AET} (pynetdicom SCP in the benchmark process)"
    )
    print(
        f"kuva: [registration] enabled = true, stable_seconds = {options.stable_seconds:g}; "
        f"[tasks] workers = {options.workers}, poll_seconds = {tasks.poll_seconds:g}, "
        f"lease_seconds = {tasks.lease_seconds:g}, backoff_base_seconds = "
        f"{tasks.backoff_base_seconds:g} (kuva's defaults but workers)"
    )
    for run in runs:
        print_report(run, studies, options)
        if run.backlog is not None:
            print_backlog(run.backlog, studies[: options.backlog_studies], options)
    print(f"\ntotal {time.perf_counter() - begun:.0f} s")
    checked = runs + [run.backlog for run in runs if run.backlog is not None]
    return 1 if any(run.broken or run.note for run in checked) else 0


if __name__ == "__main__":
    sys.exit(main())
