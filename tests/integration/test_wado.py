"""WADO-RS and WADO-URI (PS3.18 10.4, 9) against a running kuva.

Objects go in with dcmtk's storescu, each in its own transfer syntax; they come
back with dicomweb-client and raw HTTP. Asked for as stored (``transfer-syntax=*``)
the data set is byte-identical to what was sent; by default (Explicit VR Little
Endian) the pixel values are unchanged; frames and bulk data are the stored bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.support.archive import dataset_bytes
from tests.support.memory import PeakRss
from tests.support.peers import (
    LOOPBACK,
    dcmtk_available,
    storescu,
    storescu_propose_args,
)
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    make_ct_series,
    make_multiframe,
    make_transfer_syntax_files,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
LARGE = 1024 * 1024 * 1024


def store(server: KuvaServer, files: list[Path]) -> None:
    for path in files:
        result = storescu(
            [path],
            LOOPBACK,
            server.dicom_port,
            aet="MODALITY1",
            aec=server.ae_title,
            extra_args=storescu_propose_args(path),
        )
        assert result.returncode == 0, result.stdout + result.stderr


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def multipart_parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body (RFC 2387): (headers, bytes)."""
    match = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"\r\n--" + match.group(1).encode()
    body = b"\r\n" + response.content
    chunks = body.split(delimiter)
    assert chunks[-1].startswith(b"--"), "no close delimiter"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(data)
        parts.append((headers, data))
    return parts


@pytest.fixture
def stored(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> dict[str, Any]:
    """A running kuva holding one study: a CT series, every transfer syntax, a multi-frame."""
    server = kuva_server(public_url=True)
    ct = make_ct_series(3, rows=32, cols=32, seed=3)
    study = ct[0].StudyInstanceUID
    files = write_series(ct, tmp_path / "ct")
    syntaxes = make_transfer_syntax_files(tmp_path / "ts", rows=32, cols=32, study_uid=study)
    multiframe = make_multiframe(
        tmp_path / "mf.dcm", 8 * 32 * 32 * 2, rows=32, cols=32, study_uid=study, seed=5
    )
    store(server, [*files, *syntaxes.values(), multiframe])
    return {
        "server": server,
        "study": study,
        "ct": files,
        "syntaxes": syntaxes,
        "multiframe": multiframe,
        "all": {uids(p)[2]: p for p in [*files, *syntaxes.values(), multiframe]},
    }


def url(server: KuvaServer, *path: str) -> str:
    return f"{server.http}/dicom-web/" + "/".join(path)


def test_study_series_instance_as_stored_byte_identical(stored: dict[str, Any]) -> None:
    server: KuvaServer = stored["server"]
    response = httpx.get(url(server, "studies", stored["study"]), headers={"Accept": AS_STORED})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    parts = multipart_parts(response)
    got = {}
    for headers, data in parts:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        assert headers["content-type"] == (
            f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        )
        got[ds.SOPInstanceUID] = data
    assert sorted(got) == sorted(stored["all"])
    for uid, data in got.items():
        sent = dataset_bytes(stored["all"][uid])
        group_length = int.from_bytes(data[140:144], "little")
        assert data[144 + group_length :] == sent, uid

    study, series, instance = uids(stored["ct"][1])
    one = httpx.get(url(server, "studies", study, "series", series), headers={"Accept": AS_STORED})
    assert len(multipart_parts(one)) == 3
    single = httpx.get(
        url(server, "studies", study, "series", series, "instances", instance),
        headers={"Accept": AS_STORED},
    )
    [(_, data)] = multipart_parts(single)
    assert data.endswith(dataset_bytes(stored["ct"][1]))


def test_dicomweb_client_default_is_explicit_vr_little_endian(stored: dict[str, Any]) -> None:
    """Without transfer-syntax, objects go out in Explicit VR LE (PS3.18 8.7.3.5.2)."""
    server: KuvaServer = stored["server"]
    web = DICOMwebClient(url=f"{server.http}/dicom-web")
    datasets = web.retrieve_study(stored["study"])
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(stored["all"])
    lossless = {path: uid for uid, path in stored["syntaxes"].items() if uid != JPEGBaseline8Bit}
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for path, syntax in lossless.items():
        original = pydicom.dcmread(path)
        got = by_uid[original.SOPInstanceUID]
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, syntax
        assert np.array_equal(got.pixel_array, original.pixel_array), syntax

    study, series, instance = uids(stored["syntaxes"][JPEG2000Lossless])
    as_is = web.retrieve_instance(
        study, series, instance, media_types=(("application/dicom", JPEG2000Lossless),)
    )
    assert as_is.file_meta.TransferSyntaxUID == JPEG2000Lossless
    converted = web.retrieve_instance(
        study, series, instance, media_types=(("application/dicom", RLELossless),)
    )
    assert converted.file_meta.TransferSyntaxUID == RLELossless
    original = pydicom.dcmread(stored["syntaxes"][JPEG2000Lossless])
    assert np.array_equal(converted.pixel_array, original.pixel_array)


def test_frames(stored: dict[str, Any]) -> None:
    server: KuvaServer = stored["server"]
    web = DICOMwebClient(url=f"{server.http}/dicom-web")
    study, series, instance = uids(stored["multiframe"])
    original = pydicom.dcmread(stored["multiframe"])
    frame_size = 32 * 32 * 2
    frames = web.retrieve_instance_frames(
        study, series, instance, frame_numbers=[3, 1], media_types=("application/octet-stream",)
    )
    assert frames == [
        original.PixelData[2 * frame_size : 3 * frame_size],
        original.PixelData[:frame_size],
    ]

    # Compressed: as stored by default (*/*), decoded when octet-stream is asked for.
    j2k = stored["syntaxes"][JPEG2000Lossless]
    study, series, instance = uids(j2k)
    original = pydicom.dcmread(j2k)
    [compressed] = web.retrieve_instance_frames(study, series, instance, frame_numbers=[1])
    assert compressed == next(generate_frames(original.PixelData, number_of_frames=1))
    [decoded] = web.retrieve_instance_frames(
        study, series, instance, frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert decoded == original.pixel_array.astype("<u2").tobytes()

    deflated = stored["syntaxes"][DeflatedExplicitVRLittleEndian]
    study, series, instance = uids(deflated)
    [frame] = web.retrieve_instance_frames(
        study, series, instance, frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert frame == pydicom.dcmread(deflated).PixelData


def test_bulk_data_from_metadata(stored: dict[str, Any]) -> None:
    server: KuvaServer = stored["server"]
    web = DICOMwebClient(url=f"{server.http}/dicom-web")
    study, series, instance = uids(stored["multiframe"])
    metadata = web.retrieve_instance_metadata(study, series, instance)
    bulk_url = metadata["7FE00010"]["BulkDataURI"]
    assert bulk_url.startswith(f"{server.http}/dicom-web/studies/{study}/")  # [http] base_url
    [pixels] = web.retrieve_bulkdata(bulk_url)
    assert pixels == pydicom.dcmread(stored["multiframe"]).PixelData
    response = httpx.get(bulk_url.replace("7FE00010", "00100010"))
    assert response.status_code == 404
    assert response.json()["parameter"] == "tag"


def test_wado_uri(stored: dict[str, Any]) -> None:
    server: KuvaServer = stored["server"]
    path = stored["syntaxes"][JPEG2000Lossless]
    study, series, instance = uids(path)
    params = {
        "requestType": "WADO",
        "studyUID": study,
        "seriesUID": series,
        "objectUID": instance,
        "contentType": "application/dicom",
    }
    response = httpx.get(f"{server.http}/wado", params={**params, "transferSyntax": "*"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.content.endswith(dataset_bytes(path))
    default = httpx.get(f"{server.http}/wado", params=params)
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(default.content))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(path).pixel_array)

    rendered = httpx.get(f"{server.http}/wado", params={**params, "contentType": "image/jpeg"})
    assert rendered.status_code == 406
    assert rendered.json()["parameter"] == "contentType"
    missing = httpx.get(
        f"{server.http}/wado", params={k: v for k, v in params.items() if k != "objectUID"}
    )
    assert missing.status_code == 400
    assert missing.json()["parameter"] == "objectUID"
    unknown = httpx.get(f"{server.http}/wado", params={**params, "objectUID": "1.2.3.4"})
    assert unknown.status_code == 404
    wrong_type = httpx.get(f"{server.http}/wado", params={**params, "requestType": "WADO-RS"})
    assert wrong_type.status_code == 400


def test_errors(stored: dict[str, Any]) -> None:
    server: KuvaServer = stored["server"]
    study, series, instance = uids(stored["multiframe"])
    base = url(server, "studies", study, "series", series, "instances", instance)

    def problem(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body: dict[str, Any] = response.json()
        assert body["status"] == status
        return body

    problem(httpx.get(url(server, "studies", "1.2.3.999")), 404)
    assert problem(httpx.get(url(server, "studies", "1.2.03")), 400)["parameter"] == "study"
    assert problem(httpx.get(f"{base}/frames/1,x"), 400)["parameter"] == "frames"
    assert problem(httpx.get(f"{base}/frames/0"), 400)["parameter"] == "frames"
    assert problem(httpx.get(f"{base}/frames/9"), 404)["parameter"] == "frames"
    assert problem(httpx.get(f"{base}/bulk/7FE0"), 400)["parameter"] == "tag"
    octet = {"Accept": 'multipart/related; type="application/octet-stream"'}
    problem(httpx.get(url(server, "studies", study), headers=octet), 406)
    lossy = {
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    }
    problem(httpx.get(base, headers=lossy), 406)
    problem(
        httpx.get(base, headers={"Accept": "multipart/related; type=application/dicom; q=x"}), 400
    )
    ct_study, _, _ = uids(stored["ct"][0])
    problem(httpx.get(url(server, "studies", ct_study, "series", "1.2.3.4")), 404)


def test_large_object_streamed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """A 1 GB object goes out over WADO-RS and WADO-URI without being held in memory."""
    if not database_url.startswith("sqlite"):
        pytest.skip("streaming does not depend on the index database")
    server = kuva_server()
    assert server.process is not None
    path = make_multiframe(tmp_path / "big.dcm", LARGE)
    store(server, [path])
    study, series, instance = uids(path)
    expected = path.stat().st_size
    with (
        PeakRss(server.process.pid) as rss,
        httpx.stream(
            "GET",
            url(server, "studies", study, "series", series, "instances", instance),
            headers={"Accept": AS_STORED},
            timeout=300,
        ) as response,
    ):
        assert response.status_code == 200
        received = sum(len(chunk) for chunk in response.iter_raw())
    assert received > expected
    assert rss.growth_mib < 100, f"server grew by {rss.growth_mib:.0f} MiB sending 1 GiB"

    params = {
        "requestType": "WADO",
        "studyUID": study,
        "seriesUID": series,
        "objectUID": instance,
        "contentType": "application/dicom",
        "transferSyntax": "*",
    }
    with (
        PeakRss(server.process.pid) as rss,
        httpx.stream("GET", f"{server.http}/wado", params=params, timeout=300) as response,
    ):
        assert response.status_code == 200
        received = sum(len(chunk) for chunk in response.iter_raw())
    assert received == int(response.headers["content-length"])
    assert rss.growth_mib < 100, f"server grew by {rss.growth_mib:.0f} MiB sending 1 GiB"

    # One frame of the last ones costs one frame, not the object.
    frames = pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames
    response = httpx.get(
        url(
            server, "studies", study, "series", series, "instances", instance, "frames", str(frames)
        ),
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    [(_, frame)] = multipart_parts(response)
    with path.open("rb") as f:
        f.seek(expected - len(frame))
        assert frame == f.read()
