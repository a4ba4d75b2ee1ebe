"""The ``kuva`` command line (docs/contract.md): serve, verify, tasks, db, xds, iocm, patients,
audit, retention."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from kuva.config import Settings, load_settings
from kuva.index.database import SchemaMismatch, make_engine, migrate, prepare_schema
from kuva.index.outbox import STATUSES, Task
from kuva.index.uow import UnitOfWork
from kuva.model.clock import utcnow
from kuva.model.patient import PatientCorrectionError, PatientKey
from kuva.services.access import DisclosureProhibitions
from kuva.services.audit import EVENT_IDS, OUTCOMES, AuditTrail
from kuva.services.operations import Operations
from kuva.services.patients import Corrected, PatientService
from kuva.tasks.worker import purge_done

if TYPE_CHECKING:
    from kuva.index.retention import DestructionRecord
    from kuva.services.retention import RetentionService

app = typer.Typer(no_args_is_help=True, add_completion=False, help="kuva medical image archive")
tasks_app = typer.Typer(no_args_is_help=True, help="The outbox: follow-up work and its state.")
db_app = typer.Typer(no_args_is_help=True, help="The index database.")
xds_app = typer.Typer(no_args_is_help=True, help="XDS.b registry and XDS-I.b manifests.")
iocm_app = typer.Typer(no_args_is_help=True, help="IOCM rejections: corrections of content.")
patients_app = typer.Typer(
    no_args_is_help=True, help="Patient identity corrections: merges and their history."
)
app.add_typer(tasks_app, name="tasks")
app.add_typer(db_app, name="db")
app.add_typer(xds_app, name="xds")
app.add_typer(iocm_app, name="iocm")
app.add_typer(patients_app, name="patients")
audit_app = typer.Typer(
    no_args_is_help=True, help="The audit trail (DICOM PS3.15 A.5, IHE ATNA): list and verify."
)
app.add_typer(audit_app, name="audit")
retention_app = typer.Typer(
    no_args_is_help=True,
    help="Retention: expiry of studies, legal holds, destruction and its records.",
)
app.add_typer(retention_app, name="retention")
cluster_app = typer.Typer(
    no_args_is_help=True, help="The nodes sharing this index (many nodes, one PostgreSQL)."
)
app.add_typer(cluster_app, name="cluster")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: embedded default)"),
]
console = Console()
T = TypeVar("T")


def _index(settings: Settings) -> Engine:
    """The index of ``settings`` on this kuva's schema (dispose it after):
    index.database.prepare_schema; a mismatch is reported and exits 2."""
    engine = make_engine(settings.archive.resolved_database_url())
    try:
        prepare_schema(engine)
    except SchemaMismatch as exc:
        engine.dispose()
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    return engine


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Exception as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run every listener of the archive and its workers until SIGTERM/SIGINT."""
    _logging(log_level)
    settings = _settings(config)
    from kuva.app import serve as run

    try:
        run(settings)
    except SchemaMismatch as exc:
        logging.getLogger("kuva").error("not started: %s", exc)
        raise typer.Exit(2) from None


@app.command("dicom-worker", hidden=True)
def dicom_worker(
    parent: Annotated[int, typer.Option(help="the main process's pid")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """A DICOM worker process of ``kuva serve`` (kuva.dicom.workers): its settings come
    as JSON on standard input. Not for use by hand."""
    _logging(log_level)
    from kuva.config import Settings
    from kuva.dicom.workers import run_worker

    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    run_worker(settings, parent)


@app.command()
def verify(
    config: ConfigOption = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="check this many instances picked at random")
    ] = None,
    study: Annotated[str | None, typer.Option(help="check one study (Study Instance UID)")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="restore bad copies from the good copy (replica)")
    ] = False,
) -> None:
    """Read stored blobs back and compare each with the SHA-256 and size the index
    recorded: missing, corrupt and (checking everything) orphaned blobs.

    Each problem is printed with the copy (primary / replica), the SOP Instance UID
    and study (or the XDS document) and the blob key. Exit 0 when all is good, 1
    when a problem remains (with --repair: one that could not be repaired) or the
    study is unknown, 2 for bad arguments. Safe to run while ``kuva serve`` runs.
    """

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from kuva.app import build_audit, build_blob_store
    from kuva.index.integrity import IndexedBlob
    from kuva.services.integrity import Finding, IntegrityService, Problem, Selection

    settings = _settings(config)
    if sample is not None and study is not None:
        console.print("[red]--sample and --study exclude each other[/red]")
        raise typer.Exit(2)
    engine = _index(settings)
    blobs = build_blob_store(settings)
    service = IntegrityService(engine, blobs)
    service.on_problem = build_audit(settings, engine).integrity_finding
    if repair and not service.replicated:
        console.print("[red]--repair needs a replica ([archive] replica_url)[/red]")
        raise typer.Exit(2)
    selection = Selection(sample=sample, study_uid=study)
    copies = len(blobs.copies())
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[objects]} objects"),
        TimeRemainingColumn(),
        console=console,
    )

    def show(finding: Finding) -> None:
        repaired = " [green]repaired[/green]" if finding.repaired else ""
        progress.console.print(
            f"[red]{finding.kind.value.upper()}[/red] {finding.copy} "
            f"{escape(finding.subject())} {finding.key}: {escape(finding.detail)}{repaired}",
            soft_wrap=True,  # one line per problem, for grep
        )

    try:
        plan = service.plan(selection)
        if study is not None and not plan.objects:
            console.print(f"[red]the index holds no study {escape(study)}[/red]")
            raise typer.Exit(1)
        checked_objects = expected_bytes = 0
        with progress:
            task = progress.add_task(
                "verifying", total=plan.bytes * copies, objects=f"0/{plan.objects}"
            )

            def checked(blob: IndexedBlob, findings: list[Finding]) -> None:
                nonlocal checked_objects, expected_bytes
                checked_objects += 1
                expected_bytes += blob.size * copies  # also when a copy could not be read
                progress.update(
                    task, completed=expected_bytes, objects=f"{checked_objects}/{plan.objects}"
                )
                for finding in findings:
                    show(finding)

            summary = service.verify(
                plan,
                repair=repair,
                on_read=lambda n: progress.advance(task, n),
                on_checked=checked,
            )
            if selection.everything:
                progress.update(task, description="orphans")
                for finding in service.orphans():
                    summary.add([finding])
                    show(finding)
    finally:
        blobs.close()
        engine.dispose()
    table = Table(title="verify", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("objects checked", str(summary.objects))
    table.add_row("copies of each", str(copies))
    table.add_row("bytes read", f"{summary.bytes:,}")
    for problem in Problem:
        if problem is not Problem.ORPHANED or selection.everything:
            table.add_row(problem.value, str(summary.problems[problem]))
    if repair:
        table.add_row("repaired", str(summary.repaired))
    console.print(table)
    if summary.unrepaired:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Bring the index schema to this kuva's migration. On SQLite serve does this at
    start; on PostgreSQL (many nodes) run it once, from one node (docs/deployment.md)."""
    settings = _settings(config)
    engine = make_engine(settings.archive.resolved_database_url())
    try:
        migrate(engine)
    finally:
        engine.dispose()
    console.print("index schema is up to date")


def _age(then: datetime, now: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _peer(task: Task) -> str:
    """The node a task delivers to (an IAN's node, a commitment report's requester;
    from the payload for a task older than its ``destination``)."""
    return str(
        task.destination or task.payload.get("node") or task.payload.get("requester_ae") or ""
    )


def _attempts(task: Task) -> str:
    """Attempts made, out of how many, or until when for a task retried until a time."""
    if task.retry_until is None:
        return f"{task.attempts}/{task.max_attempts}"
    return f"{task.attempts}, until {task.retry_until.isoformat(timespec='minutes')}"


@tasks_app.command("list")
def tasks_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="/".join(STATUSES))] = None,
    failed: Annotated[bool, typer.Option("--failed", help="only failed tasks")] = False,
    kind: Annotated[str | None, typer.Option(help="task kind")] = None,
    subject: Annotated[str | None, typer.Option(help="study / transaction UID")] = None,
    node: Annotated[str | None, typer.Option(help="only tasks delivering to this AE title")] = None,
    limit: int = 100,
    plain: Annotated[bool, typer.Option("--plain", help="tab-separated, for scripts")] = False,
) -> None:
    """Show tasks: kind, subject (study / transaction UID), the node they deliver to,
    status, attempts, age, next attempt, last error, and the node (``node/pid``) that
    runs or last ran it; then totals by kind and status.

    ``--plain``: tab-separated id, kind, subject, status, attempts, created, next
    attempt, last error, node delivered to, node/pid that ran it.
    """
    settings = _settings(config)
    if failed:
        status = "failed"
    if status is not None and status not in STATUSES:
        console.print(f"[red]unknown status {status}[/red]")
        raise typer.Exit(2)
    engine = _index(settings)
    with UnitOfWork(engine, write=False) as uow:
        rows = uow.tasks.list(
            status=status, kind=kind, subject=subject, destination=node, limit=limit
        )
        counts = uow.tasks.counts()
    now = utcnow()
    if plain:
        for t in rows:
            print(
                "\t".join(
                    (
                        str(t.pk),
                        t.kind,
                        t.subject,
                        t.status,
                        str(t.attempts),
                        t.created_at.isoformat(timespec="seconds"),
                        t.next_attempt_at.isoformat(timespec="seconds"),
                        (t.last_error or "").replace("\t", " ").replace("\n", " "),
                        _peer(t),
                        t.run_by or "",
                    )
                )
            )
        return
    table = Table(title="tasks")
    columns = (
        "id",
        "kind",
        "subject",
        "to",
        "status",
        "attempts",
        "age",
        "next",
        "last error",
        "run by",
    )
    for column in columns:
        table.add_column(column)
    for t in rows:
        table.add_row(
            str(t.pk),
            t.kind,
            t.subject,
            _peer(t),
            t.status,
            _attempts(t),
            _age(t.created_at, now),
            t.next_attempt_at.isoformat(timespec="seconds") if t.status == "pending" else "",
            (t.last_error or "")[:80],
            t.run_by or "",
        )
    console.print(table)
    summary = ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(counts.items())) or "none"
    console.print(f"totals: {summary}")


@tasks_app.command("retry")
def tasks_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="task ids (default: all failed)")] = None,
    config: ConfigOption = None,
    kind: Annotated[str | None, typer.Option(help="only failed tasks of this kind")] = None,
    node: Annotated[
        str | None,
        typer.Option(
            help="every undelivered task to this AE title, also those waiting out a backoff"
        ),
    ] = None,
) -> None:
    """Make failed tasks due again now (attempts start over; an IAN is tried for
    another [registration] ian_retry_hours). ``--node AE`` after a node's outage:
    everything undelivered to it (IANs, storage commitment reports) is due now."""
    settings = _settings(config)
    engine = _index(settings)
    try:
        count = Operations(engine, settings).retry(pks=ids or None, node=node, kind=kind)
    finally:
        engine.dispose()
    console.print(f"{count} task(s) scheduled again" + (f" to {node}" if node else ""))
    if ids and count < len(ids):
        console.print("[yellow]some ids were not failed tasks and were left alone[/yellow]")


@tasks_app.command("purge")
def tasks_purge(
    config: ConfigOption = None,
    older_than_days: Annotated[
        float | None,
        typer.Option(
            min=0, help="done at least this many days ago (default: [tasks] keep_done_days)"
        ),
    ] = None,
) -> None:
    """Delete done tasks; serve does it hourly for those older than keep_done_days.

    Pending, running and failed tasks are never deleted. ``--older-than-days 0``
    deletes every done task.
    """
    settings = _settings(config)
    days = settings.tasks.keep_done_days if older_than_days is None else older_than_days
    if older_than_days is None and days == 0:
        console.print("[tasks] keep_done_days = 0 keeps done tasks; nothing deleted")
        return
    engine = _index(settings)
    try:
        count = purge_done(engine, utcnow() - timedelta(days=days))
    finally:
        engine.dispose()
    console.print(f"{count} done task(s) deleted")


@xds_app.command("publish")
def xds_publish(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    config: ConfigOption = None,
) -> None:
    """Publish a study's XDS-I.b manifest: store it and register its DocumentEntry.

    Prints the DocumentEntry's entryUUID. An earlier manifest of the study that
    kuva published is replaced (RPLC). Safe to run while ``kuva serve`` runs.
    """
    _logging("WARNING")
    settings = _settings(config)
    from kuva.app import build_blob_store, build_xds
    from kuva.index.group_commit import GroupCommitter
    from kuva.services.imaging_document_source import UnknownStudy
    from kuva.services.ingest import IngestService
    from kuva.services.manifest_metadata import ManifestPublishError
    from kuva.services.retrieve import RetrieveService

    engine = _index(settings)
    blobs = build_blob_store(settings)
    committer = GroupCommitter(engine)
    try:
        ingest = IngestService(blobs, committer)
        xds = build_xds(
            settings,
            engine,
            blobs,
            ingest,
            RetrieveService(engine, blobs, corrections=settings.archive.apply_corrections),
        )
        published = xds.manifests.publish_manifest(study_uid)
    except (UnknownStudy, ManifestPublishError) as exc:
        console.print(f"[red]not published:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        committer.close()
        blobs.close()
        engine.dispose()
    print(published.entry_uuid)


@iocm_app.command("revoke")
def iocm_revoke(
    note_uid: Annotated[str, typer.Argument(help="SOP Instance UID of the rejection note")],
    config: ConfigOption = None,
    by: Annotated[str, typer.Option(help="who revokes it, for the history")] = "operator",
) -> None:
    """Undo a rejection note: the instances it rejected are current again, their
    studies registered again. The note stays stored; both steps stay in the history."""
    settings = _settings(config)
    from functools import partial

    from kuva.services.iocm import RejectionService
    from kuva.services.registration import register_again

    engine = _index(settings)
    service = RejectionService(engine)
    if settings.registration.enabled:
        service.on_changed = partial(register_again, settings)
    try:
        count = service.revoke(note_uid, by=by)
    finally:
        engine.dispose()
    if not count:
        console.print(f"[yellow]rejection note {escape(note_uid)} rejects nothing[/yellow]")
        raise typer.Exit(1)
    console.print(f"{count} instance(s) current again")


PatientArgument = Annotated[
    str, typer.Argument(help="patient as ID^^^ISSUER, or ID with --issuer", show_default=False)
]
IssuerOption = Annotated[
    str, typer.Option(help="Issuer of Patient ID (assigning authority OID) of an ID given alone")
]
ByOption = Annotated[str, typer.Option(help="who corrects, for the history")]


def _patient_key(text: str, issuer: str) -> PatientKey:
    try:
        return PatientKey.parse(text, issuer)
    except ValueError as exc:
        console.print(f"[red]patient {escape(text)}:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _patient_service(settings: Settings) -> tuple[Engine, PatientService]:
    """The patient service as ``kuva serve`` runs it: corrected studies are
    registered again when registration is on."""
    from functools import partial

    from kuva.app import build_audit
    from kuva.services.registration import register_again

    engine = _index(settings)
    # Audited like HL7 corrections; ``kuva serve`` sends the records to the repository.
    service = PatientService(engine, audit=build_audit(settings, engine))
    # A merge moves studies to the survivor: their expiry follows its dates.
    _, retention = _retention(settings, engine)
    service.on_retention = retention.studies_changed
    if settings.registration.enabled:
        service.on_changed = partial(register_again, settings)
    return engine, service


def _correct(settings: Settings, refused: str, change: Callable[[PatientService], T]) -> T:
    """Run ``change`` on the patient service; a refused correction prints why and
    exits 1."""
    engine, service = _patient_service(settings)
    try:
        return change(service)
    except PatientCorrectionError as exc:
        console.print(f"[red]{refused}:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


def _studies_moved(settings: Settings, corrected: Corrected) -> str:
    count = len(corrected.studies)
    again = ", registered again" if count and settings.registration.enabled else ""
    return f"{count} stud{'y' if count == 1 else 'ies'} moved{again}"


@patients_app.command("merge")
def patients_merge(
    source: PatientArgument,
    target: PatientArgument,
    config: ConfigOption = None,
    issuer: IssuerOption = "",
    by: ByOption = "operator",
) -> None:
    """Merge patient SOURCE into TARGET, which survives (as HL7 ADT^A40).

    SOURCE's studies belong to TARGET from now on (registered again when
    registration is on); ``unmerge`` undoes it. Both patients must be known.
    Prints no names.
    """
    settings = _settings(config)
    merged, survivor = _patient_key(source, issuer), _patient_key(target, issuer)
    corrected = _correct(
        settings, "not merged", lambda service: service.merge(merged, survivor, by=by)
    )
    if not corrected.changed:
        console.print(f"{escape(str(merged))} is merged into {escape(str(survivor))} already")
        return
    console.print(
        f"merged {escape(str(merged))} into {escape(str(survivor))}: "
        + _studies_moved(settings, corrected)
    )


@patients_app.command("unmerge")
def patients_unmerge(
    source: PatientArgument,
    config: ConfigOption = None,
    issuer: IssuerOption = "",
    by: ByOption = "operator",
) -> None:
    """Undo the merge of patient SOURCE into another (as HL7 ADT^A37).

    The studies received for SOURCE belong to it again (registered again when
    registration is on). Prints no names.
    """
    settings = _settings(config)
    merged = _patient_key(source, issuer)
    former, corrected = _correct(
        settings, "not unmerged", lambda service: service.unmerge(merged, by=by)
    )
    console.print(
        f"{escape(str(merged))} is no longer merged into {escape(str(former))}: "
        + _studies_moved(settings, corrected)
    )


def _prohibitions(settings: Settings) -> tuple[Engine, DisclosureProhibitions]:
    from kuva.app import build_audit

    engine = _index(settings)
    audit = build_audit(settings, engine)
    return engine, DisclosureProhibitions(engine, audit=audit)


@patients_app.command("prohibit")
def patients_prohibit(
    patient: PatientArgument,
    reason: Annotated[str, typer.Option("--reason", help="why, as the patient gave it")] = "",
    config: ConfigOption = None,
    issuer: IssuerOption = "",
    by: ByOption = "operator",
) -> None:
    """Set PATIENT's disclosure prohibition: their material is read only by the
    organisations that archived it, whatever the access rules that honour a
    prohibition allow. Audited. Prints no names."""
    settings = _settings(config)
    key = _patient_key(patient, issuer)
    engine, prohibitions = _prohibitions(settings)
    try:
        changed = prohibitions.prohibit(key, by=by, reason=reason)
    finally:
        engine.dispose()
    state = "set" if changed else "was already in force"
    console.print(f"disclosure prohibition of {escape(str(key))} {state}")


@patients_app.command("permit")
def patients_permit(
    patient: PatientArgument,
    config: ConfigOption = None,
    issuer: IssuerOption = "",
    by: ByOption = "operator",
) -> None:
    """Lift PATIENT's disclosure prohibition. Audited. Exit 1 when there was none."""
    settings = _settings(config)
    key = _patient_key(patient, issuer)
    engine, prohibitions = _prohibitions(settings)
    try:
        changed = prohibitions.permit(key, by=by)
    finally:
        engine.dispose()
    if not changed:
        console.print(f"{escape(str(key))} has no disclosure prohibition")
        raise typer.Exit(1)
    console.print(f"disclosure prohibition of {escape(str(key))} lifted")


@patients_app.command("show")
def patients_show(
    patient: PatientArgument,
    config: ConfigOption = None,
    issuer: IssuerOption = "",
) -> None:
    """Show a patient: its current identity, merges, studies and corrections.

    Whom it is merged into, the surviving identity (with name, birth date and sex),
    the patients merged into it, its studies (with the patient each was received
    for) and the correction history of all these identities.
    """
    settings = _settings(config)
    key = _patient_key(patient, issuer)
    engine, service = _patient_service(settings)
    try:
        view = service.show(key)
    finally:
        engine.dispose()
    if view is None:
        console.print(f"[red]no patient {escape(str(key))}[/red]")
        raise typer.Exit(1)
    current = view.current
    for row, into in zip(view.chain, view.chain[1:], strict=False):
        console.print(f"{escape(str(row.key))} is merged into {escape(str(into.key))}")
    console.print(
        f"current identity: {escape(str(current.key))}  name {escape(current.name or '-')}  "
        f"born {escape(current.birth_date or '-')}  sex {escape(current.sex or '-')}"
    )
    if view.merged:
        merged = ", ".join(str(row.key) for row in view.merged)
        console.print(f"merged into it: {escape(merged)}")
    studies = Table(title=f"studies ({len(view.studies)})")
    studies.add_column("Study Instance UID", overflow="fold")
    for column in ("date", "accession", "modalities", "instances"):
        studies.add_column(column)
    studies.add_column("received for", overflow="fold")
    for study in view.studies:
        studies.add_row(
            study.study_instance_uid,
            study.study_date,
            escape(study.accession_number),
            study.modalities.replace("\\", "/"),
            str(study.instances),
            "" if study.received_for == current.key else escape(str(study.received_for)),
        )
    console.print(studies)
    history = Table(title="corrections")
    for column in ("applied", "kind", "subject", "detail", "by"):
        history.add_column(column, overflow="fold")
    for entry in view.history:
        history.add_row(
            entry.applied_at.isoformat(timespec="seconds"),
            entry.kind,
            escape(entry.subject),
            escape(", ".join(f"{k} {v}" for k, v in sorted(entry.detail.items()))),
            escape(entry.source),
        )
    console.print(history)


def _audit_trail(settings: Settings) -> tuple[Engine, AuditTrail]:
    from kuva.app import build_audit

    engine = _index(settings)
    return engine, build_audit(settings, engine)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Walk the whole hash chain of the local audit trail.

    Exit 0 when it is intact; 1 with a table of every record altered (its hash
    does not match its fields), deleted (a gap in the sequence) or inserted (a
    record that does not follow the one before it).
    """
    settings = _settings(config)
    engine, trail = _audit_trail(settings)
    try:
        count, breaks = trail.verify()
    finally:
        engine.dispose()
    if not breaks:
        console.print(f"audit trail intact: {count} record(s)")
        return
    table = Table(title="audit trail broken")
    for column in ("record", "kind", "detail"):
        table.add_column(column, overflow="fold")
    for found in breaks:
        where = str(found.seq)
        if found.last is not None and found.last != found.seq:
            where = f"{found.seq}-{found.last}"
        table.add_row(where, found.kind, escape(found.detail))
    console.print(table)
    console.print(f"[red]{len(breaks)} break(s) in {count} record(s)[/red]")
    raise typer.Exit(1)


def _since(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError as exc:
        console.print(f"[red]--since {escape(text)}: not an ISO 8601 date or time[/red]")
        raise typer.Exit(2) from exc
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


@audit_app.command("list")
def audit_list(
    config: ConfigOption = None,
    since: Annotated[
        str | None, typer.Option(help="recorded at or after (ISO 8601; UTC unless given)")
    ] = None,
    event: Annotated[
        str | None, typer.Option(help="EventID code or meaning, e.g. 110110 or 'Patient Record'")
    ] = None,
    limit: int = 100,
    xml: Annotated[bool, typer.Option("--xml", help="print each message's XML")] = False,
) -> None:
    """Show audit records, newest first: sequence, time (UTC), event, outcome."""
    settings = _settings(config)
    event_id = None
    if event is not None:
        by_meaning = {code.meaning.lower(): code.code for code in EVENT_IDS.values()}
        event_id = by_meaning.get(event.strip().lower(), event.strip())
    engine, trail = _audit_trail(settings)
    try:
        records = trail.list(since=_since(since) if since else None, event_id=event_id, limit=limit)
    finally:
        engine.dispose()
    if xml:
        for record in records:
            print(record.message)
        return
    table = Table(title="audit records")
    for column in ("seq", "recorded (UTC)", "event", "outcome"):
        table.add_column(column)
    for record in records:
        table.add_row(
            str(record.seq),
            record.recorded_at.isoformat(timespec="seconds"),
            f"{record.event_id} {EVENT_IDS[record.event_id].meaning}"
            if record.event_id in EVENT_IDS
            else record.event_id,
            OUTCOMES.get(record.outcome, str(record.outcome)),
        )
    console.print(table)


@audit_app.command("disclosures")
def audit_disclosures(
    patient: Annotated[
        str, typer.Option("--patient", help="the patient as ID^^^&OID&ISO (or ID^^^OID)")
    ],
    config: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--from", help="disclosed at or after (RFC 3339 date or time; UTC unless given)"
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--to", help="disclosed before this time, or up to the end of this date"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 1000,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON, for scripts")] = False,
) -> None:
    """The disclosure log of a patient, newest first: kuva's own disclosures (ITI-43,
    RAD-69) and those register holders reported (notices, ATNA Export messages),
    including those kept under identities merged into the patient."""
    import json

    from kuva.services.notices import NoticeService
    from kuva.web.disclosures import disclosure_json, parse_instant

    key = _patient_key(patient, "")
    try:
        start = parse_instant("--from", since)
        end = parse_instant("--to", until, end=True)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    settings = _settings(config)
    engine = _index(settings)
    try:
        page = NoticeService(engine).disclosures(
            key, start=start, end=end, limit=limit, offset=offset
        )
    finally:
        engine.dispose()
    if as_json:
        print(
            json.dumps(
                {
                    "patient": {"id": key.patient_id, "issuer": key.issuer},
                    "identities": [{"id": i, "issuer": a} for i, a in page.identities],
                    "disclosures": [disclosure_json(record) for record in page.records],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    table = Table(title=f"disclosures of {escape(str(key))}")
    for column in (
        "when (UTC)",
        "recipient",
        "register holder",
        "study / document",
        "interface",
        "source",
        "basis",
    ):
        table.add_column(column, overflow="fold")
    for record in page.records:
        recipient = record.recipient_organization or "(unknown)"
        if record.recipient_person:
            recipient += f" ({record.recipient_person})"
        interface = record.interface + (f" / {record.channel}" if record.channel else "")
        table.add_row(
            record.disclosed_at.isoformat(timespec="seconds"),
            escape(recipient),
            escape(record.register_holder),
            escape(record.study_instance_uid or record.document_unique_id),
            escape(interface),
            record.source,
            escape(record.basis),
        )
    console.print(table)
    merged = [f"{i}^^^{a}" if a else i for i, a in page.identities[1:]]
    if merged:
        console.print(f"including identities merged into it: {escape(', '.join(merged))}")
    console.print(f"{len(page.records)} record(s)")


def _retention(settings: Settings, engine: Engine | None = None) -> tuple[Engine, RetentionService]:
    """The retention service as ``kuva serve`` runs it (audited; IANs of destroyed
    studies queued for serve's workers when registration is on)."""
    from kuva.app import build_audit, build_blob_store
    from kuva.services.retention import RetentionService

    if engine is None:
        engine = _index(settings)
    service = RetentionService(
        engine, build_blob_store(settings), settings, audit=build_audit(settings, engine)
    )
    return engine, service


def _retention_action(config: Path | None, action: Callable[[RetentionService], T]) -> T:
    """``action`` on the retention service; a RetentionError is printed, exit 1."""
    from kuva.services.retention import RetentionError

    engine, service = _retention(_settings(config))
    try:
        return action(service)
    except RetentionError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


def _hold_subject(study: str | None, patient: str | None) -> tuple[str | None, PatientKey | None]:
    if (study is None) == (patient is None):
        console.print("[red]give one of --study and --patient[/red]")
        raise typer.Exit(2)
    return study, _patient_key(patient, "") if patient is not None else None


@retention_app.command("recompute")
def retention_recompute(config: ConfigOption = None) -> None:
    """Compute every study's expiry again under the retention policies configured
    now (after they changed)."""
    settings = _settings(config)
    engine, service = _retention(settings)
    try:
        count = service.recompute_all()
    finally:
        engine.dispose()
    console.print(f"expiry of {count} stud{'y' if count == 1 else 'ies'} computed")


@retention_app.command("hold")
def retention_hold(
    reason: Annotated[str, typer.Option(help="why the data must be kept (for the record)")],
    config: ConfigOption = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID")] = None,
    patient: Annotated[
        str | None, typer.Option(help="patient as ID^^^&OID&ISO (every study of it)")
    ] = None,
    by: Annotated[str, typer.Option(help="who places the hold")] = "operator",
) -> None:
    """Place a legal hold: the study, or every study of the patient, is never
    destroyed while it is in force, whatever its expiry."""
    study_uid, key = _hold_subject(study, patient)
    if not reason.strip():
        console.print("[red]--reason must not be empty[/red]")
        raise typer.Exit(2)
    pk = _retention_action(
        config, lambda service: service.hold(study_uid=study_uid, patient=key, reason=reason, by=by)
    )
    console.print(f"legal hold {pk} placed")


@retention_app.command("release")
def retention_release(
    config: ConfigOption = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID")] = None,
    patient: Annotated[str | None, typer.Option(help="patient as ID^^^&OID&ISO")] = None,
    by: Annotated[str, typer.Option(help="who releases the hold")] = "operator",
) -> None:
    """Release the legal holds on a study or a patient. Exit 1 when there was none."""
    study_uid, key = _hold_subject(study, patient)
    count = _retention_action(
        config, lambda service: service.release(study_uid=study_uid, patient=key, by=by)
    )
    if not count:
        console.print("[yellow]no legal hold to release[/yellow]")
        raise typer.Exit(1)
    console.print(f"{count} legal hold(s) released")


@retention_app.command("holds")
def retention_holds(config: ConfigOption = None) -> None:
    """The legal holds in force (a patient by its identifier, never its name)."""
    settings = _settings(config)
    engine, service = _retention(settings)
    try:
        holds = service.holds()
    finally:
        engine.dispose()
    table = Table(title="legal holds")
    for column in ("id", "study / patient", "reason", "by", "since (UTC)"):
        table.add_column(column, overflow="fold")
    for hold in holds:
        subject = hold.study_instance_uid or str(
            PatientKey(hold.patient_id or "", hold.patient_issuer or "")
        )
        table.add_row(
            str(hold.pk),
            escape(subject),
            escape(hold.reason),
            escape(hold.held_by),
            hold.held_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@cluster_app.command("status")
def cluster_status(
    config: ConfigOption = None,
    plain: Annotated[bool, typer.Option("--plain", help="tab-separated, for scripts")] = False,
) -> None:
    """The nodes of this index: name, state (live, or gone after three missed
    heartbeats), version, process, started, last heartbeat, what each runs.

    ``--plain``: tab-separated name, state, version, pid, started, heartbeat, duties.
    Exits 1 when a node listed is gone.
    """
    settings = _settings(config)
    engine = _index(settings)
    try:
        with UnitOfWork(engine, write=False) as uow:
            nodes = uow.cluster.nodes()
    finally:
        engine.dispose()
    now = utcnow()
    rows = [
        (
            node.name,
            "live" if node.alive(now) else "gone",
            node.version,
            str(node.pid),
            node.started_at.isoformat(timespec="seconds"),
            f"{(now - node.heartbeat_at).total_seconds():.1f} s ago",
            ",".join(node.duties),
        )
        for node in nodes
    ]
    if plain:
        for row in rows:
            print("\t".join(row))
    else:
        table = Table(title=f"cluster: {len(nodes)} node(s)")
        for column in ("node", "state", "version", "pid", "started (UTC)", "heartbeat", "runs"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    if any(row[1] == "gone" for row in rows):
        raise typer.Exit(1)


@retention_app.command("run")
def retention_run(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what has expired, destroy nothing")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many studies")] = None,
    by: Annotated[str, typer.Option(help="who destroys, for the record")] = "operator",
    reason: Annotated[str, typer.Option(help="for the record")] = "retention period ended",
) -> None:
    """List the studies whose retention has expired (no legal hold keeps them) and
    destroy them: every blob copy, their index rows, their manifests (Deprecated
    in the registry), with an IAN (UNAVAILABLE), an audit event and a destruction
    record each. A destruction an earlier run left unfinished is finished first."""
    settings = _settings(config)
    engine, service = _retention(settings)
    try:
        report = service.run(by=by, dry_run=dry_run, limit=limit, reason=reason)
    finally:
        engine.dispose()
    destroyed = {d.study_instance_uid: d for d in report.destroyed}
    table = Table(title="expired studies" + (" (dry run: nothing destroyed)" if dry_run else ""))
    for column in ("study", "register holder", "policy", "expiry", "outcome"):
        table.add_column(column, overflow="fold")
    for study in report.expired:
        done = destroyed.get(study.study_instance_uid)
        outcome = (
            "kept (dry run)"
            if dry_run
            else f"destroyed ({done.instances} instances)"
            if done is not None
            else "failed"
            if study.study_instance_uid in report.failed
            else "skipped (held or destroyed meanwhile)"
        )
        table.add_row(
            study.study_instance_uid,
            study.organization_oid,
            escape(study.policy),
            study.expires_on.isoformat(),
            outcome,
        )
    console.print(table)
    if report.resumed:
        console.print(f"{report.resumed} interrupted destruction(s) finished")
    for uid in report.failed:
        console.print(
            f"[red]destruction of {uid} failed (see the log); the next run resumes it[/red]"
        )
    console.print(
        f"{len(report.expired)} expired, {len(report.destroyed)} destroyed"
        + (" (dry run)" if dry_run else "")
    )
    if report.failed:
        raise typer.Exit(1)


@retention_app.command("allow-resend")
def retention_allow_resend(
    study_uid: Annotated[str, typer.Argument(metavar="STUDY_UID", help="Study Instance UID")],
    config: ConfigOption = None,
    by: Annotated[str, typer.Option(help="who allows it")] = "operator",
    reason: Annotated[str, typer.Option(help="why (for the record)")] = "",
) -> None:
    """Let the instances of a destroyed study be archived again: until then they are
    refused (what was destroyed stays destroyed). Audited. Exit 1 when no destruction
    of the study bars a resend."""
    count = _retention_action(
        config, lambda service: service.allow_resend(study_uid, by=by, reason=reason)
    )
    console.print(f"resend of {study_uid} allowed ({count} destruction record(s))")


def _resend_allowed(record: DestructionRecord) -> str:
    if record.resend_allowed_at is None:
        return ""
    return f"{record.resend_allowed_at.isoformat(timespec='seconds')} by {record.resend_allowed_by}"


@retention_app.command("list-destroyed")
def retention_list_destroyed(
    config: ConfigOption = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID")] = None,
    since: Annotated[
        str | None, typer.Option(help="destroyed at or after (ISO 8601 date or time; UTC)")
    ] = None,
    limit: int = 100,
    hashes: Annotated[
        bool, typer.Option("--hashes", help="print each record's SHA-256 list")
    ] = False,
    plain: Annotated[bool, typer.Option("--plain", help="tab-separated, for scripts")] = False,
) -> None:
    """Destruction records, newest first: what was destroyed, under which policy or
    rejection note, when and by whom (a patient by its identifier, never its name),
    and whether an operator allowed the study to be archived again."""
    settings = _settings(config)
    engine, service = _retention(settings)
    try:
        records = service.destroyed(
            study_uid=study, since=_since(since) if since else None, limit=limit
        )
        lists = {r.pk: service.sha256_list(r.pk) for r in records} if hashes else {}
    finally:
        engine.dispose()
    if hashes:
        for record in records:
            print(f"# record {record.pk} study {record.study_instance_uid}")
            print(lists[record.pk])
        return
    rows = [
        [
            str(record.pk),
            record.study_instance_uid,
            record.organization_oid,
            str(PatientKey(record.patient_id, record.patient_issuer)),
            record.policy,
            record.expires_on.isoformat() if record.expires_on else "",
            str(record.instances),
            record.sha256_digest,
            record.destroyed_at.isoformat(timespec="seconds") if record.destroyed_at else "",
            record.destroyed_by,
            record.reason,
            _resend_allowed(record),
        ]
        for record in records
    ]
    if plain:
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title="destruction records")
    columns = (
        "id", "study", "register holder", "patient", "policy", "expiry", "instances",
        "sha256 digest", "destroyed (UTC)", "by", "reason", "resend allowed (UTC)",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        row[7] = row[7][:16] + "…"  # the digest in full with --plain
        table.add_row(*map(escape, row))
    console.print(table)


# The directory's commands live in their own module, which uses the helpers above.
from kuva.cli_directory import nodes_app, onboarding_app, orgs_app  # noqa: E402

app.add_typer(orgs_app, name="orgs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(onboarding_app, name="onboarding")


def main() -> None:
    global console
    # Sized for the terminal (or COLUMNS) of this run, not of whatever imported the
    # module first.
    console = Console()
    app()
