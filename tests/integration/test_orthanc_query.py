"""Orthanc as an independent Query/Retrieve SCU against kuva (PS3.4 C.4.1, C.4.2).

A small synthetic study is stored into kuva with dcmtk's storescu; then Orthanc,
driven through its REST API, searches kuva with C-FIND (Study Root, study and
series levels) and retrieves from it with C-MOVE, naming itself as the Move
Destination. What Orthanc received must be exactly what was stored: the same SOP
Instances, each data set byte for byte. A C-MOVE naming an AE title kuva does not
know is refused with 0xA801 (Move Destination unknown), which Orthanc reports as
an error. Runs on SQLite and PostgreSQL.

The patient has a Finnish test identity code and a name with Finnish letters
(``Äyräpää^Öljy``), stored as UTF-8 (ISO_IR 192). Orthanc asks in its default
encoding: Latin-1 (ISO_IR 100) out of the box, UTF-8 after
``PUT /tools/default-encoding``; kuva answers in the character set asked for when
it can carry every value (PS3.4 C.4.1.1.3.2 and PS3.5 6.1.2.5.3).

Orthanc REST calls used (Orthanc 1.10):

* ``POST /modalities/kuva/query`` with ``{"Level": ..., "Query": {...}}``: C-FIND;
  the answer's ``ID`` names the query.
* ``GET /queries/{id}/answers`` and ``GET /queries/{id}/answers/{n}/content?simplify``:
  the C-FIND responses, decoded by Orthanc.
* ``POST /queries/{id}/answers/{n}/query-series``: C-FIND at series level below a
  study answer.
* ``POST /queries/{id}/answers/{n}/retrieve`` with ``{"TargetAet": ...}`` and
  ``POST /modalities/kuva/move`` with ``{"Level": ..., "Resources": [...]}``:
  C-MOVE; a failure status makes the call answer HTTP 500 with the status in
  ``Details``.
* ``PUT /tools/default-encoding``: the character set of Orthanc's next queries.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import DATABASES
from tests.integration.conftest import module_servers
from tests.support.archive import dataset_bytes
from tests.support.peers import (
    LOOPBACK,
    Orthanc,
    dcmtk_available,
    free_port,
    orthanc_available,
    storescu,
)
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    DEFAULT_PATIENT_NAME,
    finnish_test_pic,
    make_ct_series,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed"),
]

ORTHANC_AET = "ORTHANC"
SENDER = "MODALITY1"
KUVA_MODALITY = "kuva"  # Orthanc's symbolic name for kuva in DicomModalities

PATIENT_ID = "010181-900C"
PATIENT_NAME = "Äyräpää^Öljy"
OTHER_PATIENT_ID = finnish_test_pic(dt.date(1975, 5, 15), 913)

MOVE_DESTINATION_UNKNOWN = "0xA801"


@dataclass
class Study:
    """What was stored into kuva: one study's files by SOP Instance UID, per series."""

    study_uid: str
    accession_number: str
    series: dict[str, dict[str, Path]]  # Series Instance UID -> {SOP Instance UID: file}

    @property
    def instances(self) -> dict[str, Path]:
        """Every file of the study, by SOP Instance UID."""
        return {uid: path for files in self.series.values() for uid, path in files.items()}


@dataclass
class Peers:
    """kuva holding two studies, and an Orthanc that has kuva as modality ``kuva``."""

    kuva: KuvaServer
    orthanc: Orthanc
    study: Study  # patient PATIENT_ID: two series
    other: Study  # patient OTHER_PATIENT_ID: one series

    def diagnostics(self) -> str:
        """Both servers' recent output, for assertion messages."""
        return (
            f"\n--- kuva log ---\n{self.kuva.log()[-5000:]}"
            f"\n--- Orthanc log ---\n{self.orthanc.log_text()[-3000:]}"
        )

    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """C-FIND by Orthanc: every answer's content, simplified (keyword -> value)."""
        job = self.orthanc.rest_post(
            f"/modalities/{KUVA_MODALITY}/query", {"Level": level, "Query": query}
        )
        return self.answers(job["ID"])

    def answers(self, query_id: str) -> list[dict[str, Any]]:
        """The answers Orthanc recorded for query ``query_id``."""
        return [
            self.orthanc.rest_get(f"/queries/{query_id}/answers/{n}/content?simplify")
            for n in self.orthanc.rest_get(f"/queries/{query_id}/answers")
        ]

    def received(self, scratch: Path) -> dict[str, Path]:
        """Every instance Orthanc holds, downloaded as Part 10 files, by SOP Instance UID."""
        scratch.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        for instance_id in self.orthanc.rest_get("/instances"):
            path = scratch / f"{instance_id}.dcm"
            path.write_bytes(self.orthanc.rest_get_bytes(f"/instances/{instance_id}/file"))
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            files[uid] = path
        return files


def node(ae_title: str, port: int = 1) -> dict[str, Any]:
    return {"ae_title": ae_title, "host": LOOPBACK, "port": port, "organization": ""}


def write_study(directory: Path, patient_id: str, patient_name: str, sizes: list[int]) -> Study:
    """A CT study of ``len(sizes)`` series with that many slices each, as Part 10 files."""
    study_uid: str | None = None
    series: dict[str, dict[str, Path]] = {}
    accession = ""
    for number, size in enumerate(sizes, start=1):
        datasets = make_ct_series(
            size,
            rows=96,
            cols=96,
            patient_id=patient_id,
            patient_name=patient_name,
            study_uid=study_uid,
            series_number=number,
            seed=number,
        )
        study_uid = str(datasets[0].StudyInstanceUID)
        accession = str(datasets[0].AccessionNumber)
        paths = write_series(datasets, directory / f"series{number}")
        series[str(datasets[0].SeriesInstanceUID)] = {
            str(ds.SOPInstanceUID): path for ds, path in zip(datasets, paths, strict=True)
        }
    assert study_uid is not None
    return Study(study_uid=study_uid, accession_number=accession, series=series)


def store(kuva: KuvaServer, study: Study) -> None:
    result = storescu(
        list(study.instances.values()), LOOPBACK, kuva.dicom_port, aet=SENDER, aec=kuva.ae_title
    )
    assert result.returncode == 0, result.stdout + result.stderr + kuva.log()[-3000:]


@pytest.fixture(scope="module", params=DATABASES)
def peers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Peers]:
    """kuva knows Orthanc (calling AE and Move Destination) and the sender; Orthanc knows
    kuva. One pair per database for the module: the tests only read kuva, and only the
    move test writes into Orthanc."""
    tmp_path = tmp_path_factory.mktemp("orthanc-query")
    orthanc_port = free_port()
    with module_servers(request.param, tmp_path) as start:
        kuva = start(nodes=[node(SENDER), node(ORTHANC_AET, orthanc_port)])
        study = write_study(tmp_path / "study", PATIENT_ID, PATIENT_NAME, [4, 2])
        other = write_study(tmp_path / "other", OTHER_PATIENT_ID, DEFAULT_PATIENT_NAME, [2])
        store(kuva, study)
        store(kuva, other)
        with Orthanc(
            tmp_path / "orthanc",
            aet=ORTHANC_AET,
            dicom_port=orthanc_port,
            modalities={KUVA_MODALITY: (kuva.ae_title, LOOPBACK, kuva.dicom_port)},
        ) as orthanc:
            yield Peers(kuva=kuva, orthanc=orthanc, study=study, other=other)


def assert_same_instances(received: dict[str, Path], sent: dict[str, Path]) -> None:
    """Orthanc holds exactly the sent SOP Instances, each data set byte for byte."""
    assert sorted(received) == sorted(sent)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(sent[uid]), uid


# -- C-FIND ---------------------------------------------------------------------------


def test_orthanc_finds_study_by_patient_id(peers: Peers) -> None:
    """Study level, Study Root: the one study of the patient, with the values stored."""
    answers = peers.find(
        "Study",
        {
            "PatientID": PATIENT_ID,
            "PatientName": "",
            "StudyDate": "",
            "AccessionNumber": "",
            "ModalitiesInStudy": "",
            "NumberOfStudyRelatedSeries": "",
            "NumberOfStudyRelatedInstances": "",
            "SOPClassesInStudy": "",
        },
    )
    assert len(answers) == 1, f"{answers}{peers.diagnostics()}"
    [answer] = answers
    sent = pydicom.dcmread(next(iter(peers.study.instances.values())), stop_before_pixels=True)
    assert answer["QueryRetrieveLevel"] == "STUDY"
    assert answer["StudyInstanceUID"] == peers.study.study_uid
    assert answer["PatientID"] == PATIENT_ID
    assert answer["PatientName"] == PATIENT_NAME
    assert answer["StudyDate"] == sent.StudyDate
    assert answer["AccessionNumber"] == peers.study.accession_number
    assert answer["ModalitiesInStudy"] == "CT"
    assert answer["NumberOfStudyRelatedSeries"] == "2"
    assert answer["NumberOfStudyRelatedInstances"] == "6"
    assert answer["SOPClassesInStudy"] == sent.SOPClassUID  # what a C-GET SCU negotiates
    assert answer["InstanceAvailability"] == "ONLINE"
    assert answer["RetrieveAETitle"] == peers.kuva.ae_title


@pytest.mark.parametrize(
    ("encoding", "charset"), [("Latin1", "ISO_IR 100"), ("Utf8", "ISO_IR 192")]
)
def test_orthanc_finds_by_wildcard_name_in_its_character_set(
    peers: Peers, encoding: str, charset: str
) -> None:
    """``Äyr*`` asked in Latin-1 or UTF-8 matches the UTF-8 name; the answer is in the same set."""
    assert peers.orthanc.rest_put("/tools/default-encoding", encoding).decode() == encoding
    answers = peers.find("Study", {"PatientName": "Äyr*", "PatientID": ""})
    assert [a["StudyInstanceUID"] for a in answers] == [peers.study.study_uid], (
        f"{answers}{peers.diagnostics()}"
    )
    assert answers[0]["PatientName"] == PATIENT_NAME
    assert answers[0]["PatientID"] == PATIENT_ID
    assert answers[0]["SpecificCharacterSet"] == charset

    others = peers.find("Study", {"PatientName": "Testi*", "PatientID": ""})
    assert [(a["StudyInstanceUID"], a["PatientID"]) for a in others] == [
        (peers.other.study_uid, OTHER_PATIENT_ID)
    ]
    assert peers.find("Study", {"PatientName": "Öljy*"}) == []


def test_orthanc_finds_series_of_a_study(peers: Peers) -> None:
    """Series level below a study answer, both through Orthanc's hierarchy and directly."""
    job = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/query",
        {"Level": "Study", "Query": {"PatientID": PATIENT_ID}},
    )
    below = peers.orthanc.rest_post(f"/queries/{job['ID']}/answers/0/query-series", {})
    series = peers.answers(below["ID"])
    assert sorted(a["SeriesInstanceUID"] for a in series) == sorted(peers.study.series)
    assert {a["StudyInstanceUID"] for a in series} == {peers.study.study_uid}
    assert {a["QueryRetrieveLevel"] for a in series} == {"SERIES"}

    direct = peers.find(
        "Series",
        {
            "StudyInstanceUID": peers.study.study_uid,
            "Modality": "",
            "SeriesNumber": "",
            "NumberOfSeriesRelatedInstances": "",
        },
    )
    expected = {
        uid: (str(number), str(len(files)))
        for number, (uid, files) in enumerate(peers.study.series.items(), start=1)
    }
    assert {
        a["SeriesInstanceUID"]: (a["SeriesNumber"], a["NumberOfSeriesRelatedInstances"])
        for a in direct
    } == expected, f"{direct}{peers.diagnostics()}"
    assert {a["Modality"] for a in direct} == {"CT"}


# -- C-MOVE ---------------------------------------------------------------------------


def test_orthanc_moves_series_then_study_to_itself(peers: Peers, tmp_path: Path) -> None:
    """C-MOVE with Orthanc as destination: it ends up holding exactly what was stored
    (the only test of the module that stores into Orthanc)."""
    assert peers.orthanc.instance_count() == 0
    second_uid, second = list(peers.study.series.items())[1]
    peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/move",
        {
            "Level": "Series",
            "Resources": [
                {"StudyInstanceUID": peers.study.study_uid, "SeriesInstanceUID": second_uid}
            ],
            "TargetAet": ORTHANC_AET,
            "Synchronous": True,
        },
    )
    assert_same_instances(peers.received(tmp_path / "after-series"), second)

    job = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/query",
        {"Level": "Study", "Query": {"PatientID": PATIENT_ID}},
    )
    retrieved = peers.orthanc.rest_post(
        f"/queries/{job['ID']}/answers/0/retrieve",
        {"TargetAet": ORTHANC_AET, "Synchronous": True},
    )
    assert retrieved["RemoteAet"] == peers.kuva.ae_title, retrieved
    received = peers.received(tmp_path / "after-study")
    assert_same_instances(received, peers.study.instances)
    for instance_id in peers.orthanc.rest_get("/instances"):
        tags = peers.orthanc.rest_get(f"/instances/{instance_id}/simplified-tags")
        assert (tags["PatientID"], tags["PatientName"]) == (PATIENT_ID, PATIENT_NAME)
    log = peers.kuva.log()
    assert f"C-MOVE from {ORTHANC_AET} (SERIES level) to {ORTHANC_AET}: 2 completed" in log
    assert f"C-MOVE from {ORTHANC_AET} (STUDY level) to {ORTHANC_AET}: 6 completed" in log


def test_orthanc_move_to_unknown_destination_is_refused(peers: Peers) -> None:
    """A Move Destination kuva has no node for: 0xA801, reported by Orthanc as an error."""
    before = peers.orthanc.instance_count()
    job = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/query",
        {"Level": "Study", "Query": {"PatientID": PATIENT_ID}},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        peers.orthanc.rest_post(
            f"/queries/{job['ID']}/answers/0/retrieve",
            {"TargetAet": "NOWHERE", "Synchronous": True},
        )
    error = json.loads(refused.value.read())
    assert refused.value.code == 500, error
    assert MOVE_DESTINATION_UNKNOWN in error["Details"], f"{error}{peers.diagnostics()}"
    assert peers.orthanc.instance_count() == before
    assert "Move Destination 'NOWHERE' is not a configured node" in peers.kuva.log()
