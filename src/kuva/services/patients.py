"""Patient identity corrections (HL7 v2 ADT; IHE PAM): merge, update, identifier
change and unlink, applied to the index as an overlay (DESIGN.md principle 1:
stored objects never change; the index says who a study belongs to now).

Each message is applied in one transaction together with the record of its control
id, so a message sent again is answered with the same acknowledgement and not
applied twice. Every change is appended to the correction history with the values
it replaced, so that it can be undone (A37 unlink for a merge).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from kuva.index.patients import PatientRow
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.patient import (
    ChangeIdentifier,
    MergePatients,
    PatientCommand,
    PatientCorrectionError,
    PatientKey,
    UnlinkPatients,
    UpdatePatient,
)

log = logging.getLogger(__name__)

# HL7 table 0357 message error condition codes.
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
APPLICATION_ERROR = "207"


@dataclass(frozen=True)
class MessageRef:
    """What identifies a message for de-duplication (MSH-3, MSH-4, MSH-10) and its type."""

    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str


AckRenderer = Callable[[PatientCorrectionError | None], str]


class PatientService:
    def __init__(self, engine: Engine, *, strict: bool = False, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._strict = strict
        self._clock = clock

    def handle(
        self, ref: MessageRef, commands: Sequence[PatientCommand], render_ack: AckRenderer
    ) -> str:
        """Apply ``commands`` (all or nothing) unless the message was seen; its ACK."""
        with UnitOfWork(self._engine, write=False) as uow:
            seen = self._seen(uow, ref)
        if seen is not None:
            log.info("HL7 message %s seen before: answered again, not applied", ref.control_id)
            return seen
        error: PatientCorrectionError | None = None
        try:
            with UnitOfWork(self._engine) as uow:
                for command in commands:
                    self._apply(uow, command, ref)
                ack = render_ack(None)
                self._record(uow, ref, ack)
                uow.commit()
            return ack
        except PatientCorrectionError as exc:
            error = exc
        except IntegrityError:
            # The same message on another connection at the same moment.
            with UnitOfWork(self._engine, write=False) as uow:
                seen = self._seen(uow, ref)
            if seen is None:
                raise
            return seen
        log.warning(
            "HL7 %s %s not applied: %s (%s)", ref.message_type, ref.control_id, error, error.field
        )
        ack = render_ack(error)
        with UnitOfWork(self._engine) as uow:
            self._record(uow, ref, ack)
            uow.commit()
        return ack

    @staticmethod
    def _seen(uow: UnitOfWork, ref: MessageRef) -> str | None:
        return uow.patients.seen_message(
            ref.sending_application, ref.sending_facility, ref.control_id
        )

    def _record(self, uow: UnitOfWork, ref: MessageRef, ack: str) -> None:
        uow.patients.record_message(
            ref.sending_application,
            ref.sending_facility,
            ref.control_id,
            ref.message_type,
            ack,
            self._clock(),
        )

    # ------------------------------------------------------------------ commands

    def _apply(self, uow: UnitOfWork, command: PatientCommand, ref: MessageRef) -> None:
        source = f"HL7 {ref.message_type} {ref.sending_application}"
        if isinstance(command, MergePatients):
            self._merge(uow, command, source)
        elif isinstance(command, UpdatePatient):
            self._update(uow, command, source)
        elif isinstance(command, ChangeIdentifier):
            self._change(uow, command, source)
        else:
            self._unlink(uow, command, source)

    def _known(self, uow: UnitOfWork, key: PatientKey) -> PatientRow:
        row = uow.patients.find(key)
        if row is not None:
            return row
        return uow.patients.get(uow.patients.create(key, self._clock()))

    def _merge(self, uow: UnitOfWork, command: MergePatients, source: str) -> None:
        target = self._known(uow, command.target)
        merged = uow.patients.find(command.source)
        if merged is None:
            if self._strict:
                raise PatientCorrectionError(
                    "the patient to merge is unknown", field="MRG-1", code=UNKNOWN_KEY
                )
            merged = self._known(uow, command.source)
        if merged.pk == target.pk:
            raise PatientCorrectionError(
                "a patient cannot be merged into itself", field="MRG-1", code=APPLICATION_ERROR
            )
        if merged.merged_into_pk == target.pk:
            return  # merged already: nothing to do
        if merged.merged_into_pk is not None:
            raise PatientCorrectionError(
                "the patient to merge is already merged into another",
                field="MRG-1",
                code=APPLICATION_ERROR,
            )
        if uow.patients.survivor(target.pk) == merged.pk:
            raise PatientCorrectionError(
                "circular merge refused: the surviving patient is merged into this one",
                field="MRG-1",
                code=APPLICATION_ERROR,
            )
        moved = uow.patients.merge(merged.pk, target.pk)
        uow.corrections.append(
            "merge",
            str(command.source),
            {"into": str(command.target), "studies_moved": moved},
            source,
            self._clock(),
        )
        log.info("patient merged (%d studies moved)", moved)

    def _update(self, uow: UnitOfWork, command: UpdatePatient, source: str) -> None:
        row = uow.patients.find(command.patient)
        if row is None:
            log.info("patient update for a patient the archive does not hold: nothing to do")
            return
        new = command.demographics
        uow.patients.update(row.pk, new)
        uow.corrections.append(
            "update",
            str(command.patient),
            {
                "before": {"name": row.name, "birth_date": row.birth_date, "sex": row.sex},
                "after": {"name": new.name, "birth_date": new.birth_date, "sex": new.sex},
            },
            source,
            self._clock(),
        )

    def _change(self, uow: UnitOfWork, command: ChangeIdentifier, source: str) -> None:
        row = uow.patients.find(command.old)
        if row is None:
            raise PatientCorrectionError(
                "the patient identifier to change is unknown", field="MRG-1", code=UNKNOWN_KEY
            )
        if uow.patients.find(command.new) is not None:
            raise PatientCorrectionError(
                "the new patient identifier is already in use (merge instead)",
                field="PID-3",
                code=DUPLICATE_KEY,
            )
        uow.patients.change_identifier(row.pk, command.new)
        uow.corrections.append(
            "identifier change", str(command.old), {"new": str(command.new)}, source, self._clock()
        )

    def _unlink(self, uow: UnitOfWork, command: UnlinkPatients, source: str) -> None:
        target = uow.patients.find(command.target)
        merged = uow.patients.find(command.source)
        if target is None or merged is None or merged.merged_into_pk != target.pk:
            raise PatientCorrectionError(
                "no merge of these two patients to undo", field="PID-3", code=UNKNOWN_KEY
            )
        moved = uow.patients.unmerge(merged.pk)
        uow.corrections.append(
            "unlink",
            str(command.source),
            {"from": str(command.target), "studies_moved": moved},
            source,
            self._clock(),
        )
