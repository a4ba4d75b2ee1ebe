"""A large multi-frame object is streamed to disk, never held whole in memory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.support.archive import expected_blob, index_rows
from tests.support.memory import PeakRss
from tests.support.peers import dcmtk_available, dcmtk_env
from tests.support.server import KuvaServer
from tests.support.synthetic import make_multiframe

SIZE = 400 * 1024 * 1024


@pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")
def test_large_multiframe_streamed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("streaming does not depend on the index database")
    server = kuva_server()
    assert server.process is not None
    path = make_multiframe(tmp_path / "big.dcm", SIZE)
    with PeakRss(server.process.pid) as rss:
        result = subprocess.run(
            [
                "storescu",
                "-aet",
                "BIG",
                "-aec",
                "KUVA",
                "127.0.0.1",
                str(server.dicom_port),
                str(path),
            ],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    growth_mib = rss.growth_mib
    assert growth_mib < 100, f"server grew by {growth_mib:.0f} MiB receiving {SIZE >> 20} MiB"

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    [row] = index_rows(database_url).values()
    stored = server.blob_dir / row.blob_key
    assert row.size == stored.stat().st_size
    # Compare without loading both whole: head, then the tail.
    expected = expected_blob(
        path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
    )
    assert stored.stat().st_size == len(expected)
    with open(stored, "rb") as f:
        assert f.read(65536) == expected[:65536]
        f.seek(-65536, 2)
        assert f.read() == expected[-65536:]
