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
from kuva.model.access import AccessScope
from kuva.model.dicom_json import with_current_patient
from kuva.model.query import Matcher, QueryLevel, QueryResult, parse_matcher
from kuva.services.access import AccessPolicy, Read, recipient
from kuva.services.disclosure import DisclosureLog, Interface


@dataclass(frozen=True)
class FindRequest:
    level: QueryLevel
    keys: Mapping[str, str]  # keyword -> value as received (decoded), "" = universal
    return_keys: tuple[str, ...]  # every keyword to answer, in the asked order
    limit: int | None = None
    offset: int = 0
    # Only this register holder's studies (the console's organisation filter).
    register_holder: str | None = None


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


# Answers are handed out in batches of this many; each batch's disclosures are
# recorded before it is (services.access).
_BATCH = 100


class QueryService:
    def __init__(self, engine: Engine, disclosures: DisclosureLog | None = None) -> None:
        self._engine = engine
        self._disclosures = disclosures

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
        self,
        request: FindRequest,
        *,
        with_json: bool = False,
        scope: AccessScope | None = None,
        interface: Interface | None = Interface.C_FIND,
    ) -> Generator[QueryResult, None, None]:
        """Matching entities, in index order; the read transaction lasts the iteration.

        At the IMAGE level the instance's DICOM JSON comes along when a key beyond
        the index columns is asked for, or when ``with_json`` says so.

        ``scope``: what the requester may read (services.access; None = all). The
        answers that name another organisation's study are disclosures over
        ``interface``: recorded, a batch at a time, before the batch is yielded
        (a failure to record raises, and nothing more is yielded). No ``interface``:
        nothing is handed out (a probe whether something exists).
        """
        results = self._find(request, with_json=with_json, scope=scope)
        if scope is None or scope.unrestricted or interface is None:
            yield from results
            return
        batch: list[QueryResult] = []
        disclosed: set[str] = set()  # a study is one disclosure, however many answers
        for result in results:
            batch.append(result)
            if len(batch) >= _BATCH:
                self._disclose(scope, batch, interface, disclosed)
                yield from batch
                batch = []
        self._disclose(scope, batch, interface, disclosed)
        yield from batch

    def _disclose(
        self,
        scope: AccessScope,
        batch: list[QueryResult],
        interface: Interface,
        disclosed: set[str],
    ) -> None:
        reads = [
            Read(register_holder=r.study[1], study_instance_uid=r.study[0])
            for r in batch
            if r.study is not None and r.study[0] not in disclosed
        ]
        disclosed.update(r.study[0] for r in batch if r.study is not None)
        handouts = AccessPolicy.disclosures(scope, reads)
        if handouts and self._disclosures is not None:
            self._disclosures.record(recipient(scope), handouts, interface)

    def _find(
        self,
        request: FindRequest,
        *,
        with_json: bool,
        scope: AccessScope | None,
    ) -> Generator[QueryResult, None, None]:
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
                scope=scope,
                holder=request.register_holder,
            ):
                if result.dataset_json is not None:
                    with_current_patient(result.dataset_json, result.values)
                yield result
