"""HL7 v2 ADT over MLLP against a running kuva, SQLite and PostgreSQL.

python-hl7's ``mllp_send`` and raw sockets send merges (A40), updates (A08, A31),
identifier changes (A47) and unlinks (A37) for studies stored with dcmtk's storescu;
dcmtk's findscu then shows the corrected identity. The failure paths: a circular
merge, a missing PID-3, an unknown source under ``strict_merge``, an unsupported type
or version, garbage and bad framing, a 5 MB message, a control id sent twice, Finnish
names in UTF-8 and ISO-8859-1.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from tests.support.peers import LOOPBACK, dcmtk_available, dcmtk_env, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER, make_ct_series, write_series

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

SURVIVOR = "010181-900C"
MERGED = "020202-900D"
THIRD = "030303-900E"
PID3 = "{}^^^&" + FINNISH_PIC_ISSUER + "&ISO"
VT, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Hl7Site:
    server: KuvaServer
    database_url: str
    tmp: Path

    def store(self, patient_id: str, n: int = 2) -> str:
        study_uid = generate_uid()
        datasets = make_ct_series(
            n, rows=16, cols=16, patient_id=patient_id, study_uid=study_uid, seed=n
        )
        paths = write_series(datasets, self.tmp / study_uid)
        result = storescu(paths, LOOPBACK, self.server.dicom_port, aec="KUVA")
        assert result.returncode == 0, result.stdout + result.stderr
        return study_uid

    def find_study(self, study_uid: str) -> Dataset:
        out = self.tmp / f"find-{generate_uid()[-12:]}"
        out.mkdir()
        command = [
            "findscu", "-S", "-X", "-od", str(out), "-aec", "KUVA", LOOPBACK,
            str(self.server.dicom_port), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", "-k", "PatientID", "-k", "PatientName",
            "-k", "IssuerOfPatientID", "-k", "PatientBirthDate", "-k", "PatientSex",
            "-k", "SpecificCharacterSet=ISO_IR 192",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        return found

    def patients(self, patient_id: str) -> list[Dataset]:
        out = self.tmp / f"find-{generate_uid()[-12:]}"
        out.mkdir()
        command = [
            "findscu", "-P", "-X", "-od", str(out), "-aec", "KUVA", LOOPBACK,
            str(self.server.dicom_port), "-k", "QueryRetrieveLevel=PATIENT",
            "-k", f"PatientID={patient_id}", "-k", "NumberOfPatientRelatedStudies",
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60, check=True)
        return [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]

    def mllp_send(self, message: str) -> str:
        """python-hl7's MLLP client; the ACK it prints."""
        mllp_send = Path(sys.executable).with_name("mllp_send")
        # From a file: its stdin mode reads text where it wants bytes (python-hl7 0.4.5).
        path = self.tmp / f"message-{generate_uid()[-12:]}.hl7"
        path.write_bytes(message.encode("utf-8") + b"\x1c\r")
        result = subprocess.run(
            [str(mllp_send), "--port", str(self.server.hl7_port), "--file", str(path), LOOPBACK],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def send_raw(self, data: bytes, *, answers: int = 1) -> list[bytes]:
        """Raw bytes over TCP; the ACK frames that come back."""
        with socket.create_connection((LOOPBACK, self.server.hl7_port), timeout=30) as sock:
            sock.sendall(data)
            buffer = b""
            while buffer.count(END) < answers:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        return [part.lstrip(VT) for part in buffer.split(END) if part]

    def corrections(self, subject: str) -> list[str]:
        engine = make_engine(self.database_url)
        try:
            with UnitOfWork(engine, write=False) as uow:
                return [c.kind for c in uow.corrections.of_subject(subject)]
        finally:
            engine.dispose()


def adt(
    event: str,
    *segments: str,
    control: str | None = None,
    version: str = "2.5",
    charset: str = "UNICODE UTF-8",
    structure: str = "",
) -> str:
    control = control or generate_uid()[-16:]
    kind = f"ADT^{event}^{structure}" if structure else f"ADT^{event}"
    header = (
        f"MSH|^~\\&|RIS|TESTSAIRAALA|KUVA|KANTA|20261127120000||{kind}|{control}|P|{version}"
        f"|||||FIN|{charset}"
    )
    return "\r".join([header, f"EVN|{event}|20261127120000", *segments]) + "\r"


def pid(patient_id: str, name: str = "Testinen^Maija", birth: str = "19810101") -> str:
    return f"PID|||{PID3.format(patient_id)}||{name}||{birth}|F"


def mrg(patient_id: str) -> str:
    return f"MRG|{PID3.format(patient_id)}"


def msa(ack: str) -> tuple[str, str]:
    (line,) = [row for row in ack.replace("\n", "\r").split("\r") if row.startswith("MSA|")]
    fields = line.split("|")
    return fields[1], fields[2]


def err(ack: str) -> str:
    lines = [row for row in ack.replace("\n", "\r").split("\r") if row.startswith("ERR|")]
    return lines[0] if lines else ""


@pytest.fixture
def site(kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path) -> Hl7Site:
    return Hl7Site(kuva_server(), database_url, tmp_path)


def test_merge_update_change_and_unlink(site: Hl7Site) -> None:
    kept = site.store(SURVIVOR)
    merged = site.store(MERGED)

    # --- A40: the MERGED patient's study now belongs to SURVIVOR
    message = adt("A40", pid(SURVIVOR), mrg(MERGED), control="MERGE-1", structure="ADT_A39")
    ack = site.mllp_send(message)
    assert msa(ack) == ("AA", "MERGE-1")
    assert site.find_study(merged).PatientID == SURVIVOR
    assert site.find_study(kept).PatientID == SURVIVOR
    assert site.patients(MERGED) == []
    metadata = httpx.get(f"{site.server.http}/dicom-web/studies/{merged}/metadata", timeout=30)
    assert {item["00100020"]["Value"][0] for item in metadata.json()} == {SURVIVOR}
    (survivor,) = site.patients(SURVIVOR)
    assert int(survivor.NumberOfPatientRelatedStudies) == 2
    # the same control id again: the same answer, applied once
    assert msa(site.mllp_send(message)) == ("AA", "MERGE-1")
    assert site.corrections(f"{MERGED}^^^{FINNISH_PIC_ISSUER}") == ["merge"]
    # an instance of the merged patient that comes later goes to the survivor
    late = site.store(MERGED, n=1)
    assert site.find_study(late).PatientID == SURVIVOR

    # --- a circular merge is refused
    circular = site.mllp_send(adt("A40", pid(MERGED), mrg(SURVIVOR)))
    assert msa(circular)[0] == "AE"
    assert "MRG^1^1" in err(circular) and "207" in err(circular)

    # --- A08 in UTF-8 and A31 in ISO-8859-1: Finnish names
    assert msa(site.mllp_send(adt("A08", pid(SURVIVOR, "Äijälä^Öllö", "19810102"))))[0] == "AA"
    found = site.find_study(kept)
    assert (str(found.PatientName), found.PatientBirthDate) == ("Äijälä^Öllö", "19810102")
    latin = adt("A31", pid(SURVIVOR, "Ylönen^Åsa"), charset="8859/1").encode("iso-8859-1")
    (answer,) = site.send_raw(VT + latin + END)
    assert msa(answer.decode("iso-8859-1"))[0] == "AA"
    assert str(site.find_study(kept).PatientName) == "Ylönen^Åsa"

    # --- A37 unlink: the merged patient's studies go back
    unlink = adt("A37", pid(SURVIVOR), pid(MERGED))
    assert msa(site.mllp_send(unlink))[0] == "AA"
    assert site.find_study(merged).PatientID == MERGED
    assert site.find_study(late).PatientID == MERGED
    assert site.find_study(kept).PatientID == SURVIVOR

    # --- A47: SURVIVOR becomes THIRD
    change = adt("A47", pid(THIRD), mrg(SURVIVOR), structure="ADT_A30")
    assert msa(site.mllp_send(change))[0] == "AA"
    assert site.find_study(kept).PatientID == THIRD
    taken = site.mllp_send(adt("A47", pid(MERGED), mrg(THIRD)))
    assert msa(taken)[0] == "AE" and "205" in err(taken)  # already in use: merge instead


def test_refusals_garbage_and_framing(site: Hl7Site) -> None:
    # AR: unsupported version and message type; AE: missing PID-3
    ar = site.mllp_send(adt("A08", pid(SURVIVOR), version="2.6", control="V26"))
    assert msa(ar) == ("AR", "V26") and "203" in err(ar)
    oru = adt("A08", pid(SURVIVOR)).replace("ADT^A08", "ORU^R01")
    assert msa(site.mllp_send(oru))[0] == "AR"
    assert msa(site.mllp_send(adt("A05", pid(SURVIVOR))))[0] == "AR"
    missing = site.mllp_send(adt("A08", "PID|||||Testinen^Maija"))
    assert msa(missing)[0] == "AE" and "PID^1^3" in err(missing)
    assert msa(site.mllp_send(adt("A40", pid(SURVIVOR))))[0] == "AE"  # no MRG

    # garbage before a frame, a frame that is not HL7, then a good one: all answered
    good = adt("A08", pid(SURVIVOR), control="AFTER-GARBAGE").encode()
    answers = site.send_raw(
        b"\x00\xffnot mllp at all\r\n" + VT + b"hello" + END + VT + good + END, answers=2
    )
    assert [msa(a.decode())[0] for a in answers] == ["AR", "AA"]
    # only garbage, then the connection ends: the listener is still there
    with socket.create_connection((LOOPBACK, site.server.hl7_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" * 100)
    # a 5 MB message (a long NTE segment) is read whole
    big = adt("A08", pid(SURVIVOR), "NTE|1||" + "x" * (5 * 1024 * 1024), control="BIG")
    (answer,) = site.send_raw(VT + big.encode() + END)
    assert msa(answer.decode()) == ("AA", "BIG")
    assert site.server.process is not None and site.server.process.poll() is None


def test_strict_merge_refuses_an_unknown_source(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    site = Hl7Site(kuva_server(extra={"hl7": {"strict_merge": True}}), database_url, tmp_path)
    site.store(SURVIVOR)
    ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg("040404-900F")))
    assert msa(ack)[0] == "AE" and "204" in err(ack) and "MRG^1^1" in err(ack)
    time.sleep(0.1)
