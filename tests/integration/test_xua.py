"""XUA (IHE ITI-40) against a real ``kuva serve`` with ``[xds] require_xua = true``,
on SQLite and PostgreSQL: what a new user tries first.

The register holder (the local organisation on the embedded default) submits a
report by ITI-41 with its user's signed assertion. Then ITI-18 without an
assertion, and with an unsigned one claiming to be the register holder, are both
answered with a SOAP fault and no metadata; an assertion of another audience, and
one sent again, too; each refusal is an audit record (110114 User Authentication,
failed). Another organisation's doctor, with a valid assertion, finds and
retrieves the report: the disclosure log names the doctor (NameID, name, role,
purpose of use) and so does the Export audit message (UserName, RoleIDCode,
PurposeOfUse).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from lxml import etree
from lxml.etree import _Element as Element
from sqlalchemy import select

from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.database import make_engine
from kuva.index.schema import audit_record
from kuva.index.uow import UnitOfWork
from kuva.xds.namespaces import (
    PROVIDE_AND_REGISTER,
    REGISTRY_STORED_QUERY,
    RETRIEVE_DOCUMENT_SET,
)
from tests.integration.test_xds import cda
from tests.support.server import KuvaServer
from tests.support.xua import IdentityProvider, User, with_assertion
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import PATIENT, fill
from tests.unit.test_repository import (
    answer_of,
    entry_ids,
    mtom_documents,
    retrieve_request,
    soap_envelope,
    status_and_errors,
    unique_id_of,
    with_documents,
    wrapped,
)

AUDIENCE = "https://kuva.test.example/xds"
HOLDER = LOCAL_ORGANIZATION_OID
OTHER = "1.2.246.10.55555555.10"
SOAP_XML = "application/soap+xml; charset=UTF-8"
REPOSITORY_ID = Settings().xds.repository_unique_id
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
SOAP = {"soap": "http://www.w3.org/2003/05/soap-envelope"}


def find_documents() -> Element:
    """An ITI-18 FindDocuments for the test patient."""
    query = sample_payload("iti18-FindDocuments-request.xml")
    for value in query.iter("{*}Value"):
        if value.text and "$patient_id$" in value.text:
            value.text = value.text.replace("$patient_id$", str(PATIENT))
    return query


def fault_codes(response: httpx.Response) -> list[str]:
    tree = etree.fromstring(response.content)
    return [str(v) for v in tree.xpath("//soap:Code//soap:Value/text()", namespaces=SOAP)]


def test_require_xua(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    idp = IdentityProvider(tmp_path / "idp", name="https://idp.hospital.test/saml")
    server = kuva_server(
        extra={"xds": {"require_xua": True, "xua_audience": AUDIENCE}},
        arrays={"xds.xua_issuers": [idp.settings()]},
    )
    engine = make_engine(database_url)
    holder_user = User(name_id="uid=radiologi", name="Röntgen Lääkäri", organization_id=HOLDER)
    doctor = User(organization_id=f"urn:oid:{OTHER}")

    def post(path: str, envelope: bytes) -> httpx.Response:
        return httpx.post(
            server.http + path, content=envelope, headers={"content-type": SOAP_XML}, timeout=30
        )

    def signed(action: str, payload: Element, user: User, **kwargs: object) -> bytes:
        return with_assertion(soap_envelope(action, payload), idp.assertion(user, **kwargs))  # type: ignore[arg-type]

    try:
        # The register holder submits a report with its user's assertion.
        report = cda("Thorax CT")
        payload = wrapped(fill(sample_payload("iti42-RegisterDocumentSet-b-request.xml")))
        (entry,) = entry_ids(payload)
        report_uid = unique_id_of(payload, entry)
        with_documents(payload, {entry: report})
        answer, _ = answer_of(
            post("/xds/repository", signed(PROVIDE_AND_REGISTER, payload, holder_user))
        )
        assert status_and_errors(answer)[0] == SUCCESS

        # No assertion, and an unsigned one claiming the holder: a fault, no metadata.
        query = soap_envelope(REGISTRY_STORED_QUERY, find_documents())
        unsigned = idp.assertion(User(organization_id=HOLDER), signed=False)
        elsewhere = idp.assertion(doctor, audience="https://other.example/xds")
        for envelope, subcode in (
            (query, "wsse:InvalidSecurityToken"),
            (with_assertion(query, unsigned), "wsse:InvalidSecurityToken"),
            (with_assertion(query, elsewhere), "wsse:FailedAuthentication"),
        ):
            response = post("/xds/registry", envelope)
            assert response.status_code == 400, response.text
            assert fault_codes(response) == ["soap:Sender", subcode]
            assert b"ExtrinsicObject" not in response.content
            assert report_uid.encode() not in response.content

        # The doctor of another organisation finds the report, then retrieves it.
        assertion = idp.assertion(doctor)
        found = post("/xds/registry", with_assertion(query, assertion))
        assert found.status_code == 200, found.text
        assert report_uid.encode() in found.content
        again = post("/xds/registry", with_assertion(query, assertion))
        assert fault_codes(again) == ["soap:Sender", "wsse:FailedAuthentication"]

        retrieve = retrieve_request((REPOSITORY_ID, report_uid))
        answer, parts = answer_of(
            post("/xds/repository", signed(RETRIEVE_DOCUMENT_SET, retrieve, doctor))
        )
        assert mtom_documents(answer, parts) == {report_uid: report}

        with UnitOfWork(engine, write=False) as uow:
            records = [r for r in uow.disclosures.list(limit=100) if r.interface == "ITI-43"]
        (record,) = records
        assert (record.recipient_organization, record.register_holder) == (OTHER, HOLDER)
        assert record.recipient_user == "uid=dr.testinen,ou=users"
        assert record.recipient_person == "Tohtori Testinen"
        assert (record.recipient_role, record.purpose_of_use) == ("309343006", "TREAT")

        with engine.connect() as conn:
            messages = [
                (event_id, message)
                for event_id, message in conn.execute(
                    select(audit_record.c.event_id, audit_record.c.message)
                )
            ]
        failed = [m for e, m in messages if e == "110114"]
        assert len(failed) == 4  # three refusals above and the replay
        assert all('EventOutcomeIndicator="4"' in m for m in failed)
        exports = [m for e, m in messages if e == "110106" and "ITI-43" in m]
        (export,) = exports
        assert f'UserName="Tohtori Testinen&lt;uid=dr.testinen,ou=users@{idp.name}&gt;"' in export
        assert 'csd-code="309343006"' in export
        assert '<PurposeOfUse csd-code="TREAT"' in export
    finally:
        engine.dispose()
