"""Query repository: C-FIND / QIDO-RS matching (PS3.4 C.2.2.2) as SQL on index columns.

Every matchable attribute is a column (index/schema.py); a wildcard with a single
trailing ``*`` becomes a range on the column so that the column's index answers it
on SQLite and PostgreSQL alike. Person names match case-insensitively on their
upper-cased copy (``patient_name_norm``), which also covers ä, ö and å. Computed
attributes (PS3.4 C.3.4) are counters the index keeps with every insert (study and
series rows); the patient-level ones sum the patient's studies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    select,
)

from kuva.index.access import visible_studies
from kuva.index.schema import instance, patient, series, study
from kuva.model.access import AccessScope
from kuva.model.availability import ONLINE
from kuva.model.query import (
    Matcher,
    MatchKind,
    QueryError,
    QueryLevel,
    QueryResult,
    like_pattern,
    prefix_upper_bound,
)

LEVEL_ORDER = {
    QueryLevel.PATIENT: 0,
    QueryLevel.STUDY: 1,
    QueryLevel.SERIES: 2,
    QueryLevel.IMAGE: 3,
}


@dataclass(frozen=True)
class Attribute:
    keyword: str
    vr: str
    level: QueryLevel
    column: Any  # the column holding the value returned
    match: Any = None  # the column matched on when it differs (person names)


P, ST, SE, IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE

ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("PatientID", "LO", P, patient.c.patient_id),
        Attribute("IssuerOfPatientID", "LO", P, patient.c.issuer),
        Attribute("PatientName", "PN", P, patient.c.patient_name, patient.c.patient_name_norm),
        Attribute("PatientBirthDate", "DA", P, patient.c.birth_date),
        Attribute("PatientSex", "CS", P, patient.c.sex),
        Attribute("StudyInstanceUID", "UI", ST, study.c.study_instance_uid),
        Attribute("StudyDate", "DA", ST, study.c.study_date),
        Attribute("StudyTime", "TM", ST, study.c.study_time),
        Attribute("AccessionNumber", "SH", ST, study.c.accession_number),
        Attribute("StudyID", "SH", ST, study.c.study_id),
        Attribute("StudyDescription", "LO", ST, study.c.study_description),
        Attribute("ReferringPhysicianName", "PN", ST, study.c.referring_physician_name),
        Attribute("SeriesInstanceUID", "UI", SE, series.c.series_instance_uid),
        Attribute("Modality", "CS", SE, series.c.modality),
        Attribute("SeriesNumber", "IS", SE, series.c.series_number),
        Attribute("SeriesDescription", "LO", SE, series.c.series_description),
        Attribute("BodyPartExamined", "CS", SE, series.c.body_part_examined),
        Attribute("SeriesDate", "DA", SE, series.c.series_date),
        Attribute("SeriesTime", "TM", SE, series.c.series_time),
        Attribute("InstitutionName", "LO", SE, series.c.institution_name),
        Attribute("StationName", "SH", SE, series.c.station_name),
        Attribute("SOPInstanceUID", "UI", IM, instance.c.sop_instance_uid),
        Attribute("SOPClassUID", "UI", IM, instance.c.sop_class_uid),
        Attribute("InstanceNumber", "IS", IM, instance.c.instance_number),
        Attribute("ContentDate", "DA", IM, instance.c.content_date),
        Attribute("ContentTime", "TM", IM, instance.c.content_time),
        Attribute("NumberOfFrames", "IS", IM, instance.c.number_of_frames),
        Attribute("Rows", "US", IM, instance.c.rows),
        Attribute("Columns", "US", IM, instance.c.columns),
    )
}

# Computed attributes (PS3.4 C.3.4 / C.6.1.1.x) and the level they are asked at.
COMPUTED: dict[str, tuple[str, frozenset[QueryLevel]]] = {
    "NumberOfPatientRelatedStudies": ("IS", frozenset({P})),
    "NumberOfPatientRelatedSeries": ("IS", frozenset({P})),
    "NumberOfPatientRelatedInstances": ("IS", frozenset({P})),
    "NumberOfStudyRelatedSeries": ("IS", frozenset({ST})),
    "NumberOfStudyRelatedInstances": ("IS", frozenset({ST})),
    "ModalitiesInStudy": ("CS", frozenset({ST})),
    "SOPClassesInStudy": ("UI", frozenset({ST})),
    "NumberOfSeriesRelatedInstances": ("IS", frozenset({SE})),
    # Every object kuva holds is on line (PS3.4 C.4.1.1.3.2; QIDO-RS PS3.18 10.6.3).
    "InstanceAvailability": ("CS", frozenset({P, ST, SE, IM})),
}

_ENTITY = {P: patient, ST: study, SE: series, IM: instance}


def _from_clause(level: QueryLevel) -> Any:
    if level is P:
        return patient
    joined = study.join(patient, study.c.patient_pk == patient.c.pk)
    if level is ST:
        return joined
    joined = series.join(study, series.c.study_pk == study.c.pk).join(
        patient, study.c.patient_pk == patient.c.pk
    )
    if level is SE:
        return joined
    return (
        instance.join(series, instance.c.series_pk == series.c.pk)
        .join(study, series.c.study_pk == study.c.pk)
        .join(patient, study.c.patient_pk == patient.c.pk)
    )


def _condition(attr: Attribute, matcher: Matcher) -> ColumnElement[bool] | None:
    column = attr.match if attr.match is not None else attr.column
    person_name = attr.vr == "PN"

    def norm(value: str) -> str:
        return value.upper() if person_name else value

    if matcher.kind is MatchKind.UNIVERSAL:
        return None
    if attr.vr in ("IS", "US"):
        return _numeric_condition(attr, matcher)
    if matcher.kind is MatchKind.SINGLE:
        return column == norm(matcher.values[0])  # type: ignore[no-any-return]
    if matcher.kind is MatchKind.LIST:
        return column.in_([norm(v) for v in matcher.values])  # type: ignore[no-any-return]
    if matcher.kind is MatchKind.RANGE:
        parts = []
        if matcher.low:
            parts.append(column >= matcher.low)
        if matcher.high:
            # A high bound matches everything it starts (2024 covers 20241231, 10 covers 10:59).
            parts.append(column <= matcher.high + "\uffff")
        return and_(column != "", *parts)
    prefix = matcher.prefix
    if prefix is not None:
        prefix = norm(prefix)
        return and_(column >= prefix, column < prefix_upper_bound(prefix))
    return column.like(like_pattern(norm(matcher.values[0])), escape="\\")  # type: ignore[no-any-return]


def _numeric_condition(attr: Attribute, matcher: Matcher) -> ColumnElement[bool] | None:
    try:
        if matcher.kind is MatchKind.SINGLE:
            return attr.column == int(matcher.values[0])  # type: ignore[no-any-return]
        if matcher.kind is MatchKind.LIST:
            return attr.column.in_([int(v) for v in matcher.values])  # type: ignore[no-any-return]
    except ValueError:
        raise QueryError(f"{attr.keyword}: not an integer") from None
    raise QueryError(f"{attr.keyword}: wildcards and ranges do not apply to numbers")


def _computed(keyword: str) -> Any:
    """Computed attributes from the counters kept with every insert (index/instances.py)."""
    if keyword == "NumberOfStudyRelatedSeries":
        return study.c.number_of_series
    if keyword == "NumberOfStudyRelatedInstances":
        return study.c.number_of_instances
    if keyword == "ModalitiesInStudy":
        return study.c.modalities_in_study
    if keyword == "SOPClassesInStudy":
        return study.c.sop_classes_in_study
    if keyword == "InstanceAvailability":
        return literal(ONLINE)
    if keyword == "NumberOfSeriesRelatedInstances":
        return series.c.number_of_instances
    if keyword == "NumberOfPatientRelatedStudies":
        total: Any = func.count()
    elif keyword == "NumberOfPatientRelatedSeries":
        total = func.coalesce(func.sum(study.c.number_of_series), 0)
    elif keyword == "NumberOfPatientRelatedInstances":
        total = func.coalesce(func.sum(study.c.number_of_instances), 0)
    else:
        raise ValueError(f"not a computed attribute: {keyword}")
    return (
        select(total)
        .select_from(study)
        .where(study.c.patient_pk == patient.c.pk, study.c.number_of_instances > 0)
    ).scalar_subquery()


def _current(level: QueryLevel, scope: AccessScope | None) -> ColumnElement[bool]:
    """What is not rejected (IOCM): instances without a rejection, series and studies
    with instances left (their counters leave rejected instances out), patients with
    such a study - one of the requester's own organisation, when ``scope`` restricts
    (services.access: other organisations' patients are found study by study)."""
    if level is IM:
        return instance.c.rejection_code.is_(None)
    if level is SE:
        return series.c.number_of_instances > 0
    if level is ST:
        return study.c.number_of_instances > 0
    own = []
    if scope is not None and not scope.unrestricted:
        if scope.organization is None:
            return false()
        own.append(study.c.organization_oid == scope.organization)
    return exists(
        select(literal(1))
        .select_from(study)
        .where(study.c.patient_pk == patient.c.pk, study.c.number_of_instances > 0, *own)
    )


def _series_with_modality(values: tuple[str, ...]) -> Select[Any]:
    return (
        select(literal(1))
        .select_from(series)
        .where(series.c.study_pk == study.c.pk, series.c.modality.in_(values))
    )


def _instances_of_class(values: tuple[str, ...]) -> Select[Any]:
    return (
        select(literal(1))
        .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
        .where(
            series.c.study_pk == study.c.pk,
            instance.c.sop_class_uid.in_(values),
            instance.c.rejection_code.is_(None),
        )
    )


# Multi-valued STUDY keys: a study matches when it holds one of the values asked.
_HELD_IN_STUDY: dict[str, Callable[[tuple[str, ...]], Select[Any]]] = {
    "ModalitiesInStudy": _series_with_modality,
    "SOPClassesInStudy": _instances_of_class,
}

# Labels of the columns added for the disclosure log (not DICOM keywords).
_STUDY = "_kuva_study"
_HOLDER = "_kuva_register_holder"


class QueryRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def statement(
        self,
        level: QueryLevel,
        filters: Mapping[str, Matcher],
        return_keys: list[str],
        *,
        with_json: bool = False,
        limit: int | None = None,
        offset: int = 0,
        scope: AccessScope | None = None,
        holder: str | None = None,
    ) -> Select[Any]:
        """``holder``: only the studies (and their series and instances) of that
        register holder (the ``organization_oid`` index)."""
        entity = _ENTITY[level]
        columns: list[Any] = [entity.c.pk]
        for keyword in dict.fromkeys(return_keys):
            if (
                keyword in ATTRIBUTES
                and LEVEL_ORDER[ATTRIBUTES[keyword].level] <= LEVEL_ORDER[level]
            ):
                columns.append(ATTRIBUTES[keyword].column.label(keyword))
            elif keyword in COMPUTED and level in COMPUTED[keyword][1]:
                columns.append(_computed(keyword).label(keyword))
        if with_json and level is IM:
            columns.append(instance.c.dataset_json)
        visible = None if scope is None or level is P else visible_studies(scope)
        if visible is not None:  # which study each answer names, for the disclosure log
            columns += [
                study.c.study_instance_uid.label(_STUDY),
                study.c.organization_oid.label(_HOLDER),
            ]
        query = select(*columns).select_from(_from_clause(level)).where(_current(level, scope))
        if visible is not None:
            query = query.where(visible)
        if holder is not None and level is not P:
            query = query.where(study.c.organization_oid == holder)
        for keyword, matcher in filters.items():
            condition = self._filter(level, keyword, matcher)
            if condition is not None:
                query = query.where(condition)
        query = query.order_by(entity.c.pk).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return query

    def _filter(
        self, level: QueryLevel, keyword: str, matcher: Matcher
    ) -> ColumnElement[bool] | None:
        held = _HELD_IN_STUDY.get(keyword)
        if held is not None and level is ST:
            if matcher.kind is MatchKind.UNIVERSAL:
                return None
            if matcher.kind not in (MatchKind.SINGLE, MatchKind.LIST):
                raise QueryError(f"{keyword}: only single values or lists")
            return exists(held(matcher.values))
        if keyword == "InstanceAvailability":
            if matcher.kind in (MatchKind.SINGLE, MatchKind.LIST):
                return None if ONLINE in matcher.values else false()
            return None
        attr = ATTRIBUTES.get(keyword)
        if attr is None:
            return None  # not held by the index: universal (returned empty)
        if LEVEL_ORDER[attr.level] > LEVEL_ORDER[level]:
            if matcher.kind is MatchKind.UNIVERSAL:
                return None
            raise QueryError(f"{keyword} is a {attr.level.value} key, not {level.value}")
        return _condition(attr, matcher)

    def find(
        self,
        level: QueryLevel,
        filters: Mapping[str, Matcher],
        return_keys: list[str],
        *,
        with_json: bool = False,
        limit: int | None = None,
        offset: int = 0,
        scope: AccessScope | None = None,
        holder: str | None = None,
    ) -> Iterator[QueryResult]:
        query = self.statement(
            level,
            filters,
            return_keys,
            with_json=with_json,
            limit=limit,
            offset=offset,
            scope=scope,
            holder=holder,
        )
        for row in self.conn.execute(query):
            values = dict(row._mapping)
            values.pop("pk", None)
            raw_json = values.pop("dataset_json", None)
            study_uid = values.pop(_STUDY, None)
            holder = values.pop(_HOLDER, None)
            yield QueryResult(
                values,
                json.loads(raw_json) if raw_json else None,
                study=(study_uid, holder) if holder is not None else None,
            )
