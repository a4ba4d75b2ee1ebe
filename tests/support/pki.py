"""Certificates for the mutual TLS tests, made with ``cryptography``: a trusted CA
with kuva's server certificate (127.0.0.1 / localhost) and client certificates of
any subject, and a second, untrusted CA for client certificates kuva must refuse."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Identity:
    """A certificate and its key (PEM files)."""

    cert: Path
    key: Path
    subject: str  # RFC 4514, as cryptography writes it

    def client_context(self, ca: Path) -> ssl.SSLContext:
        """A client context presenting this certificate and trusting ``ca``."""
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def _name(**attributes: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class CertificateAuthority:
    """A self-signed CA that issues certificates into ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._now = dt.datetime.now(dt.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(O="kuva tests", CN=name)
        self.cert_obj = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.pem"
        self.cert.write_bytes(self.cert_obj.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_name: str, *, server: bool = False, **subject: str) -> Identity:
        """A leaf certificate for ``subject`` (C=, O=, CN=): a client one, or kuva's
        server one (for 127.0.0.1 and localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(**subject)
        # kuva's certificate is also its client certificate on the associations it
        # opens to nodes with tls = true.
        usage = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        identity = Identity(
            cert=self.directory / f"{file_name}.pem",
            key=self.directory / f"{file_name}.key",
            subject=name.rfc4514_string(),
        )
        identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, identity.key)
        return identity

    def write_crl(
        self, path: Path, revoked: list[Identity], *, age: dt.timedelta = dt.timedelta(0)
    ) -> None:
        """A CRL (PEM) revoking ``revoked``, issued ``age`` ago (a CRL issued later
        supersedes an earlier one of this CA), valid for a day after."""
        issued = dt.datetime.now(dt.UTC) - age
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(issued)
            .next_update(issued + dt.timedelta(days=1))
        )
        for identity in revoked:
            cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(issued)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        staged = path.with_suffix(".tmp")
        staged.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        staged.replace(path)  # whole, as an operator's deployment would


@dataclass(frozen=True)
class MutualTlsPki:
    """kuva's server identity, the CA its clients chain to, client certificates of
    organisations A and B, one of no organisation, and one with A's subject from an
    untrusted CA."""

    ca: Path
    server: Identity
    hospital_a: Identity
    hospital_b: Identity
    stranger: Identity
    untrusted: Identity
    authority: CertificateAuthority  # the trusted CA, to issue more certificates

    def tls_section(self) -> dict[str, str]:
        """The ``[tls]`` section of kuva's config."""
        return {
            "cert_file": str(self.server.cert),
            "key_file": str(self.server.key),
            "ca_file": str(self.ca),
        }

    def anonymous_context(self) -> ssl.SSLContext:
        """A client context that trusts kuva but presents no certificate."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_mutual_tls_pki(directory: Path) -> MutualTlsPki:
    trusted = CertificateAuthority(directory / "trusted", "kuva test CA")
    other = CertificateAuthority(directory / "other", "another CA")
    return MutualTlsPki(
        ca=trusted.cert,
        server=trusted.issue("server", server=True, C="FI", O="kuva tests", CN="localhost"),
        hospital_a=trusted.issue("a", C="FI", O="Testin sairaanhoitopiiri", CN="pacs.a.example"),
        hospital_b=trusted.issue("b", C="FI", O="Toinen sairaanhoitopiiri", CN="pacs.b.example"),
        stranger=trusted.issue("stranger", C="FI", O="Testin sairaanhoitopiiri", CN="other"),
        untrusted=other.issue(
            "untrusted", C="FI", O="Testin sairaanhoitopiiri", CN="pacs.a.example"
        ),
        authority=trusted,
    )
