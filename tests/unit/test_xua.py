"""XUA (IHE ITI-40) assertions verified (kuva.xds.xua) with assertions of a test
identity provider (tests.support.xua): valid, tampered, expired, not yet valid,
wrong issuer, wrong key, wrong audience, replayed, unsigned, wrapped; the replay
record (services.assertions) on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import Engine

from kuva.config import XdsSettings, XuaIssuerSettings
from kuva.index.uow import UnitOfWork
from kuva.model.xua import RequestingUser
from kuva.services.assertions import AssertionReplay
from kuva.xds.soap import SAML2
from kuva.xds.xua import FAILED_AUTHENTICATION, INVALID_TOKEN, XuaRefused, XuaVerifier
from tests.support.xua import IdentityProvider, User, security_header

AUDIENCE = "https://kuva.test.example/xds"
_ORG_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"


class Remembered:
    """Replays kept in memory (the index's record is tested below)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def first_use(self, assertion_id: str, message_id: str, expires_at: dt.datetime) -> bool:
        key = (assertion_id, "")
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> IdentityProvider:
    return IdentityProvider(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> IdentityProvider:
    """Another key claiming the trusted provider's name."""
    return IdentityProvider(tmp_path_factory.mktemp("impostor"))


def verifier(idp: IdentityProvider, **settings: object) -> XuaVerifier:
    values: dict[str, object] = {
        "xua_issuers": [XuaIssuerSettings(name=idp.name, certificate=idp.certificate)],
        "xua_audience": AUDIENCE,
        **settings,
    }
    return XuaVerifier(XdsSettings.model_validate(values), Remembered())


def refusal(check: XuaVerifier, assertion: etree._Element | None, **kwargs: str) -> XuaRefused:
    with pytest.raises(XuaRefused) as caught:
        check.verify(
            None if assertion is None else security_header(assertion), message_id="m", **kwargs
        )
    return caught.value


def test_a_valid_assertion_names_the_user_and_organisation(idp: IdentityProvider) -> None:
    user = verifier(idp).verify(security_header(idp.assertion()), message_id="m")
    assert isinstance(user, RequestingUser)
    assert user.name_id == "uid=dr.testinen,ou=users"
    assert user.name == "Tohtori Testinen"
    assert user.organization == "1.2.246.10.55555555.10"  # urn:oid: dropped
    assert user.organization_name == "Test Clinic"
    assert user.role is not None and user.role.code == "309343006"
    assert user.purpose_of_use is not None and user.purpose_of_use.code == "TREAT"
    assert user.issuer == idp.name
    assert user.user_name() == f"Tohtori Testinen<uid=dr.testinen,ou=users@{idp.name}>"


def test_a_tampered_assertion_fails_authentication(idp: IdentityProvider) -> None:
    assertion = idp.assertion()
    value = assertion.find(f".//{{{SAML2}}}Attribute[@Name='{_ORG_ID}']/{{{SAML2}}}AttributeValue")
    assert value is not None
    value.text = "urn:oid:1.2.246.10.0.10"  # claims the register holder
    refused = refusal(verifier(idp), assertion)
    assert refused.subcode == FAILED_AUTHENTICATION
    assert "signature does not verify" in refused.reason


def test_an_expired_assertion_is_refused(idp: IdentityProvider) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    refused = refusal(verifier(idp), idp.assertion(not_before=old))
    assert refused.subcode == FAILED_AUTHENTICATION
    assert "expired" in refused.reason


def test_the_clock_skew_is_allowed_both_ways(idp: IdentityProvider) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert verifier(idp).verify(security_header(idp.assertion(not_before=soon)), message_id="m")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    refused = refusal(verifier(idp), idp.assertion(not_before=later))
    assert "not valid yet" in refused.reason
    # Expired 30 s ago: within the default 60 s of skew.
    just = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5, seconds=30)
    assert verifier(idp).verify(security_header(idp.assertion(not_before=just)), message_id="m")
    strict = verifier(idp, xua_clock_skew_seconds=0)
    assert "expired" in refusal(strict, idp.assertion(not_before=just)).reason


def test_an_issuer_not_listed_is_an_invalid_token(idp: IdentityProvider) -> None:
    refused = refusal(verifier(idp), idp.assertion(issuer="https://elsewhere.example/idp"))
    assert refused.subcode == INVALID_TOKEN
    assert "not trusted" in refused.reason


def test_another_key_under_the_trusted_name_fails(
    idp: IdentityProvider, impostor: IdentityProvider
) -> None:
    forged = impostor.assertion(issuer=idp.name)
    refused = refusal(verifier(idp), forged)
    assert refused.subcode == FAILED_AUTHENTICATION


def test_the_audience_must_be_kuva(idp: IdentityProvider) -> None:
    refused = refusal(verifier(idp), idp.assertion(audience="https://other.example/xds"))
    assert refused.subcode == FAILED_AUTHENTICATION
    assert AUDIENCE in refused.reason
    assert "not addressed" in refusal(verifier(idp), idp.assertion(audience=None)).reason
    anyone = verifier(idp, xua_audience="")
    assert anyone.verify(security_header(idp.assertion(audience=None)), message_id="m")


def test_a_replayed_assertion_is_refused(idp: IdentityProvider) -> None:
    check = verifier(idp)
    assertion = idp.assertion()
    assert check.verify(security_header(assertion), message_id="m1") is not None
    refused = refusal(check, assertion)
    assert refused.subcode == FAILED_AUTHENTICATION
    assert "replay" in refused.reason


def test_an_unsigned_assertion_is_an_invalid_token(idp: IdentityProvider) -> None:
    refused = refusal(verifier(idp), idp.assertion(signed=False))
    assert refused.subcode == INVALID_TOKEN
    assert "not signed" in refused.reason


def test_a_signature_moved_onto_another_assertion_fails(idp: IdentityProvider) -> None:
    """Signature wrapping: the signed original hidden inside an evil assertion of
    the same ID whose attributes differ; what is read must be what was signed."""
    signed = idp.assertion()
    evil = copy.deepcopy(signed)
    value = evil.find(f".//{{{SAML2}}}Attribute[@Name='{_ORG_ID}']/{{{SAML2}}}AttributeValue")
    assert value is not None
    value.text = "urn:oid:1.2.246.10.0.10"
    evil.append(signed)  # the genuine one rides along
    refused = refusal(verifier(idp), evil)
    assert refused.subcode == FAILED_AUTHENTICATION


def test_missing_assertion_with_require_xua(idp: IdentityProvider) -> None:
    assert verifier(idp).verify(None, message_id="m") is None
    refused = refusal(verifier(idp, require_xua=True), None)
    assert refused.subcode == INVALID_TOKEN
    assert "required" in refused.reason


def test_without_issuers_an_assertion_is_not_taken(idp: IdentityProvider) -> None:
    check = XuaVerifier(XdsSettings(), Remembered())
    assert check.verify(security_header(idp.assertion()), message_id="m") is None
    with pytest.raises(ValueError, match="require_xua"):
        XdsSettings(require_xua=True)


def test_the_certificate_and_assertion_must_name_one_organisation(
    idp: IdentityProvider,
) -> None:
    check = verifier(idp)
    same = check.verify(
        security_header(idp.assertion()),
        message_id="m",
        certificate_organization="1.2.246.10.55555555.10",
    )
    assert same is not None
    refused = refusal(check, idp.assertion(), certificate_organization="1.2.246.10.0.10")
    assert refused.subcode == FAILED_AUTHENTICATION
    assert "client certificate" in refused.reason


def test_a_user_without_role_or_purpose(idp: IdentityProvider) -> None:
    user = verifier(idp).verify(
        security_header(idp.assertion(User(role=None, purpose=None))), message_id="m"
    )
    assert user is not None and user.role is None and user.purpose_of_use is None


def test_two_assertions_in_one_header_are_refused(idp: IdentityProvider) -> None:
    header = security_header(idp.assertion())
    header.append(copy.deepcopy(idp.assertion()))
    with pytest.raises(XuaRefused, match="more than one"):
        verifier(idp).verify(header, message_id="m")


def test_a_bad_certificate_file_is_named_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "idp.pem"
    bad.write_text("not a certificate")
    settings = XdsSettings(xua_issuers=[XuaIssuerSettings(name="x", certificate=bad)])
    with pytest.raises(ValueError, match=r"idp\.pem"):
        XuaVerifier(settings, Remembered())


def test_the_index_refuses_a_replay_on_every_node(engine: Engine) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    first, second = AssertionReplay(engine), AssertionReplay(engine)  # two nodes
    assert first.first_use("_a1", "m1", expires)
    assert not second.first_use("_a1", "m2", expires)
    assert second.first_use("_a2", "m1", expires)
    reuse = AssertionReplay(engine, reuse=True)
    assert reuse.first_use("_a3", "m1", expires)
    assert reuse.first_use("_a3", "m2", expires)  # reused for another request
    assert not reuse.first_use("_a3", "m2", expires)  # the same request again


def test_expired_assertions_are_forgotten(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    replay = AssertionReplay(engine, clock=lambda: now)
    assert replay.first_use("_old", "m", now - dt.timedelta(minutes=1))
    later = AssertionReplay(engine, clock=lambda: now + dt.timedelta(minutes=10))
    assert later.first_use("_new", "m", now + dt.timedelta(minutes=20))  # sweeps _old
    with UnitOfWork(engine, write=False) as uow:
        assert not uow.assertions.seen(hashlib.sha256(b"_old").hexdigest())
