"""What the SOAP layer hands to an XDS transaction handler and takes back.

The transport (kuva.xds.soap) parses the SOAP 1.2 envelope, its WS-Addressing
headers and, for MTOM/XOP requests, the MIME parts; a handler sees only the payload
element (the child of ``soap:Body``) and the binary parts it references. It answers
with a payload element and, for documents and images, attachments that the
transport writes as MTOM/XOP parts (streamed, never joined in memory).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from lxml.etree import _Element as Element

from kuva.model.xua import RequestingUser
from kuva.xds.namespaces import XOP


class SoapFault(Exception):
    """A SOAP 1.2 fault (SOAP 1.2 Part 1, 5.4): the request is refused as a whole.

    ``code``: ``Sender`` (the request is wrong) or ``Receiver`` (kuva failed).
    ``subcode``: a qualified name such as ``wsa:MessageAddressingHeaderRequired``
    (WS-Addressing 1.0 SOAP Binding 6.4) or ``wsa:ActionNotSupported``.
    """

    def __init__(self, code: str, reason: str, subcode: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subcode = subcode


@dataclass(frozen=True)
class Attachment:
    """A binary part of a response, referenced from the payload by ``xop:Include``.

    ``chunks`` is called once, when the response body is written, so that a large
    document or image is read from its blob while it is sent.
    """

    content_id: str  # without angle brackets
    content_type: str
    chunks: Callable[[], Iterable[bytes]]
    length: int | None = None


@dataclass
class SoapRequest:
    action: str  # wsa:Action
    message_id: str  # wsa:MessageID
    body: Element  # the payload: the first child element of soap:Body
    mtom: bool = False  # the request came as MTOM/XOP (multipart/related)
    attachments: Mapping[str, bytes] = field(default_factory=dict)  # by Content-ID
    # The wsse:Security header block, if any (its XUA assertion is verified by the
    # endpoint, kuva.xds.xua), and the user that assertion names once verified.
    security: Element | None = None
    user: RequestingUser | None = None
    # The organisation the HTTP request acts for (kuva.web.identity: the client
    # certificate's with mutual TLS, else [http] organization), set by the endpoint;
    # None = unknown. Submissions (ITI-41, ITI-42) are stored for it. ``authenticated``:
    # a client certificate proved it (mutual TLS).
    client_organization: str | None = None
    authenticated: bool = False
    # The HTTP client's IP address and the URL it called, set by the endpoint (for
    # the audit messages of the transactions).
    client_address: str = ""
    endpoint: str = ""

    def binary(self, element: Element) -> bytes:
        """The bytes of an xs:base64Binary element: inline, or an MTOM part it includes.

        Raises SoapFault (Sender) when the base64 is malformed or the part is missing.
        """
        include = element.find(f"{{{XOP}}}Include")
        if include is not None:
            href = include.get("href", "")
            content_id = unquote(href.removeprefix("cid:"))
            if content_id not in self.attachments:
                raise SoapFault("Sender", f"xop:Include refers to a missing MIME part: {href}")
            return self.attachments[content_id]
        try:
            return base64.b64decode("".join((element.text or "").split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SoapFault("Sender", f"malformed base64 in {element.tag}") from exc


@dataclass
class SoapResponse:
    action: str  # wsa:Action of the response
    body: Element
    attachments: list[Attachment] = field(default_factory=list)


Handler = Callable[[SoapRequest], SoapResponse]


@dataclass(frozen=True)
class Transaction:
    """One XDS transaction an endpoint serves, by its WS-Addressing action.

    ``payload``: the payload element expected, in Clark notation (``{ns}local``).
    ``handle``: answers a request whose payload is that element and valid per the
    XDS schemas. ``invalid``: answers a request whose payload breaks the schemas
    (the list holds the validation messages) with the transaction's own error
    response (e.g. a RegistryResponse with XDSRegistryMetadataError), not a fault.
    """

    action: str
    payload: str
    handle: Handler
    invalid: Callable[[SoapRequest, list[str]], SoapResponse]
