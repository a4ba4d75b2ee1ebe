"""The engine's counters on /metrics: open associations, PDUs and bytes each way.

kuva.dicom.net knows nothing of the archive's metrics; it calls a ``NetObserver``
on its event loop thread, and this one counts into kuva.metrics (prometheus
counters are thread-safe and cheap enough to be called per PDU).
"""

from __future__ import annotations

from kuva import metrics
from kuva.dicom.net import Association

# PDU types (PS3.8 Table 9-11) as the metric's label.
_TYPES = {
    1: "associate_rq",
    2: "associate_ac",
    3: "associate_rj",
    4: "p_data",
    5: "release_rq",
    6: "release_rp",
    7: "abort",
}


class NetMetrics:
    """``NetObserver`` that feeds kuva.metrics."""

    def __init__(self) -> None:
        self._in = {t: metrics.dicom_pdus.labels("in", name) for t, name in _TYPES.items()}
        self._out = {t: metrics.dicom_pdus.labels("out", name) for t, name in _TYPES.items()}
        self._bytes_in = metrics.dicom_bytes.labels("in")
        self._bytes_out = metrics.dicom_bytes.labels("out")

    def association_opened(self, assoc: Association) -> None:
        metrics.associations_open.inc()

    def association_closed(self, assoc: Association) -> None:
        metrics.associations_open.dec()

    def pdu_received(self, pdu_type: int, nbytes: int) -> None:
        counter = self._in.get(pdu_type)
        if counter is not None:
            counter.inc()
        self._bytes_in.inc(nbytes)

    def pdu_sent(self, pdu_type: int, nbytes: int) -> None:
        counter = self._out.get(pdu_type)
        if counter is not None:
            counter.inc()
        self._bytes_out.inc(nbytes)


# One for the process: the listener's and every association kuva opens.
NET_METRICS = NetMetrics()
