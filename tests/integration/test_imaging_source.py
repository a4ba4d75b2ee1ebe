"""XDS-I.b Imaging Document Source: the manifest of a stored study, and RAD-69.

A study is stored into a running kuva with dcmtk's storescu; the Imaging Document
Source is then built in this process on the same index and blob folder, and the
RAD-69 transaction answers the NIST XDS Toolkit's sample requests (their UIDs
replaced by the stored study's). What comes back must be the data set that was
sent, byte for byte, when its stored transfer syntax is requested, and the same
pixels in another syntax when only that one is; unknown documents get their own
error (ITI TF-3 Table 4.2.4.1-2), and the invalid samples the error SOURCES.md
names.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from lxml import etree
from lxml.etree import _Element as Element
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

import kuva.services.retrieve_imaging_document_set as rad69
import kuva.xds
from kuva.codec.kos import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
from kuva.codec.outgoing import encoded
from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.database import make_engine
from kuva.model.xds import ResponseStatus
from kuva.services.disclosure import DisclosureLog
from kuva.services.imaging_document_source import ImagingDocumentSource, UnknownStudy
from kuva.services.retrieve import RetrieveService
from kuva.services.retrieve_imaging_document_set import (
    DocumentRequest,
    ImagingDocumentSetRequest,
    ImagingDocumentSetRetrieval,
)
from kuva.storage.filesystem import FileBlobStore
from kuva.xds.messages import SoapRequest, SoapResponse, Transaction
from kuva.xds.namespaces import (
    RESPONSE_ACTIONS,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    XOP,
    q,
)
from kuva.xds.rad69 import retrieve_imaging_document_set
from tests.support.archive import dataset_bytes
from tests.support.peers import LOOPBACK, dcmtk_available, storescu, storescu_propose_args
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    FINNISH_LETTERS_PATIENT_NAME,
    make_ct_series,
    make_transfer_syntax_files,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
SCHEMAS = Path(kuva.xds.__file__).resolve().parent / "schemas"
NIST_REPOSITORY = "1.3.6.1.4.1.21367.13.80.110"  # the samples' Imaging Document Source
SERIES_SIZES = (5, 4, 5)  # as in the multiseries sample
ACCESSION = "T2024000123"
SUCCESS = ResponseStatus.SUCCESS.value
PARTIAL = ResponseStatus.PARTIAL_SUCCESS.value
FAILURE = ResponseStatus.FAILURE.value


@dataclass
class Stored:
    server: KuvaServer
    settings: Settings
    source: ImagingDocumentSource
    rad69: ImagingDocumentSetRetrieval
    transaction: Transaction
    study_uid: str
    series: list[tuple[str, list[str]]]  # (Series Instance UID, SOP Instance UIDs)
    sent: dict[str, Path]  # SOP Instance UID -> the file sent
    ts_uid: dict[str, str]  # transfer syntax -> SOP Instance UID (one study of its own)
    ts_study: str
    ts_series: str


def _store(server: KuvaServer, files: list[Path], *options: str) -> None:
    result = storescu(files, LOOPBACK, server.dicom_port, aec=server.ae_title, extra_args=options)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def stored(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[Stored]:
    server = kuva_server()
    study_uid = generate_uid()
    series: list[tuple[str, list[str]]] = []
    sent: dict[str, Path] = {}
    files: list[Path] = []
    for number, size in enumerate(SERIES_SIZES, start=1):
        datasets = make_ct_series(
            size,
            rows=32,
            cols=32,
            patient_id=DEFAULT_PATIENT_ID,
            patient_name=FINNISH_LETTERS_PATIENT_NAME,
            study_uid=study_uid,
            accession_number=ACCESSION,
            series_number=number,
            seed=number,
        )
        paths = write_series(datasets, tmp_path / f"series{number}")
        series.append((datasets[0].SeriesInstanceUID, [ds.SOPInstanceUID for ds in datasets]))
        sent.update({ds.SOPInstanceUID: path for ds, path in zip(datasets, paths, strict=True)})
        files.extend(paths)
    _store(server, files)

    ts_files = make_transfer_syntax_files(tmp_path / "ts")
    ts_uid: dict[str, str] = {}
    for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless):
        _store(server, [ts_files[syntax]], *storescu_propose_args(ts_files[syntax]))
        header = pydicom.dcmread(ts_files[syntax], stop_before_pixels=True)
        ts_uid[syntax] = header.SOPInstanceUID
        sent[header.SOPInstanceUID] = ts_files[syntax]

    engine = make_engine(database_url)
    blobs = FileBlobStore(server.blob_dir)
    settings = Settings()
    source = ImagingDocumentSource(engine, settings)
    retrieval = ImagingDocumentSetRetrieval(
        RetrieveService(engine, blobs), settings, DisclosureLog(engine)
    )
    try:
        yield Stored(
            server=server,
            settings=settings,
            source=source,
            rad69=retrieval,
            transaction=retrieve_imaging_document_set(retrieval, settings),
            study_uid=study_uid,
            series=series,
            sent=sent,
            ts_uid=ts_uid,
            ts_study=header.StudyInstanceUID,
            ts_series=header.SeriesInstanceUID,
        )
    finally:
        blobs.sync_pool.shutdown()
        engine.dispose()


# ----------------------------------------------------------------------------- helpers


def sample(name: str) -> Element:
    return etree.parse(str(SAMPLES / name)).getroot()


def fill(
    body: Element, study_uid: str, series: list[tuple[str, list[str]]], repository: str
) -> Element:
    """Put the stored study's UIDs (and our repository id) into a sample request.

    Empty UIDs stay empty and other repository ids stay as they are: they are
    what the invalid samples are about.
    """
    for study in body.iterfind(q("xdsi", "StudyRequest")):
        if study.get("studyInstanceUID"):
            study.set("studyInstanceUID", study_uid)
        requests = study.findall(q("xdsi", "SeriesRequest"))
        for request, (series_uid, sop_uids) in zip(requests, series, strict=False):
            if request.get("seriesInstanceUID"):
                request.set("seriesInstanceUID", series_uid)
            documents = request.findall(q("xdsb", "DocumentRequest"))
            for document, sop_uid in zip(documents, sop_uids, strict=False):
                repository_id = document.find(q("xdsb", "RepositoryUniqueId"))
                assert repository_id is not None
                if repository_id.text == NIST_REPOSITORY:
                    repository_id.text = repository
                unique_id = document.find(q("xdsb", "DocumentUniqueId"))
                assert unique_id is not None
                unique_id.text = sop_uid
    return body


def build_request(documents: list[tuple[str, str, str, str]], syntaxes: list[str]) -> Element:
    """A RetrieveImagingDocumentSetRequest: (study, series, repository, SOP) per document."""
    root = etree.Element(q("xdsi", "RetrieveImagingDocumentSetRequest"))
    for study_uid, series_uid, repository, sop_uid in documents:
        study = etree.SubElement(root, q("xdsi", "StudyRequest"), studyInstanceUID=study_uid)
        series = etree.SubElement(study, q("xdsi", "SeriesRequest"), seriesInstanceUID=series_uid)
        document = etree.SubElement(series, q("xdsb", "DocumentRequest"))
        etree.SubElement(document, q("xdsb", "RepositoryUniqueId")).text = repository
        etree.SubElement(document, q("xdsb", "DocumentUniqueId")).text = sop_uid
    listing = etree.SubElement(root, q("xdsi", "TransferSyntaxUIDList"))
    for syntax in syntaxes:
        etree.SubElement(listing, q("xdsi", "TransferSyntaxUID")).text = syntax
    return root


@dataclass
class Answer:
    status: str
    errors: list[tuple[str, str, str]]  # (errorCode, location, codeContext)
    documents: list[dict[str, str]]
    data: dict[str, bytes]  # DocumentUniqueId -> the object sent
    lengths: dict[str, int | None]


_SCHEMA: list[etree.XMLSchema] = []


def repository_schema() -> etree.XMLSchema:
    if not _SCHEMA:
        _SCHEMA.append(etree.XMLSchema(etree.parse(str(SCHEMAS / "XDS.b_DocumentRepository.xsd"))))
    return _SCHEMA[0]


def call(stored: Stored, body: Element) -> Answer:
    request = SoapRequest(
        action=RETRIEVE_IMAGING_DOCUMENT_SET,
        message_id=f"urn:uuid:{uuid.uuid4()}",
        body=etree.fromstring(etree.tostring(body)),
        mtom=True,
    )
    return read(stored.transaction.handle(request))


def read(response: SoapResponse) -> Answer:
    """The response's content, its attachments read; checked against the XDS.b schema."""
    assert response.action == RESPONSE_ACTIONS[RETRIEVE_IMAGING_DOCUMENT_SET]
    body = response.body
    assert body.tag == q("xdsb", "RetrieveDocumentSetResponse")
    registry = body.find(q("rs", "RegistryResponse"))
    assert registry is not None
    errors = [
        (e.get("errorCode", ""), e.get("location", ""), e.get("codeContext", ""))
        for e in registry.iterfind(f"{q('rs', 'RegistryErrorList')}/{q('rs', 'RegistryError')}")
    ]
    for error in registry.iterfind(f".//{q('rs', 'RegistryError')}"):
        assert error.get("severity") == "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
    by_id = {a.content_id: a for a in response.attachments}
    assert len(by_id) == len(response.attachments)
    documents: list[dict[str, str]] = []
    data: dict[str, bytes] = {}
    lengths: dict[str, int | None] = {}
    infoset = etree.fromstring(etree.tostring(body))  # XOP Includes resolved, for the schema
    for element, resolved in zip(
        body.iterfind(q("xdsb", "DocumentResponse")),
        infoset.iterfind(q("xdsb", "DocumentResponse")),
        strict=True,
    ):
        fields = {etree.QName(child).localname: (child.text or "") for child in element}
        include = element.find(f"{q('xdsb', 'Document')}/{{{XOP}}}Include")
        assert include is not None
        href = include.get("href", "")
        assert href.startswith("cid:")
        attachment = by_id[href.removeprefix("cid:")]
        assert attachment.content_type == "application/dicom"
        content = b"".join(attachment.chunks())
        if attachment.length is not None:
            assert attachment.length == len(content)
        document = resolved.find(q("xdsb", "Document"))
        assert document is not None
        for child in list(document):
            document.remove(child)
        document.text = base64.b64encode(content).decode("ascii")
        documents.append(fields)
        data[fields["DocumentUniqueId"]] = content
        lengths[fields["DocumentUniqueId"]] = attachment.length
    schema = repository_schema()
    assert schema.validate(infoset), schema.error_log
    return Answer(registry.get("status", ""), errors, documents, data, lengths)


def part10_dataset(content: bytes) -> bytes:
    """The data set of a Part 10 object: what follows its File Meta Information."""
    assert content[128:132] == b"DICM"
    group_length = int.from_bytes(content[140:144], "little")
    return content[144 + group_length :]


def flat(series: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    return [(series_uid, sop) for series_uid, sops in series for sop in sops]


# ----------------------------------------------------------------------------- RAD-69


@pytest.mark.parametrize(
    "name",
    [
        "rad69-RetrieveImagingDocumentSet-request.xml",
        "rad69-RetrieveImagingDocumentSet-multiseries-request.xml",
    ],
)
def test_rad69_samples_return_every_instance_as_sent(
    stored: Stored, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    def counting(obj: Any, target: Any) -> Any:
        opened.append(obj.instance.sop_instance_uid)
        return encoded(obj, target)

    monkeypatch.setattr(rad69, "encoded", counting)
    ours = stored.settings.xds.imaging_source_unique_id
    body = fill(sample(name), stored.study_uid, stored.series, ours)
    requested = [
        (d.findtext(q("xdsb", "DocumentUniqueId")) or "")
        for d in body.iter(q("xdsb", "DocumentRequest"))
    ]
    expected_count = 1 if "multiseries" not in name else sum(SERIES_SIZES)
    assert len(requested) == expected_count

    request = SoapRequest(
        action=RETRIEVE_IMAGING_DOCUMENT_SET, message_id=f"urn:uuid:{uuid.uuid4()}", body=body
    )
    response = stored.transaction.handle(request)
    assert opened == []  # nothing is read before the response is written
    answer = read(response)
    assert sorted(opened) == sorted(requested)

    assert (answer.status, answer.errors) == (SUCCESS, [])
    assert [d["DocumentUniqueId"] for d in answer.documents] == requested
    for document in answer.documents:
        assert document["RepositoryUniqueId"] == ours
        assert document["mimeType"] == "application/dicom"
        assert "HomeCommunityId" not in document
    for uid in requested:
        content = answer.data[uid]
        # Requested as stored (Explicit VR Little Endian): the data set as sent.
        assert part10_dataset(content) == dataset_bytes(stored.sent[uid])
        assert answer.lengths[uid] == len(content)
        ds = pydicom.dcmread(io.BytesIO(content))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert str(ds.PatientName) == FINNISH_LETTERS_PATIENT_NAME


def test_rad69_converts_when_only_another_syntax_is_acceptable(stored: Stored) -> None:
    ours = stored.settings.xds.imaging_source_unique_id
    j2k, rle, ele = (
        stored.ts_uid[JPEG2000Lossless],
        stored.ts_uid[RLELossless],
        stored.ts_uid[ExplicitVRLittleEndian],
    )

    def ask(uids: list[str], syntaxes: list[str]) -> Answer:
        documents = [(stored.ts_study, stored.ts_series, ours, uid) for uid in uids]
        return call(stored, build_request(documents, syntaxes))

    def same_pixels(content: bytes, uid: str, syntax: str) -> None:
        ds = pydicom.dcmread(io.BytesIO(content))
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPInstanceUID == uid
        sent = pydicom.dcmread(stored.sent[uid])
        assert np.array_equal(ds.pixel_array, sent.pixel_array)

    # JPEG 2000 Lossless and RLE Lossless objects to a consumer taking Explicit VR LE.
    answer = ask([j2k, rle], [ExplicitVRLittleEndian])
    assert (answer.status, answer.errors) == (SUCCESS, [])
    for uid in (j2k, rle):
        same_pixels(answer.data[uid], uid, ExplicitVRLittleEndian)
        assert answer.lengths[uid] is None  # converted while sent

    # The first acceptable one in the consumer's order: JPEG Lossless SV1 cannot be
    # made here, Explicit VR LE can; the stored syntax goes out unchanged.
    answer = ask([j2k], [JPEGLosslessSV1, ExplicitVRLittleEndian, JPEG2000Lossless])
    same_pixels(answer.data[j2k], j2k, ExplicitVRLittleEndian)
    answer = ask([j2k], [JPEG2000Lossless, ExplicitVRLittleEndian])
    assert part10_dataset(answer.data[j2k]) == dataset_bytes(stored.sent[j2k])

    # An uncompressed object to a consumer taking RLE Lossless only: compressed.
    answer = ask([ele], [RLELossless])
    same_pixels(answer.data[ele], ele, RLELossless)

    # Nothing acceptable: XDSRepositoryError naming the syntaxes (NIST ids_2018-4811
    # case 9, an unknown syntax too).
    answer = ask([ele, j2k], [JPEGLosslessSV1, "1.2.3.4.5.6"])
    assert answer.status == FAILURE
    assert answer.documents == []
    assert [(code, location) for code, location, _ in answer.errors] == [
        ("XDSRepositoryError", ele),
        ("XDSRepositoryError", j2k),
    ]
    assert JPEGLosslessSV1 in answer.errors[0][2]
    assert "1.2.3.4.5.6" in answer.errors[0][2]


def test_rad69_partial_success_with_an_error_per_document(stored: Stored) -> None:
    ours = stored.settings.xds.imaging_source_unique_id
    (series1, sops1), (series2, sops2), (series3, sops3) = stored.series
    unknown = generate_uid()
    documents = [
        (stored.study_uid, series1, ours, sops1[0]),
        (stored.study_uid, series1, ours, unknown),  # no such instance
        (stored.study_uid, series2, ours, sops1[1]),  # not in that series
        (stored.study_uid, series3, "1.2.246.10.99.404", sops3[0]),  # another repository
        (stored.study_uid, stored.ts_series, ours, stored.ts_uid[ExplicitVRLittleEndian]),
        (stored.ts_study, series2, ours, sops2[0]),  # not in that study
        (stored.study_uid, series2, ours, sops2[1]),
    ]
    answer = call(stored, build_request(documents, [ExplicitVRLittleEndian]))
    assert answer.status == PARTIAL
    assert [(code, location) for code, location, _ in answer.errors] == [
        ("XDSDocumentUniqueIdError", unknown),
        ("XDSDocumentUniqueIdError", sops1[1]),
        ("XDSUnknownRepositoryId", sops3[0]),
        ("XDSDocumentUniqueIdError", stored.ts_uid[ExplicitVRLittleEndian]),
        ("XDSDocumentUniqueIdError", sops2[0]),
    ]
    assert [d["DocumentUniqueId"] for d in answer.documents] == [sops1[0], sops2[1]]
    for uid in (sops1[0], sops2[1]):
        assert part10_dataset(answer.data[uid]) == dataset_bytes(stored.sent[uid])

    # The service tells whose documents went out (for the disclosure log).
    result = stored.rad69.retrieve(
        ImagingDocumentSetRequest(
            documents=(DocumentRequest(stored.study_uid, series1, ours, sops1[2]),),
            transfer_syntax_uids=(ExplicitVRLittleEndian,),
        )
    )
    [document] = result.documents
    assert document.register_holder == LOCAL_ORGANIZATION_OID
    assert document.transfer_syntax_uid == ExplicitVRLittleEndian

    # A HomeCommunityId that is not kuva's (XDSUnknownCommunity); kuva's is echoed.
    result = stored.rad69.retrieve(
        ImagingDocumentSetRequest(
            documents=(
                DocumentRequest(stored.study_uid, series1, ours, sops1[2], "urn:oid:1.2.3"),
                DocumentRequest(
                    stored.study_uid, series1, ours, sops1[3], stored.settings.xds.home_community_id
                ),
            ),
            transfer_syntax_uids=(ExplicitVRLittleEndian,),
        )
    )
    assert [(e.code, e.location) for e in result.errors] == [("XDSUnknownCommunity", sops1[2])]
    assert [d.home_community_id for d in result.documents] == [
        stored.settings.xds.home_community_id
    ]


def test_rad69_invalid_samples_get_the_named_error(stored: Stored) -> None:
    ours = stored.settings.xds.imaging_source_unique_id
    series1, sops1 = stored.series[0]

    # SOURCES.md: Failure, XDSUnknownRepositoryId (ids_2018-4811 case 1).
    body = fill(
        sample("invalid-rad69-unknown-repository.xml"), stored.study_uid, [(series1, sops1)], ours
    )
    answer = call(stored, body)
    assert answer.status == FAILURE
    assert [(code, location) for code, location, _ in answer.errors] == [
        ("XDSUnknownRepositoryId", sops1[0])
    ]
    assert answer.documents == []

    # SOURCES.md: Failure, XDSIRequestError (case 5), although the document exists.
    body = fill(
        sample("invalid-rad69-empty-studyInstanceUID.xml"),
        stored.study_uid,
        [(series1, sops1)],
        ours,
    )
    answer = call(stored, body)
    assert answer.status == FAILURE
    assert [code for code, _, _ in answer.errors] == ["XDSIRequestError"]
    assert "studyInstanceUID" in answer.errors[0][2]
    assert answer.documents == []

    # Empty series UID, empty transfer syntax (cases 6 and 8), a malformed document UID.
    cases: list[tuple[list[tuple[str, str, str, str]], list[str]]] = [
        ([(stored.study_uid, "", ours, sops1[0])], [ExplicitVRLittleEndian]),
        ([(stored.study_uid, series1, ours, sops1[0])], [""]),
        ([(stored.study_uid, series1, ours, "1.2.abc")], [ExplicitVRLittleEndian]),
    ]
    for documents, syntaxes in cases:
        answer = call(stored, build_request(documents, syntaxes))
        assert answer.status == FAILURE
        assert [code for code, _, _ in answer.errors] == ["XDSIRequestError"]
        assert answer.documents == []

    # A payload the schema refused: the transaction's own error, not a fault.
    request = SoapRequest(
        action=RETRIEVE_IMAGING_DOCUMENT_SET,
        message_id=f"urn:uuid:{uuid.uuid4()}",
        body=sample("rad69-RetrieveImagingDocumentSet-request.xml"),
    )
    answer = read(stored.transaction.invalid(request, ["element 'x': not expected"]))
    assert answer.status == FAILURE
    assert [code for code, _, _ in answer.errors] == ["XDSIRequestError"]
    assert "not expected" in answer.errors[0][2]
    assert stored.transaction.payload == q("xdsi", "RetrieveImagingDocumentSetRequest")
    assert stored.transaction.action == RETRIEVE_IMAGING_DOCUMENT_SET


# ----------------------------------------------------------------------------- manifest


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def test_manifest_of_a_stored_study(stored: Stored, tmp_path: Path) -> None:
    manifest = stored.source.manifest_for_study(stored.study_uid)
    assert manifest.StudyInstanceUID == stored.study_uid
    assert str(manifest.PatientName) == FINNISH_LETTERS_PATIENT_NAME
    assert (manifest.PatientID, manifest.IssuerOfPatientID) == (DEFAULT_PATIENT_ID, "1.2.246.21")
    assert manifest.AccessionNumber == ACCESSION
    assert manifest.ReferencedRequestSequence[0].AccessionNumber == ACCESSION
    [evidence] = manifest.CurrentRequestedProcedureEvidenceSequence
    listed = [
        (item.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
        for item in evidence.ReferencedSeriesSequence
        for ref in item.ReferencedSOPSequence
    ]
    assert listed == flat(stored.series)  # series by number, instances by number
    for item in evidence.ReferencedSeriesSequence:
        assert item.RetrieveAETitle == stored.server.ae_title
        assert item.RetrieveLocationUID == stored.settings.xds.imaging_source_unique_id
    assert [item.ValueType for item in manifest.ContentSequence] == ["IMAGE"] * len(listed)

    path = tmp_path / "manifest.dcm"
    manifest.save_as(path, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(path) == []

    # Stored into the study, the manifest is not listed by the next one.
    _store(stored.server, [path])
    again = stored.source.manifest_for_study(stored.study_uid)
    [evidence] = again.CurrentRequestedProcedureEvidenceSequence
    relisted = [
        (item.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
        for item in evidence.ReferencedSeriesSequence
        for ref in item.ReferencedSOPSequence
    ]
    assert relisted == listed
    assert again.SOPInstanceUID != manifest.SOPInstanceUID
    # ... but RAD-69 hands it out like any stored instance.
    ours = stored.settings.xds.imaging_source_unique_id
    answer = call(
        stored,
        build_request(
            [(stored.study_uid, manifest.SeriesInstanceUID, ours, manifest.SOPInstanceUID)],
            [ExplicitVRLittleEndian],
        ),
    )
    assert answer.status == SUCCESS
    back = pydicom.dcmread(io.BytesIO(answer.data[manifest.SOPInstanceUID]))
    assert back.SOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE

    with pytest.raises(UnknownStudy):
        stored.source.manifest_for_study(generate_uid())
