"""A test identity provider for XUA (IHE ITI-40): a key and a self-signed
certificate made with ``cryptography``, and SAML 2.0 assertions it signs with
signxml (enveloped XML signature, exclusive c14n, RSA-SHA256), shaped as ITI TF-2b
3.40.4.1 describes: Issuer, Signature, Subject/NameID, Conditions with an audience,
and the XSPA attributes (subject-id, organization, organization-id, role, purpose
of use; the last two as HL7 v3 CE elements)."""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from lxml.etree import _Element as Element
from signxml.algorithms import CanonicalizationMethod
from signxml.signer import XMLSigner

from kuva.model.audit import Code
from kuva.model.xua import RequestingUser
from kuva.xds.soap import SAML2, WSSE

HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
XSPA = "urn:oasis:names:tc:xspa:1.0:subject:"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
# SNOMED CT "Medical doctor", and HL7 PurposeOfUse TREAT.
DOCTOR = ("309343006", "2.16.840.1.113883.6.96", "Medical doctor")
TREATMENT = ("TREAT", "2.16.840.1.113883.3.18.7.1", "Treatment")


@dataclass(frozen=True)
class User:
    name_id: str = "uid=dr.testinen,ou=users"
    name: str = "Tohtori Testinen"
    organization: str = "Test Clinic"
    organization_id: str = "urn:oid:1.2.246.10.55555555.10"
    role: tuple[str, str, str] | None = DOCTOR
    purpose: tuple[str, str, str] | None = TREATMENT


class IdentityProvider:
    """Signs assertions as ``name``; ``certificate`` is the PEM kuva trusts."""

    def __init__(self, directory: Path, name: str = "https://idp.test.example/saml") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kuva test IdP")])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = directory / f"idp-{uuid.uuid4().hex[:8]}.pem"
        self.certificate.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def settings(self) -> dict[str, str]:
        """This provider as an ``[[xds.xua_issuers]]`` entry."""
        return {"name": self.name, "certificate": str(self.certificate)}

    def assertion(
        self,
        user: User | None = None,
        *,
        audience: str | None = "https://kuva.test.example/xds",
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        not_before: dt.datetime | None = None,
        assertion_id: str | None = None,
        issuer: str | None = None,
        signed: bool = True,
    ) -> Element:
        """A saml2:Assertion element, signed unless ``signed`` is false."""
        user = user or User()
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
        root = etree.Element(
            f"{{{SAML2}}}Assertion",
            nsmap={"saml2": SAML2, "xsi": XSI},
            ID=assertion_id or f"_{uuid.uuid4().hex}",
            IssueInstant=_instant(start),
            Version="2.0",
        )
        etree.SubElement(root, f"{{{SAML2}}}Issuer").text = issuer or self.name
        if signed:
            etree.SubElement(root, f"{{{DSIG}}}Signature", Id="placeholder", nsmap={"ds": DSIG})
        subject = etree.SubElement(root, f"{{{SAML2}}}Subject")
        etree.SubElement(subject, f"{{{SAML2}}}NameID").text = user.name_id
        etree.SubElement(
            subject,
            f"{{{SAML2}}}SubjectConfirmation",
            Method="urn:oasis:names:tc:SAML:2.0:cm:bearer",
        )
        conditions = etree.SubElement(
            root,
            f"{{{SAML2}}}Conditions",
            NotBefore=_instant(start),
            NotOnOrAfter=_instant(start + lifetime),
        )
        if audience is not None:
            restriction = etree.SubElement(conditions, f"{{{SAML2}}}AudienceRestriction")
            etree.SubElement(restriction, f"{{{SAML2}}}Audience").text = audience
        statement = etree.SubElement(root, f"{{{SAML2}}}AttributeStatement")
        _attribute(statement, XSPA + "subject-id", user.name)
        _attribute(statement, XSPA + "organization", user.organization)
        _attribute(statement, XSPA + "organization-id", user.organization_id)
        if user.role is not None:
            _coded(statement, ROLE, "Role", user.role)
        if user.purpose is not None:
            _coded(statement, XSPA + "purposeofuse", "PurposeOfUse", user.purpose)
        if not signed:
            return root
        signer = XMLSigner(c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        return signer.sign(
            root,
            key=self._key,
            cert=[self._cert],
            reference_uri=f"#{root.get('ID')}",
            id_attribute="ID",
        )


@functools.cache
def site_idp() -> IdentityProvider:
    """The identity provider of the tests' sites: every test server trusts it
    (tests.support.server), and requests that act for an organisation carry its
    assertions (tests.unit.test_repository.soap_envelope). One per process."""
    return IdentityProvider(Path(tempfile.mkdtemp(prefix="kuva-idp-")))


def verified(organization: str, **fields: str) -> RequestingUser:
    """The user a verified assertion of ``organization`` names, as the endpoint
    sets it on a request (for tests that call a transaction's handler directly)."""
    return RequestingUser(
        name_id=fields.get("name_id", "uid=dr.testinen,ou=users"),
        name=fields.get("name", "Tohtori Testinen"),
        organization=organization.removeprefix("urn:oid:"),
        organization_name="",
        role=Code(*DOCTOR),
        purpose_of_use=Code(*TREATMENT),
        issuer="https://idp.test.example/saml",
        assertion_id=f"_{uuid.uuid4().hex}",
    )


def security_header(assertion: Element) -> Element:
    """A ``wsse:Security`` header block holding ``assertion`` (a copy)."""
    security = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
    security.append(etree.fromstring(etree.tostring(assertion)))
    return security


def with_assertion(envelope: bytes, assertion: Element | None) -> bytes:
    """A SOAP 1.2 envelope with ``assertion`` put in a wsse:Security header block
    (replacing any there was); ``None`` takes the header block away."""
    root = etree.fromstring(envelope)
    header = root.find("{http://www.w3.org/2003/05/soap-envelope}Header")
    assert header is not None
    for old in header.findall(f"{{{WSSE}}}Security"):
        header.remove(old)
    if assertion is not None:
        header.append(security_header(assertion))
    return etree.tostring(root)


def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _attribute(statement: Element, name: str, value: str) -> None:
    attribute = etree.SubElement(statement, f"{{{SAML2}}}Attribute", Name=name)
    etree.SubElement(attribute, f"{{{SAML2}}}AttributeValue").text = value


def _coded(statement: Element, name: str, element: str, code: tuple[str, str, str]) -> None:
    attribute = etree.SubElement(statement, f"{{{SAML2}}}Attribute", Name=name)
    value = etree.SubElement(attribute, f"{{{SAML2}}}AttributeValue")
    etree.SubElement(
        value,
        f"{{{HL7}}}{element}",
        {f"{{{XSI}}}type": "CE"},
        code=code[0],
        codeSystem=code[1],
        displayName=code[2],
        nsmap={"hl7": HL7},
    )
