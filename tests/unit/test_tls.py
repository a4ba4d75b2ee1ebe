"""Mutual TLS without sockets: certificate subjects (RFC 4514), the ``[tls]`` checks
at load, and the one mapping of a subject to an organisation
(services.authentication)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from kuva.config import load_settings
from kuva.model.subject import Subject, SubjectError
from kuva.services.authentication import NodeAuthentication
from kuva.tls import failure_reason, peer_subject, server_context
from tests.support.pki import MutualTlsPki, make_mutual_tls_pki

ORG_A = "1.2.246.10.12345678.10"
ORG_B = "1.2.246.10.87654321.10"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MutualTlsPki:
    return make_mutual_tls_pki(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------- subjects


def test_parse_is_in_certificate_order() -> None:
    subject = Subject.parse("CN=pacs.example.fi,O=Example Hospital District,C=FI")
    assert subject.rdns == (
        (("C", "FI"),),
        (("O", "Example Hospital District"),),
        (("CN", "pacs.example.fi"),),
    )
    assert str(subject) == "CN=pacs.example.fi,O=Example Hospital District,C=FI"


def test_types_are_case_insensitive_and_oids_known() -> None:
    written = Subject.parse("cn=pacs,o=Example")
    assert written == Subject.parse("CN=pacs,O=Example")
    assert written == Subject.parse("2.5.4.3=pacs,OID.2.5.4.10=Example")
    assert written == Subject.parse("commonName=pacs, organizationName=Example")


def test_values_are_exact() -> None:
    assert Subject.parse("CN=pacs,O=Example") != Subject.parse("CN=PACS,O=Example")
    assert Subject.parse("CN=pacs,O=Example") != Subject.parse("O=Example,CN=pacs")
    assert Subject.parse("CN=pacs,O=Example") != Subject.parse("CN=pacs")


def test_escapes() -> None:
    subject = Subject.parse(r"CN=Sairaala\, Oy+UID=x\2Cy,O=\#1 \"A\" ")
    assert subject.rdns == ((("O", '#1 "A"'),), (("CN", "Sairaala, Oy"), ("UID", "x,y")))
    assert Subject.parse(str(subject)) == subject
    assert Subject.parse("CN=\\C3\\A4") == Subject.parse("CN=ä")


@pytest.mark.parametrize("text", ["", "CN", "CN=a,", "=a", "CN=a\\", "CN=#0403", "CN=\\zz"])
def test_invalid(text: str) -> None:
    with pytest.raises(SubjectError):
        Subject.parse(text)


def test_peer_subject_matches_cryptography(pki: MutualTlsPki) -> None:
    """Python's getpeercert() dict gives the subject cryptography wrote in RFC 4514."""
    decoded = ssl._ssl._test_decode_cert(str(pki.hospital_a.cert))  # type: ignore[attr-defined]
    assert peer_subject(decoded) == Subject.parse(pki.hospital_a.subject)
    name = x509.load_pem_x509_certificate(pki.hospital_a.cert.read_bytes()).subject
    assert str(peer_subject(decoded)) == name.rfc4514_string()
    assert peer_subject({}) is None


# ---------------------------------------------------------------- [tls] at load


def _config(tmp_path: Path, pki: MutualTlsPki, *, tls: str = "", extra: str = "") -> Path:
    path = tmp_path / "kuva.toml"
    tls = tls or (
        f'cert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\nca_file = "{pki.ca}"\n'
    )
    path.write_text(
        f"""
[dicom]
tls = true
[http]
tls = true
[hl7]
tls = true
[tls]
{tls}
[[organizations]]
oid = "{ORG_A}"
name = "A"
certificates = ["{pki.hospital_a.subject}"]
[[organizations]]
oid = "{ORG_B}"
name = "B"
certificates = ["{pki.hospital_b.subject}"]
[[nodes]]
ae_title = "PACS_A"
organization = "{ORG_A}"
{extra}
""",
        encoding="utf-8",
    )
    return path


def test_tls_config(tmp_path: Path, pki: MutualTlsPki) -> None:
    settings = load_settings(_config(tmp_path, pki))
    assert settings.tls_listeners == ["dicom", "http", "hl7"]
    assert settings.certificate_organizations() == {
        Subject.parse(pki.hospital_a.subject): ORG_A,
        Subject.parse(pki.hospital_b.subject): ORG_B,
    }
    context = server_context(settings.tls)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_plain_by_default() -> None:
    assert load_settings().tls_listeners == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no key", "needs \\[tls\\] key_file"),
        ("missing file", "file not found"),
        ("key of another certificate", "does not belong to the certificate"),
        ("not PEM", "ca_file"),
    ],
)
def test_tls_files_checked(tmp_path: Path, pki: MutualTlsPki, case: str, message: str) -> None:
    cert, key, ca = pki.server.cert, pki.server.key, pki.ca
    if case == "missing file":
        ca = tmp_path / "nowhere.pem"
    if case == "key of another certificate":
        key = pki.hospital_a.key
    if case == "not PEM":
        ca = tmp_path / "garbage.pem"
        ca.write_text("not a certificate")
    lines = [f'cert_file = "{cert}"', f'ca_file = "{ca}"']
    if case != "no key":
        lines.append(f'key_file = "{key}"')
    with pytest.raises(ValueError, match=message):
        load_settings(_config(tmp_path, pki, tls="\n".join(lines)))


def test_a_subject_belongs_to_one_organisation(tmp_path: Path, pki: MutualTlsPki) -> None:
    extra = (
        f'[[organizations]]\noid = "1.2.246.10.1.10"\nname = "C"\n'
        f'certificates = ["{pki.hospital_a.subject}"]'
    )
    with pytest.raises(ValueError, match="a certificate maps to one organisation"):
        load_settings(_config(tmp_path, pki, extra=extra))


def test_invalid_subject(tmp_path: Path) -> None:
    path = tmp_path / "kuva.toml"
    path.write_text('[[organizations]]\noid = "1.2.3"\nname = "A"\ncertificates = ["CN"]\n')
    with pytest.raises(ValueError, match="certificate subject"):
        load_settings(path)


def test_dicom_tls_needs_nodes(tmp_path: Path, pki: MutualTlsPki) -> None:
    path = tmp_path / "kuva.toml"
    path.write_text(
        f'[dicom]\ntls = true\n[tls]\ncert_file = "{pki.server.cert}"\n'
        f'key_file = "{pki.server.key}"\nca_file = "{pki.ca}"\n'
        f'[[organizations]]\noid = "{ORG_A}"\nname = "A"\n'
        f'certificates = ["{pki.hospital_a.subject}"]\n'
    )
    with pytest.raises(ValueError, match="needs \\[\\[nodes\\]\\]"):
        load_settings(path)


# ---------------------------------------------------------------- the mapping


def test_mapping(tmp_path: Path, pki: MutualTlsPki) -> None:
    auth = NodeAuthentication(load_settings(_config(tmp_path, pki)))
    a = Subject.parse(pki.hospital_a.subject)
    assert auth.organization_of(a) == ORG_A
    assert auth.organization_of(Subject.parse(pki.stranger.subject)) is None
    assert auth.organization_of(None) is None
    assert auth.authenticate("hl7", "127.0.0.1", a) == ORG_A
    assert auth.ae_title_allowed("PACS_A", "127.0.0.1", a, ORG_A)
    assert not auth.ae_title_allowed("PACS_A", "127.0.0.1", a, ORG_B)
    assert auth.ae_title_allowed("UNKNOWN", "127.0.0.1", a, ORG_B)  # left to the AE check


def test_failure_reasons() -> None:
    error = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return")
    error.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert failure_reason(error) == "no client certificate"
    assert failure_reason(TimeoutError()) == "TLS handshake not finished in time"
