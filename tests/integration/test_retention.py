"""Retention against a running kuva: studies stored with dcmtk's storescu, a death
date sent as HL7 ADT^A08 PID-29 with python-hl7's mllp_send, ``kuva retention run``
(``--dry-run`` first) as an operator runs it, C-FIND with findscu and ``kuva verify``
afterwards; and the scheduled run of ``kuva serve``."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from kuva.dicom.status import STUDY_DESTROYED
from kuva.index import schema
from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from tests.integration.test_stow import failed, read_files, web
from tests.integration.test_stow import first as first_value
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, msa, pid
from tests.support.peers import LOOPBACK, dcmtk_available, dcmtk_env, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, write_series

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

# 2 years after death when it is known, else 5 years after the study.
POLICY = {
    "name": "images",
    "periods": [{"after": "death", "years": 2}, {"after": "study_date", "years": 5}],
}
OLD = dt.datetime(2001, 2, 3, 10, 0)


def store(server: KuvaServer, tmp: Path, patient_id: str, n: int = 3) -> str:
    study_uid = generate_uid()
    datasets = make_ct_series(
        n, rows=16, cols=16, patient_id=patient_id, study_uid=study_uid, study_datetime=OLD
    )
    result = storescu(write_series(datasets, tmp / study_uid), LOOPBACK, server.dicom_port,
                      aec="KUVA")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return study_uid


def find_studies(server: KuvaServer, tmp: Path) -> set[str]:
    """Every study C-FIND (findscu, study root) finds."""
    out = tmp / f"find-{time.monotonic_ns()}"
    out.mkdir()
    command = [
        "findscu", "-S", "-X", "-od", str(out), "-aec", "KUVA", LOOPBACK,
        str(server.dicom_port), "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return {str(pydicom.dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm")}


def table_counts(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in schema.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def expiry(database_url: str, study_uid: str) -> tuple[dt.date | None, str | None] | None:
    engine = make_engine(database_url)
    try:
        with UnitOfWork(engine, write=False) as uow:
            return uow.retention.expiry_of(study_uid)
    finally:
        engine.dispose()


def tasks(database_url: str, *statuses: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                select(func.count())
                .select_from(schema.task)
                .where(schema.task.c.status.in_(statuses))
            ).scalar_one()
    finally:
        engine.dispose()
    return int(found)


def idle(database_url: str) -> bool:
    """No task pending or running (registrations done)."""
    return tasks(database_url, "pending", "running") == 0


def failed_tasks(database_url: str) -> int:
    return tasks(database_url, "failed")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def blob_files(server: KuvaServer) -> list[Path]:
    return sorted(p for p in (server.blob_dir / "sha256").rglob("*") if p.is_file())


def test_retention_run_destroys_what_expired_and_keeps_what_a_death_date_moved(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(
        extra={
            "retention": {"policies": [POLICY], "run_every_hours": 0},
            "registration": {"enabled": True, "stable_seconds": 0},
        }
    )
    site = Hl7Site(server, database_url, tmp_path)
    expired = store(server, tmp_path, SURVIVOR)
    kept = store(server, tmp_path, MERGED)
    assert expiry(database_url, expired) == (dt.date(2006, 2, 3), "images")
    assert expiry(database_url, kept) == (dt.date(2006, 2, 3), "images")
    # the manifests are registered before retention runs
    wait_until(
        lambda: (
            idle(database_url)
            and all(
                f"study {uid} registered (3 instances)" in server.log() for uid in (expired, kept)
            )
        )
    )

    # ADT^A08 with PID-29: the second patient died on 1 June 2026: kept until 2028.
    death = pid(MERGED) + "|" * 21 + "20260601083000"
    code, _ = msa(site.mllp_send(adt("A08", death)))
    assert code == "AA"
    assert expiry(database_url, kept) == (dt.date(2028, 6, 1), "images")
    wait_until(lambda: idle(database_url))  # PID-5 differs: registered again

    # a legal hold on the patient keeps the study; released, it is due again
    patient = f"{SURVIVOR}^^^&1.2.246.21&ISO"
    held = server.kuva("retention", "hold", "--patient", patient, "--reason", "court case")
    assert "legal hold 1 placed" in held.stdout, held.stdout + held.stderr
    assert "0 expired" in server.kuva("retention", "run", "--dry-run").stdout
    released = server.kuva("retention", "release", "--patient", patient)
    assert "1 legal hold(s) released" in released.stdout

    before = (table_counts(database_url), blob_files(server))
    dry = server.kuva("retention", "run", "--dry-run")
    assert expired in dry.stdout and kept not in dry.stdout, dry.stdout
    assert "1 expired, 0 destroyed (dry run)" in dry.stdout
    assert "Testinen" not in dry.stdout  # never a patient's name
    now = table_counts(database_url)
    assert {k: (v, now[k]) for k, v in before[0].items() if now[k] != v} == {}
    assert blob_files(server) == before[1]
    assert find_studies(server, tmp_path) == {expired, kept}

    run = server.kuva("retention", "run", "--by", "archivist")
    assert "1 expired, 1 destroyed" in run.stdout, run.stdout
    assert find_studies(server, tmp_path) == {kept}
    after = table_counts(database_url)
    assert after["study"] == 1 and after["destruction"] == 1 and after["patient"] == 1
    # 3 images and the study's manifests went; every object left has its one blob
    assert after["instance"] <= before[0]["instance"] - 4
    assert len(blob_files(server)) == after["instance"]

    verify = server.kuva("verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = server.kuva("retention", "list-destroyed", "--plain", "--study", expired)
    assert expired in listed.stdout and "archivist" in listed.stdout, listed.stdout
    since = server.kuva("retention", "list-destroyed", "--plain", "--since", "2999-01-01")
    assert expired not in since.stdout
    audit = server.kuva("audit", "list", "--event", "110105").stdout
    assert "110105" in audit, audit
    # nothing left waiting that would fail: the destroyed study's tasks end as done
    wait_until(lambda: idle(database_url))
    assert failed_tasks(database_url) == 0
    assert server.stop() == 0


def test_serve_runs_retention_on_its_schedule(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    # every 1.8 s (the first run as soon)
    server = kuva_server(extra={"retention": {"policies": [POLICY], "run_every_hours": 0.0005}})
    store(server, tmp_path, SURVIVOR, n=1)  # one object: no run sees half a study
    wait_until(lambda: table_counts(database_url)["destruction"] == 1)
    wait_until(lambda: table_counts(database_url)["study"] == 0)
    assert find_studies(server, tmp_path) == set()
    assert blob_files(server) == []
    assert server.stop() == 0


def test_a_destroyed_study_sent_again_is_refused_until_an_operator_allows_it(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(extra={"retention": {"policies": [POLICY], "run_every_hours": 0}})
    study_uid = generate_uid()
    datasets = make_ct_series(
        2, rows=16, cols=16, patient_id=SURVIVOR, study_uid=study_uid, study_datetime=OLD
    )
    paths = write_series(datasets, tmp_path / "sent")
    first = storescu(paths, LOOPBACK, server.dicom_port, aec="KUVA")
    assert first.returncode == 0, first.stdout + first.stderr
    run = server.kuva("retention", "run", "--by", "archivist")
    assert "1 expired, 1 destroyed" in run.stdout, run.stdout

    # sent again, over C-STORE and STOW-RS: refused, the destruction named, nothing kept
    before = (table_counts(database_url), blob_files(server))
    today = dt.datetime.now(dt.UTC).date().isoformat()
    comment = f"study destroyed {today} (retention); needs allow-resend"
    again = storescu(paths, LOOPBACK, server.dicom_port, aec="KUVA", extra_args=["-d"])
    output = again.stdout + again.stderr
    assert again.returncode != 0
    assert f"0x{STUDY_DESTROYED:04x}" in output.lower() and comment in output, output
    with pytest.raises(requests.HTTPError) as caught:
        web(server).store_instances(read_files(paths[:1]))
    assert caught.value.response is not None and caught.value.response.status_code == 409
    [item] = failed(caught.value.response.json())
    assert (first_value(item, "00081197"), first_value(item, "00000902")) == (
        STUDY_DESTROYED,
        comment,
    )
    after = {k: v for k, v in table_counts(database_url).items() if k != "audit_record"}
    assert after == {k: v for k, v in before[0].items() if k != "audit_record"}  # audited
    assert blob_files(server) == before[1]
    assert find_studies(server, tmp_path) == set()

    # an operator allows it (audited): the study is archived as new
    allowed = server.kuva(
        "retention", "allow-resend", study_uid, "--by", "archivist", "--reason", "court order"
    )
    assert f"resend of {study_uid} allowed (1 destruction record(s))" in allowed.stdout
    alert = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert 'csd-code="110135"' in alert and study_uid in alert, alert
    assert 'UserID="archivist"' in alert and base64.b64encode(b"court order")[:8].decode() in alert
    listed = server.kuva("retention", "list-destroyed", "--plain", "--study", study_uid).stdout
    assert listed.rstrip("\n").split("\t")[-1].endswith(" by archivist"), listed
    resent = storescu(paths, LOOPBACK, server.dicom_port, aec="KUVA")
    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert find_studies(server, tmp_path) == {study_uid}
    # nothing left to allow
    twice = server.kuva("retention", "allow-resend", study_uid, check=False)
    assert twice.returncode == 1, twice.stdout
