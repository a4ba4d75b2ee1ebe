"""A small archive of known studies for query tests (C-FIND and QIDO-RS)."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE

from tests.support.peers import dcmtk_env
from tests.support.server import KuvaServer
from tests.support.synthetic import finnish_test_pic, make_ct_series

FINNISH_NAME = "Äijälä^Öljy"
ALICE_ID = finnish_test_pic(dt.date(1981, 1, 1), 900)
BOB_ID = finnish_test_pic(dt.date(1975, 5, 5), 913)


@dataclass
class Archive:
    server: KuvaServer
    studies: dict[str, list[Dataset]]  # name -> instances
    tmp: Path

    def find(
        self, model: str, *keys: str | bytes, extra: tuple[str, ...] = ()
    ) -> tuple[list[Dataset], str]:
        out = self.tmp / f"rsp-{generate_uid()[-12:]}"
        out.mkdir()
        args: list[str | bytes] = [
            "findscu",
            model,
            "-X",
            "-od",
            str(out),
            *extra,
            "-aet",
            "FINDER",
            "-aec",
            "KUVA",
            "127.0.0.1",
            str(self.server.dicom_port),
        ]
        for key in keys:
            args += ["-k", key]
        result = subprocess.run(args, capture_output=True, env=dcmtk_env(), timeout=60)
        text = (result.stdout + result.stderr).decode("utf-8", "replace")
        responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        return responses, text


def store(server: KuvaServer, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def build_archive(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> Archive:
    server = kuva_server()
    ct = make_ct_series(
        3,
        rows=16,
        cols=16,
        patient_id=ALICE_ID,
        patient_name=FINNISH_NAME,
        accession_number="ACC001",
        study_datetime=dt.datetime(2024, 1, 15, 9, 30),
    )
    mr_study = generate_uid()
    mr = make_ct_series(
        2,
        rows=16,
        cols=16,
        patient_id=ALICE_ID,
        patient_name=FINNISH_NAME,
        study_uid=mr_study,
        accession_number="ACC002",
        study_datetime=dt.datetime(2024, 6, 20, 14, 0),
    )
    for ds in mr:
        ds.Modality = "MR"
    sr = make_ct_series(
        1,
        rows=16,
        cols=16,
        patient_id=ALICE_ID,
        patient_name=FINNISH_NAME,
        study_uid=mr_study,
        accession_number="ACC002",
        series_number=2,
        study_datetime=dt.datetime(2024, 6, 20, 14, 0),
    )
    sr[0].Modality = "OT"
    # A second SOP Class in the study (SOP Classes in Study, PS3.4 C.6.2.1.2).
    sr[0].SOPClassUID = SecondaryCaptureImageStorage
    sr[0].file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    bob = make_ct_series(
        2,
        rows=16,
        cols=16,
        patient_id=BOB_ID,
        patient_name="Testinen^Matti",
        accession_number="ACC003",
        study_datetime=dt.datetime(2023, 12, 1, 8, 0),
    )
    studies = {"ct": ct, "mr": mr + sr, "bob": bob}
    for datasets in studies.values():
        store(server, datasets)
    return Archive(server, studies, tmp_path)
