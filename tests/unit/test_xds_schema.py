"""Payload validation against the bundled XDS.b / XDS-I.b schemas (kuva.xds.schema)."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree
from lxml.etree import _Element as Element

from kuva.xds import schema
from kuva.xds.mtom import parse_mtom
from kuva.xds.namespaces import RIM, SOAP, XDSB, XOP, q
from kuva.xds.schema import compiled_schema, validate

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
# SOURCES.md: the only samples that break the schemas.
SCHEMA_INVALID = {
    "invalid-iti41-pnr-element-order-soap12.xml": "rim:ExtrinsicObject",
    "invalid-iti43-retrieve-element-order-soap12.xml": "xdsb:DocumentRequest",
}
MTOM_BODIES = {
    "iti41-ProvideAndRegister-mtom-xop-http-body.txt": (
        "MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d"
    ),
    "rad68-iti41-PnR-KOS-captured-mime-body.txt": "uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17",
}
XML_SAMPLES = sorted(path.name for path in SAMPLES.glob("*.xml"))


def payload_of(envelope_or_payload: Element) -> Element:
    if envelope_or_payload.tag != f"{{{SOAP}}}Envelope":
        return envelope_or_payload
    body = envelope_or_payload.find(f"{{{SOAP}}}Body")
    assert body is not None
    (payload,) = [child for child in body if isinstance(child.tag, str)]
    return payload


def sample_payload(name: str) -> Element:
    return payload_of(etree.parse(str(SAMPLES / name)).getroot())


def mtom_payload(name: str) -> Element:
    content_type = (
        f'multipart/related; boundary="{MTOM_BODIES[name]}"; type="application/xop+xml"; '
        'start-info="application/soap+xml"'
    )
    message = parse_mtom((SAMPLES / name).read_bytes(), content_type)
    return payload_of(etree.fromstring(message.root))


def test_the_sample_list_is_complete() -> None:
    assert len(XML_SAMPLES) + len(MTOM_BODIES) == 40  # SOURCES.md: 40 files
    assert set(SCHEMA_INVALID) <= set(XML_SAMPLES)


@pytest.mark.parametrize("name", [name for name in XML_SAMPLES if name not in SCHEMA_INVALID])
def test_every_other_sample_payload_is_valid(name: str) -> None:
    assert validate(sample_payload(name)) == []


@pytest.mark.parametrize("name", sorted(SCHEMA_INVALID))
def test_the_element_order_samples_are_invalid(name: str) -> None:
    problems = validate(sample_payload(name))
    assert len(problems) == 1
    assert SCHEMA_INVALID[name] in problems[0]
    assert "Unexpected child" in problems[0]
    assert "(line " in problems[0]


@pytest.mark.parametrize("name", sorted(MTOM_BODIES))
def test_mtom_payloads_validate_with_their_includes_resolved(name: str) -> None:
    payload = mtom_payload(name)
    before = etree.tostring(payload)
    assert validate(payload) == []
    assert etree.tostring(payload) == before  # validated on a copy


def test_an_include_is_resolved_to_empty_base64_only_in_the_copy() -> None:
    payload = mtom_payload("iti41-ProvideAndRegister-mtom-xop-http-body.txt")
    document = payload.find(q("xdsb", "Document"))
    assert document is not None and document.find(f"{{{XOP}}}Include") is not None
    # The same request with the part inline: the schema sees the same shape.
    inline = copy.deepcopy(payload)
    inline_document = inline.find(q("xdsb", "Document"))
    assert inline_document is not None
    for child in list(inline_document):
        inline_document.remove(child)
    inline_document.text = "VGhpcyBpcyBteSBkb2N1bWVudC4="
    assert validate(inline) == []
    inline_document.text = "not base64 at all!"
    assert any("xdsb:Document" in problem for problem in validate(inline))


def test_an_element_outside_the_schemas_is_a_problem() -> None:
    problems = validate(etree.fromstring(b'<x:Unknown xmlns:x="urn:example"/>'))
    assert len(problems) == 1
    assert "not an element of the schema" in problems[0]


def test_problems_are_capped() -> None:
    request = etree.Element(q("xdsb", "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    for _ in range(200):
        etree.SubElement(request, q("xdsb", "Bogus"))
    problems = validate(request)
    assert len(problems) <= schema.MAX_PROBLEMS + 1


def test_the_schema_is_compiled_once_even_when_first_used_by_many_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(schema, "_schema", None)
    barrier = threading.Barrier(6)

    def first_use() -> int:
        barrier.wait()
        return id(compiled_schema())

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(lambda _: first_use(), range(6)))
    assert len(ids) == 1
    assert compiled_schema() is compiled_schema()


def test_validation_is_thread_safe() -> None:
    names = [
        "iti41-ProvideAndRegister-soap12-request.xml",
        "invalid-iti41-pnr-element-order-soap12.xml",
        "iti18-FindDocuments-LeafClass-response.xml",
        "invalid-iti43-retrieve-element-order-soap12.xml",
        "rad69-RetrieveImagingDocumentSet-multiseries-request.xml",
    ]
    payloads = {name: sample_payload(name) for name in names}
    expected = {name: validate(payload) for name, payload in payloads.items()}

    def check(index: int) -> bool:
        name = names[index % len(names)]
        # Each thread its own tree (lxml trees are not shared across threads here).
        return validate(copy.deepcopy(payloads[name])) == expected[name]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(check, range(80)))


def big_submission(copies: int) -> Element:
    """The ITI-41 sample with its DocumentEntries repeated ``copies`` times."""
    payload = sample_payload("iti41-ProvideAndRegister-soap12-request.xml")
    objects = payload.find(f"{q('lcm', 'SubmitObjectsRequest')}/{{{RIM}}}RegistryObjectList")
    assert objects is not None
    entries = objects.findall(f"{{{RIM}}}ExtrinsicObject")
    for index in range(copies - 1):
        for entry in entries:
            clone = copy.deepcopy(entry)
            clone.set("id", f"{entry.get('id')}-{index}")
            objects.insert(0, clone)
    return payload


def test_validation_time_of_the_big_samples() -> None:
    compiled_schema()
    timings: dict[str, float] = {}
    for name in (
        "iti41-ProvideAndRegister-soap12-request.xml",
        "iti18-FindDocuments-LeafClass-response.xml",
        "iti42-RegisterDocumentSet-b-request.xml",
    ):
        payload = sample_payload(name)
        started = time.perf_counter()
        for _ in range(5):
            assert validate(payload) == []
        timings[name] = (time.perf_counter() - started) / 5
    big = big_submission(50)
    size = len(etree.tostring(big))
    started = time.perf_counter()
    assert validate(big) == []
    timings[f"ITI-41 with 100 DocumentEntries ({size // 1024} KiB)"] = time.perf_counter() - started
    for name, seconds in timings.items():
        print(f"validate {name}: {seconds * 1000:.1f} ms")
    assert max(timings.values()) < 5.0
    assert timings["iti41-ProvideAndRegister-soap12-request.xml"] < 0.5
