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
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.hl7 import (
    END,
    MERGED,
    SURVIVOR,
    THIRD,
    VT,
    Hl7Site,
    adt,
    err,
    mrg,
    msa,
    pid,
)
from tests.support.peers import LOOPBACK, dcmtk_available
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


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
    renamed_late = site.store(SURVIVOR, n=1)  # sent under the old identifier
    assert site.find_study(renamed_late).PatientID == THIRD
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
    ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg("040404-900V")))
    assert msa(ack)[0] == "AE" and "204" in err(ack) and "MRG^1^1" in err(ack)
    time.sleep(0.1)
