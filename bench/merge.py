"""Patient correction benchmark: HL7 ADT^A40 merge and ADT^A08 update latency over MLLP.

Usage::

    .venv/bin/python bench/merge.py [--sizes 10,1000,100000] [--updates U] [--merges M]
                                    [--database sqlite|postgresql|both] [--quick] [--registration]

For each database (SQLite in a temporary folder; PostgreSQL at 127.0.0.1:5432 in a
fresh ``kuva_bench_<random>`` database, dropped at the end):

1. Prefill: for each size S (instances per patient; 10, 1,000 and 100,000 by
   default, ``--quick`` 10, 100 and 1,000) 1 + M patients of S instances each - the
   one that survives and the M (1) merged into it, one after the other - plus a
   warm-up pair of one instance each. Shape of a patient: studies of up to 1,000
   instances, a study of 100 or more instances in 4 series, a smaller one in 1, so
   10 = 1 study x 1 series x 10, 1,000 = 1 study x 4 series x 250 and
   100,000 = 100 studies x 4 series x 250 (a patient with years of CT studies).
   Patient IDs are Finnish test identity codes (individual number 900-999),
   issuer 1.2.246.21. The rows are written in one ``kuva.index.bulk.bulk_add``
   call (it fills an empty index only): the patient, study, series and instance
   rows ``InstanceRepository.add`` writes, many rows per statement, with blob keys
   that point nowhere (no pixel data is sent). Then ``kuva.index.bulk.analyze``
   (SQLite ``ANALYZE``, PostgreSQL ``VACUUM (ANALYZE)``).
2. A real ``kuva serve`` (tests.support.server.KuvaServer) is started on that index.
3. One MLLP connection (raw socket, TCP_NODELAY; a message is VT + message + FS CR,
   each sent after the previous ACK came back). Warm-up: 5 ADT^A08 and one
   ADT^A40 for the warm-up pair. Then for each size, smallest first:

   * U ADT^A08 (20; a new PID-5 name, PID-7 birth date, PID-8 sex each time) for
     the surviving patient, each timed from sending the frame to receiving its
     whole ACK; p50 and max;
   * one ADT^A40 (PID-3 the survivor, MRG-1 the other) per merged patient, timed
     the same way (with M > 1: p50 and max; each moves S instances, the survivor
     grows). With M = 1 the merge figure is a single sample, so a few ms of commit
     (fsync) jitter can move the "vs smallest" ratio; ``--merges`` (5 by default) steadies it.

   Every ACK must be MSA-1 AA with MSA-2 the message's control id.
4. Check (not timed into the figures): a study-level C-FIND (pynetdicom, Study
   Root) for the survivor's Patient ID must answer exactly the studies of all the
   group's patients with their instance counts and the last A08 name; one for each
   merged patient's ID must answer nothing.

Target (per database): merge (p50) and update p50 below 200 ms at the largest size,
and flat: the largest size's merge and update p50 within 2x of the smallest size's.
Every size is compared with the smallest in the table ("vs smallest"). Nothing is
written to the repository. The exit status is 1 when an ACK or a C-FIND answer was
wrong, 0 otherwise (a missed target is a FAIL in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # tests.support (and kuva when not installed)

from bench.shared import (  # noqa: E402
    PID3,
    SERVER_COMMAND,
    MllpClient,
    PrefilledRun,
    acknowledged,
    add_connection_arguments,
    add_database_argument,
    adt,
    analyze_prefilled,
    chosen_databases,
    pid,
    print_command_and_machine,
    print_rows,
    print_run_notes,
    run_each,
    scratch_database,
    server_problems,
)
from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # noqa: E402
from rich.progress import Progress  # noqa: E402
from tests.support.peers import set_nodelay_handler  # noqa: E402
from tests.support.server import KuvaServer  # noqa: E402
from tests.support.synthetic import FINNISH_PIC_ISSUER, finnish_test_pic  # noqa: E402

from kuva.bench_support import CT_IMAGE_STORAGE, EXPLICIT_VR_LE  # noqa: E402
from kuva.bench_support import ROOT as BENCH_ROOT  # noqa: E402
from kuva.config import LOCAL_ORGANIZATION_OID, load_settings  # noqa: E402
from kuva.index.bulk import bulk_add  # noqa: E402
from kuva.index.database import make_engine, migrate  # noqa: E402
from kuva.index.instances import NewInstance  # noqa: E402
from kuva.index.schema import instance, patient, series, study  # noqa: E402
from kuva.model.instance import (  # noqa: E402
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.storage import blob_key  # noqa: E402

TARGET_MS = 200.0
FLAT_RATIO = 2.0
SIZES = (10, 1_000, 100_000)
QUICK_SIZES = (10, 100, 1_000)
UPDATES = 20
WARMUP_UPDATES = 5
PER_STUDY_MAX = 1_000  # instances in a study at most
SERIES_PER_LARGE_STUDY = 4  # a study of 100 instances or more
CALLING_AET = "BENCH"
ROOT = f"{BENCH_ROOT}.8"  # the merge benchmark's arc under the bench arc
FIRST_STUDY = dt.datetime(2015, 1, 5, 8, 0, tzinfo=dt.UTC)
STUDY_INTERVAL = dt.timedelta(days=30)
PENDING = (0xFF00, 0xFF01)

# --------------------------------------------------------------------------- synthetic data


@dataclasses.dataclass(frozen=True)
class Shape:
    studies: int
    series_per_study: int
    instances_per_series: int

    def __str__(self) -> str:
        return f"{self.studies} x {self.series_per_study} x {self.instances_per_series}"


def shape(size: int) -> Shape:
    """How ``size`` instances of one patient are laid out (studies x series x instances)."""
    per_study = min(size, PER_STUDY_MAX)
    if size % per_study:
        raise ValueError(f"{size} instances: not a whole number of {per_study}-instance studies")
    series_count = SERIES_PER_LARGE_STUDY if per_study >= 100 else 1
    if per_study % series_count:
        series_count = 1
    return Shape(size // per_study, series_count, per_study // series_count)


@dataclasses.dataclass(frozen=True)
class Patient:
    """One synthetic patient: number ``n`` (for its UIDs), its ID and its studies."""

    n: int
    patient_id: str
    name: str
    size: int

    @property
    def shape(self) -> Shape:
        return shape(self.size)

    def study_uid(self, s: int) -> str:
        return f"{ROOT}.1.{self.n}.{s}"

    @property
    def study_uids(self) -> list[str]:
        return [self.study_uid(s) for s in range(self.shape.studies)]

    def instances(self) -> Iterator[NewInstance]:
        form = self.shape
        for s in range(form.studies):
            when = FIRST_STUDY + STUDY_INTERVAL * s + dt.timedelta(minutes=self.n)
            study_attributes = StudyAttributes(
                study_instance_uid=self.study_uid(s),
                study_date=when.strftime("%Y%m%d"),
                study_time=when.strftime("%H%M%S"),
                accession_number=f"M{self.n:03d}{s:05d}",
                study_id=str(s + 1),
                description="TT vartalo",
            )
            patient_attributes = PatientAttributes(
                patient_id=self.patient_id,
                issuer=FINNISH_PIC_ISSUER,
                name=self.name,
                birth_date=birth_date(self.patient_id),
                sex="O",
            )
            for se in range(form.series_per_study):
                series_attributes = SeriesAttributes(
                    series_instance_uid=f"{ROOT}.2.{self.n}.{s}.{se}",
                    modality="CT",
                    series_number=se + 1,
                    description="Vartalo",
                )
                for i in range(form.instances_per_series):
                    uid = f"{ROOT}.3.{self.n}.{s}.{se}.{i}"
                    digest = hashlib.sha256(uid.encode()).hexdigest()
                    yield NewInstance(
                        attributes=InstanceAttributes(
                            sop_class_uid=CT_IMAGE_STORAGE,
                            sop_instance_uid=uid,
                            transfer_syntax_uid=EXPLICIT_VR_LE,
                            patient=patient_attributes,
                            study=study_attributes,
                            series=series_attributes,
                            instance_number=i + 1,
                            rows=512,
                            columns=512,
                            dataset_json="{}",
                        ),
                        blob_key=blob_key(digest),
                        size=525_000,
                        sha256=digest,
                        received_at=when,
                        source_ae="BENCH",
                        organization_oid=LOCAL_ORGANIZATION_OID,
                    )


def birth_date(patient_id: str) -> str:
    """YYYYMMDD of a Finnish identity code of the 1900s (century sign ``-``)."""
    return f"19{patient_id[4:6]}{patient_id[2:4]}{patient_id[0:2]}"


@dataclasses.dataclass(frozen=True)
class Group:
    """The patient that survives and the patients merged into it, one by one."""

    size: int
    target: Patient
    sources: tuple[Patient, ...]

    @property
    def people(self) -> tuple[Patient, ...]:
        return (self.target, *self.sources)


def make_groups(sizes: Sequence[int], merges: int) -> tuple[Group, list[Group]]:
    """The warm-up pair (one instance each) and a group of 1 + ``merges`` patients
    per size."""
    groups = []
    n = 0
    for k, size in enumerate((1, *sizes)):
        people = []
        for role in range(1 + (merges if k else 1)):
            code = finnish_test_pic(dt.date(1950 + k, 1 + role, 1 + k), 900 + n)
            people.append(Patient(n, code, f"Testinen^Potilas{n}", size))
            n += 1
        groups.append(Group(size, people[0], tuple(people[1:])))
    return groups[0], groups[1:]


def all_instances(groups: Sequence[Group]) -> Iterator[NewInstance]:
    for group in groups:
        for person in group.people:
            yield from person.instances()


# --------------------------------------------------------------------------- HL7 messages


def update_message(patient_id: str, control: str, k: int) -> tuple[bytes, str]:
    """An ADT^A08 with a new name, birth date and sex; the message and the name."""
    name = f"Korjattu^Potilas{k}"
    birth = f"1960{1 + k % 12:02d}{1 + k % 28:02d}"
    segment = pid(patient_id, name, birth, "FMO"[k % 3])
    return adt("A08", control, segment, structure="ADT_A01"), name


def merge_message(target: str, source: str, control: str) -> bytes:
    segments = (pid(target, "", "", ""), f"MRG|{PID3.format(source)}")
    return adt("A40", control, *segments, structure="ADT_A39")


# --------------------------------------------------------------------------- C-FIND check


def cfind_studies(port: int, ae_title: str, patient_id: str) -> list[Dataset]:
    """Study-level C-FIND (Study Root) by Patient ID; the pending answers."""
    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_handler)],
    )
    if not assoc.is_established:
        raise RuntimeError("C-FIND: association refused or failed")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.IssuerOfPatientID = ""
    query.PatientName = ""
    query.StudyInstanceUID = ""
    query.add_new(0x00201208, "IS", None)  # NumberOfStudyRelatedInstances
    answers: list[Dataset] = []
    try:
        for status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise RuntimeError("C-FIND: no response (association aborted or timed out)")
            if status.Status in PENDING and answer is not None:
                answers.append(answer)
            elif status.Status != 0x0000:
                raise RuntimeError(f"C-FIND final status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return answers


def check_merge(server: KuvaServer, group: Group, name: str) -> tuple[str, str]:
    """C-FIND after the merges: (a one-line summary, "" or what is wrong)."""
    answers = cfind_studies(server.dicom_port, server.ae_title, group.target.patient_id)
    gone = [
        answer
        for source in group.sources
        for answer in cfind_studies(server.dicom_port, server.ae_title, source.patient_id)
    ]
    expected = sorted(uid for person in group.people for uid in person.study_uids)
    total = group.size * len(group.people)
    got = sorted(str(a.get("StudyInstanceUID", "")) for a in answers)
    instances = sum(int(a.get("NumberOfStudyRelatedInstances") or 0) for a in answers)
    names = {str(a.get("PatientName", "")) for a in answers}
    problems = []
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        problems.append(
            f"studies {len(got)} != {len(expected)} (missing {missing[:2]}, extra {extra[:2]})"
        )
    if instances != total:
        problems.append(f"instances {instances} != {total}")
    if names != {name}:
        problems.append(f"PatientName {sorted(names)} != {name}")
    if gone:
        problems.append(f"{len(gone)} studies still answer under the merged ID")
    summary = (
        f"{len(got)}/{len(expected)} studies, {instances}/{total} instances "
        f"under the survivor, {len(gone)} under the merged ID"
    )
    return summary, "; ".join(problems)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class SizeRow:
    size: int
    shape: Shape
    merge_ms: list[float] = dataclasses.field(default_factory=list)
    update_ms: list[float] = dataclasses.field(default_factory=list)
    check: str = ""
    wrong: list[str] = dataclasses.field(default_factory=list)

    @property
    def merge_p50(self) -> float:
        return statistics.median(self.merge_ms) if self.merge_ms else float("nan")

    @property
    def merge_max(self) -> float:
        return max(self.merge_ms) if self.merge_ms else float("nan")

    @property
    def update_p50(self) -> float:
        return statistics.median(self.update_ms) if self.update_ms else float("nan")

    @property
    def update_max(self) -> float:
        return max(self.update_ms) if self.update_ms else float("nan")


@dataclasses.dataclass
class DatabaseRun(PrefilledRun):
    warmup_ms: list[float] = dataclasses.field(default_factory=list)
    rows: list[SizeRow] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)


def expected_counts(groups: Sequence[Group]) -> dict[str, int]:
    people = [p for group in groups for p in group.people]
    return {
        "patient": len(people),
        "study": sum(p.shape.studies for p in people),
        "series": sum(p.shape.studies * p.shape.series_per_study for p in people),
        "instance": sum(p.size for p in people),
    }


# --------------------------------------------------------------------------- one database


def run_database(database: str, options: Options) -> DatabaseRun:
    result = DatabaseRun(database)
    warmup, groups = make_groups(options.sizes, options.merges)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kuva-merge-")))
        url = stack.enter_context(scratch_database(database, options.pg_admin_url))
        extra = (
            {"registration": {"enabled": True}, "tasks": {"workers": 0}}
            if options.registration
            else {}
        )
        server = KuvaServer(workdir, database_url=url, extra=extra)
        engine = make_engine(load_settings(server.config_path).archive.resolved_database_url())
        stack.callback(engine.dispose)
        migrate(engine)
        wanted = expected_counts([warmup, *groups])
        print(f"[{database}] prefilling {wanted['instance']} instances ...", flush=True)
        started = time.perf_counter()
        with Progress() as progress:
            bar = progress.add_task(f"[{database}] bulk_add", total=wanted["instance"])
            bulk_add(
                engine,
                all_instances([warmup, *groups]),
                progress=lambda done: progress.update(bar, advance=done),
            )
        result.prefill_s = time.perf_counter() - started
        sqlite_file = None if url else server.data_dir / "index.sqlite"
        analyze_prefilled(result, engine, (patient, study, series, instance), sqlite_file)
        if result.counts != wanted:
            result.wrong.append(f"prefill rows {result.counts}, expected {wanted}")
        print(
            f"[{database}] prefill {result.prefill_s:.1f} s, ANALYZE {result.analyze_s:.1f} s, "
            f"rows {result.counts}, {result.size_mb:.0f} MB",
            flush=True,
        )

        server.start(timeout=options.server_timeout)
        stack.callback(server.stop)
        result.server_command = SERVER_COMMAND
        client = MllpClient(server.hl7_port)
        stack.callback(client.close)

        def send(message: bytes, control: str) -> float:
            ack, ms = client.send(message)
            if problem := acknowledged(ack, control):
                result.wrong.append(f"{control}: {problem}")
            return ms

        # Warm-up: the first messages pay for connections, statement caches and imports.
        for k in range(WARMUP_UPDATES):
            control = f"WARMUP-A08-{k}-{uuid.uuid4().hex[:8]}"
            message, _ = update_message(warmup.target.patient_id, control, k)
            result.warmup_ms.append(send(message, control))
        control = f"WARMUP-A40-{uuid.uuid4().hex[:8]}"
        (spare,) = warmup.sources
        message = merge_message(warmup.target.patient_id, spare.patient_id, control)
        result.warmup_ms.append(send(message, control))

        for group in groups:
            print(f"[{database}] {group.size} instances per patient ...", flush=True)
            row = SizeRow(group.size, group.target.shape)
            result.rows.append(row)
            name = ""
            for k in range(options.updates):
                control = f"A08-{group.size}-{k}-{uuid.uuid4().hex[:8]}"
                message, name = update_message(group.target.patient_id, control, k)
                row.update_ms.append(send(message, control))
            for source in group.sources:
                control = f"A40-{group.size}-{uuid.uuid4().hex[:8]}"
                message = merge_message(group.target.patient_id, source.patient_id, control)
                row.merge_ms.append(send(message, control))
            try:
                row.check, problem = check_merge(server, group, name)
            except Exception as error:  # a broken C-FIND is a wrong answer, not a crash
                row.check, problem = "C-FIND failed", f"{type(error).__name__}: {error}"
            if problem:
                row.wrong.append(problem)

        result.server_problems = server_problems(server.log(), expected=("no [[nodes]]",))
    return result


# --------------------------------------------------------------------------- report


def verdict(row: SizeRow, base: SizeRow, largest: bool) -> tuple[str, str]:
    """("x merge ratio / x update ratio", PASS/FAIL) of ``row`` against the target."""
    merge_ratio = row.merge_p50 / base.merge_p50
    update_ratio = row.update_p50 / base.update_p50
    ratios = f"{merge_ratio:.2f} / {update_ratio:.2f}"
    if row is base:
        return "1 / 1", "baseline"
    misses = []
    if merge_ratio > FLAT_RATIO:
        misses.append(f"merge > {FLAT_RATIO:g}x")
    if update_ratio > FLAT_RATIO:
        misses.append(f"update > {FLAT_RATIO:g}x")
    if largest and row.merge_p50 >= TARGET_MS:
        misses.append(f"merge >= {TARGET_MS:.0f} ms")
    if largest and row.update_p50 >= TARGET_MS:
        misses.append(f"update p50 >= {TARGET_MS:.0f} ms")
    return ratios, ("FAIL: " + ", ".join(misses)) if misses else "PASS"


def print_report(run: DatabaseRun, options: Options) -> None:
    print()
    print(f"== {run.title}: HL7 ADT^A40 merge and ADT^A08 update over MLLP ==")
    if options.registration:
        print("registration on: each correction schedules its studies' registration")
    if run.note and not run.rows:
        print(run.note)
        return
    print(
        f"prefill (bulk_add): {run.prefill_s:.1f} s, ANALYZE/VACUUM {run.analyze_s:.1f} s; "
        f"rows: {run.counts_text}; database {run.size_mb:.0f} MB"
    )
    if run.warmup_ms:
        print(
            "warm-up (not counted): "
            + ", ".join(f"{ms:.1f}" for ms in run.warmup_ms)
            + f" ms ({WARMUP_UPDATES} A08, 1 A40)"
        )
    many = options.merges > 1
    header = [
        "instances/patient",
        "studies x series x instances",
        *([f"merge p50 ms (n={options.merges})", "merge max ms"] if many else ["merge ms"]),
        f"update p50 ms (n={options.updates})",
        "update max ms",
        "vs smallest (merge / update p50)",
        "C-FIND after merge",
        "target",
    ]
    rows: list[list[str]] = []
    base = run.rows[0] if run.rows else None
    for row in run.rows:
        assert base is not None
        ratios, check = verdict(row, base, largest=row is run.rows[-1])
        rows.append(
            [
                f"{row.size:,}",
                str(row.shape),
                *(
                    [f"{row.merge_p50:.1f}", f"{row.merge_max:.1f}"]
                    if many
                    else [f"{row.merge_p50:.1f}"]
                ),
                f"{row.update_p50:.1f}",
                f"{row.update_max:.1f}",
                ratios,
                ("WRONG: " if row.wrong else "ok: ") + row.check,
                check,
            ]
        )
    print_rows(header, rows)
    if base is not None and len(run.rows) > 1:
        largest = run.rows[-1]
        _, check = verdict(largest, base, largest=True)
        print(
            f"target: merge and update p50 < {TARGET_MS:.0f} ms at {largest.size:,} instances, "
            f"within {FLAT_RATIO:g}x of {base.size:,}: {check}"
        )
    for row in run.rows:
        for wrong in row.wrong:
            print(f"  wrong answer ({row.size:,} instances): {wrong}")
    for wrong in run.wrong[:5]:
        print(f"  wrong: {wrong}")
    print_run_notes(run)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...]
    databases: tuple[str, ...]
    updates: int
    merges: int
    pg_admin_url: str
    server_timeout: float
    registration: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        help="instances per patient, comma-separated (10,1000,100000; --quick 10,100,1000)",
    )
    add_database_argument(parser)
    parser.add_argument("--updates", type=int, default=UPDATES, help=f"A08 per size ({UPDATES})")
    parser.add_argument(
        "--merges",
        type=int,
        default=5,
        help="patients merged into the survivor per size, each an A40 timed; the figure "
        "is their p50 (5: one sample is too noisy for the 2x check)",
    )
    add_connection_arguments(parser, kuva_server=True)
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    parser.add_argument(
        "--registration",
        action="store_true",
        help="[registration] enabled, as in production: each correction also schedules its "
        "studies' registration in its transaction (task workers off, so only that is timed)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = (
            tuple(int(part.replace("_", "")) for part in args.sizes.split(","))
            if args.sizes
            else (QUICK_SIZES if args.quick else SIZES)
        )
        for size in sizes:
            if size < 1:
                raise ValueError(f"{size}: at least 1")
            shape(size)
    except ValueError as error:
        parser.error(f"--sizes: {error}")
    if len(set(sizes)) != len(sizes) or list(sizes) != sorted(sizes):
        parser.error("--sizes: distinct, smallest first")
    if args.updates < 1 or args.merges < 1:
        parser.error("--updates and --merges must be at least 1")
    if 2 + len(sizes) * (1 + args.merges) > 100:  # individual numbers 900-999
        parser.error("--sizes x (1 + --merges): at most 98 patients")
    return Options(
        sizes=sizes,
        databases=chosen_databases(args.database),
        updates=args.updates,
        merges=args.merges,
        pg_admin_url=args.pg_admin_url,
        server_timeout=args.server_timeout,
        registration=args.registration,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    begun = time.perf_counter()
    runs = run_each(
        options.databases, lambda database: run_database(database, options), DatabaseRun
    )
    print()
    print_command_and_machine("client and server on loopback")
    shapes = "; ".join(f"{size:,} = {shape(size)}" for size in options.sizes)
    print(
        f"data: per size a survivor and {options.merges} patient(s) merged into it, "
        f"each of that many instances "
        f"({shapes}; studies x series x instances), plus a warm-up pair of 1 instance; "
        f"Finnish test identity codes, issuer {FINNISH_PIC_ISSUER}; times are from sending "
        f"the MLLP frame to receiving the whole ACK (MSA-1 AA), one connection"
    )
    for run in runs:
        print_report(run, options)
    print(f"\ntotal {time.perf_counter() - begun:.0f} s")
    wrong = any(run.wrong or any(row.wrong for row in run.rows) for run in runs)
    failed = any(run.note.startswith("failed") for run in runs)
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
