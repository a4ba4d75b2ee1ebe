"""HL7 v2 test helpers: ADT messages, a kuva site that stores studies with dcmtk and
sends messages with python-hl7's MLLP client or raw sockets, and ACK readers."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kuva.config import LOCAL_ORGANIZATION_OID
from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from tests.support.peers import LOOPBACK, dcmtk_env, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER, make_ct_series, write_series

SURVIVOR = "010181-900C"
MERGED = "020202-900E"
THIRD = "030303-9005"
PID3 = "{}^^^&" + FINNISH_PIC_ISSUER + "&ISO"
VT, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Hl7Site:
    server: KuvaServer
    database_url: str
    tmp: Path

    def store(self, patient_id: str, n: int = 2, *, aet: str = "STORESCU") -> str:
        """A study of ``n`` CT images stored with storescu calling as ``aet``."""
        study_uid = generate_uid()
        datasets = make_ct_series(
            n, rows=16, cols=16, patient_id=patient_id, study_uid=study_uid, seed=n
        )
        paths = write_series(datasets, self.tmp / study_uid)
        result = storescu(paths, LOOPBACK, self.server.dicom_port, aet=aet, aec="KUVA")
        assert result.returncode == 0, result.stdout + result.stderr
        return study_uid

    def find_study(self, study_uid: str, *, aet: str = "FINDSCU") -> Dataset:
        out = self.tmp / f"find-{generate_uid()[-12:]}"
        out.mkdir()
        command = [
            "findscu", "-S", "-X", "-od", str(out), "-aet", aet, "-aec", "KUVA", LOOPBACK,
            str(self.server.dicom_port), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", "-k", "PatientID", "-k", "PatientName",
            "-k", "IssuerOfPatientID", "-k", "PatientBirthDate", "-k", "PatientSex",
            "-k", "SpecificCharacterSet=ISO_IR 192",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        return found

    def getscu(self, study_uid: str, *, aet: str = "GETSCU") -> list[Dataset]:
        """The study's objects as dcmtk's getscu (calling as ``aet``) receives them."""
        out = self.tmp / f"get-{generate_uid()[-12:]}"
        out.mkdir()
        command = [
            "getscu", "-S", "+B", "-aet", aet, "-aec", self.server.ae_title, "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            LOOPBACK, str(self.server.dicom_port),
        ]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, env=dcmtk_env(), timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [pydicom.dcmread(path) for path in sorted(out.iterdir())]

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
    organization: str = LOCAL_ORGANIZATION_OID,
) -> str:
    """An ADT message from ``organization`` (MSH-4 universal id; "" for none)."""
    control = control or generate_uid()[-16:]
    kind = f"ADT^{event}^{structure}" if structure else f"ADT^{event}"
    facility = f"TESTSAIRAALA^{organization}^ISO" if organization else "TESTSAIRAALA"
    header = (
        f"MSH|^~\\&|RIS|{facility}|KUVA|KANTA|20261127120000||{kind}|{control}|P|{version}"
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
