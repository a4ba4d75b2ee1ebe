"""The XDS SOAP 1.2 endpoints (kuva.xds.endpoint) with echoing test transactions.

Every sample message goes through the router; faults, limits and MTOM in both
directions are checked over in-process ASGI, the streaming of a 200 MB attachment
on the bare ASGI interface (to measure the server's memory), and zeep talks to a
real uvicorn server on loopback as an independent SOAP 1.2 client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import tracemalloc
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import uvicorn
import zeep
import zeep.exceptions
from fastapi import FastAPI
from lxml import etree
from lxml.etree import _Element as Element

from kuva.config import XdsSettings
from kuva.dicomweb.multipart_parser import (
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_content_type,
)
from kuva.xds.endpoint import soap_router
from kuva.xds.messages import Attachment, SoapFault, SoapRequest, SoapResponse, Transaction
from kuva.xds.mtom import content_id_from_href, new_content_id, parse_mtom, xop_include
from kuva.xds.namespaces import (
    PROVIDE_AND_REGISTER,
    REGISTER_DOCUMENT_SET,
    REGISTRY_STORED_QUERY,
    RESPONSE_ACTIONS,
    RETRIEVE_DOCUMENT_SET,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    RS,
    SOAP,
    WSA,
    XDSB,
    XOP,
    q,
)
from kuva.xds.schema import validate
from kuva.xds.xua import XuaVerifier, authentication
from tests.support.server import free_port
from tests.support.xua import IdentityProvider, security_header
from tests.unit.test_xua import Remembered

DATA = Path(__file__).resolve().parents[1] / "data" / "xds"
SAMPLES = DATA / "samples"
WSDL = DATA / "wsdl" / "iti43.wsdl"
TEST = "urn:kuva:test:echo"
NS = {"soap": SOAP, "wsa": WSA, "t": TEST, "xdsb": XDSB, "rs": RS}
REGISTRY, REPOSITORY, IMAGING, RESPONSES = (
    "/xds/registry",
    "/xds/repository",
    "/xds/imaging",
    "/test/responses",
)
SOAP_XML = "application/soap+xml; charset=UTF-8"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"

# The route of each payload element: (path, action). The response payloads are
# served on a test path, as a client's asynchronous response endpoint would.
ROUTES: dict[str, tuple[str, str]] = {
    q("query", "AdhocQueryRequest"): (REGISTRY, REGISTRY_STORED_QUERY),
    q("lcm", "SubmitObjectsRequest"): (REGISTRY, REGISTER_DOCUMENT_SET),
    q("xdsb", "ProvideAndRegisterDocumentSetRequest"): (REPOSITORY, PROVIDE_AND_REGISTER),
    q("xdsb", "RetrieveDocumentSetRequest"): (REPOSITORY, RETRIEVE_DOCUMENT_SET),
    q("xdsi", "RetrieveImagingDocumentSetRequest"): (IMAGING, RETRIEVE_IMAGING_DOCUMENT_SET),
    q("query", "AdhocQueryResponse"): (RESPONSES, RESPONSE_ACTIONS[REGISTRY_STORED_QUERY]),
    q("xdsb", "RetrieveDocumentSetResponse"): (
        RESPONSES,
        RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET],
    ),
}
RESPONSE_TRANSACTIONS = [
    (RESPONSE_ACTIONS[REGISTRY_STORED_QUERY], q("query", "AdhocQueryResponse")),
    (RESPONSE_ACTIONS[PROVIDE_AND_REGISTER], q("rs", "RegistryResponse")),
    (RESPONSE_ACTIONS[REGISTER_DOCUMENT_SET], q("rs", "RegistryResponse")),
    (RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET], q("xdsb", "RetrieveDocumentSetResponse")),
]

# The SOAP envelopes among the samples: what the router answers to each as it is,
# and once a missing wsa:MessageID is added. Most NIST envelopes carry
# wsa:RelatesTo but no wsa:MessageID, which ITI TF-2x V.3 requires.
ENVELOPES = {
    "iti18-FindDocuments-soap12-request.xml": ("fault:MessageID", "handled"),
    "iti41-ProvideAndRegister-soap12-request.xml": ("fault:MessageID", "handled"),
    "iti41-ProvideAndRegister-soap12-response.xml": ("fault:MessageID", "handled"),
    "iti42-RegisterDocumentSet-b-soap12-response.xml": ("fault:MessageID", "handled"),
    "iti43-RetrieveDocumentSet-soap12-request.xml": ("handled", "handled"),
    "iti43-RetrieveDocumentSet-soap12-response.xml": ("fault:MessageID", "handled"),
    "invalid-iti41-pnr-element-order-soap12.xml": ("fault:MessageID", "invalid"),
    "invalid-iti41-soap12-missing-wsa-action.xml": ("fault:Action", "fault:Action"),
    "invalid-iti43-retrieve-element-order-soap12.xml": ("invalid", "invalid"),
}
# The raw MTOM bodies, their Content-Type (SOURCES.md) and the documents inside.
MTOM_SAMPLES = {
    "iti41-ProvideAndRegister-mtom-xop-http-body.txt": (
        "multipart/related;"
        ' boundary="MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d";'
        ' type="application/xop+xml"; start-info="application/soap+xml";'
        ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
    ),
    "rad68-iti41-PnR-KOS-captured-mime-body.txt": (
        'multipart/related; boundary="uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17";'
        ' type="application/xop+xml"; start-info="application/soap+xml";'
        ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
    ),
}
BARE_PAYLOADS = sorted(path.name for path in SAMPLES.glob("*.xml") if path.name not in ENVELOPES)


# ------------------------------------------------------------------ test transactions


@dataclass
class Seen:
    request: SoapRequest
    problems: list[str] | None  # None: handle was called (the payload was valid)
    documents: dict[str, bytes]
    in_worker_thread: bool


class Echo:
    """Transactions that record what they receive and answer with a description of it."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def transaction(self, action: str, payload: str) -> Transaction:
        return Transaction(
            action=action,
            payload=payload,
            handle=lambda request: self.answer(request, None),
            invalid=lambda request, problems: self.answer(request, problems),
        )

    def answer(self, request: SoapRequest, problems: list[str] | None) -> SoapResponse:
        documents = {
            document.get("id", ""): request.binary(document)
            for document in request.body.iter(q("xdsb", "Document"))
        }
        self.seen.append(
            Seen(
                request,
                problems,
                documents,
                threading.current_thread() is not threading.main_thread(),
            )
        )
        echo = etree.Element(f"{{{TEST}}}Echo", nsmap={"t": TEST})
        echo.set("action", request.action)
        echo.set("payload", request.body.tag)
        echo.set("valid", "true" if problems is None else "false")
        for problem in problems or []:
            etree.SubElement(echo, f"{{{TEST}}}Problem").text = problem
        for document_id, content in documents.items():
            element = etree.SubElement(echo, f"{{{TEST}}}Document", id=document_id)
            element.set("sha256", hashlib.sha256(content).hexdigest())
        action = RESPONSE_ACTIONS.get(request.action, request.action + "Response")
        return SoapResponse(action, echo)


def endpoints(echo: Echo) -> dict[str, list[Transaction]]:
    table: dict[str, list[Transaction]] = {REGISTRY: [], REPOSITORY: [], IMAGING: [], RESPONSES: []}
    for payload, (path, action) in ROUTES.items():
        if path != RESPONSES:
            table[path].append(echo.transaction(action, payload))
    for action, payload in RESPONSE_TRANSACTIONS:
        table[RESPONSES].append(echo.transaction(action, payload))
    return table


def make_app(table: Mapping[str, Sequence[Transaction]], limit: int = 1 << 20) -> FastAPI:
    app = FastAPI()
    app.include_router(soap_router(table, limit))
    return app


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def app(echo: Echo) -> FastAPI:
    return make_app(endpoints(echo))


def post(
    app: FastAPI,
    path: str,
    content: bytes | AsyncIterator[bytes],
    content_type: str | None = SOAP_XML,
) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kuva.test") as client:
            headers = {"content-type": content_type} if content_type else {}
            return await client.post(path, content=content, headers=headers)

    return asyncio.run(send())


# ------------------------------------------------------------------ helpers


def envelope(action: str | None, payload: str | bytes, headers: str = "") -> bytes:
    body = payload.decode() if isinstance(payload, bytes) else payload
    addressing = f"<wsa:Action>{action}</wsa:Action>" if action else ""
    addressing += "<wsa:MessageID>urn:uuid:00000000-0000-4000-8000-000000000001</wsa:MessageID>"
    return (
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:wsa="{WSA}"><soap:Header>{addressing}{headers}'
        f"</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


def payload_bytes(name: str) -> bytes:
    root = etree.parse(str(SAMPLES / name)).getroot()
    return bytes(etree.tostring(root))


def with_message_id(data: bytes) -> bytes:
    root = etree.fromstring(data)
    header = root.find(f"{{{SOAP}}}Header")
    assert header is not None
    if header.find(f"{{{WSA}}}MessageID") is None:
        element = etree.SubElement(header, f"{{{WSA}}}MessageID")
        element.text = "urn:uuid:11111111-2222-4333-8444-555555555555"
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def sample_route(data: bytes) -> str:
    root = etree.fromstring(data)
    body = root.find(f"{{{SOAP}}}Body")
    assert body is not None
    (payload,) = [child for child in body if isinstance(child.tag, str)]
    return RESPONSES if payload.tag == q("rs", "RegistryResponse") else ROUTES[payload.tag][0]


def soap_tree(response: httpx.Response) -> Element:
    media = parse_content_type(response.headers["content-type"])
    if media.media_type == "multipart/related":
        message = parse_mtom(response.content, media)
        return etree.fromstring(message.root)
    return etree.fromstring(response.content)


def found(tree: Element, path: str) -> list[Any]:
    result = tree.xpath(path, namespaces={**NS, "xop": XOP})
    assert isinstance(result, list)
    return result


def elements(tree: Element, path: str) -> list[Element]:
    return [item for item in found(tree, path) if isinstance(item, etree._Element)]


def string(tree: Element, path: str) -> str:
    return str(tree.xpath(f"string({path})", namespaces={**NS, "xop": XOP}))


def fault_codes(tree: Element) -> list[str]:
    return [str(value) for value in found(tree, "//soap:Fault/soap:Code//soap:Value/text()")]


def fault_reason(tree: Element) -> str:
    return string(tree, "//soap:Fault/soap:Reason/soap:Text")


def check_outcome(response: httpx.Response, outcome: str, echo: Echo) -> None:
    tree = soap_tree(response)
    if outcome.startswith("fault:"):
        header = outcome.split(":", 1)[1]
        assert response.status_code == 400
        assert fault_codes(tree) == ["soap:Sender", "wsa:MessageAddressingHeaderRequired"]
        assert f"wsa:{header}" in fault_reason(tree)
        assert string(tree, "//soap:Detail/wsa:ProblemHeaderQName") == (f"wsa:{header}")
        assert echo.seen == []
        return
    assert response.status_code == 200, response.text
    (seen,) = echo.seen
    (echoed,) = elements(tree, "/soap:Envelope/soap:Body/t:Echo")
    assert echoed.get("action") == seen.request.action
    assert string(tree, "//wsa:RelatesTo") == seen.request.message_id
    assert string(tree, "//wsa:Action") == RESPONSE_ACTIONS.get(
        seen.request.action, seen.request.action + "Response"
    )
    assert string(tree, "//wsa:MessageID").startswith("urn:uuid:")
    if outcome == "handled":
        assert seen.problems is None
        assert echoed.get("valid") == "true"
    else:
        assert seen.problems
        assert echoed.get("valid") == "false"
        assert all("Unexpected child" in problem for problem in seen.problems)
    assert seen.in_worker_thread


# ------------------------------------------------------------------ every sample


def test_every_sample_has_an_expected_outcome() -> None:
    names = {path.name for path in SAMPLES.iterdir() if path.name != "SOURCES.md"}
    assert names == set(ENVELOPES) | set(MTOM_SAMPLES) | set(BARE_PAYLOADS)
    for name in BARE_PAYLOADS:
        assert etree.parse(str(SAMPLES / name)).getroot().tag != f"{{{SOAP}}}Envelope"


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_sample_envelopes_as_they_are(app: FastAPI, echo: Echo, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    check_outcome(post(app, sample_route(data), data), ENVELOPES[name][0], echo)


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_sample_envelopes_with_a_message_id(app: FastAPI, echo: Echo, name: str) -> None:
    data = with_message_id((SAMPLES / name).read_bytes())
    check_outcome(post(app, sample_route(data), data), ENVELOPES[name][1], echo)


@pytest.mark.parametrize("name", BARE_PAYLOADS)
def test_sample_payloads_in_an_envelope(app: FastAPI, echo: Echo, name: str) -> None:
    payload = payload_bytes(name)
    path, action = ROUTES[etree.fromstring(payload).tag]
    response = post(app, path, envelope(action, payload), f'{SOAP_XML}; action="{action}"')
    check_outcome(response, "handled", echo)  # all schema-valid (SOURCES.md)


@pytest.mark.parametrize("name", sorted(MTOM_SAMPLES))
def test_the_mtom_samples(app: FastAPI, echo: Echo, name: str) -> None:
    response = post(app, REPOSITORY, (SAMPLES / name).read_bytes(), MTOM_SAMPLES[name])
    check_outcome(response, "handled", echo)
    (seen,) = echo.seen
    assert seen.request.mtom
    if name.startswith("iti41"):
        assert seen.documents == {"Document01": b"This is my document.\n\nIt is great!\n\n"}
        assert list(seen.request.attachments) == [
            "1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org"
        ]
    else:  # the KOS manifest comes inline, base64
        (kos,) = seen.documents.values()
        assert len(kos) == 6090 and kos[128:132] == b"DICM"
        assert seen.request.attachments == {}
    # An MTOM request is answered in MTOM.
    media = parse_content_type(response.headers["content-type"])
    assert media.media_type == "multipart/related"
    assert media.parameters["type"] == "application/xop+xml"
    assert media.parameters["start-info"] == "application/soap+xml"
    message = parse_mtom(response.content, media)
    assert message.parts == {}


# ------------------------------------------------------------------ faults


def test_an_unknown_action_for_the_path(app: FastAPI, echo: Echo) -> None:
    payload = payload_bytes("iti18-GetAll-request.xml")
    response = post(app, REPOSITORY, envelope(REGISTRY_STORED_QUERY, payload))
    assert response.status_code == 400
    assert response.headers["content-type"] == SOAP_XML
    tree = soap_tree(response)
    assert fault_codes(tree) == ["soap:Sender", "wsa:ActionNotSupported"]
    assert string(tree, "//soap:Detail/wsa:ProblemAction/wsa:Action") == (REGISTRY_STORED_QUERY)
    assert string(tree, "//wsa:RelatesTo") == ("urn:uuid:00000000-0000-4000-8000-000000000001")
    assert echo.seen == []


def test_a_payload_that_is_not_the_transactions(app: FastAPI, echo: Echo) -> None:
    payload = payload_bytes("iti42-RegisterDocumentSet-b-request.xml")
    response = post(app, REGISTRY, envelope(REGISTRY_STORED_QUERY, payload))
    assert response.status_code == 400
    tree = soap_tree(response)
    assert fault_codes(tree) == ["soap:Sender"]
    assert "SubmitObjectsRequest" in fault_reason(tree)
    assert echo.seen == []


def test_a_mandatory_header_kuva_does_not_understand(app: FastAPI, echo: Echo) -> None:
    payload = payload_bytes("iti18-GetAll-request.xml")
    extension = '<x:Consent xmlns:x="urn:example:consent" soap:mustUnderstand="true"/>'
    response = post(app, REGISTRY, envelope(REGISTRY_STORED_QUERY, payload, extension))
    assert response.status_code == 500
    tree = soap_tree(response)
    assert fault_codes(tree) == ["soap:MustUnderstand"]
    assert elements(tree, "//soap:Header/soap:NotUnderstood")
    assert echo.seen == []


def test_a_soap11_envelope(app: FastAPI) -> None:
    soap11 = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        + payload_bytes("iti18-GetAll-request.xml").decode()
        + "</s:Body></s:Envelope>"
    ).encode()
    response = post(app, REGISTRY, soap11, "text/xml; charset=utf-8")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/xml")
    assert b"VersionMismatch" in response.content
    assert b"SupportedEnvelope" in response.content


@pytest.mark.parametrize("content", [b"not xml at all", b"", b"<a><b></a>", b'{"json": true}'])
def test_bodies_that_are_not_xml(app: FastAPI, content: bytes) -> None:
    response = post(app, REGISTRY, content)
    assert response.status_code == 400
    assert fault_codes(soap_tree(response)) == ["soap:Sender"]


def test_the_missing_action_sample_over_mtom(app: FastAPI, echo: Echo) -> None:
    data = (SAMPLES / "invalid-iti41-soap12-missing-wsa-action.xml").read_bytes()
    body = (
        b'--b1\r\nContent-Type: application/xop+xml; type="application/soap+xml"\r\n'
        b"Content-ID: <root@t>\r\n\r\n" + data + b"\r\n--b1--\r\n"
    )
    response = post(
        app, REPOSITORY, body, 'multipart/related; type="application/xop+xml"; boundary=b1'
    )
    check_outcome(response, "fault:Action", echo)
    assert response.headers["content-type"] == SOAP_XML  # faults are never MTOM


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol0 "lol">\n'
    + b"".join(b'<!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]>\n"
)


@pytest.mark.parametrize(
    "data",
    [
        BILLION_LAUGHS + envelope(REGISTRY_STORED_QUERY, "<x>&lol9;</x>"),
        (BILLION_LAUGHS + envelope(REGISTRY_STORED_QUERY, "<x>&lol9;</x>"))
        .decode()
        .encode("utf-16"),
        b'<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + envelope(REGISTRY_STORED_QUERY, "<x>&x;</x>"),
    ],
)
def test_document_type_declarations_are_refused_quickly(app: FastAPI, data: bytes) -> None:
    started = time.perf_counter()
    response = post(app, REGISTRY, data)
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 400
    assert "document type declaration" in fault_reason(soap_tree(response))
    assert b"root:" not in response.content


def test_an_oversize_body_with_a_content_length(echo: Echo) -> None:
    app = make_app(endpoints(echo), limit=64 * 1024)
    payload = payload_bytes("iti18-GetAll-request.xml")
    padding = "<!--" + "x" * (70 * 1024) + "-->"
    response = post(app, REGISTRY, envelope(REGISTRY_STORED_QUERY, payload + padding.encode()))
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    tree = soap_tree(response)
    assert fault_codes(tree) == ["soap:Sender"]
    assert "larger than 65536 bytes" in fault_reason(tree)
    assert echo.seen == []


@pytest.mark.parametrize(
    "content_type", [SOAP_XML, 'multipart/related; type="application/xop+xml"; boundary=b1']
)
def test_an_oversize_streamed_body_is_not_read_to_its_end(echo: Echo, content_type: str) -> None:
    app = make_app(endpoints(echo), limit=256 * 1024)
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 64 MB if it were all read
            pulled += 1
            yield b"--b1\r\n" if pulled == 1 else b"x" * (64 * 1024)

    response = post(app, REGISTRY, chunks(), content_type)
    assert response.status_code == 413
    assert pulled <= 256 // 64 + 3
    assert echo.seen == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [(None, 415), ("application/json", 415), ("text/plain", 415), ("not a media type", 400)],
)
def test_unsupported_media_types(app: FastAPI, content_type: str | None, status: int) -> None:
    data = envelope(REGISTRY_STORED_QUERY, payload_bytes("iti18-GetAll-request.xml"))
    response = post(app, REGISTRY, data, content_type)
    assert response.status_code == status
    assert fault_codes(soap_tree(response)) == ["soap:Sender"]


def test_the_content_type_action_must_agree(app: FastAPI, echo: Echo) -> None:
    data = envelope(REGISTRY_STORED_QUERY, payload_bytes("iti18-GetAll-request.xml"))
    response = post(app, REGISTRY, data, f'{SOAP_XML}; action="{REGISTER_DOCUMENT_SET}"')
    assert response.status_code == 400
    assert fault_codes(soap_tree(response)) == [
        "soap:Sender",
        "wsa:InvalidAddressingHeader",
        "wsa:ActionMismatch",
    ]
    assert echo.seen == []


def test_a_malformed_mtom_body(app: FastAPI) -> None:
    response = post(
        app,
        REPOSITORY,
        b"--b1\r\nContent-ID: <a@b>\r\n\r\nno end",
        "multipart/related; boundary=b1",
    )
    assert response.status_code == 400
    assert "MTOM" in fault_reason(soap_tree(response))


def test_a_failing_handler_is_a_receiver_fault_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(request: SoapRequest) -> SoapResponse:
        raise RuntimeError("secret internal detail 1.2.246.21 010181-900C")

    transaction = Transaction(
        REGISTRY_STORED_QUERY, q("query", "AdhocQueryRequest"), fail, lambda r, p: fail(r)
    )
    app = make_app({REGISTRY: [transaction]})
    data = envelope(REGISTRY_STORED_QUERY, payload_bytes("iti18-GetAll-request.xml"))
    with caplog.at_level(logging.WARNING, logger="kuva.xds.endpoint"):
        response = post(app, REGISTRY, data)
    assert response.status_code == 500
    tree = soap_tree(response)
    assert fault_codes(tree) == ["soap:Receiver"]
    assert "internal error" in fault_reason(tree)
    assert b"secret" not in response.content and b"Traceback" not in response.content
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Receiver" in warnings[0].getMessage()


def test_a_handler_may_answer_with_a_fault(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(request: SoapRequest) -> SoapResponse:
        raise SoapFault("Sender", "this registry takes no queries today")

    transaction = Transaction(
        REGISTRY_STORED_QUERY, q("query", "AdhocQueryRequest"), refuse, lambda r, p: refuse(r)
    )
    app = make_app({REGISTRY: [transaction]})
    data = envelope(REGISTRY_STORED_QUERY, payload_bytes("iti18-GetAll-request.xml"))
    with caplog.at_level(logging.WARNING, logger="kuva.xds.endpoint"):
        response = post(app, REGISTRY, data)
    assert response.status_code == 400
    tree = soap_tree(response)
    assert fault_reason(tree) == "this registry takes no queries today"
    assert string(tree, "//wsa:RelatesTo") == ("urn:uuid:00000000-0000-4000-8000-000000000001")
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


def test_duplicate_actions_on_a_path_are_a_configuration_error(echo: Echo) -> None:
    twice = [echo.transaction(REGISTRY_STORED_QUERY, q("query", "AdhocQueryRequest"))] * 2
    with pytest.raises(ValueError, match="two transactions"):
        soap_router({REGISTRY: twice}, 1024)


# ------------------------------------------------------------------ XUA


def xua_app(echo: Echo, idp: IdentityProvider, **settings: object) -> FastAPI:
    """The echo endpoints behind XUA verification (kuva.xds.xua) trusting ``idp``."""
    xds = XdsSettings.model_validate({"xua_issuers": [idp.settings()], **settings})
    verify = authentication(XuaVerifier(xds, Remembered()), None)
    app = FastAPI()
    app.include_router(soap_router(endpoints(echo), 1 << 20, verify))
    return app


def test_a_verified_user_reaches_the_handler(echo: Echo, tmp_path: Path) -> None:
    idp = IdentityProvider(tmp_path)
    header = etree.tostring(security_header(idp.assertion())).decode()
    payload = payload_bytes("iti18-GetAll-request.xml")
    response = post(xua_app(echo, idp), REGISTRY, envelope(REGISTRY_STORED_QUERY, payload, header))
    assert response.status_code == 200
    (seen,) = echo.seen
    assert seen.request.user is not None
    assert seen.request.user.organization == "1.2.246.10.55555555.10"


@pytest.mark.parametrize("case", ["missing", "unsigned", "replayed"])
def test_a_refused_assertion_is_a_wsse_fault_and_no_handler_runs(
    echo: Echo, tmp_path: Path, case: str
) -> None:
    idp = IdentityProvider(tmp_path)
    app = xua_app(echo, idp, require_xua=True)
    payload = payload_bytes("iti18-GetAll-request.xml")
    assertion = idp.assertion(signed=case != "unsigned")
    header = "" if case == "missing" else etree.tostring(security_header(assertion)).decode()
    if case == "replayed":
        assert post(app, REGISTRY, envelope(REGISTRY_STORED_QUERY, payload, header)).is_success
        echo.seen.clear()
    response = post(app, REGISTRY, envelope(REGISTRY_STORED_QUERY, payload, header))
    assert response.status_code == 400
    tree = soap_tree(response)
    expected = "wsse:FailedAuthentication" if case == "replayed" else "wsse:InvalidSecurityToken"
    assert fault_codes(tree) == ["soap:Sender", expected]
    assert echo.seen == []


# ------------------------------------------------------------------ MTOM responses


def retrieve_transaction(documents: Mapping[str, Callable[[], Attachment]]) -> Transaction:
    """ITI-43 answering each requested document as an MTOM attachment."""

    def handle(request: SoapRequest) -> SoapResponse:
        response = etree.Element(q("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
        registry = etree.SubElement(response, q("rs", "RegistryResponse"), nsmap={"rs": RS})
        registry.set("status", SUCCESS)
        attachments = []
        for wanted in request.body.iterfind(q("xdsb", "DocumentRequest")):
            unique_id = wanted.findtext(q("xdsb", "DocumentUniqueId"), "")
            attachment = documents[unique_id]()
            answer = etree.SubElement(response, q("xdsb", "DocumentResponse"))
            etree.SubElement(answer, q("xdsb", "RepositoryUniqueId")).text = wanted.findtext(
                q("xdsb", "RepositoryUniqueId")
            )
            etree.SubElement(answer, q("xdsb", "DocumentUniqueId")).text = unique_id
            etree.SubElement(answer, q("xdsb", "mimeType")).text = attachment.content_type
            xop_include(etree.SubElement(answer, q("xdsb", "Document")), attachment.content_id)
            attachments.append(attachment)
        assert validate(response) == []  # what kuva produces is schema-valid too
        return SoapResponse(RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET], response, attachments)

    return Transaction(
        RETRIEVE_DOCUMENT_SET,
        q("xdsb", "RetrieveDocumentSetRequest"),
        handle,
        lambda r, p: handle(r),
    )


def retrieve_request(*unique_ids: str) -> bytes:
    requests_ = "".join(
        f"<x:DocumentRequest><x:RepositoryUniqueId>1.2.246.10.0.10.1.1</x:RepositoryUniqueId>"
        f"<x:DocumentUniqueId>{unique_id}</x:DocumentUniqueId></x:DocumentRequest>"
        for unique_id in unique_ids
    )
    return envelope(
        RETRIEVE_DOCUMENT_SET,
        f'<x:RetrieveDocumentSetRequest xmlns:x="{XDSB}">{requests_}'
        "</x:RetrieveDocumentSetRequest>",
    )


def test_a_plain_request_gets_an_mtom_answer_when_there_are_attachments() -> None:
    contents = {"1.2.3.1": b"%PDF-1.4 first\r\n", "1.2.3.2": bytes(range(256)) * 100}
    documents = {
        unique_id: (
            lambda content=content: Attachment(
                new_content_id("doc"), "application/octet-stream", lambda: [content], len(content)
            )
        )
        for unique_id, content in contents.items()
    }
    app = make_app({REPOSITORY: [retrieve_transaction(documents)]})
    response = post(app, REPOSITORY, retrieve_request("1.2.3.1", "1.2.3.2"))
    assert response.status_code == 200
    media = parse_content_type(response.headers["content-type"])
    assert media.media_type == "multipart/related"
    message = parse_mtom(response.content, media)
    tree = etree.fromstring(message.root)
    hrefs = found(tree, "//xdsb:Document/xop:Include/@href")
    assert [message.parts[str(content_id_from_href(href))] for href in hrefs] == list(
        contents.values()
    )


def test_an_attachment_that_fails_while_sent_cuts_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first part of the document"
        raise OSError("blob store went away")

    documents = {"1.2.3.1": lambda: Attachment("d@kuva", "application/pdf", chunks)}
    app = make_app({REPOSITORY: [retrieve_transaction(documents)]})
    with (
        caplog.at_level(logging.ERROR, logger="kuva.xds.endpoint"),
        pytest.raises(OSError, match="blob store went away"),
    ):
        post(app, REPOSITORY, retrieve_request("1.2.3.1"))
    assert any("aborted while being sent" in record.getMessage() for record in caplog.records)


def test_a_32_mb_mtom_request_is_read_while_it_arrives(echo: Echo) -> None:
    size = 32 * 1024 * 1024
    app = make_app(endpoints(echo), limit=40 * 1024 * 1024)
    pnr = (SAMPLES / "iti41-ProvideAndRegister-mtom-xop-http-body.txt").read_bytes()
    root = pnr[pnr.index(b"<?xml") : pnr.index(b"</soapenv:Envelope>") + 19]
    head = (
        b"--b1\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        b'type="application/soap+xml"\r\nContent-ID: <root@t>\r\n\r\n' + root + b"\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
        b"Content-ID: <1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org>\r\n\r\n"
    )
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for index in range(size // 65536):
            chunk = index.to_bytes(4, "big") * 16384
            expected.update(chunk)
            yield chunk
        yield b"\r\n--b1--\r\n"

    content_type = 'multipart/related; type="application/xop+xml"; start="<root@t>"; boundary=b1'
    tracemalloc.start()
    try:
        started = time.perf_counter()
        response = post(app, REPOSITORY, body(), content_type)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"32 MiB MTOM request: {elapsed:.1f} s, peak traced memory {peak / 2**20:.1f} MiB")
    assert response.status_code == 200, response.text
    (seen,) = echo.seen
    assert hashlib.sha256(seen.documents["Document01"]).hexdigest() == expected.hexdigest()
    assert peak < 2 * size  # the part is kept (SoapRequest.attachments), the body is not


def test_a_200_mb_attachment_streams_with_little_server_memory() -> None:
    size, chunk_size = 200 * 1024 * 1024, 1024 * 1024
    expected = hashlib.sha256()
    for index in range(size // chunk_size):
        expected.update(index.to_bytes(4, "big") * (chunk_size // 4))

    def chunks() -> Iterator[bytes]:  # made one at a time, as a blob store reads
        for index in range(size // chunk_size):
            yield index.to_bytes(4, "big") * (chunk_size // 4)

    content_id = new_content_id("big")
    documents = {"1.2.3.9": lambda: Attachment(content_id, "application/dicom", chunks, size)}
    app = make_app({REPOSITORY: [retrieve_transaction(documents)]})
    request = retrieve_request("1.2.3.9")

    received = hashlib.sha256()
    state: dict[str, Any] = {"parts": [], "root": bytearray(), "bytes": 0}

    async def run() -> int:
        status = 0
        parser: MultipartParser | None = None
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": request, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, parser
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                media = parse_content_type(headers["content-type"])
                parser = MultipartParser(media.parameters["boundary"])
                return
            assert parser is not None
            body = message.get("body", b"")
            state["bytes"] += len(body)
            for event in parser.feed(body):
                if isinstance(event, PartStart):
                    state["parts"].append(event.headers)
                elif isinstance(event, PartData):
                    if len(state["parts"]) == 1:
                        state["root"] += event.data
                    else:
                        received.update(event.data)
                elif isinstance(event, PartEnd):
                    pass
            if not message.get("more_body", False):
                parser.finish()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": REPOSITORY,
            "raw_path": REPOSITORY.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", SOAP_XML.encode()),
                (b"content-length", str(len(request)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        await app(scope, receive, send)
        return status

    tracemalloc.start()
    try:
        started = time.perf_counter()
        status = asyncio.run(run())
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"200 MiB MTOM attachment: {elapsed:.1f} s, peak traced memory {peak / 2**20:.1f} MiB "
        f"(server and test client together)"
    )
    assert status == 200
    assert state["bytes"] > size
    assert received.hexdigest() == expected.hexdigest()
    _, attachment_headers = state["parts"]
    assert attachment_headers.get("content-id") == f"<{content_id}>"
    tree = etree.fromstring(bytes(state["root"]))
    href = string(tree, "//xop:Include/@href")
    assert content_id_from_href(href) == content_id
    assert peak < 32 * 2**20


# ------------------------------------------------------------------ zeep over uvicorn


@contextlib.contextmanager
def uvicorn_server(app: FastAPI) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def zeep_service(url: str) -> Any:
    """zeep's proxy for the ITI-43 binding of the test WSDL, sending to ``url``."""
    session = requests.Session()
    session.trust_env = False  # loopback: no proxies from the environment
    client: Any = zeep.Client  # zeep is untyped
    transport: Any = zeep.Transport
    return client(str(WSDL), transport=transport(session=session)).create_service(BINDING, url)


BINDING = "{urn:ihe:iti:xds-b:2007}DocumentRepository_Binding_Soap12"


def test_zeep_retrieves_a_document_over_mtom_from_uvicorn() -> None:
    # zeep strips CR/LF from both ends of a binary MIME part, so this content has none there.
    content = b"%PDF-1.4\r\n" + bytes(range(256)) * 64 + b"%%EOF"
    documents = {
        "1.2.246.10.0.10.9.1": lambda: Attachment(
            new_content_id("doc"), "application/pdf", lambda: [content[:100], content[100:]]
        )
    }
    app = make_app({REPOSITORY: [retrieve_transaction(documents)]})
    with uvicorn_server(app) as url:
        service = zeep_service(url + REPOSITORY)
        result = service.DocumentRepository_RetrieveDocumentSet(
            DocumentRequest=[
                {
                    "RepositoryUniqueId": "1.2.246.10.0.10.1.1",
                    "DocumentUniqueId": "1.2.246.10.0.10.9.1",
                }
            ]
        )
    assert result.RegistryResponse.status == SUCCESS
    (document,) = result.DocumentResponse
    assert document.DocumentUniqueId == "1.2.246.10.0.10.9.1"
    assert document.mimeType == "application/pdf"
    assert document.Document == content


def test_zeep_understands_kuvas_faults(echo: Echo) -> None:
    # The repository path here serves ITI-41 only: ITI-43 is not supported.
    app = make_app(
        {
            REPOSITORY: [
                echo.transaction(
                    PROVIDE_AND_REGISTER, q("xdsb", "ProvideAndRegisterDocumentSetRequest")
                )
            ]
        }
    )
    with uvicorn_server(app) as url:
        service = zeep_service(url + REPOSITORY)
        with pytest.raises(zeep.exceptions.Fault) as caught:
            service.DocumentRepository_RetrieveDocumentSet(
                DocumentRequest=[{"RepositoryUniqueId": "1.2.3", "DocumentUniqueId": "1.2.3.4"}]
            )
    fault = caught.value
    assert "not supported" in fault.message
    assert fault.code is not None and fault.code.endswith("Sender")
    assert [etree.QName(subcode).text for subcode in fault.subcodes] == [
        f"{{{WSA}}}ActionNotSupported"
    ]
    assert echo.seen == []
