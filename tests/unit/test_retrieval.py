"""Retrieve resolution (index + service rules), transfer syntax choice and C-MOVE contexts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from sqlalchemy import Engine

from kuva.codec.transcode import choose
from kuva.dicom.retrieve_scp import MAX_CONTEXTS, move_contexts
from kuva.index.instances import StoredInstance
from kuva.index.retrieval import RetrieveKeys
from kuva.index.uow import UnitOfWork
from kuva.model.instance import InstanceAttributes
from kuva.model.query import QueryLevel
from kuva.services.retrieve import RetrieveError, parse_keys
from tests.unit.test_index import ROOT, attributes, new_instance

STUDY_A = f"{ROOT}.1"
STUDY_B = f"{ROOT}.2"
SERIES_A1 = f"{ROOT}.1.1"
SERIES_A2 = f"{ROOT}.1.2"
SERIES_B1 = f"{ROOT}.2.1"


def numbered(attrs: InstanceAttributes, series_number: int) -> InstanceAttributes:
    return replace(attrs, series=replace(attrs.series, series_number=series_number))


def fill(engine: Engine) -> None:
    """Two patients; study A with two series (numbers 2 and 1), study B with one."""
    rows = [
        numbered(attributes(3, study=STUDY_A, series=SERIES_A1), 2),
        numbered(attributes(1, study=STUDY_A, series=SERIES_A1), 2),
        numbered(attributes(2, study=STUDY_A, series=SERIES_A1), 2),
        attributes(1, study=STUDY_A, series=SERIES_A2),
        attributes(1, study=STUDY_B, series=SERIES_B1, patient_id="020202-900E"),
    ]
    with UnitOfWork(engine) as uow:
        for attrs in rows:
            uow.instances.add(new_instance(attrs))
        uow.commit()


def uids(found: list[StoredInstance]) -> list[str]:
    return [i.sop_instance_uid for i in found]


def resolve(engine: Engine, keys: RetrieveKeys, limit: int | None = None) -> list[StoredInstance]:
    with UnitOfWork(engine, write=False) as uow:
        return uow.retrieval.instances(keys, limit=limit)


def test_resolve_by_each_level_in_tree_order(engine: Engine) -> None:
    fill(engine)
    # Series number 1 before 2; instance numbers ascending within a series.
    assert uids(resolve(engine, RetrieveKeys(study_uids=(STUDY_A,)))) == [
        f"{SERIES_A2}.1",
        f"{SERIES_A1}.1",
        f"{SERIES_A1}.2",
        f"{SERIES_A1}.3",
    ]
    assert uids(resolve(engine, RetrieveKeys(patient_id="020202-900E"))) == [f"{SERIES_B1}.1"]
    assert resolve(engine, RetrieveKeys(patient_id="020202-900E", issuer="1.2.246.21")) == []
    assert uids(resolve(engine, RetrieveKeys(patient_id="020202-900E", issuer=""))) == [
        f"{SERIES_B1}.1"
    ]
    assert uids(resolve(engine, RetrieveKeys(series_uids=(SERIES_B1, SERIES_A2)))) == [
        f"{SERIES_A2}.1",
        f"{SERIES_B1}.1",
    ]
    assert uids(
        resolve(engine, RetrieveKeys(sop_instance_uids=(f"{SERIES_A1}.2", f"{SERIES_B1}.1")))
    ) == [f"{SERIES_A1}.2", f"{SERIES_B1}.1"]
    # Keys narrow each other: a series outside the given study does not match.
    assert resolve(engine, RetrieveKeys(study_uids=(STUDY_A,), series_uids=(SERIES_B1,))) == []
    assert resolve(engine, RetrieveKeys(patient_id="010181-900C", study_uids=(STUDY_B,))) == []
    found = resolve(engine, RetrieveKeys(study_uids=(STUDY_A,)), limit=2)
    assert len(found) == 3  # limit + 1: enough to tell there are more


def test_resolve_long_uid_list_in_chunks(engine: Engine) -> None:
    fill(engine)
    wanted = (*(f"{ROOT}.9.{n}" for n in range(2500)), f"{SERIES_A1}.1", f"{SERIES_B1}.1")
    assert uids(resolve(engine, RetrieveKeys(sop_instance_uids=wanted))) == [
        f"{SERIES_A1}.1",
        f"{SERIES_B1}.1",
    ]


def test_parse_keys() -> None:
    keys = parse_keys(
        QueryLevel.SERIES,
        {
            "PatientID": "010181-900C",
            "IssuerOfPatientID": "1.2.246.21",
            "StudyInstanceUID": "1.2.3",
            "SeriesInstanceUID": ["1.2.3.4", "1.2.3.5"],
            "SOPInstanceUID": "",
        },
    )
    assert keys == RetrieveKeys(
        patient_id="010181-900C",
        issuer="1.2.246.21",
        study_uids=("1.2.3",),
        series_uids=("1.2.3.4", "1.2.3.5"),
    )
    assert parse_keys(QueryLevel.STUDY, {"StudyInstanceUID": "1.2.3\\1.2.4"}).study_uids == (
        "1.2.3",
        "1.2.4",
    )


@pytest.mark.parametrize(
    ("level", "keys", "message"),
    [
        (QueryLevel.STUDY, {}, "StudyInstanceUID missing"),
        (QueryLevel.IMAGE, {"SOPInstanceUID": ""}, "SOPInstanceUID missing"),
        (QueryLevel.PATIENT, {"PatientID": ["a", "b"]}, "one value only"),
        (QueryLevel.PATIENT, {"PatientID": "01*"}, "wildcards"),
        (QueryLevel.STUDY, {"StudyInstanceUID": "1.2.*"}, "wildcards"),
        (QueryLevel.STUDY, {"StudyInstanceUID": "1.02.3"}, "malformed"),
        (QueryLevel.SERIES, {"SeriesInstanceUID": ["1.2", ""]}, "empty value"),
        (
            QueryLevel.STUDY,
            {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"},
            "relational retrieve",
        ),
    ],
)
def test_parse_keys_refuses(level: QueryLevel, keys: dict[str, object], message: str) -> None:
    with pytest.raises(RetrieveError, match=message):
        parse_keys(level, keys)  # type: ignore[arg-type]


def test_choose_transfer_syntax() -> None:
    # The stored syntax when accepted, whatever it is.
    assert choose(MPEG2MPML, [ExplicitVRLittleEndian, MPEG2MPML]) == MPEG2MPML
    # Otherwise uncompressed first, then lossless compression kuva can write.
    assert choose(RLELossless, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]) == (
        ExplicitVRLittleEndian
    )
    assert choose(ExplicitVRLittleEndian, [JPEG2000Lossless]) == JPEG2000Lossless
    assert choose(JPEGLosslessSV1, [RLELossless]) == RLELossless
    # Never lossy, never without an encoder or a decoder.
    assert choose(ExplicitVRLittleEndian, [JPEGBaseline8Bit]) is None
    assert choose(ExplicitVRLittleEndian, [JPEGLosslessSV1]) is None
    assert choose(MPEG2MPML, [ExplicitVRLittleEndian]) is None


def _stored(n: int, sop_class: str, syntax: str) -> StoredInstance:
    return StoredInstance(
        pk=n,
        sop_instance_uid=f"{ROOT}.{n}",
        sop_class_uid=sop_class,
        series_instance_uid=f"{ROOT}.0.1",
        study_instance_uid=f"{ROOT}.0",
        transfer_syntax_uid=syntax,
        blob_key="",
        size=0,
        sha256="",
        organization_oid="",
    )


def test_move_contexts() -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    contexts = move_contexts(
        [
            _stored(1, ct, ExplicitVRLittleEndian),
            _stored(2, ct, ExplicitVRLittleEndian),
            _stored(3, ct, RLELossless),
            _stored(4, mr, JPEG2000Lossless),
        ]
    )
    assert contexts == [
        (ct, [ExplicitVRLittleEndian]),
        (ct, [RLELossless]),
        (mr, [JPEG2000Lossless]),
        (ct, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (mr, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ]
    many = [_stored(n, f"1.2.3.{n}", ExplicitVRLittleEndian) for n in range(100)]
    assert len(move_contexts(many)) == MAX_CONTEXTS
    more = [
        _stored(n, f"1.2.3.{n // 2}", (RLELossless, JPEG2000Lossless)[n % 2]) for n in range(300)
    ]
    merged = move_contexts(more)
    assert len(merged) == MAX_CONTEXTS
    assert merged[0][1] == [
        RLELossless,
        JPEG2000Lossless,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ]
