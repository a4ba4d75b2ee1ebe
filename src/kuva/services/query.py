"""Query: find patients, studies, series or instances from the index alone.

Shared by C-FIND and QIDO-RS. Key values are matched as PS3.4 C.2.2.2 says
(model.query); every key is answered from index columns, computed counts, or, at
the IMAGE level, the instance's DICOM JSON kept in the index: no blob is opened.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from kuva.index.query import ATTRIBUTES, COMPUTED
from kuva.index.uow import UnitOfWork
from kuva.model.dicom_json import with_current_patient
from kuva.model.query import Matcher, QueryLevel, QueryResult, parse_matcher


@dataclass(frozen=True)
class FindRequest:
    level: QueryLevel
    keys: Mapping[str, str]  # keyword -> value as received (decoded), "" = universal
    return_keys: tuple[str, ...]  # every keyword to answer, in the asked order
    limit: int | None = None
    offset: int = 0


def vr_of(keyword: str) -> str | None:
    if keyword in ATTRIBUTES:
        return ATTRIBUTES[keyword].vr
    if keyword in COMPUTED:
        return COMPUTED[keyword][0]
    return None


# Patient attributes that corrections (HL7 ADT) change in the index; answers carry
# the index's current values, not those stored with the instance.
CURRENT_PATIENT = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)


class QueryService:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @staticmethod
    def matchers(request: FindRequest) -> dict[str, Matcher]:
        """Parse every key the index can match on (raises QueryError)."""
        filters: dict[str, Matcher] = {}
        for keyword, value in request.keys.items():
            vr = vr_of(keyword)
            if vr is not None:
                filters[keyword] = parse_matcher(value, vr, keyword=keyword)
        return filters

    def find(
        self, request: FindRequest, *, with_json: bool = False
    ) -> Generator[QueryResult, None, None]:
        """Matching entities, in index order; the read transaction lasts the iteration.

        At the IMAGE level the instance's DICOM JSON comes along when a key beyond
        the index columns is asked for, or when ``with_json`` says so.
        """
        filters = self.matchers(request)
        extra = with_json or any(vr_of(k) is None for k in request.return_keys)
        json = extra and request.level is QueryLevel.IMAGE
        keys = list(request.return_keys)
        if json:  # the DICOM JSON is as received: the patient comes from the index
            keys += [k for k in CURRENT_PATIENT if k not in keys]
        with UnitOfWork(self._engine, write=False) as uow:
            for result in uow.query.find(
                request.level,
                filters,
                keys,
                with_json=json,
                limit=request.limit,
                offset=request.offset,
            ):
                if result.dataset_json is not None:
                    with_current_patient(result.dataset_json, result.values)
                yield result
