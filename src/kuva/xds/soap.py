"""SOAP 1.2 envelopes of the XDS endpoints: requests read, responses and faults written.

What is checked on the way in, in this order (each failure is a fault):

1. The bytes are well-formed XML, parsed safely: no DTD (SOAP 1.2 Part 1, 5: "The
   XML infoset of a SOAP message MUST NOT contain a document type declaration"), no
   entity expansion, no network access, libxml2's default size limits (no
   ``huge_tree``); processing instructions are refused too (SOAP 1.2 Part 1, 5).
2. The root is a SOAP 1.2 ``Envelope`` (namespace http://www.w3.org/2003/05/soap-envelope).
   A SOAP 1.1 envelope gets a ``VersionMismatch`` fault written as SOAP 1.1 with
   the ``Upgrade`` header (SOAP 1.2 Part 1, 5.4.7 and Appendix A); any other
   ``Envelope`` a SOAP 1.2 ``VersionMismatch`` fault. Envelope = [Header] Body (5.1).
3. Header blocks targeted at this node (role absent, ``next`` or ``ultimateReceiver``,
   5.2.2) with ``mustUnderstand`` true that kuva does not understand get a
   ``MustUnderstand`` fault with ``NotUnderstood`` headers (5.2.3, 5.4.8). kuva
   understands the WS-Addressing headers and ``wsse:Security``.
4. WS-Addressing 1.0 (Core 3, SOAP Binding 6.4): ``wsa:Action`` and
   ``wsa:MessageID`` are required by ITI TF-2x Appendix V.3 (Web Services for IHE
   Transactions), so a missing one is a ``wsa:MessageAddressingHeaderRequired``
   fault naming it; a repeated or empty one ``wsa:InvalidAddressingHeader``. IHE
   transactions are synchronous: ``wsa:ReplyTo``/``wsa:FaultTo`` must be anonymous
   (``wsa:OnlyAnonymousAddressSupported``). The ``action`` parameter of the HTTP
   Content-Type (RFC 3902), when given, must equal ``wsa:Action``
   (``wsa:ActionMismatch``).
5. The Body holds exactly one element, the payload. ``xop:Include`` elements are
   allowed only in an XOP package and must name one of its parts (XOP 1.0, 3.2).

XUA (ITI TF-2b 3.40): the ``wsse:Security`` header block is handed on as it is;
the endpoint verifies its SAML 2.0 assertion (kuva.xds.xua) before any transaction
sees the request.

Faults are written per SOAP 1.2 Part 1, 5.4 (Code/Value, Subcode/Value, Reason/Text
``xml:lang="en"``, Detail) with WS-Addressing headers (the fault action of the
SOAP Binding, section 6, and ``wsa:RelatesTo`` when the request's MessageID is
known); the HTTP status follows SOAP 1.2 Part 2, 7.5.2.2 (Table 20): ``Sender`` →
400, every other code → 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lxml import etree
from lxml.etree import _Element as Element

from kuva.xds.messages import SoapFault, SoapRequest, SoapResponse
from kuva.xds.mtom import content_id_from_href
from kuva.xds.namespaces import NSMAP, SOAP, WSA, XOP

__all__ = [
    "ANONYMOUS",
    "SAML2",
    "SOAP11",
    "SOAP_CONTENT_TYPE",
    "WSSE",
    "DetailedFault",
    "FaultReply",
    "build_envelope",
    "fault_reply",
    "new_message_id",
    "parse_envelope",
    "parse_xml",
    "response_envelope",
    "serialize",
]

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
# WS-Addressing 1.0 SOAP Binding 6: the action of WS-Addressing's own faults and
# of other SOAP faults.
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/fault"
SOAP_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"

_ROLE_NEXT = "http://www.w3.org/2003/05/soap-envelope/role/next"
_ROLE_ULTIMATE = "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver"
_UNDERSTOOD_WSA = {"To", "From", "ReplyTo", "FaultTo", "Action", "MessageID", "RelatesTo"}
_SINGLE_WSA = ("To", "From", "ReplyTo", "FaultTo", "Action", "MessageID")
_FAULT_CODES = {"VersionMismatch", "MustUnderstand", "DataEncodingUnknown", "Sender", "Receiver"}
# SOAP 1.2 Part 2, 7.5.2.2, Table 20.
_HTTP_STATUS = {"Sender": 400}
# How much of the message is scanned for a DOCTYPE before it is parsed.
_PROLOG_SCAN = 64 * 1024
_PREFIXES = {**{ns: prefix for prefix, ns in NSMAP.items()}, SOAP11: "soap11", WSSE: "wsse"}


def _soap(local: str) -> str:
    return f"{{{SOAP}}}{local}"


def _wsa(local: str) -> str:
    return f"{{{WSA}}}{local}"


class DetailedFault(SoapFault):
    """A :class:`SoapFault` with what SOAP 1.2 and WS-Addressing attach to some faults.

    ``subsubcode``: a second-level subcode (WS-Addressing SOAP Binding 6.4.1, e.g.
    ``wsa:ActionMismatch`` under ``wsa:InvalidAddressingHeader``).
    ``problem_header``: the header's qualified name (Clark notation) for the
    ``wsa:ProblemHeaderQName`` detail; ``problem_action``: the action for the
    ``wsa:ProblemAction`` detail (SOAP Binding 6.4.4).
    ``not_understood``: header block names (Clark) for ``NotUnderstood`` headers
    (SOAP 1.2 Part 1, 5.4.8). ``soap11``: answer in SOAP 1.1 (a SOAP 1.1 request's
    ``VersionMismatch``, SOAP 1.2 Part 1 Appendix A).
    ``http_status``: overrides the status of SOAP 1.2 Part 2 Table 20 (413, 415).
    ``relates_to``: the request's MessageID, when it was read before the fault.
    """

    def __init__(
        self,
        code: str,
        reason: str,
        subcode: str | None = None,
        *,
        subsubcode: str | None = None,
        problem_header: str | None = None,
        problem_action: str | None = None,
        not_understood: Sequence[str] = (),
        soap11: bool = False,
        http_status: int | None = None,
        relates_to: str | None = None,
    ) -> None:
        super().__init__(code, reason, subcode)
        self.subsubcode = subsubcode
        self.problem_header = problem_header
        self.problem_action = problem_action
        self.not_understood = tuple(not_understood)
        self.soap11 = soap11
        self.http_status = http_status
        self.relates_to = relates_to


# --------------------------------------------------------------------- reading


def _parser() -> etree.XMLParser:
    # Parsers are not thread-safe; one per message is cheap.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
    )


def _prolog(data: bytes) -> bytes:
    """The start of the document in UTF-8, for the DOCTYPE check (XML 1.0 Appendix F)."""
    head = data[:_PROLOG_SCAN]
    for start, skip, codec in (
        (b"\xff\xfe", 2, "utf-16-le"),
        (b"\xfe\xff", 2, "utf-16-be"),
        (b"<\x00", 0, "utf-16-le"),
        (b"\x00<", 0, "utf-16-be"),
    ):
        if head.startswith(start):
            return head[skip:].decode(codec, errors="ignore").encode("utf-8")
    return head


def _doctype_in_prolog(head: bytes) -> bool:
    """True when a DOCTYPE follows the XML declaration, comments, PIs and white space.

    A linear scan (XML 1.0 2.8 ``prolog``), so that no input makes it slow.
    """
    position = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    while position < len(head):
        if head[position] in b" \t\r\n":
            position += 1
        elif head.startswith(b"<?", position):
            end = head.find(b"?>", position + 2)
            if end < 0:
                return False
            position = end + 2
        elif head.startswith(b"<!--", position):
            end = head.find(b"-->", position + 4)
            if end < 0:
                return False
            position = end + 3
        else:
            return head.startswith(b"<!DOCTYPE", position)
    return False


def parse_xml(data: bytes) -> Element:
    """Parse a SOAP message's XML safely; a Sender fault when it is not acceptable XML.

    Refused: malformed XML, a document type declaration (checked in the prolog
    before parsing, so an entity bomb is never read, and again on the parsed
    document), processing instructions (SOAP 1.2 Part 1, 5).
    """
    if _doctype_in_prolog(_prolog(data)):
        raise SoapFault("Sender", _NO_DTD)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault("Sender", f"the message is not well-formed XML: {str(exc)[:300]}") from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None:  # set by any DOCTYPE, even without a subset
        raise SoapFault("Sender", _NO_DTD)
    if (
        any(True for _ in root.itersiblings(etree.PI, preceding=True))
        or any(True for _ in root.itersiblings(etree.PI))
        or any(True for _ in root.iter(etree.PI))
    ):
        raise SoapFault(
            "Sender",
            "a SOAP message must not contain processing instructions (SOAP 1.2 Part 1, 5)",
        )
    # libxml2 does not always fail on a prefix never declared; such a name is no QName.
    if any(":" in e.tag for e in root.iter() if isinstance(e.tag, str) and e.tag[:1] != "{"):
        raise SoapFault(
            "Sender", "the message is not namespace-well-formed: a prefix is undeclared"
        )
    return root


_NO_DTD = "a SOAP message must not contain a document type declaration (SOAP 1.2 Part 1, 5)"


def parse_envelope(
    data: bytes,
    *,
    http_action: str | None = None,
    attachments: Mapping[str, bytes] | None = None,
    mtom: bool = False,
) -> SoapRequest:
    """Read a SOAP 1.2 request (the XML of the envelope) into a :class:`SoapRequest`.

    ``http_action``: the ``action`` parameter of the request's media type, if any.
    ``attachments``: the other parts of an XOP package by Content-ID (``mtom``).
    Raises :class:`SoapFault` (often a :class:`DetailedFault`) as the module
    docstring lists. The ``wsse:Security`` block is handed on unverified
    (``SoapRequest.security``; kuva.xds.xua verifies it).
    """
    root = parse_xml(data)
    _check_version(root)
    header, body = _envelope_parts(root)
    blocks = [child for child in header if isinstance(child.tag, str)] if header is not None else []
    message_ids = [block for block in blocks if block.tag == _wsa("MessageID")]
    relates_to = ((message_ids[0].text or "").strip() or None) if len(message_ids) == 1 else None

    def fault(
        reason: str,
        subcode: str | None = None,
        *,
        subsubcode: str | None = None,
        problem_header: str | None = None,
    ) -> DetailedFault:
        return DetailedFault(
            "Sender",
            reason,
            subcode,
            subsubcode=subsubcode,
            problem_header=problem_header,
            relates_to=relates_to,
        )

    _check_must_understand(blocks, relates_to)
    for local in _SINGLE_WSA:
        if sum(1 for block in blocks if block.tag == _wsa(local)) > 1:
            raise fault(
                f"the wsa:{local} header appears more than once",
                "wsa:InvalidAddressingHeader",
                subsubcode="wsa:InvalidCardinality",
                problem_header=_wsa(local),
            )
    values: dict[str, str] = {}
    for local in ("Action", "MessageID"):
        element = next((block for block in blocks if block.tag == _wsa(local)), None)
        if element is None:
            raise fault(
                f"the wsa:{local} header is required (WS-Addressing 1.0; ITI TF-2x V.3)",
                "wsa:MessageAddressingHeaderRequired",
                problem_header=_wsa(local),
            )
        value = (element.text or "").strip()
        if not value or len(element):
            raise fault(
                f"the wsa:{local} header must hold a URI",
                "wsa:InvalidAddressingHeader",
                problem_header=_wsa(local),
            )
        values[local] = value
    action, message_id = values["Action"], values["MessageID"]
    for local in ("ReplyTo", "FaultTo"):
        element = next((block for block in blocks if block.tag == _wsa(local)), None)
        if element is None:
            continue
        address = element.find(_wsa("Address"))
        if address is None:
            raise fault(
                f"wsa:{local} has no wsa:Address",
                "wsa:InvalidAddressingHeader",
                subsubcode="wsa:MissingAddressInEPR",
                problem_header=_wsa(local),
            )
        if (address.text or "").strip() != ANONYMOUS:
            raise fault(
                f"only the anonymous wsa:{local} address is supported: IHE transactions "
                "are answered synchronously on the HTTP response (ITI TF-2x V.3)",
                "wsa:InvalidAddressingHeader",
                subsubcode="wsa:OnlyAnonymousAddressSupported",
                problem_header=_wsa(local),
            )
    if http_action is not None and http_action.strip() != action:
        raise fault(
            "the action parameter of the Content-Type differs from wsa:Action",
            "wsa:InvalidAddressingHeader",
            subsubcode="wsa:ActionMismatch",
            problem_header=_wsa("Action"),
        )
    elements = [child for child in body if isinstance(child.tag, str)]
    if not elements:
        raise fault("the SOAP Body is empty: it must hold the request element")
    if len(elements) > 1:
        raise fault("the SOAP Body holds more than one element")
    payload = elements[0]
    parts = attachments or {}
    for include in root.iter(f"{{{XOP}}}Include"):
        href = include.get("href", "")
        if not mtom:
            raise fault("xop:Include is allowed only in an MTOM/XOP (multipart/related) message")
        content_id = content_id_from_href(href)
        if content_id is None:
            raise fault("the href of an xop:Include is not a cid: URL (XOP 1.0, 3.2)")
        if content_id not in parts:
            raise fault(f"an xop:Include refers to a missing MIME part: {href[:200]}")
    security = next((block for block in blocks if block.tag == f"{{{WSSE}}}Security"), None)
    return SoapRequest(
        action=action,
        message_id=message_id,
        body=payload,
        mtom=mtom,
        attachments=parts,
        security=security,
    )


def _check_version(root: Element) -> None:
    if root.tag == _soap("Envelope"):
        return
    if root.tag == f"{{{SOAP11}}}Envelope":
        raise DetailedFault(
            "VersionMismatch",
            "SOAP 1.1 is not supported: send SOAP 1.2 (ITI TF-2x V.3)",
            soap11=True,
        )
    if etree.QName(root).localname == "Envelope":
        raise DetailedFault(
            "VersionMismatch",
            f"unsupported SOAP envelope namespace {etree.QName(root).namespace!r}",
        )
    raise SoapFault("Sender", "the message is not a SOAP envelope")


def _envelope_parts(root: Element) -> tuple[Element | None, Element]:
    """Header (optional) and Body of an Envelope, in that order and nothing else (5.1)."""
    children = [child for child in root if isinstance(child.tag, str)]
    header: Element | None = None
    if children and children[0].tag == _soap("Header"):
        header = children.pop(0)
    if not children or children[0].tag != _soap("Body"):
        raise SoapFault("Sender", "the SOAP Envelope has no Body (SOAP 1.2 Part 1, 5.1)")
    if len(children) > 1:
        raise SoapFault("Sender", "the SOAP Envelope has elements after its Body")
    return header, children[0]


def _understood(block: Element) -> bool:
    qname = etree.QName(block)
    if qname.namespace == WSA:
        return qname.localname in _UNDERSTOOD_WSA
    return block.tag == f"{{{WSSE}}}Security"


def _check_must_understand(blocks: list[Element], relates_to: str | None) -> None:
    not_understood: list[str] = []
    for block in blocks:
        flag = block.get(_soap("mustUnderstand"))
        if flag is None:
            continue
        flag = flag.strip()
        if flag not in ("true", "1", "false", "0"):
            raise DetailedFault(
                "Sender", "a mustUnderstand attribute is not a boolean", relates_to=relates_to
            )
        if flag in ("false", "0"):
            continue
        role = (block.get(_soap("role")) or _ROLE_ULTIMATE).strip()
        if role not in (_ROLE_NEXT, _ROLE_ULTIMATE):
            continue
        if not _understood(block):
            not_understood.append(block.tag)
    if not_understood:
        names = ", ".join(_clark_to_prefixed(tag) for tag in not_understood)
        raise DetailedFault(
            "MustUnderstand",
            f"header block(s) not understood: {names}",
            not_understood=not_understood,
            relates_to=relates_to,
        )


def _clark_to_prefixed(tag: str) -> str:
    qname = etree.QName(tag)
    prefix = _PREFIXES.get(qname.namespace or "")
    if prefix:
        return f"{prefix}:{qname.localname}"
    return tag


# --------------------------------------------------------------------- writing


def new_message_id() -> str:
    """A fresh WS-Addressing MessageID (a ``urn:uuid:`` URI, RFC 4122)."""
    return f"urn:uuid:{uuid.uuid4()}"


def build_envelope(
    action: str,
    payload: Element | None,
    *,
    relates_to: str | None = None,
    message_id: str | None = None,
) -> Element:
    """A SOAP 1.2 envelope with ``wsa:Action``, ``wsa:MessageID``, ``wsa:RelatesTo``.

    ``payload`` (if any) becomes the single child of ``soap:Body``; it is moved,
    not copied, into the new tree.
    """
    envelope = etree.Element(_soap("Envelope"), nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(envelope, _soap("Header"))
    etree.SubElement(header, _wsa("Action")).text = action
    etree.SubElement(header, _wsa("MessageID")).text = message_id or new_message_id()
    if relates_to:
        etree.SubElement(header, _wsa("RelatesTo")).text = relates_to
    body = etree.SubElement(envelope, _soap("Body"))
    if payload is not None:
        body.append(payload)
    return envelope


def serialize(envelope: Element) -> bytes:
    """The envelope as UTF-8 XML with an XML declaration."""
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(
        etree.tostring(envelope, xml_declaration=False, encoding="UTF-8")
    )


def response_envelope(response: SoapResponse, relates_to: str) -> bytes:
    """The serialised SOAP 1.2 envelope answering the request ``relates_to``."""
    return serialize(build_envelope(response.action, response.body, relates_to=relates_to))


@dataclass(frozen=True)
class FaultReply:
    """A fault as an HTTP response: status, Content-Type and body."""

    status: int
    content_type: str
    body: bytes


def _qname_value(parent: Element, tag: str, qname: str) -> Element:
    """A child ``tag`` whose text is the QName ``qname`` with its prefix declared.

    ``qname`` is ``prefix:local`` with a prefix of kuva.xds.namespaces (``wsa``,
    ``soap``, ...), Clark notation, or a bare fault code (``Sender``).
    """
    if qname.startswith("{"):
        namespace, local = qname[1:].split("}", 1)
    elif ":" in qname:
        prefix, local = qname.split(":", 1)
        namespace = NSMAP.get(prefix) or {"env": SOAP, "soap11": SOAP11}.get(prefix, "")
        if not namespace:  # an unknown prefix: written as given
            element = etree.SubElement(parent, tag)
            element.text = qname
            return element
    else:
        namespace, local = SOAP, qname
    prefix = _PREFIXES.get(namespace, "ns1")
    element = etree.SubElement(parent, tag, nsmap={prefix: namespace})
    element.text = f"{prefix}:{local}"
    return element


def _fault_code(fault: SoapFault) -> str:
    code = fault.code.split(":", 1)[-1].strip()
    return code if code in _FAULT_CODES else "Receiver"


def fault_reply(fault: SoapFault, relates_to: str | None = None) -> FaultReply:
    """The HTTP answer to ``fault`` (SOAP 1.2 Part 1 5.4; Part 2 7.5.2.2).

    ``relates_to``: the request's MessageID, if known (else the fault's own).
    """
    code = _fault_code(fault)
    details = fault if isinstance(fault, DetailedFault) else None
    if relates_to is None and details is not None:
        relates_to = details.relates_to
    status = _HTTP_STATUS.get(code, 500)
    if details is not None and details.http_status is not None:
        status = details.http_status
    if details is not None and details.soap11:
        return FaultReply(status, "text/xml; charset=UTF-8", _soap11_fault(fault, code))
    subcode = fault.subcode
    addressing = bool(subcode and (subcode.startswith("wsa:") or subcode.startswith(f"{{{WSA}}}")))
    envelope = build_envelope(
        WSA_FAULT_ACTION if addressing else SOAP_FAULT_ACTION, None, relates_to=relates_to
    )
    header = envelope[0]
    if code == "VersionMismatch":
        upgrade = etree.SubElement(header, _soap("Upgrade"))
        supported = etree.SubElement(upgrade, _soap("SupportedEnvelope"))
        supported.set("qname", "soap:Envelope")
    if details is not None:
        for name in details.not_understood:
            qname = etree.QName(name)
            try:
                element = etree.SubElement(
                    header, _soap("NotUnderstood"), nsmap={"nu": qname.namespace or ""}
                )
            except ValueError:  # a namespace name libxml2 read but lxml cannot declare
                continue  # (the Reason names the header still)
            element.set("qname", f"nu:{qname.localname}" if qname.namespace else qname.localname)
    body = envelope[1]
    element = etree.SubElement(body, _soap("Fault"))
    code_element = etree.SubElement(element, _soap("Code"))
    _qname_value(code_element, _soap("Value"), code)
    if subcode:
        sub = etree.SubElement(code_element, _soap("Subcode"))
        _qname_value(sub, _soap("Value"), subcode)
        if details is not None and details.subsubcode:
            subsub = etree.SubElement(sub, _soap("Subcode"))
            _qname_value(subsub, _soap("Value"), details.subsubcode)
    reason = etree.SubElement(element, _soap("Reason"))
    text = etree.SubElement(reason, _soap("Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = fault.reason
    if details is not None and (details.problem_header or details.problem_action):
        detail = etree.SubElement(element, _soap("Detail"))
        if details.problem_header:
            _qname_value(detail, _wsa("ProblemHeaderQName"), details.problem_header)
        if details.problem_action:
            problem = etree.SubElement(detail, _wsa("ProblemAction"))
            etree.SubElement(problem, _wsa("Action")).text = details.problem_action
    return FaultReply(status, SOAP_CONTENT_TYPE, serialize(envelope))


def _soap11_fault(fault: SoapFault, code: str) -> bytes:
    """A SOAP 1.1 fault with the SOAP 1.2 Upgrade header (SOAP 1.2 Part 1, Appendix A)."""
    envelope = etree.Element(f"{{{SOAP11}}}Envelope", nsmap={"soap11": SOAP11})
    header = etree.SubElement(envelope, f"{{{SOAP11}}}Header")
    upgrade = etree.SubElement(header, _soap("Upgrade"), nsmap={"soap": SOAP})
    etree.SubElement(upgrade, _soap("SupportedEnvelope")).set("qname", "soap:Envelope")
    body = etree.SubElement(envelope, f"{{{SOAP11}}}Body")
    element = etree.SubElement(body, f"{{{SOAP11}}}Fault")
    faultcode = "VersionMismatch" if code == "VersionMismatch" else "Client"
    if code in ("Receiver", "MustUnderstand"):
        faultcode = "Server" if code == "Receiver" else "MustUnderstand"
    etree.SubElement(element, "faultcode").text = f"soap11:{faultcode}"
    etree.SubElement(element, "faultstring").text = fault.reason
    return serialize(envelope)
