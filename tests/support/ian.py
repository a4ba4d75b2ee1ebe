"""A pynetdicom Instance Availability Notification SCP (PS3.4 Annex R) for tests and
benchmarks: it keeps every N-CREATE it receives and answers ``status``, or a
Processing failure for the studies in ``refuse`` (kept apart, in ``refused``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from kuva.dicom.ian import INSTANCE_AVAILABILITY_NOTIFICATION
from kuva.dicom.status import PROCESSING_FAILURE


@dataclass(frozen=True)
class ReceivedIan:
    sop_instance_uid: str  # the IAN's own (Affected SOP Instance UID)
    dataset: Dataset
    at: float  # time.time() when it arrived

    @property
    def study_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Instance Availability."""
        return {
            str(item.ReferencedSOPInstanceUID): str(item.InstanceAvailability)
            for series in self.dataset.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }


class IanReceiver:
    """Listens on ``port`` (0: any free one) as ``ae_title``; ``close`` and a new
    receiver on the same port make a peer that was down and came back."""

    def __init__(self, port: int = 0, *, ae_title: str = "IANSCP", status: int = 0x0000) -> None:
        self.status = status
        self.refuse: set[str] = set()
        self.received: list[ReceivedIan] = []
        self.refused: list[ReceivedIan] = []
        self._arrived = threading.Condition()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(INSTANCE_AVAILABILITY_NOTIFICATION)
        self.server = self.ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_CREATE, self._on_create)]
        )
        self.port = int(self.server.server_address[1])

    def _on_create(self, event: Event) -> tuple[int, Dataset | None]:
        received = ReceivedIan(
            str(event.request.AffectedSOPInstanceUID), event.attribute_list, time.time()
        )
        with self._arrived:
            if received.study_uid in self.refuse:
                self.refused.append(received)
                return PROCESSING_FAILURE, None
            self.received.append(received)
            self._arrived.notify_all()
        return self.status, None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedIan]:
        """Wait until ``count`` IANs have arrived; returns them all (raises on timeout)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.received)} IAN(s) arrived, {count} expected")
                self._arrived.wait(left)
            return list(self.received)

    def of_study(self, study_uid: str) -> list[ReceivedIan]:
        with self._arrived:
            return [ian for ian in self.received if ian.study_uid == study_uid]

    def close(self) -> None:
        """Stop listening (a peer going down); again, nothing more."""
        if self.server.socket.fileno() != -1:
            self.server.shutdown()
