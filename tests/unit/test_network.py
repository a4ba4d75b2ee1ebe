"""Socket and association settings (kuva.dicom.network)."""

from __future__ import annotations

import copy
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from kuva.app import Archive
from kuva.config import load_settings
from kuva.dicom.network import BUSY_LOOP_DELAY, busy_polling


def test_each_association_gets_its_own_copy_of_the_contexts(tmp_path: Path) -> None:
    settings = load_settings(None, archive={"data_dir": tmp_path}, dicom={"port": 0})
    archive = Archive(settings)
    archive.dicom.start()
    try:
        server = archive.dicom._server
        assert server is not None
        copies = copy.deepcopy(server.contexts)
        assert len(copies) == len(server.contexts) > 100
        for original, twin in zip(server.contexts, copies, strict=True):
            assert twin is not original
            assert twin.abstract_syntax == original.abstract_syntax
            assert twin.transfer_syntax == original.transfer_syntax
            assert twin.transfer_syntax is not original.transfer_syntax
        copies[0].transfer_syntax.clear()  # what one association does stays its own
        assert server.contexts[0].transfer_syntax
    finally:
        archive.dicom.stop()
        archive.engine.dispose()


def test_busy_polling_is_put_back(tmp_path: Path) -> None:
    settings = load_settings(None, archive={"data_dir": tmp_path}, dicom={"port": 0})
    archive = Archive(settings)
    host, port = archive.dicom.start()
    ae = AE(ae_title="POLLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=settings.dicom.ae_title)
    try:
        assert assoc.is_established
        idle = assoc.dul._run_loop_delay
        with busy_polling(assoc, assoc):
            assert assoc.dul._run_loop_delay == BUSY_LOOP_DELAY < idle
            assert assoc.send_c_echo().Status == 0
        assert assoc.dul._run_loop_delay == idle
    finally:
        assoc.release()
        archive.dicom.stop()
        archive.engine.dispose()
