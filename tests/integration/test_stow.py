"""STOW-RS (PS3.18 10.5) against a running kuva with dicomweb-client and raw HTTP."""

from __future__ import annotations

import asyncio
import copy
import errno
import io
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid
from sqlalchemy import Engine, create_engine, text

from kuva.codec.part10 import canonical_file_meta
from kuva.dicomweb.stow import stow_router
from kuva.index.group_commit import GroupCommitter
from kuva.services.ingest import IncomingInstance, IngestService, StoreOutcome, StoreStatus
from kuva.storage.filesystem import FileBlobStore, FileBlobWriter
from kuva.web.app import create_app
from tests.support.archive import blob_files, check_blob_integrity, index_rows
from tests.support.memory import PeakRss
from tests.support.peers import dcmtk_available
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    DEFAULT_PATIENT_NAME,
    make_bad_objects,
    make_ct_series,
    make_multiframe,
    make_transfer_syntax_files,
    write_series,
)

BOUNDARY = "kuva-test-boundary-7d3f"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

# Failure Reason (0008,1197) values kuva answers with (see kuva.dicomweb.stow).
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_WITH_OTHER_CONTENT = 0xC001
STUDY_INSTANCE_UID_MISMATCH = 0xC409
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


# --------------------------------------------------------------------------- helpers


def web(server: KuvaServer) -> DICOMwebClient:
    return DICOMwebClient(url=f"{server.http}/dicom-web")


def encoded(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds`` (``pydicom.dcmwrite``)."""
    with io.BytesIO() as out:
        pydicom.dcmwrite(out, ds)
        return out.getvalue()


def read_files(paths: list[Path]) -> list[Dataset]:
    """Datasets as read from Part 10 files (they keep their preamble when written)."""
    return [pydicom.dcmread(path) for path in paths]


def expected_blob(sent: bytes) -> bytes:
    """kuva's canonical file meta + the data set exactly as sent."""
    meta = pydicom.dcmread(io.BytesIO(sent), stop_before_pixels=True).file_meta
    group_length = int.from_bytes(sent[140:144], "little")
    return (
        canonical_file_meta(
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID
        )
        + sent[144 + group_length :]
    )


def multipart(
    parts: list[bytes], part_headers: tuple[bytes, ...] = (b"Content-Type: application/dicom",)
) -> bytes:
    out = bytearray()
    for part in parts:
        out += b"\r\n--" + BOUNDARY.encode() + b"\r\n"
        for header in part_headers:
            out += header + b"\r\n"
        out += b"\r\n" + part
    out += b"\r\n--" + BOUNDARY.encode() + b"--\r\n"
    return bytes(out)


def post(
    server: KuvaServer,
    body: bytes,
    *,
    study: str | None = None,
    content_type: str | None = CONTENT_TYPE,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    url = f"{server.http}/dicom-web/studies" + (f"/{study}" if study else "")
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    return httpx.post(url, content=body, headers=sent, timeout=60)


def items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag)
    return list(element.get("Value", [])) if element else []


def first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if element else None
    return values[0] if values else None


def failed(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return items(answer, "00081198")


def referenced(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return items(answer, "00081199")


def assert_stored_as_sent(server: KuvaServer, database_url: str, sent: list[bytes]) -> None:
    rows = index_rows(database_url)
    for data in sent:
        uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        row = rows[uid]
        blob = (server.blob_dir / row.blob_key).read_bytes()
        assert blob == expected_blob(data), uid
        assert row.size == len(blob)
        assert row.source_ae == "STOW-RS"


def assert_nothing_partial(server: KuvaServer) -> None:
    check_blob_integrity(server.blob_dir)
    assert list((server.blob_dir / "tmp").iterdir()) == []


def small_ct(n: int, **kwargs: Any) -> list[Dataset]:
    return make_ct_series(n, rows=32, cols=32, **kwargs)


# --------------------------------------------------------------------------- dicomweb-client


@pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed (JPEG encoders)")
def test_store_series_multiframe_and_compressed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    study = generate_uid()
    ct = write_series(make_ct_series(5, rows=64, cols=64, study_uid=study), tmp_path / "ct")
    multiframe = make_multiframe(
        tmp_path / "mf.dcm", 3 * 128 * 128 * 2, rows=128, cols=128, study_uid=study
    )
    syntaxes = make_transfer_syntax_files(tmp_path / "ts", study_uid=study)
    assert JPEG2000Lossless in syntaxes
    datasets = read_files([*ct, multiframe, *syntaxes.values()])
    client = web(server)

    answer = client.store_instances(datasets)

    assert "FailedSOPSequence" not in answer
    # URLs are built from the request's Host header; dicomweb-client sends it without
    # the port, so only the path is compared.
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{study}")
    stored = {item.ReferencedSOPInstanceUID: item for item in answer.ReferencedSOPSequence}
    assert set(stored) == {ds.SOPInstanceUID for ds in datasets}
    for ds in datasets:
        item = stored[ds.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.RetrieveURL.endswith(
            f"/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
    sent = [encoded(ds) for ds in datasets]
    assert_stored_as_sent(server, database_url, sent)
    rows = index_rows(database_url)
    assert {rows[ds.SOPInstanceUID].transfer_syntax_uid for ds in datasets} >= set(syntaxes)

    # QIDO-RS finds what STOW-RS stored.
    found = client.search_for_instances(study_instance_uid=study)
    assert {first(i, "00080018") for i in found} == {ds.SOPInstanceUID for ds in datasets}
    frames = client.search_for_instances(
        study_instance_uid=study, search_filters={"SOPInstanceUID": datasets[5].SOPInstanceUID}
    )
    assert first(frames[0], "00280008") == 3  # NumberOfFrames of the multi-frame object

    # Sending the same objects again is a success and stores nothing new.
    blobs_before = blob_files(server.blob_dir)
    again = post(server, multipart(sent[:3]))
    assert again.status_code == 200
    assert again.headers["content-type"] == "application/dicom+json"
    assert len(referenced(again.json())) == 3 and not failed(again.json())
    assert first(again.json(), "00081190") == f"{server.http}/dicom-web/studies/{study}"
    assert blob_files(server.blob_dir) == blobs_before
    assert len(index_rows(database_url)) == len(datasets)
    assert_nothing_partial(server)


def test_other_content_under_same_uid_is_refused(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    client = web(server)
    originals = read_files(write_series(small_ct(3), tmp_path / "ct"))
    client.store_instances(originals[:2])

    changed = copy.deepcopy(originals[0])
    changed.SeriesDescription = "Korjattu"
    # Some stored, one refused: 202 (dicomweb-client returns the response body).
    answer = client.store_instances([changed, originals[2]])
    [refused] = answer.FailedSOPSequence
    assert refused.ReferencedSOPInstanceUID == originals[0].SOPInstanceUID
    assert refused.ReferencedSOPClassUID == originals[0].SOPClassUID
    assert refused.FailureReason == DUPLICATE_WITH_OTHER_CONTENT
    assert "IOCM" in refused.ErrorComment
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        originals[2].SOPInstanceUID
    ]
    raw = post(server, multipart([encoded(changed), encoded(originals[1])]))
    assert raw.status_code == 202

    # Nothing stored at all: 409 Conflict, with the reasons in the body.
    with pytest.raises(requests.HTTPError) as caught:
        client.store_instances([changed])
    assert caught.value.response is not None
    assert caught.value.response.status_code == 409
    [item] = failed(caught.value.response.json())
    assert first(item, "00081197") == DUPLICATE_WITH_OTHER_CONTENT

    # The archived bytes are the first ones sent.
    assert_stored_as_sent(server, database_url, [encoded(ds) for ds in originals])
    assert "refused instance" in server.log()
    assert_nothing_partial(server)


def test_study_in_url(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    client = web(server)
    study = generate_uid()
    ours = read_files(write_series(small_ct(2, study_uid=study), tmp_path / "ours"))
    other = read_files(write_series(small_ct(1), tmp_path / "other"))

    answer = client.store_instances(ours[:1], study_instance_uid=study)
    assert len(answer.ReferencedSOPSequence) == 1
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{study}")

    with pytest.raises(requests.HTTPError) as caught:
        client.store_instances(other, study_instance_uid=study)
    assert caught.value.response is not None and caught.value.response.status_code == 409
    [item] = failed(caught.value.response.json())
    assert first(item, "00081197") == STUDY_INSTANCE_UID_MISMATCH
    assert first(item, "00081155") == other[0].SOPInstanceUID
    assert "StudyInstanceUID" in first(item, "00000902")

    mixed = client.store_instances([ours[1], *other], study_instance_uid=study)
    assert [i.ReferencedSOPInstanceUID for i in mixed.ReferencedSOPSequence] == [
        ours[1].SOPInstanceUID
    ]
    assert [i.FailureReason for i in mixed.FailedSOPSequence] == [STUDY_INSTANCE_UID_MISMATCH]
    assert set(index_rows(database_url)) == {ds.SOPInstanceUID for ds in ours}
    assert_nothing_partial(server)


# --------------------------------------------------------------------------- raw HTTP


def test_request_errors(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    good = encoded(read_files(write_series(small_ct(1), tmp_path / "good"))[0])

    def problem(response: httpx.Response, status: int, *words: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == status
        for word in words:
            assert word in body["detail"], body["detail"]

    problem(post(server, good, content_type="application/dicom"), 415, "multipart/related")
    problem(post(server, good, content_type=None), 415, "missing")
    problem(
        post(server, multipart([good]), content_type='multipart/related; type="application/dicom"'),
        415,
        "boundary",
    )
    problem(
        post(
            server,
            multipart([good]),
            content_type=f"multipart/related; type=application/dicom+json; boundary={BOUNDARY}",
        ),
        415,
        "application/dicom+json",
        "not supported",
    )
    problem(
        post(server, multipart([good]), headers={"Accept": "application/dicom+xml"}),
        406,
        "XML",
    )
    problem(post(server, b""), 400, "nothing was stored")
    problem(post(server, b"--" + BOUNDARY.encode() + b"--\r\n"), 400, "no parts")
    problem(post(server, b"this is no multipart body at all" * 100), 400, "not valid multipart")
    truncated = multipart([good])[: len(good) // 2]
    problem(post(server, truncated), 400, "ends inside a part", "nothing was stored")
    problem(post(server, b"\r\n--" + BOUNDARY.encode() + b"junk\r\n\r\n" + good), 400)
    assert index_rows(database_url) == {}

    # Unquoted type, quoted boundary, an Accept that allows JSON among others: stored.
    ok = post(
        server,
        multipart([good]),
        content_type=f'multipart/related; type=application/dicom; boundary="{BOUNDARY}"',
        headers={"Accept": "application/dicom+xml;q=0.9, application/dicom+json"},
    )
    assert ok.status_code == 200, ok.text
    assert len(referenced(ok.json())) == 1

    # Garbage after a complete part (a spoiled close delimiter): the part is archived
    # and reported, with a failed item for the unreadable rest (202).
    extra = read_files(write_series(small_ct(1), tmp_path / "extra"))[0]
    spoiled = multipart([encoded(extra)])[: -len(b"--\r\n")] + b"xx\r\n"
    response = post(server, spoiled)
    assert response.status_code == 202, response.text
    [rest] = failed(response.json())
    assert "00081155" not in rest and first(rest, "00081197") == CANNOT_UNDERSTAND
    assert "boundary" in first(rest, "00000902")
    assert [first(i, "00081155") for i in referenced(response.json())] == [extra.SOPInstanceUID]
    assert_nothing_partial(server)


def test_parts_that_cannot_be_stored(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    datasets = read_files(write_series(small_ct(4), tmp_path / "ct"))
    good = encoded(datasets[0])

    # Not DICOM at all: no UIDs can be read.
    response = post(server, multipart([b"hello, I am not a DICOM file"]))
    assert response.status_code == 409
    [item] = failed(response.json())
    assert first(item, "00081197") == CANNOT_UNDERSTAND
    assert "00081150" not in item and "00081155" not in item
    assert "Part 10" in first(item, "00000902")

    # A data set with file meta but no preamble (what pydicom writes for a data set
    # made in memory): refused, its UIDs are still reported.
    in_memory = small_ct(1)[0]
    response = post(server, multipart([encoded(in_memory)]))
    assert response.status_code == 409
    [item] = failed(response.json())
    assert first(item, "00081155") == in_memory.SOPInstanceUID
    assert first(item, "00081150") == in_memory.SOPClassUID
    assert first(item, "00081197") == CANNOT_UNDERSTAND

    # A part that says it is something else.
    response = post(
        server,
        multipart([good], part_headers=(b"Content-Type: application/dicom+json",)),
    )
    assert response.status_code == 409
    [item] = failed(response.json())
    assert first(item, "00081155") == datasets[0].SOPInstanceUID
    assert "Content-Type" in first(item, "00000902")

    # File meta and data set disagree.
    other_instance = copy.deepcopy(datasets[1])
    other_instance.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other_class = copy.deepcopy(datasets[2])
    other_class.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    # Breaks kuva's rules (PatientID missing).
    bad = read_files([make_bad_objects(tmp_path / "bad")["missing_patient_id"]])[0]
    response = post(
        server, multipart([good, encoded(other_instance), encoded(other_class), encoded(bad)])
    )
    assert response.status_code == 202
    answer = response.json()
    assert [first(i, "00081155") for i in referenced(answer)] == [datasets[0].SOPInstanceUID]
    reasons = {
        first(i, "00081155"): (first(i, "00081197"), first(i, "00000902")) for i in failed(answer)
    }
    assert reasons == {
        other_instance.file_meta.MediaStorageSOPInstanceUID: (
            CANNOT_UNDERSTAND,
            "SOPInstanceUID differs from MediaStorageSOPInstanceUID",
        ),
        datasets[2].SOPInstanceUID: (
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPClassUID differs from MediaStorageSOPClassUID",
        ),
        bad.SOPInstanceUID: (CANNOT_UNDERSTAND, "PatientID missing"),
    }

    # A body cut off inside its second part, after that part's file meta: the first
    # part is archived and the second is reported with its UIDs, nothing of it kept.
    third = encoded(datasets[3])
    body = multipart([encoded(datasets[1]), third])
    cut = body[: body.index(third) + len(third) // 2]
    response = post(server, cut)
    assert response.status_code == 202
    answer = response.json()
    assert [first(i, "00081155") for i in referenced(answer)] == [datasets[1].SOPInstanceUID]
    [item] = failed(answer)
    assert first(item, "00081155") == datasets[3].SOPInstanceUID
    assert "ends inside a part" in first(item, "00000902")

    assert set(index_rows(database_url)) == {ds.SOPInstanceUID for ds in datasets[:2]}
    log = server.log()
    assert "STOW-RS part" in log and "not stored (failure reason C000" in log
    # Failed parts are logged by UID only: no patient names or identity codes.
    assert DEFAULT_PATIENT_NAME not in log and DEFAULT_PATIENT_ID not in log
    assert_nothing_partial(server)


def test_client_disconnect_leaves_nothing(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()
    path = make_multiframe(tmp_path / "mf.dcm", 8 * 1024 * 1024)
    body = multipart([path.read_bytes()])
    sent = 5 * 1024 * 1024  # past the first batch the server hands to its blob writer
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: kuva\r\n"
            + f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:sent]
        )
        deadline = time.monotonic() + 10
        while not list((server.blob_dir / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((server.blob_dir / "tmp").iterdir()), "the object was not being written"
    deadline = time.monotonic() + 10
    while list((server.blob_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_nothing_partial(server)
    assert index_rows(database_url) == {}
    assert "client disconnected" in server.log()


def test_forbidden_without_http_organization(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = kuva_server(
        nodes=[{"ae_title": "PACS1", "host": "127.0.0.1", "port": 1, "organization": ""}]
    )
    good = encoded(read_files(write_series(small_ct(1), tmp_path / "ct"))[0])
    response = post(server, multipart([good]))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "http.organization" in response.json()["detail"]


def test_stored_for_the_configured_organization(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    oid = "1.2.246.10.12345678.10"
    server = kuva_server(
        organizations=[{"oid": oid, "name": "Testin sairaanhoitopiiri"}],
        nodes=[{"ae_title": "PACS1", "host": "127.0.0.1", "port": 1, "organization": oid}],
        extra={"http": {"organization": oid}},
    )
    ds = read_files(write_series(small_ct(1), tmp_path / "ct"))[0]
    answer = web(server).store_instances([ds])
    assert len(answer.ReferencedSOPSequence) == 1
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            owners = conn.execute(text("SELECT organization_oid FROM instance")).scalars().all()
    finally:
        engine.dispose()
    assert owners == [oid]


def test_what_the_registry_would_not_take_is_refused_with_the_reason(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """Registration on: no Issuer of Patient ID, or a Finnish identity code with a
    wrong check character, is refused (0xC000, the attribute named), as by C-STORE."""
    server = kuva_server(extra={"registration": {"enabled": True}})
    client = web(server)
    no_issuer, valid = read_files(write_series(small_ct(2), tmp_path / "ct"))
    del no_issuer.IssuerOfPatientID
    [wrong_check] = read_files(
        write_series(small_ct(1, patient_id="010181-900D"), tmp_path / "hetu")
    )
    answer = client.store_instances([no_issuer, wrong_check, valid])
    reasons = {
        str(item.ReferencedSOPInstanceUID): (item.FailureReason, item.ErrorComment)
        for item in answer.FailedSOPSequence
    }
    assert reasons == {
        no_issuer.SOPInstanceUID: (CANNOT_UNDERSTAND, "Issuer of Patient ID (0010,0021) missing"),
        wrong_check.SOPInstanceUID: (
            CANNOT_UNDERSTAND,
            "Patient ID (0010,0020) identity code: wrong check character",
        ),
    }
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        valid.SOPInstanceUID
    ]
    assert set(index_rows(database_url)) == {valid.SOPInstanceUID}
    assert_nothing_partial(server)


# --------------------------------------------------------------------------- large object

LARGE = 300 * 1024 * 1024


def test_large_object_streamed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("streaming does not depend on the index database")
    server = kuva_server()
    assert server.process is not None
    path = make_multiframe(tmp_path / "big.dcm", LARGE)
    size = path.stat().st_size

    def body() -> Iterator[bytes]:
        yield b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk
        yield b"\r\n--" + BOUNDARY.encode() + b"--\r\n"

    with PeakRss(server.process.pid) as rss:
        response = httpx.post(
            f"{server.http}/dicom-web/studies",
            content=body(),
            headers={"Content-Type": CONTENT_TYPE},
            timeout=300,
        )
    assert response.status_code == 200, response.text
    growth_mib = rss.growth_mib
    assert growth_mib < 100, f"server grew by {growth_mib:.0f} MiB receiving {size >> 20} MiB"

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    [row] = index_rows(database_url).values()
    assert row.sop_instance_uid == ds.SOPInstanceUID
    stored = server.blob_dir / row.blob_key
    with open(path, "rb") as f:
        head = f.read(1024 * 1024)
        f.seek(-65536, 2)
        tail = f.read()
    group_length = int.from_bytes(head[140:144], "little")
    meta = canonical_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
    assert stored.stat().st_size == len(meta) + size - 144 - group_length
    with open(stored, "rb") as f:
        assert f.read(65536) == (meta + head[144 + group_length :])[:65536]
        f.seek(-65536, 2)
        assert f.read() == tail
    assert_nothing_partial(server)


# --------------------------------------------------------------------------- failures inside


class _FullDiskWriter(FileBlobWriter):
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.size + len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


class _FullDiskStore(FileBlobStore):
    def open_writer(self) -> FileBlobWriter:
        return _FullDiskWriter(self)


class _FailingIngest(IngestService):
    """The index cannot take the instance (StoreStatus.FAILED), or breaks unexpectedly."""

    def __init__(self, *args: Any, crash: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash = crash

    def store(self, incoming: IncomingInstance) -> StoreOutcome:
        if self.crash:
            raise RuntimeError("unexpected")
        incoming.blob.discard()
        return StoreOutcome(StoreStatus.FAILED, "index failure: OperationalError")


@pytest.mark.parametrize(
    ("case", "reason", "comment"),
    [
        ("disk full", OUT_OF_RESOURCES, "storage failure: No space left on device"),
        ("index failure", OUT_OF_RESOURCES, "index failure: OperationalError"),
        ("unexpected error", PROCESSING_FAILURE, "processing failure"),
    ],
)
def test_archive_failures_are_reported(
    engine: Engine, tmp_path: Path, case: str, reason: int, comment: str
) -> None:
    """Failures the archive cannot be made to show from outside, run in process."""
    store_cls = _FullDiskStore if case == "disk full" else FileBlobStore
    blobs = store_cls(tmp_path / "blobs")
    committer = GroupCommitter(engine)
    ingest: IngestService
    if case == "disk full":
        ingest = IngestService(blobs, committer)
    else:
        ingest = _FailingIngest(engine, blobs, committer, crash=case == "unexpected error")
    app = create_app({}, routers=[("/dicom-web", stow_router(ingest, blobs))])
    app.state.default_organization = "1.2.246.10.0.10"
    ds = read_files(write_series(small_ct(1), tmp_path / "ct"))[0]

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kuva") as client:
            return await client.post(
                "/dicom-web/studies",
                content=multipart([encoded(ds)]),
                headers={"Content-Type": CONTENT_TYPE},
            )

    try:
        response = asyncio.run(send())
    finally:
        committer.close()
    assert response.status_code == 409, response.text
    [item] = failed(response.json())
    assert first(item, "00081155") == ds.SOPInstanceUID
    assert (first(item, "00081197"), first(item, "00000902")) == (reason, comment)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert blob_files(tmp_path / "blobs") == []
