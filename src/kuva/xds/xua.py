"""XUA (IHE ITI TF-2b 3.40, Cross-Enterprise User Assertion): the SAML 2.0 assertion
in a request's ``wsse:Security`` header, verified.

What is checked, in this order; the first failure refuses the request with a
WS-Security fault (WSS 1.1 SOAP Message Security 12): ``wsse:InvalidSecurityToken``
for an assertion that is missing (with ``[xds] require_xua``), malformed, unsigned
or of an issuer not trusted; ``wsse:FailedAuthentication`` for one that is trusted
by name but fails a check:

1. one ``saml2:Assertion`` with an ``ID``, a ``saml2:Issuer`` listed in
   ``[[xds.xua_issuers]]``, and an enveloped ``ds:Signature``;
2. the XML signature (XML-DSig 1.1, exclusive canonicalisation, SHA-256 or
   stronger) verifies with that issuer's certificate, and what it signs is the
   assertion itself: everything below is read from the signed element signxml
   returns, never from the request around it (no signature wrapping);
3. validity: ``Conditions/@NotBefore`` <= now + skew < ``@NotOnOrAfter`` + skew
   (SAML 2.0 Core 2.5.1.2; ``xua_clock_skew_seconds``); an assertion without
   NotOnOrAfter is refused, as it could be replayed for ever;
4. audience: with ``[xds] xua_audience`` set, every ``AudienceRestriction`` must
   name it, and there must be one (Core 2.5.1.4);
5. a Subject with a NameID;
6. not a replay (services.assertions);
7. with mutual TLS, the assertion's organisation is the client certificate's.

Library: signxml (pure Python over lxml and cryptography, both already here). The
alternative, python-xmlsec, binds the C library xmlsec1, which would have to be
installed beside libxml2 in a matching version on every machine; signxml's
defaults also refuse SHA-1 and insist on one reference, which XUA needs.

With no issuers configured nothing can be verified: an assertion's claims are
ignored (logged) and the request acts for the HTTP organisation, as if it had none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from lxml import etree
from lxml.etree import _Element as Element
from signxml.exceptions import InvalidInput, InvalidSignature
from signxml.verifier import SignatureConfiguration, XMLVerifier

from kuva.config import XdsSettings
from kuva.model.audit import Code
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import OrganizationState
from kuva.model.xua import RequestingUser
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.disclosure import recipient_of
from kuva.xds.messages import SoapFault, SoapRequest
from kuva.xds.soap import SAML2, WSSE

log = logging.getLogger(__name__)

DSIG = "http://www.w3.org/2000/09/xmldsig#"
# XSPA attribute names (OASIS XSPA profile of SAML 2.0; ITI TF-2b 3.40.4.1.2).
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"

INVALID_TOKEN = f"{{{WSSE}}}InvalidSecurityToken"
FAILED_AUTHENTICATION = f"{{{WSSE}}}FailedAuthentication"


class XuaRefused(SoapFault):
    """A request refused for its assertion: a Sender fault with a wsse subcode."""

    def __init__(self, subcode: str, reason: str) -> None:
        super().__init__("Sender", reason, subcode)
        self.subcode = subcode


class Replays(Protocol):
    def first_use(self, assertion_id: str, message_id: str, expires_at: datetime) -> bool: ...


@dataclass(frozen=True)
class _Issuer:
    name: str
    certificate: x509.Certificate


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def load_issuers(settings: XdsSettings) -> dict[str, _Issuer]:
    """The trusted identity providers by Issuer name; a ValueError names a
    certificate file that cannot be read."""
    issuers: dict[str, _Issuer] = {}
    for issuer in settings.xua_issuers:
        issuers[issuer.name] = _Issuer(issuer.name, _certificate(issuer.certificate))
    return issuers


def _certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"[[xds.xua_issuers]] certificate {path}: {exc}") from exc


class XuaVerifier:
    def __init__(self, settings: XdsSettings, replays: Replays, *, clock: Clock = utcnow) -> None:
        self._settings = settings
        self._issuers = load_issuers(settings)
        self._replays = replays
        self._clock = clock
        self._skew = timedelta(seconds=settings.xua_clock_skew_seconds)

    @property
    def required(self) -> bool:
        return self._settings.require_xua

    def verify(
        self,
        security: Element | None,
        *,
        message_id: str,
        certificate_organization: str | None = None,
    ) -> RequestingUser | None:
        """The user a request's assertion names, verified; None when the request
        has no assertion (allowed unless required) or none can be verified (no
        issuers configured). Raises :class:`XuaRefused`."""
        assertions = [] if security is None else security.findall(_q(SAML2, "Assertion"))
        if not assertions:
            if self.required:
                raise XuaRefused(
                    INVALID_TOKEN,
                    "an XUA assertion (SAML 2.0, in wsse:Security) is required (ITI TF-2b 3.40)",
                )
            return None
        if not self._issuers:
            log.info(
                "an XUA assertion was not verified: no [[xds.xua_issuers]]; its claims are ignored"
            )
            return None
        if len(assertions) > 1:
            raise XuaRefused(INVALID_TOKEN, "wsse:Security holds more than one SAML assertion")
        assertion = assertions[0]
        issuer = self._issuer(assertion)
        signed = self._signed(assertion, issuer)
        expires = self._valid_until(signed)
        self._check_audience(signed)
        name_id = _text(signed.find(f"{_q(SAML2, 'Subject')}/{_q(SAML2, 'NameID')}"))
        if not name_id:
            raise XuaRefused(INVALID_TOKEN, "the assertion's Subject has no NameID")
        assertion_id = signed.get("ID", "")
        if not self._replays.first_use(assertion_id, message_id, expires + self._skew):
            raise XuaRefused(
                FAILED_AUTHENTICATION,
                f"the assertion {assertion_id[:80]} was used already: a replay is refused",
            )
        user = _user(signed, name_id, issuer.name, assertion_id)
        if (
            certificate_organization
            and user.organization
            and user.organization != certificate_organization
        ):
            raise XuaRefused(
                FAILED_AUTHENTICATION,
                f"the assertion's organisation {user.organization} is not the client "
                f"certificate's {certificate_organization}",
            )
        return user

    def _issuer(self, assertion: Element) -> _Issuer:
        if not assertion.get("ID"):
            raise XuaRefused(INVALID_TOKEN, "the assertion has no ID")
        name = _text(assertion.find(_q(SAML2, "Issuer")))
        issuer = self._issuers.get(name)
        if issuer is None:
            raise XuaRefused(INVALID_TOKEN, f"the assertion's issuer {name[:120]!r} is not trusted")
        if assertion.find(_q(DSIG, "Signature")) is None:
            raise XuaRefused(INVALID_TOKEN, "the assertion is not signed")
        return issuer

    def _signed(self, assertion: Element, issuer: _Issuer) -> Element:
        """The assertion as its signature covers it (XML-DSig enveloped signature)."""
        # Verified as a document of its own: the envelope around it is not signed.
        document = etree.fromstring(etree.tostring(assertion))
        try:
            result = XMLVerifier().verify(
                document,
                x509_cert=issuer.certificate,
                expect_config=SignatureConfiguration(location="./", expect_references=1),
            )
        except (InvalidSignature, InvalidInput) as exc:
            log.warning("an XUA assertion of %s failed verification: %s", issuer.name, exc)
            raise XuaRefused(
                FAILED_AUTHENTICATION, "the assertion's signature does not verify"
            ) from exc
        signed = getattr(result, "signed_xml", None)
        if (
            not isinstance(signed, etree._Element)
            or signed.tag != _q(SAML2, "Assertion")
            or signed.get("ID") != assertion.get("ID")
        ):
            raise XuaRefused(FAILED_AUTHENTICATION, "the signature does not cover the assertion")
        return signed

    def _valid_until(self, signed: Element) -> datetime:
        conditions = signed.find(_q(SAML2, "Conditions"))
        now = self._clock()
        not_before = _instant(conditions, "NotBefore")
        not_on_or_after = _instant(conditions, "NotOnOrAfter")
        if not_on_or_after is None:
            raise XuaRefused(INVALID_TOKEN, "the assertion has no Conditions/@NotOnOrAfter")
        if not_before is not None and now + self._skew < not_before:
            raise XuaRefused(FAILED_AUTHENTICATION, "the assertion is not valid yet (NotBefore)")
        if now - self._skew >= not_on_or_after:
            raise XuaRefused(FAILED_AUTHENTICATION, "the assertion has expired (NotOnOrAfter)")
        return not_on_or_after

    def _check_audience(self, signed: Element) -> None:
        audience = self._settings.xua_audience
        if not audience:
            return
        restrictions = signed.findall(
            f"{_q(SAML2, 'Conditions')}/{_q(SAML2, 'AudienceRestriction')}"
        )
        if not restrictions or any(
            audience not in {_text(a) for a in r.findall(_q(SAML2, "Audience"))}
            for r in restrictions
        ):
            raise XuaRefused(FAILED_AUTHENTICATION, f"the assertion is not addressed to {audience}")


def _text(element: Element | None) -> str:
    if element is None:
        return ""
    return "".join(str(piece) for piece in element.itertext()).strip()


def _instant(conditions: Element | None, name: str) -> datetime | None:
    value = None if conditions is None else conditions.get(name)
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise XuaRefused(INVALID_TOKEN, f"Conditions/@{name} is not an xs:dateTime") from exc
    if instant.tzinfo is None:
        raise XuaRefused(
            INVALID_TOKEN, f"Conditions/@{name} has no time zone (SAML 2.0 Core 1.3.3)"
        )
    return instant


def _attributes(signed: Element) -> dict[str, Element]:
    """Each Attribute's first AttributeValue by Name (the first of a name wins)."""
    values: dict[str, Element] = {}
    for attribute in signed.iter(_q(SAML2, "Attribute")):
        name = (attribute.get("Name") or "").strip()
        value = attribute.find(_q(SAML2, "AttributeValue"))
        if name and value is not None and name not in values:
            values[name] = value
    return values


def _coded(value: Element | None) -> Code | None:
    """An XSPA coded attribute: an HL7 v3 CE element (``hl7:Role``,
    ``hl7:PurposeOfUse``) with code, codeSystem and displayName."""
    if value is None:
        return None
    for child in value:
        if isinstance(child.tag, str) and child.get("code"):
            return Code(
                child.get("code", "")[:64],
                child.get("codeSystem", "")[:64],
                child.get("displayName", "")[:128],
            )
    text = _text(value)
    return Code(text[:64], "", "") if text else None


def _user(signed: Element, name_id: str, issuer: str, assertion_id: str) -> RequestingUser:
    values = _attributes(signed)
    organization = recipient_of(_text(values.get(ORGANIZATION_ID)))
    return RequestingUser(
        name_id=name_id[:256],
        name=_text(values.get(SUBJECT_ID))[:128],
        organization=organization,
        organization_name=_text(values.get(ORGANIZATION))[:200],
        role=_coded(values.get(ROLE)),
        purpose_of_use=_coded(values.get(PURPOSE_OF_USE)),
        issuer=issuer,
        assertion_id=assertion_id,
    )


def authentication(
    verifier: XuaVerifier,
    audit: AuditTrail | None,
    state_of: Callable[[str | None], OrganizationState] | None = None,
) -> Callable[[SoapRequest], None]:
    """The endpoint's step (kuva.xds.endpoint) that verifies a request's assertion:
    sets ``request.user``, or raises :class:`XuaRefused` once the refusal is
    logged and audited (110114 User Authentication, failed). ``state_of``: the
    state of the user's organisation (services.directory); a suspended or
    terminated one is refused with a Sender fault and audited (110113 / 110132),
    as the HTTP organisation's is (kuva.web.organization_state)."""

    def in_service(request: SoapRequest) -> None:
        user = request.user
        if user is None or not user.organization or state_of is None:
            return
        state = state_of(user.organization)
        if not state.refused:
            return
        reason = f"organisation {user.organization} {state}"
        log.warning("XUA: a request of %s refused: %s", request.client_address, reason)
        if audit is not None:
            try:
                audit.access_refused(user.organization, request.endpoint[:256], f"XDS: {reason}")
            except Exception as exc:
                audit_failed(log, "a refused XDS request", exc)
        raise SoapFault("Sender", reason)

    def authenticate(request: SoapRequest) -> None:
        try:
            request.user = verifier.verify(
                request.security,
                message_id=request.message_id,
                certificate_organization=(
                    request.client_organization if request.authenticated else None
                ),
            )
        except XuaRefused as refused:
            claimed = _claimed(request.security)
            log.warning(
                "XUA: a request from %s refused: %s", request.client_address, refused.reason
            )
            if audit is not None:
                try:
                    audit.user_authentication_failed(
                        request.client_address, claimed, refused.reason
                    )
                except Exception as exc:
                    audit_failed(log, "an XUA refusal", exc)
            raise
        in_service(request)

    return authenticate


def _claimed(security: Element | None) -> str:
    """Who an assertion says it is, for the audit of its refusal (unverified):
    ``NameID<issuer>``; "" when there is no assertion."""
    assertion = None if security is None else security.find(_q(SAML2, "Assertion"))
    if assertion is None:
        return ""
    name_id = _text(assertion.find(f"{_q(SAML2, 'Subject')}/{_q(SAML2, 'NameID')}"))
    issuer = _text(assertion.find(_q(SAML2, "Issuer")))
    return f"{name_id[:128]}<{issuer[:128]}>"
