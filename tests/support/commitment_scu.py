"""A Storage Commitment SCU built on pynetdicom, as a modality or PACS would be."""

from __future__ import annotations

import queue
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"


def action_information(transaction_uid: str, refs: Iterable[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = Sequence()
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


class CommitmentSCU:
    """Stores instances, asks for commitment, and collects the reports it receives.

    Reports arriving on the requesting association and on new associations (when
    ``listen_port`` is given) land in the same queue.
    """

    def __init__(self, ae_title: str, listen_port: int | None = None) -> None:
        self.ae_title = ae_title
        self.reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(PUSH_MODEL, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
        self._server: Any = None
        self.listen_port = listen_port

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.put(
            (
                int(event.request.EventTypeID),
                event.event_information,
                "same" if event.assoc.is_requestor else "new",
            )
        )
        return 0x0000, None

    def handlers(self) -> list[Any]:
        return [(evt.EVT_N_EVENT_REPORT, self._on_report)]

    def start_listening(self) -> None:
        """Accept the archive's association carrying the report (PS3.4 J.3.3)."""
        assert self.listen_port is not None
        acceptor = AE(ae_title=self.ae_title)
        acceptor.add_supported_context(
            PUSH_MODEL,
            [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
            scu_role=False,
            scp_role=True,
        )
        self._server = acceptor.start_server(
            ("127.0.0.1", self.listen_port), block=False, evt_handlers=self.handlers()
        )

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def associate(
        self, port: int, called: str = "KUVA", storage: Iterable[str] = ()
    ) -> Association:
        for sop_class in storage:
            self.ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = self.ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=self.handlers())
        assert assoc.is_established, "association refused"
        return assoc

    @staticmethod
    def request(
        assoc: Association, refs: Iterable[tuple[str, str]], transaction_uid: str | None = None
    ) -> tuple[int, str]:
        """Send the N-ACTION; returns (status, transaction UID)."""
        uid = transaction_uid or generate_uid()
        status, _reply = assoc.send_n_action(
            action_information(uid, refs), 1, PUSH_MODEL, PUSH_MODEL_INSTANCE
        )
        return int(status.Status), uid

    def wait_report(self, timeout: float = 20.0) -> tuple[int, Dataset, str]:
        return self.reports.get(timeout=timeout)


def committed(info: Dataset) -> set[str]:
    return {item.ReferencedSOPInstanceUID for item in info.get("ReferencedSOPSequence", [])}


def failed(info: Dataset) -> dict[str, int]:
    return {
        item.ReferencedSOPInstanceUID: int(item.FailureReason)
        for item in info.get("FailedSOPSequence", [])
    }
