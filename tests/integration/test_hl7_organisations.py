"""HL7 corrections act for the organisation that sent them, SQLite and PostgreSQL.

Two register holders store studies of the same patient with dcmtk's storescu; ADT
messages go in with python-hl7's ``mllp_send``. An A08 whose MSH-4 names
organisation B renames B's study only: organisation A's study answers dcmtk's
findscu and getscu with the name it was stored with, B's with the corrected one.
An A40 / A37 from B moves B's study only. A message whose MSH-4 names no configured
organisation is refused (AR with ERR) and audited, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydicom.dataset import Dataset
from sqlalchemy import select

from kuva.index.database import make_engine
from kuva.index.schema import audit_record
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, err, mrg, msa, pid
from tests.support.peers import dcmtk_available
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

ORG_A = "1.2.246.10.12345678.10"
ORG_B = "1.2.246.10.87654321.10"
STORED_NAME = "Testinen^Maija"  # the name tests.support.synthetic stores
B_NAME = "Korjattu^Bee"
A_NAME = "Äijälä^Aino"


def _nodes(org: str, suffix: str) -> list[dict[str, Any]]:
    return [
        {"ae_title": f"{tool}_{suffix}", "organization": org}
        for tool in ("STORESCU", "FINDSCU", "GETSCU")
    ]


@pytest.fixture
def site(kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path) -> Hl7Site:
    server = kuva_server(
        organizations=[
            {"oid": ORG_A, "name": "Testin sairaanhoitopiiri"},
            {"oid": ORG_B, "name": "Toinen sairaanhoitopiiri"},
        ],
        nodes=[*_nodes(ORG_A, "A"), *_nodes(ORG_B, "B")],
    )
    return Hl7Site(server, database_url, tmp_path)


def _name(site: Hl7Site, study_uid: str, org: str) -> str:
    return str(site.find_study(study_uid, aet=f"FINDSCU_{org}").PatientName)


def _retrieved(site: Hl7Site, study_uid: str, org: str) -> list[Dataset]:
    got = site.getscu(study_uid, aet=f"GETSCU_{org}")
    assert got
    return got


def test_an_update_from_b_leaves_a_study_of_a_as_it_was(site: Hl7Site) -> None:
    a_study = site.store(SURVIVOR, aet="STORESCU_A")
    b_study = site.store(SURVIVOR, aet="STORESCU_B")

    ack = site.mllp_send(adt("A08", pid(SURVIVOR, name=B_NAME), organization=ORG_B))
    assert msa(ack)[0] == "AA" and err(ack) == ""

    # A's study: as stored, in the index (C-FIND) and in what goes out (C-GET)
    assert _name(site, a_study, "A") == STORED_NAME
    for ds in _retrieved(site, a_study, "A"):
        assert str(ds.PatientName) == STORED_NAME
        assert "OriginalAttributesSequence" not in ds
    # B's study: corrected, the stored name kept in Original Attributes
    assert _name(site, b_study, "B") == B_NAME
    for ds in _retrieved(site, b_study, "B"):
        assert str(ds.PatientName) == B_NAME
        assert ds.PatientID == SURVIVOR and ds.IssuerOfPatientID == FINNISH_PIC_ISSUER
        original = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
        assert str(original.PatientName) == STORED_NAME

    # A corrects its own: B's correction stands; B's next one changes B's only
    ack = site.mllp_send(adt("A08", pid(SURVIVOR, name=A_NAME), organization=ORG_A))
    assert msa(ack)[0] == "AA"
    assert (_name(site, a_study, "A"), _name(site, b_study, "B")) == (A_NAME, B_NAME)
    ack = site.mllp_send(adt("A31", pid(SURVIVOR, name="Toinen^Bee"), organization=ORG_B))
    assert msa(ack)[0] == "AA"
    assert (_name(site, a_study, "A"), _name(site, b_study, "B")) == (A_NAME, "Toinen^Bee")

    # B's later study of the patient joins B's corrected record
    later = site.store(SURVIVOR, n=1, aet="STORESCU_B")
    assert _name(site, later, "B") == "Toinen^Bee"


def test_an_update_from_an_organisation_with_no_study_of_the_patient(site: Hl7Site) -> None:
    a_study = site.store(SURVIVOR, aet="STORESCU_A")
    ack = site.mllp_send(adt("A08", pid(SURVIVOR, name=B_NAME), organization=ORG_B))
    assert msa(ack)[0] == "AA"
    warning = err(ack).split("|")
    assert warning[3].startswith("204^") and warning[4] == "W"
    assert "no study of this patient" in warning[8]
    assert _name(site, a_study, "A") == STORED_NAME


def test_a_merge_and_unlink_from_b_move_b_study_only(site: Hl7Site) -> None:
    a_study = site.store(MERGED, aet="STORESCU_A")
    b_study = site.store(MERGED, aet="STORESCU_B")
    site.store(SURVIVOR, n=1, aet="STORESCU_B")

    merge = adt("A40", pid(SURVIVOR), mrg(MERGED), structure="ADT_A39", organization=ORG_B)
    assert msa(site.mllp_send(merge))[0] == "AA"
    assert site.find_study(a_study, aet="FINDSCU_A").PatientID == MERGED
    assert site.find_study(b_study, aet="FINDSCU_B").PatientID == SURVIVOR
    assert {ds.PatientID for ds in _retrieved(site, a_study, "A")} == {MERGED}
    assert {ds.PatientID for ds in _retrieved(site, b_study, "B")} == {SURVIVOR}
    # B's late instance of the merged identity follows B's merge; A's does not
    assert (
        site.find_study(site.store(MERGED, n=1, aet="STORESCU_B"), aet="FINDSCU_B").PatientID
        == SURVIVOR
    )
    assert (
        site.find_study(site.store(MERGED, n=1, aet="STORESCU_A"), aet="FINDSCU_A").PatientID
        == MERGED
    )

    unlink = adt("A37", pid(SURVIVOR), pid(MERGED), organization=ORG_B)
    assert msa(site.mllp_send(unlink))[0] == "AA"
    assert site.find_study(b_study, aet="FINDSCU_B").PatientID == MERGED
    assert site.find_study(a_study, aet="FINDSCU_A").PatientID == MERGED


@pytest.mark.parametrize(
    ("organization", "code", "text"),
    [
        ("", "101", "MSH-4.2"),
        ("1.2.246.10.99999999.10", "204", "is not configured"),
    ],
)
def test_a_message_of_no_configured_organisation_is_refused(
    site: Hl7Site, database_url: str, organization: str, code: str, text: str
) -> None:
    a_study = site.store(SURVIVOR, aet="STORESCU_A")
    message = adt("A08", pid(SURVIVOR, name=B_NAME), control="NO-ORG", organization=organization)
    ack = site.mllp_send(message)
    assert msa(ack) == ("AR", "NO-ORG")
    fields = err(ack).split("|")
    assert fields[2] == "MSH^1^4" and fields[3].startswith(f"{code}^") and text in fields[8]
    assert _name(site, a_study, "A") == STORED_NAME
    # Audited as a refused Patient Record (outcome 4); not recorded as seen: sent
    # again from a configured organisation, the same control id is applied.
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            messages = conn.execute(
                select(audit_record.c.message).where(audit_record.c.event_id == "110110")
            ).scalars()
            (refused,) = [etree.fromstring(m.encode()) for m in messages]
    finally:
        engine.dispose()
    outcome = refused.find("EventIdentification").get("EventOutcomeIndicator")  # type: ignore[union-attr]
    assert outcome == "4"
    again = adt("A08", pid(SURVIVOR, name=A_NAME), control="NO-ORG", organization=ORG_A)
    assert msa(site.mllp_send(again)) == ("AA", "NO-ORG")
    assert _name(site, a_study, "A") == A_NAME


def test_hl7_senders_decide_on_plain_mllp(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """[[hl7.senders]]: organisation A may send from loopback, B only from 10.0.0.0/8;
    B's message over loopback is answered AR naming the rule and audited."""
    server = kuva_server(
        organizations=[
            {"oid": ORG_A, "name": "Testin sairaanhoitopiiri"},
            {"oid": ORG_B, "name": "Toinen sairaanhoitopiiri"},
        ],
        nodes=[*_nodes(ORG_A, "A"), *_nodes(ORG_B, "B")],
        arrays={
            "hl7.senders": [
                {"organization": ORG_A, "addresses": ["127.0.0.1/32"]},
                {"organization": ORG_B, "addresses": ["10.0.0.0/8"]},
            ]
        },
    )
    site = Hl7Site(server, database_url, tmp_path)
    allowed = site.mllp_send(adt("A08", pid(SURVIVOR, name=A_NAME), organization=ORG_A))
    assert msa(allowed)[0] == "AA", allowed
    refused = site.mllp_send(adt("A08", pid(SURVIVOR, name=B_NAME), organization=ORG_B))
    assert msa(refused)[0] == "AR", refused
    assert "may not send from 127.0.0.1" in err(refused)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            messages = list(
                conn.execute(
                    select(audit_record.c.message).where(audit_record.c.event_id == "110110")
                ).scalars()
            )
    finally:
        engine.dispose()
    assert any("hl7.senders" in m for m in messages)  # the refusal, audited
