"""C-GET and C-MOVE (PS3.4 C.4.2, C.4.3) against a running kuva.

Objects are stored with dcmtk's storescu and retrieved with dcmtk's getscu and
movescu (into dcmtk storescp and Orthanc) and with pynetdicom SCUs. What comes
back must be the data set that was sent in, byte for byte, whenever the peer
accepts the stored transfer syntax; otherwise it is converted with the pixel
values unchanged, or counted as a failed sub-operation when it cannot be.
"""

from __future__ import annotations

import io
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support.archive import dataset_bytes, index_rows
from tests.support.memory import PeakRss
from tests.support.peers import (
    LOOPBACK,
    Orthanc,
    StoreSCP,
    dcmtk_available,
    dcmtk_env,
    orthanc_available,
    storescu,
    storescu_propose_args,
)
from tests.support.pki import CertificateAuthority, make_mutual_tls_pki
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    make_ct_series,
    make_multiframe,
    make_transfer_syntax_files,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

SENDER = "MODALITY1"
GETSCU = "GETSCU"
MOVESCU = "MOVESCU"
PYSCU = "PYSCU"
DESTINATION = "STORESCP"

PENDING = 0xFF00
CANCEL = 0xFE00
WARNING = 0xB000
ALL_FAILED = 0xA702
DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_MISMATCH = 0xA900


def node(ae_title: str, port: int = 1) -> dict[str, Any]:
    return {"ae_title": ae_title, "host": LOOPBACK, "port": port, "organization": ""}


def start(
    kuva_server: Callable[..., KuvaServer], destination_port: int | None = None, **extra: Any
) -> KuvaServer:
    nodes = [node(SENDER), node(GETSCU), node(MOVESCU), node(PYSCU)]
    if destination_port is not None:
        nodes.append(node(DESTINATION, destination_port))
    return kuva_server(nodes=nodes, **extra)


def store(server: KuvaServer, files: list[Path], *options: str) -> None:
    result = storescu(
        files, LOOPBACK, server.dicom_port, aet=SENDER, aec=server.ae_title, extra_args=options
    )
    assert result.returncode == 0, result.stdout + result.stderr


def by_uid(files: list[Path]) -> dict[str, Path]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}


def assert_identical(received: list[Path], sent: dict[str, Path]) -> None:
    """Every retrieved object is one that was sent, its data set byte for byte."""
    got = by_uid(received)
    assert sorted(got) == sorted(sent)
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(sent[uid]), uid


def keys(**values: str) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-k", f"{key}={value}")]


def getscu(
    server: KuvaServer, out: Path, model: str, **query: str
) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            "getscu",
            "-v",
            "+B",  # bit-preserving: the data set is written exactly as received
            model,
            "-aet",
            GETSCU,
            "-aec",
            server.ae_title,
            "-od",
            str(out),
            *keys(**query),
            LOOPBACK,
            str(server.dicom_port),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=600,
    )


def move_study(
    server: KuvaServer, destination: str, study_uid: str
) -> subprocess.CompletedProcess[str]:
    """movescu: the whole study to ``destination`` (Study Root, STUDY level)."""
    return movescu(
        server, destination, "-S", QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid
    )


def movescu(
    server: KuvaServer, destination: str, model: str, **query: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "movescu",
            "-v",
            model,
            "-aet",
            MOVESCU,
            "-aec",
            server.ae_title,
            "-aem",
            destination,
            *keys(**query),
            LOOPBACK,
            str(server.dicom_port),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=300,
    )


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Any]:
    """One study of two CT series (5 + 3 slices), as Part 10 files."""
    first = make_ct_series(5, rows=128, cols=128, seed=1)
    study_uid = first[0].StudyInstanceUID
    second = make_ct_series(3, rows=128, cols=128, study_uid=study_uid, series_number=2, seed=2)
    files = write_series(first, tmp_path / "ct1") + write_series(second, tmp_path / "ct2")
    return {
        "study_uid": study_uid,
        "series_uid": second[0].SeriesInstanceUID,
        "all": by_uid(files),
        "second": by_uid(files[5:]),
    }


# -- C-GET with dcmtk ----------------------------------------------------------------


def test_getscu_study_and_series_levels_byte_identical(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any], tmp_path: Path
) -> None:
    server = start(kuva_server)
    store(server, list(study["all"].values()))
    cases = [
        ("-S", "study-root-study", {"StudyInstanceUID": study["study_uid"]}, study["all"]),
        (
            "-S",
            "study-root-series",
            {"StudyInstanceUID": study["study_uid"], "SeriesInstanceUID": study["series_uid"]},
            study["second"],
        ),
        (
            "-P",
            "patient-root-study",
            {"PatientID": DEFAULT_PATIENT_ID, "StudyInstanceUID": study["study_uid"]},
            study["all"],
        ),
        (
            "-P",
            "patient-root-series",
            {
                "PatientID": DEFAULT_PATIENT_ID,
                "StudyInstanceUID": study["study_uid"],
                "SeriesInstanceUID": study["series_uid"],
            },
            study["second"],
        ),
        ("-P", "patient-root-patient", {"PatientID": DEFAULT_PATIENT_ID}, study["all"]),
    ]
    for model, name, query, expected in cases:
        level = name.rsplit("-", 1)[1].upper()
        out = tmp_path / name
        result = getscu(server, out, model, QueryRetrieveLevel=level, **query)
        assert result.returncode == 0, result.stdout + result.stderr
        output = result.stdout + result.stderr
        assert f"Number of Completed Suboperations : {len(expected)}" in output, name + output
        assert_identical(sorted(out.iterdir()), expected)


# -- C-MOVE with dcmtk ----------------------------------------------------------------


def test_movescu_to_storescp_byte_identical_and_unknown_destination(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any], tmp_path: Path
) -> None:
    with StoreSCP(tmp_path / "dest", aet=DESTINATION, extra_args=["+B"]) as scp:
        server = start(kuva_server, scp.port)
        store(server, list(study["all"].values()))

        result = move_study(server, DESTINATION, study["study_uid"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert_identical(scp.received(), study["all"])

        unknown = move_study(server, "NOWHERE", study["study_uid"])
        output = unknown.stdout + unknown.stderr
        assert "Refused: MoveDestinationUnknown" in output, output  # 0xA801
        assert len(scp.received()) == len(study["all"])
    assert "NOWHERE" in server.log() and "not a configured node" in server.log()


# -- pynetdicom SCUs ------------------------------------------------------------------


class GetSCU:
    """A pynetdicom C-GET SCU taking CT objects in the given transfer syntaxes only.

    ``max_pdu``: the largest PDU it announces it can receive (0 = no limit).
    """

    def __init__(self, syntaxes: list[str], max_pdu: int = 16382) -> None:
        self.received: list[Dataset] = []
        self.max_pdu = max_pdu
        self.ae = AE(ae_title=PYSCU)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        self.ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
        self.ae.add_requested_context(CTImageStorage, syntaxes)
        # The SCP role for CT Image Storage: kuva sends, this SCU stores.
        self.roles = [build_role(CTImageStorage, scp_role=True)]

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def associate(self, server: KuvaServer) -> Association:
        assoc = self.ae.associate(
            LOOPBACK,
            server.dicom_port,
            ae_title=server.ae_title,
            max_pdu=self.max_pdu,
            ext_neg=self.roles,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert assoc.is_established
        return assoc

    def get(
        self,
        server: KuvaServer,
        query: Dataset,
        model: Any = StudyRootQueryRetrieveInformationModelGet,
    ) -> list[tuple[Dataset, Dataset | None]]:
        assoc = self.associate(server)
        try:
            return list(assoc.send_c_get(query, model))
        finally:
            assoc.release()


def identifier(level: str, **values: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def final(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[Dataset, Dataset | None]:
    status, ident = responses[-1]
    assert status.Status != PENDING
    return status, ident


def failed_list(ident: Dataset | None) -> list[str]:
    assert ident is not None
    value = ident.get("FailedSOPInstanceUIDList", "")
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def test_get_transcodes_when_stored_syntax_not_accepted(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = start(kuva_server)
    files = make_transfer_syntax_files(tmp_path / "ts")
    for ts in (RLELossless, JPEG2000Lossless, JPEGLosslessSV1, ExplicitVRLittleEndian):
        store(server, [files[ts]], *storescu_propose_args(files[ts]))
    headers = {ts: pydicom.dcmread(p, stop_before_pixels=True) for ts, p in files.items()}
    uid = {ts: ds.SOPInstanceUID for ts, ds in headers.items()}
    original = {ds.SOPInstanceUID: files[ts] for ts, ds in headers.items()}
    first = headers[ExplicitVRLittleEndian]

    def image(*syntaxes: str) -> Dataset:
        return identifier(
            "IMAGE",
            StudyInstanceUID=first.StudyInstanceUID,
            SeriesInstanceUID=first.SeriesInstanceUID,
            SOPInstanceUID=[uid[ts] for ts in syntaxes],
        )

    def assert_same_pixels(received: list[Dataset], syntax: str) -> None:
        for ds in received:
            assert ds.file_meta.TransferSyntaxUID == syntax
            sent = pydicom.dcmread(original[ds.SOPInstanceUID])
            assert np.array_equal(ds.pixel_array, sent.pixel_array)

    # Compressed objects to a peer that takes Explicit VR Little Endian only: decoded.
    scu = GetSCU([ExplicitVRLittleEndian])
    status, _ = final(scu.get(server, image(RLELossless, JPEG2000Lossless)))
    assert (status.Status, status.NumberOfCompletedSuboperations) == (0x0000, 2)
    assert sorted(ds.SOPInstanceUID for ds in scu.received) == sorted(
        [uid[RLELossless], uid[JPEG2000Lossless]]
    )
    assert_same_pixels(scu.received, ExplicitVRLittleEndian)

    # An uncompressed object to a peer that takes RLE Lossless only: compressed.
    scu = GetSCU([RLELossless])
    status, _ = final(scu.get(server, image(ExplicitVRLittleEndian)))
    assert (status.Status, status.NumberOfCompletedSuboperations) == (0x0000, 1)
    assert_same_pixels(scu.received, RLELossless)

    # A peer taking JPEG Lossless SV1 only: the SV1 object goes as stored; the
    # uncompressed one cannot be converted (no encoder for SV1 here) and fails.
    scu = GetSCU([JPEGLosslessSV1])
    status, ident = final(scu.get(server, image(JPEGLosslessSV1, ExplicitVRLittleEndian)))
    assert status.Status == WARNING
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (1, 1)
    assert failed_list(ident) == [uid[ExplicitVRLittleEndian]]
    [received] = scu.received
    assert received.SOPInstanceUID == uid[JPEGLosslessSV1]
    assert received.file_meta.TransferSyntaxUID == JPEGLosslessSV1

    # Nothing can be sent: every sub-operation failed.
    scu = GetSCU([JPEGLosslessSV1])
    status, ident = final(scu.get(server, image(ExplicitVRLittleEndian)))
    assert (status.Status, status.NumberOfFailedSuboperations) == (ALL_FAILED, 1)
    assert failed_list(ident) == [uid[ExplicitVRLittleEndian]]
    assert scu.received == []
    assert "cannot convert" in server.log()


def test_get_refuses_malformed_requests(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any]
) -> None:
    server = start(kuva_server)
    store(server, list(study["second"].values()))
    scu = GetSCU([ExplicitVRLittleEndian])
    cases = [
        (
            identifier("STUDY"),
            StudyRootQueryRetrieveInformationModelGet,
            "StudyInstanceUID missing",
        ),
        (
            identifier("PATIENT", PatientID=DEFAULT_PATIENT_ID),
            StudyRootQueryRetrieveInformationModelGet,
            "not part of the Study Root model",
        ),
        (
            identifier("", StudyInstanceUID=study["study_uid"]),
            StudyRootQueryRetrieveInformationModelGet,
            "QueryRetrieveLevel missing",
        ),
        (
            identifier("FRAME", StudyInstanceUID=study["study_uid"]),
            StudyRootQueryRetrieveInformationModelGet,
            "QueryRetrieveLevel 'FRAME' invalid",
        ),
        (
            identifier("STUDY", StudyInstanceUID="1.2.03"),
            StudyRootQueryRetrieveInformationModelGet,
            "malformed",
        ),
        (
            identifier("STUDY", StudyInstanceUID=study["study_uid"], SOPInstanceUID="1.2.3"),
            StudyRootQueryRetrieveInformationModelGet,
            "relational retrieve",
        ),
        (
            identifier("PATIENT", PatientID="0101*"),
            PatientRootQueryRetrieveInformationModelGet,
            "wildcards",
        ),
    ]
    for query, model, comment in cases:
        responses = scu.get(server, query, model)
        assert responses and "Status" in responses[-1][0], comment + server.log()[-3000:]
        status, _ = final(responses)
        assert status.Status == IDENTIFIER_MISMATCH, comment
        assert comment in status.ErrorComment
    # No match is not an error: success with no sub-operations.
    status, _ = final(scu.get(server, identifier("STUDY", StudyInstanceUID="1.2.3.4")))
    assert status.Status == 0x0000
    assert status.NumberOfCompletedSuboperations == 0
    assert scu.received == []


def test_get_to_peer_without_pdu_limit(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any]
) -> None:
    """A peer announcing no maximum PDU length still gets the objects, as stored."""
    server = start(kuva_server)
    store(server, list(study["second"].values()))
    scu = GetSCU([ExplicitVRLittleEndian], max_pdu=0)
    query = identifier(
        "SERIES", StudyInstanceUID=study["study_uid"], SeriesInstanceUID=study["series_uid"]
    )
    status, _ = final(scu.get(server, query))
    assert (status.Status, status.NumberOfCompletedSuboperations) == (0x0000, 3)
    for ds in scu.received:
        sent = pydicom.dcmread(study["second"][ds.SOPInstanceUID])
        assert ds.PixelData == sent.PixelData


def test_get_cancel(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> None:
    server = start(kuva_server)
    series = make_ct_series(20, rows=64, cols=64)
    store(server, write_series(series, tmp_path / "ct"))
    scu = GetSCU([ExplicitVRLittleEndian])
    assoc = scu.associate(server)
    responses = []
    cancelled = False
    for status, ident in assoc.send_c_get(
        identifier(
            "SERIES",
            StudyInstanceUID=series[0].StudyInstanceUID,
            SeriesInstanceUID=series[0].SeriesInstanceUID,
        ),
        StudyRootQueryRetrieveInformationModelGet,
        msg_id=7,
    ):
        responses.append((status, ident))
        if status.Status == PENDING and not cancelled:
            context_id = assoc._get_valid_context(
                StudyRootQueryRetrieveInformationModelGet, "", "scu"
            ).context_id
            assoc.send_c_cancel(7, context_id)
            cancelled = True
    assoc.release()
    status, ident = final(responses)
    assert status.Status == CANCEL
    assert status.NumberOfRemainingSuboperations > 0
    assert status.NumberOfCompletedSuboperations + status.NumberOfRemainingSuboperations == 20
    assert len(scu.received) == status.NumberOfCompletedSuboperations
    assert failed_list(ident) == []


def test_move_pending_and_final_counts(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any], tmp_path: Path
) -> None:
    with StoreSCP(tmp_path / "dest", aet=DESTINATION, extra_args=["+B"]) as scp:
        server = start(kuva_server, scp.port)
        store(server, list(study["all"].values()))
        ae = AE(ae_title=PYSCU)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established
        query = identifier(
            "SERIES",
            PatientID=DEFAULT_PATIENT_ID,
            StudyInstanceUID=study["study_uid"],
            SeriesInstanceUID=study["series_uid"],
        )
        responses = list(
            assoc.send_c_move(query, DESTINATION, PatientRootQueryRetrieveInformationModelMove)
        )
        unknown = list(
            assoc.send_c_move(query, "NOWHERE", PatientRootQueryRetrieveInformationModelMove)
        )
        assoc.release()
        pending = [s for s, _ in responses if s.Status == PENDING]
        n = len(study["second"])
        # One Pending response after the first sub-operation, then at most every
        # PENDING_INTERVAL: each with counts that add up to the whole.
        assert pending and pending[0].NumberOfCompletedSuboperations == 1
        remaining = [s.NumberOfRemainingSuboperations for s in pending]
        assert remaining == sorted(remaining, reverse=True) and remaining[0] == n - 1
        for s in pending:
            assert s.NumberOfRemainingSuboperations + s.NumberOfCompletedSuboperations == n
            assert s.NumberOfFailedSuboperations == s.NumberOfWarningSuboperations == 0
        status, _ = final(responses)
        assert status.Status == 0x0000
        assert (
            status.NumberOfCompletedSuboperations,
            status.NumberOfFailedSuboperations,
            status.NumberOfWarningSuboperations,
        ) == (n, 0, 0)
        assert "NumberOfRemainingSuboperations" not in status
        assert_identical(scp.received(), study["second"])
        status, _ = final(unknown)
        assert status.Status == DESTINATION_UNKNOWN
        assert "NOWHERE" in status.ErrorComment


def test_move_to_unreachable_destination(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any]
) -> None:
    server = start(kuva_server, free_port())
    store(server, list(study["second"].values()))
    result = move_study(server, DESTINATION, study["study_uid"])
    output = result.stdout + result.stderr
    assert "Refused: OutOfResourcesSubOperations" in output, output  # 0xA702


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
def test_move_to_orthanc(
    kuva_server: Callable[..., KuvaServer], study: dict[str, Any], tmp_path: Path
) -> None:
    with Orthanc(tmp_path / "orthanc", aet="ORTHANC") as orthanc:
        server = kuva_server(
            nodes=[node(SENDER), node(MOVESCU), node("ORTHANC", orthanc.dicom_port)]
        )
        store(server, list(study["all"].values()))
        result = move_study(server, "ORTHANC", study["study_uid"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert orthanc.instance_count() == len(study["all"])
        for instance_id in orthanc.rest_get("/instances"):
            with urllib.request.urlopen(f"{orthanc.url}/instances/{instance_id}/file") as rsp:
                got = pydicom.dcmread(io.BytesIO(rsp.read()))
            sent = pydicom.dcmread(study["all"][got.SOPInstanceUID])
            assert got.PixelData == sent.PixelData
            assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


# -- streaming ------------------------------------------------------------------------

LARGE = 1024 * 1024 * 1024  # the issue's 1 GB object


def same_data_set(a: Path, b: Path) -> bool:
    """Compare the data sets of two Part 10 files in chunks (never whole in memory)."""

    def chunks(path: Path) -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(140)
            f.seek(144 + int.from_bytes(f.read(4), "little"))
            while chunk := f.read(1 << 20):
                yield chunk

    left, right = b"", b""
    ia, ib = chunks(a), chunks(b)
    while True:
        if not left:
            left = next(ia, b"")
        if not right:
            right = next(ib, b"")
        if not left or not right:
            return not left and not right
        n = min(len(left), len(right))
        if left[:n] != right[:n]:
            return False
        left, right = left[n:], right[n:]


@pytest.mark.parametrize("operation", ["get", "move"])
def test_large_object_streamed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path, operation: str
) -> None:
    """A 1 GB object goes out by C-GET and by C-MOVE without being held in memory."""
    if not database_url.startswith("sqlite"):
        pytest.skip("streaming does not depend on the index database")
    out = tmp_path / "out"
    out.mkdir()
    with StoreSCP(out, aet=DESTINATION) as destination:
        server = start(kuva_server, destination_port=destination.port)
        assert server.process is not None
        path = make_multiframe(tmp_path / "big.dcm", LARGE)
        store(server, [path])
        [row] = index_rows(database_url).values()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        query = {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": ds.StudyInstanceUID,
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": row.sop_instance_uid,
        }
        with PeakRss(server.process.pid) as rss:
            if operation == "get":
                result = getscu(server, out, "-S", **query)
            else:
                result = movescu(server, DESTINATION, "-S", **query)
        assert result.returncode == 0, result.stdout + result.stderr
        received = destination.received() if operation == "move" else sorted(out.iterdir())
    growth_mib = rss.growth_mib
    assert growth_mib < 100, f"server grew by {growth_mib:.0f} MiB sending {LARGE >> 20} MiB"
    [got] = received
    assert same_data_set(got, path)


# -- TLS to a node ------------------------------------------------------------------


@pytest.mark.parametrize("destination_ca", ["trusted", "untrusted"])
def test_move_to_a_tls_node(
    kuva_server: Callable[..., KuvaServer],
    study: dict[str, Any],
    tmp_path: Path,
    destination_ca: str,
) -> None:
    """A node with ``tls = true``: kuva opens its C-MOVE association over TLS with its
    [tls] certificate (dcmtk storescp requires and verifies it against the CA) and
    checks the destination's certificate against [tls] ca_file; a destination whose
    certificate another CA issued gets nothing."""
    pki = make_mutual_tls_pki(tmp_path / "pki")
    issuer = (
        CertificateAuthority(tmp_path / "pki-other", "another CA")
        if destination_ca == "untrusted"
        else pki.authority
    )
    identity = issuer.issue("dest", server=True, C="FI", CN="localhost")
    tls_args = [
        "+tls",
        str(identity.key),
        str(identity.cert),
        "+cf",
        str(pki.ca),
        "-rc",  # require kuva's certificate, verified against the test CA
    ]
    with StoreSCP(tmp_path / "dest", aet=DESTINATION, extra_args=tls_args) as scp:
        nodes = [node(SENDER), node(MOVESCU), {**node(DESTINATION, scp.port), "tls": True}]
        server = kuva_server(nodes=nodes, extra={"tls": pki.tls_section()})
        store(server, list(study["all"].values()))
        result = move_study(server, DESTINATION, study["study_uid"])
        output = result.stdout + result.stderr
        if destination_ca == "trusted":
            assert result.returncode == 0, output
            assert_identical(scp.received(), study["all"])
        else:
            assert scp.received() == []
            assert "Refused: OutOfResourcesSubOperations" in output, output  # 0xA702
            assert "association to STORESCP" in server.log()
            assert "certificate verify failed" in server.log()
