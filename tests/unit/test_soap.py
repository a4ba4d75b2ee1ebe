"""SOAP 1.2 envelopes (SOAP 1.2 Part 1) with WS-Addressing 1.0: reading, faults, responses."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from lxml import etree

from kuva.xds.messages import SoapFault, SoapResponse
from kuva.xds.namespaces import RS, SOAP, WSA, XDSB, q
from kuva.xds.soap import (
    SAML2,
    SOAP11,
    WSSE,
    DetailedFault,
    build_envelope,
    fault_reply,
    new_message_id,
    parse_envelope,
    parse_xml,
    response_envelope,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"
MESSAGE_ID = "urn:uuid:6f0b3c2e-1f4e-4c1a-9d0e-6a4b7c2d9e10"
PAYLOAD = (
    f'<x:RetrieveDocumentSetRequest xmlns:x="{XDSB}"><x:DocumentRequest>'
    "<x:RepositoryUniqueId>1.2.3</x:RepositoryUniqueId>"
    "<x:DocumentUniqueId>1.2.3.4</x:DocumentUniqueId>"
    "</x:DocumentRequest></x:RetrieveDocumentSetRequest>"
)
NS = {"soap": SOAP, "wsa": WSA}


def envelope(
    headers: str | None = None, body: str = PAYLOAD, extra: str = "", namespace: str = SOAP
) -> bytes:
    if headers is None:
        headers = f"<wsa:Action>{ACTION}</wsa:Action><wsa:MessageID>{MESSAGE_ID}</wsa:MessageID>"
    return (
        f'<soap:Envelope xmlns:soap="{namespace}" xmlns:wsa="{WSA}">'
        f"<soap:Header>{headers}</soap:Header><soap:Body>{body}</soap:Body>{extra}"
        "</soap:Envelope>"
    ).encode()


def addressing(extra: str) -> str:
    return f"<wsa:Action>{ACTION}</wsa:Action><wsa:MessageID>{MESSAGE_ID}</wsa:MessageID>{extra}"


def fault_of(data: bytes, **kwargs: object) -> SoapFault:
    with pytest.raises(SoapFault) as caught:
        parse_envelope(data, **kwargs)  # type: ignore[arg-type]
    return caught.value


def reply_tree(fault: SoapFault, relates_to: str | None = None) -> tuple[int, str, etree._Element]:
    reply = fault_reply(fault, relates_to)
    return reply.status, reply.content_type, etree.fromstring(reply.body)


def texts(tree: etree._Element, path: str) -> list[str]:
    found = tree.xpath(path, namespaces=NS)
    assert isinstance(found, list)
    return [str(value) for value in found]


def elements(
    tree: etree._Element, path: str, namespaces: dict[str, str] | None = None
) -> list[etree._Element]:
    found = tree.xpath(path, namespaces=namespaces or NS)
    assert isinstance(found, list)
    return [item for item in found if isinstance(item, etree._Element)]


def resolved(element: etree._Element, qname: str | None) -> tuple[str | None, str]:
    """(namespace, local name) of a prefixed QName read in ``element``'s scope."""
    assert qname is not None
    prefix, local = qname.split(":")
    return element.nsmap[prefix], local


# ------------------------------------------------------------------ accepted


def test_a_plain_request_is_read() -> None:
    request = parse_envelope(envelope())
    assert request.action == ACTION
    assert request.message_id == MESSAGE_ID
    assert request.body.tag == q("xdsb", "RetrieveDocumentSetRequest")
    assert not request.mtom
    assert request.attachments == {}
    assert request.security is None and request.user is None


def test_the_sample_with_addressing_headers_is_read() -> None:
    data = (SAMPLES / "iti43-RetrieveDocumentSet-soap12-request.xml").read_bytes()
    request = parse_envelope(data, http_action=ACTION)
    assert request.message_id == "urn:uuid:0fbfdced-6c01-4d09-a110-2201afedaa02"
    assert len(request.body.findall(q("xdsb", "DocumentRequest"))) == 2


@pytest.mark.parametrize(
    "block",
    [
        '<x:Trace xmlns:x="urn:x" soap:mustUnderstand="false"/>',
        '<x:Trace xmlns:x="urn:x" soap:mustUnderstand="0"/>',
        '<x:Trace xmlns:x="urn:x"/>',
        # Not targeted at this node (SOAP 1.2 Part 1, 5.2.2).
        '<x:Trace xmlns:x="urn:x" soap:mustUnderstand="true"'
        ' soap:role="http://www.w3.org/2003/05/soap-envelope/role/none"/>',
        '<x:Trace xmlns:x="urn:x" soap:mustUnderstand="true" soap:role="urn:some:other:role"/>',
        # Understood by kuva.
        '<wsa:To soap:mustUnderstand="true">http://example.org/xds</wsa:To>',
        '<wsa:ReplyTo soap:mustUnderstand="1">'
        "<wsa:Address>http://www.w3.org/2005/08/addressing/anonymous</wsa:Address></wsa:ReplyTo>",
        f'<wsse:Security xmlns:wsse="{WSSE}" soap:mustUnderstand="true"/>',
    ],
)
def test_headers_that_need_no_understanding_are_accepted(block: str) -> None:
    assert parse_envelope(envelope(addressing(block))).action == ACTION


def test_the_security_header_is_handed_on_unverified() -> None:
    """parse_envelope does not judge the XUA assertion (kuva.xds.xua does, in the
    endpoint): it hands the wsse:Security block on, and no user is set."""
    security = f"""
      <wsse:Security xmlns:wsse="{WSSE}" soap:mustUnderstand="true">
        <saml2:Assertion xmlns:saml2="{SAML2}" ID="_a1" IssueInstant="2025-01-01T00:00:00Z"
            Version="2.0"><saml2:Issuer>https://idp.example.org</saml2:Issuer></saml2:Assertion>
      </wsse:Security>"""
    request = parse_envelope(envelope(addressing(security)))
    assert request.security is not None
    assert request.security.find(f"{{{SAML2}}}Assertion") is not None
    assert request.user is None
    assert parse_envelope(envelope(addressing(""))).security is None


def test_xop_includes_resolve_in_an_mtom_request() -> None:
    body = (
        f'<x:ProvideAndRegisterDocumentSetRequest xmlns:x="{XDSB}">'
        '<x:Document id="d1"><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include"'
        ' href="cid:doc%201@test"/></x:Document></x:ProvideAndRegisterDocumentSetRequest>'
    )
    request = parse_envelope(envelope(body=body), attachments={"doc 1@test": b"bytes"}, mtom=True)
    assert request.mtom
    assert request.binary(request.body[0]) == b"bytes"


# ------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not XML", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"<a><b></a>", "not well-formed XML"),
        (b'<Envelope xmlns="urn:other"><Body/></Envelope>', None),  # VersionMismatch below
        (b"<root/>", "not a SOAP envelope"),
        (envelope().replace(b"<soap:Body>" + PAYLOAD.encode() + b"</soap:Body>", b""), "no Body"),
        (envelope(body=""), "Body is empty"),
        (envelope(body="<!-- nothing -->  "), "Body is empty"),
        (envelope(body=PAYLOAD + PAYLOAD), "more than one element"),
        (envelope(extra="<soap:Trailer/>"), "after its Body"),
        (envelope(addressing("<?pi here?>")), "processing instructions"),
        (b"<?pi before?>" + envelope(), "processing instructions"),
    ],
)
def test_malformed_messages_are_sender_faults(data: bytes, reason: str | None) -> None:
    fault = fault_of(data)
    if reason is None:
        assert fault.code == "VersionMismatch"
        return
    assert fault.code == "Sender"
    assert reason in fault.reason
    status, content_type, tree = reply_tree(fault)
    assert status == 400
    assert content_type == "application/soap+xml; charset=UTF-8"
    assert texts(tree, "//soap:Fault/soap:Code/soap:Value/text()") == ["soap:Sender"]


def test_a_soap11_envelope_gets_a_soap11_version_mismatch_with_the_upgrade_header() -> None:
    fault = fault_of(envelope(namespace=SOAP11))
    assert fault.code == "VersionMismatch"
    status, content_type, tree = reply_tree(fault)
    assert status == 500
    assert content_type.startswith("text/xml")
    assert tree.tag == f"{{{SOAP11}}}Envelope"
    ns = {"s11": SOAP11, "soap": SOAP}
    (faultcode,) = elements(tree, "//s11:Fault/faultcode", ns)
    assert resolved(faultcode, faultcode.text) == (SOAP11, "VersionMismatch")
    (supported,) = elements(tree, "//s11:Header/soap:Upgrade/soap:SupportedEnvelope", ns)
    assert resolved(supported, supported.get("qname")) == (SOAP, "Envelope")


def test_an_unknown_envelope_namespace_gets_a_soap12_version_mismatch() -> None:
    fault = fault_of(envelope(namespace="urn:not:soap"))
    status, _, tree = reply_tree(fault)
    assert status == 500
    assert texts(tree, "//soap:Code/soap:Value/text()") == ["soap:VersionMismatch"]
    assert elements(tree, "//soap:Header/soap:Upgrade/soap:SupportedEnvelope")


@pytest.mark.parametrize("flag", ["true", "1", " true "])
def test_an_unknown_mandatory_header_is_a_must_understand_fault(flag: str) -> None:
    block = f'<x:Extension xmlns:x="urn:example:ext" soap:mustUnderstand="{flag}"/>'
    fault = fault_of(envelope(addressing(block)))
    assert fault.code == "MustUnderstand"
    status, _, tree = reply_tree(fault)
    assert status == 500  # SOAP 1.2 Part 2, Table 20
    assert texts(tree, "//soap:Code/soap:Value/text()") == ["soap:MustUnderstand"]
    (not_understood,) = elements(tree, "//soap:Header/soap:NotUnderstood")
    assert resolved(not_understood, not_understood.get("qname")) == (
        "urn:example:ext",
        "Extension",
    )
    assert texts(tree, "//wsa:RelatesTo/text()") == [MESSAGE_ID]


def test_an_invalid_must_understand_value_is_a_sender_fault() -> None:
    block = '<x:Extension xmlns:x="urn:example:ext" soap:mustUnderstand="yes"/>'
    assert fault_of(envelope(addressing(block))).code == "Sender"


@pytest.mark.parametrize(
    ("headers", "missing"),
    [
        (f"<wsa:MessageID>{MESSAGE_ID}</wsa:MessageID>", "Action"),
        (f"<wsa:Action>{ACTION}</wsa:Action>", "MessageID"),
        ("", "Action"),
    ],
)
def test_missing_addressing_headers_are_named(headers: str, missing: str) -> None:
    fault = fault_of(envelope(headers))
    assert fault.code == "Sender"
    assert fault.subcode == "wsa:MessageAddressingHeaderRequired"
    assert f"wsa:{missing}" in fault.reason
    status, _, tree = reply_tree(fault)
    assert status == 400
    assert texts(tree, "//soap:Code/soap:Subcode/soap:Value/text()") == [
        "wsa:MessageAddressingHeaderRequired"
    ]
    (problem,) = elements(tree, "//soap:Detail/wsa:ProblemHeaderQName")
    assert resolved(problem, problem.text) == (WSA, missing)
    assert texts(tree, "//wsa:Action/text()") == ["http://www.w3.org/2005/08/addressing/fault"]


def test_the_missing_action_sample_is_refused() -> None:
    data = (SAMPLES / "invalid-iti41-soap12-missing-wsa-action.xml").read_bytes()
    fault = fault_of(data)
    assert fault.subcode == "wsa:MessageAddressingHeaderRequired"
    assert "wsa:Action" in fault.reason


@pytest.mark.parametrize(
    ("headers", "subsubcode"),
    [
        (addressing(f"<wsa:Action>{ACTION}</wsa:Action>"), "wsa:InvalidCardinality"),
        (addressing(f"<wsa:MessageID>{MESSAGE_ID}</wsa:MessageID>"), "wsa:InvalidCardinality"),
        (
            addressing(
                "<wsa:ReplyTo><wsa:Address>http://client.example/cb</wsa:Address></wsa:ReplyTo>"
            ),
            "wsa:OnlyAnonymousAddressSupported",
        ),
        (
            addressing(
                "<wsa:FaultTo><wsa:Address>http://www.w3.org/2005/08/addressing/none"
                "</wsa:Address></wsa:FaultTo>"
            ),
            "wsa:OnlyAnonymousAddressSupported",
        ),
        (addressing("<wsa:ReplyTo/>"), "wsa:MissingAddressInEPR"),
        (f"<wsa:Action> </wsa:Action><wsa:MessageID>{MESSAGE_ID}</wsa:MessageID>", None),
    ],
)
def test_invalid_addressing_headers(headers: str, subsubcode: str | None) -> None:
    fault = fault_of(envelope(headers))
    assert isinstance(fault, DetailedFault)
    assert fault.subcode == "wsa:InvalidAddressingHeader"
    assert fault.subsubcode == subsubcode
    _, _, tree = reply_tree(fault)
    expected = ["wsa:InvalidAddressingHeader"] + ([subsubcode] if subsubcode else [])
    assert texts(tree, "//soap:Code//soap:Subcode/soap:Value/text()") == expected


def test_the_http_action_must_agree_with_wsa_action() -> None:
    assert parse_envelope(envelope(), http_action=f" {ACTION} ").action == ACTION
    fault = fault_of(envelope(), http_action="urn:ihe:iti:2007:RegistryStoredQuery")
    assert isinstance(fault, DetailedFault)
    assert (fault.subcode, fault.subsubcode) == (
        "wsa:InvalidAddressingHeader",
        "wsa:ActionMismatch",
    )


def test_xop_include_outside_mtom_or_to_a_missing_part_is_refused() -> None:
    body = (
        f'<x:ProvideAndRegisterDocumentSetRequest xmlns:x="{XDSB}"><x:Document id="d">'
        '<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:a@b"/>'
        "</x:Document></x:ProvideAndRegisterDocumentSetRequest>"
    )
    assert "only in an MTOM" in fault_of(envelope(body=body)).reason
    assert "missing MIME part" in fault_of(envelope(body=body), mtom=True, attachments={}).reason
    other = body.replace("cid:a@b", "http://example.org/a")
    assert "not a cid: URL" in fault_of(envelope(body=other), mtom=True).reason


# ------------------------------------------------------------------ unsafe XML


LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol0 "lol">\n'
    + b"".join(b'<!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]>\n"
)


@pytest.mark.parametrize(
    "data",
    [
        LAUGHS + envelope(body="<x>&lol9;</x>"),
        LAUGHS
        + b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope" a="&lol9;"/>',
        # External entity (XXE): never read.
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + envelope(body="<x>&x;</x>"),
        b"<!-- a comment first -->\n<!DOCTYPE Envelope>" + envelope(),
        # UTF-16: past the byte-level prolog check, refused after parsing.
        ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE e [<!ENTITY a "b">]>').encode("utf-16")
        + envelope().decode().encode("utf-16")[2:],
        '<!DOCTYPE Envelope SYSTEM "http://example.org/soap.dtd">'.encode("utf-16")
        + envelope().decode().encode("utf-16")[2:],
    ],
)
def test_document_type_declarations_are_refused_quickly(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(SoapFault) as caught:
        parse_xml(data)
    assert time.perf_counter() - started < 0.5
    assert caught.value.code == "Sender"
    assert "document type declaration" in caught.value.reason


def test_utf16_envelopes_are_read() -> None:
    data = envelope().decode().encode("utf-16")
    assert parse_envelope(data).action == ACTION


# ------------------------------------------------------------------ writing


def test_a_response_envelope_carries_the_addressing_headers() -> None:
    payload = etree.Element(q("rs", "RegistryResponse"), nsmap={"rs": RS})
    payload.set("status", "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")
    response = SoapResponse("urn:ihe:iti:2007:RetrieveDocumentSetResponse", payload)
    data = response_envelope(response, MESSAGE_ID)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    tree = etree.fromstring(data)
    assert texts(tree, "/soap:Envelope/soap:Header/wsa:Action/text()") == [response.action]
    assert texts(tree, "/soap:Envelope/soap:Header/wsa:RelatesTo/text()") == [MESSAGE_ID]
    (message_id,) = texts(tree, "/soap:Envelope/soap:Header/wsa:MessageID/text()")
    assert message_id.startswith("urn:uuid:") and message_id != MESSAGE_ID
    (body,) = elements(tree, "/soap:Envelope/soap:Body/*")
    assert body.tag == q("rs", "RegistryResponse")


def test_message_ids_are_fresh_uuid_urns() -> None:
    first, second = new_message_id(), new_message_id()
    assert first != second
    assert first.startswith("urn:uuid:") and len(first) == 45


def test_a_fault_is_answered_per_soap12_part1_5_4() -> None:
    fault = DetailedFault(
        "Sender",
        "the action urn:x is not supported at /xds/registry",
        "wsa:ActionNotSupported",
        problem_action="urn:x",
    )
    status, content_type, tree = reply_tree(fault, relates_to=MESSAGE_ID)
    assert (status, content_type) == (400, "application/soap+xml; charset=UTF-8")
    assert texts(tree, "/soap:Envelope/soap:Header/wsa:RelatesTo/text()") == [MESSAGE_ID]
    assert texts(tree, "//soap:Fault/soap:Code/soap:Value/text()") == ["soap:Sender"]
    assert texts(tree, "//soap:Fault/soap:Code/soap:Subcode/soap:Value/text()") == [
        "wsa:ActionNotSupported"
    ]
    (text,) = elements(tree, "//soap:Fault/soap:Reason/soap:Text")
    assert text.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert text.text == fault.reason
    assert texts(tree, "//soap:Detail/wsa:ProblemAction/wsa:Action/text()") == ["urn:x"]
    # The children of Fault come in the order of the schema: Code, Reason, Detail.
    (element,) = elements(tree, "//soap:Fault")
    assert [etree.QName(child).localname for child in element] == ["Code", "Reason", "Detail"]


def test_a_receiver_fault_is_500_and_unknown_codes_become_receiver() -> None:
    status, _, tree = reply_tree(SoapFault("Receiver", "internal error"))
    assert status == 500
    assert texts(tree, "//soap:Code/soap:Value/text()") == ["soap:Receiver"]
    assert texts(tree, "//wsa:Action/text()") == ["http://www.w3.org/2005/08/addressing/soap/fault"]
    status, _, tree = reply_tree(SoapFault("Nonsense", "x"))
    assert status == 500
    assert texts(tree, "//soap:Code/soap:Value/text()") == ["soap:Receiver"]


def test_a_clark_subcode_gets_its_prefix_declared() -> None:
    _, _, tree = reply_tree(SoapFault("Sender", "x", "{urn:example:codes}Problem"))
    (value,) = elements(tree, "//soap:Subcode/soap:Value")
    assert resolved(value, value.text) == ("urn:example:codes", "Problem")


def test_build_envelope_without_relates_to() -> None:
    tree = build_envelope("urn:a", None)
    assert texts(tree, "//wsa:RelatesTo/text()") == []
    assert elements(tree, "/soap:Envelope/soap:Body")


def test_the_parser_never_reads_an_external_dtd(tmp_path: Path) -> None:
    """Below the DOCTYPE refusal: the parser options alone load no external DTD."""
    from kuva.xds.soap import _parser

    dtd = tmp_path / "leak.dtd"
    dtd.write_text('<!ENTITY x "SECRET"><!ATTLIST Envelope leaked CDATA "SECRET">')
    data = f'<!DOCTYPE Envelope SYSTEM "{dtd.as_uri()}"><Envelope>&x;</Envelope>'.encode()
    root = etree.fromstring(data, _parser())
    assert b"SECRET" not in etree.tostring(root)
    assert root.get("leaked") is None


@pytest.mark.parametrize("item", [b"<?a?>", b"<!--a-->", b" "])
def test_a_long_prolog_is_scanned_quickly(item: bytes) -> None:
    started = time.perf_counter()
    with contextlib.suppress(SoapFault):  # PIs are refused, comments are not
        parse_xml(item * 12_000 + b"<x/>")
    with pytest.raises(SoapFault, match="document type declaration"):
        parse_xml(item * 1_000 + b"<!DOCTYPE x><x/>")
    assert time.perf_counter() - started < 0.5
