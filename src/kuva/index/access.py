"""The access rules as SQL (model.access): conditions that keep what a requester may
not read out of every read - queries, retrieves, the XDS registry - and the table of
patients' disclosure prohibitions.

A condition is added to the statement that reads, so nothing unreadable is ever
fetched, and it uses indexed columns: ``organization_oid`` of study and
xds_object, and the prohibition's unique ``patient_pk``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    false,
    insert,
    literal,
    or_,
    select,
    true,
)

from kuva.index.schema import disclosure_prohibition, patient, study, xds_object
from kuva.model.access import AccessScope

_P = disclosure_prohibition


def _prohibited_study() -> ColumnElement[bool]:
    """The study's patient - as now identified, or as received - has a prohibition."""
    return exists(
        select(literal(1))
        .select_from(_P)
        .where(
            or_(
                _P.c.patient_pk == study.c.patient_pk,
                _P.c.patient_pk == study.c.received_patient_pk,
            )
        )
    )


def _own_or_survivor(p: Any) -> ColumnElement[bool]:
    """A prohibition of patient ``p`` or of the patient it is merged into."""
    return or_(_P.c.patient_pk == p.c.pk, _P.c.patient_pk == p.c.merged_into_pk)


def _prohibited_entry() -> ColumnElement[bool]:
    """The XDS entry's patient, or the patient it is merged into, has a prohibition."""
    p = patient.alias("prohibited_patient")
    return exists(
        select(literal(1))
        .select_from(p.join(_P, _own_or_survivor(p)))
        .where(
            p.c.patient_id == xds_object.c.patient_id,
            p.c.issuer == xds_object.c.patient_authority,
        )
    )


def _visible(
    scope: AccessScope, holder: Any, prohibited: ColumnElement[bool]
) -> ColumnElement[bool] | None:
    if scope.unrestricted:
        return None
    parts: list[ColumnElement[bool]] = []
    if scope.organization is not None:
        parts.append(holder == scope.organization)
    for honouring in (True, False):
        named, any_other = scope.holders(honouring=honouring)
        if any_other:
            # Every other holder, less those named with a basis of the other kind.
            others, _ = scope.holders(honouring=not honouring)
            others |= scope.apart
            other: ColumnElement[bool] = holder.not_in(sorted(others)) if others else true()
        elif named:
            other = holder.in_(sorted(named))
        else:
            continue
        parts.append(and_(other, ~prohibited) if honouring else other)
    if not parts:
        return false()
    return or_(*parts)


def visible_studies(scope: AccessScope) -> ColumnElement[bool] | None:
    """A condition on ``study`` (joined with nothing else needed): the studies
    ``scope`` may read; None when it may read everything."""
    return _visible(scope, study.c.organization_oid, _prohibited_study())


def visible_entries(scope: AccessScope) -> ColumnElement[bool] | None:
    """A condition on ``xds_object``: the registry entries ``scope`` may read."""
    return _visible(scope, xds_object.c.organization_oid, _prohibited_entry())


class ProhibitionRepository:
    """Patients' disclosure prohibitions."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def prohibit(self, patient_pk: int, *, at: datetime, by: str, reason: str) -> bool:
        """Prohibit; False when the patient already had a prohibition (kept as it was)."""
        if self.get(patient_pk) is not None:
            return False
        self.conn.execute(
            insert(_P).values(patient_pk=patient_pk, set_at=at, set_by=by, reason=reason)
        )
        return True

    def lift(self, patient_pk: int) -> bool:
        """Lift; False when there was none."""
        return bool(self.conn.execute(delete(_P).where(_P.c.patient_pk == patient_pk)).rowcount)

    def get(self, patient_pk: int) -> tuple[datetime, str, str] | None:
        row = self.conn.execute(
            select(_P.c.set_at, _P.c.set_by, _P.c.reason).where(_P.c.patient_pk == patient_pk)
        ).first()
        return None if row is None else (row.set_at, row.set_by, row.reason)

    def prohibited(self, patients: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of ``patients`` (Patient ID, issuer) with a prohibition of their own or
        of the patient they are merged into."""
        wanted = sorted(set(patients))
        if not wanted:
            return set()
        p = patient
        rows = self.conn.execute(
            select(p.c.patient_id, p.c.issuer)
            .select_from(p.join(_P, _own_or_survivor(p)))
            .where(or_(*(and_(p.c.patient_id == i, p.c.issuer == a) for i, a in wanted)))
        )
        return {(row.patient_id, row.issuer) for row in rows}
