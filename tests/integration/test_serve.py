"""``kuva serve``: embedded default, config file + environment, ready lines, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import make_ct_series


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(process: subprocess.Popen[str], log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "ready: HTTP" in text:
            return text
        assert process.poll() is None, text
        time.sleep(0.1)
    raise AssertionError(log.read_text())


def test_embedded_default_with_environment_overrides(tmp_path: Path) -> None:
    """No --config: data in ./var/kuva; KUVA_<SECTION>__<KEY> moves the ports."""
    dicom_port, http_port, hl7_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KUVA_DICOM__PORT": str(dicom_port),
        "KUVA_HTTP__PORT": str(http_port),
        "KUVA_HL7__PORT": str(hl7_port),
        "KUVA_DICOM__AE_TITLE": "KUVATEST",
    }
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kuva", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        text = wait_ready(process, log)
        assert f"ready: DICOM KUVATEST on 127.0.0.1:{dicom_port}" in text
        assert f"ready: HTTP on 127.0.0.1:{http_port}" in text
        assert "any calling AE title is accepted" in text
        assert (tmp_path / "var" / "kuva" / "index.sqlite").is_file()
        assert (tmp_path / "var" / "kuva" / "blobs" / "sha256").is_dir()

        ae = AE(ae_title="FIRSTTRY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="KUVATEST")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0
    assert "stopped" in log.read_text()


def test_health_metrics_and_sigterm(kuva_server: Callable[..., KuvaServer]) -> None:
    server = kuva_server()
    status, body = get(f"{server.http}/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "checks": ["blobs", "index"]}

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
    for ds in make_ct_series(3, rows=32, cols=32):
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()

    status, text = get(f"{server.http}/metrics")
    assert status == 200
    assert 'kuva_instances_received_total{outcome="stored"} 3.0' in text
    assert 'kuva_tasks{kind="storage-commitment",status="failed"} 0.0' in text
    assert "kuva_store_seconds_bucket" in text
    # The engine's counters (kuva.dicom.observer): one association, released.
    assert "kuva_cstore_seconds_count 3.0" in text
    assert "kuva_dicom_associations_open 0.0" in text
    assert 'kuva_dicom_pdus_total{direction="in",type="associate_rq"} 1.0' in text
    assert 'kuva_dicom_pdus_total{direction="out",type="associate_ac"} 1.0' in text
    assert 'kuva_dicom_pdus_total{direction="in",type="release_rq"} 1.0' in text
    received = re.search(r'kuva_dicom_bytes_total\{direction="in"\} ([0-9.e+]+)', text)
    assert received is not None and float(received.group(1)) > 3 * 32 * 32 * 2

    log = server.log()
    assert log.count("ready: ") == 3  # DICOM, HTTP, HL7
    assert server.stop() == 0
    assert "stopped" in server.log()


def test_bad_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[dicom]\nae_title = "THIS-TITLE-IS-FAR-TOO-LONG"\n')
    result = subprocess.run(
        [sys.executable, "-m", "kuva", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "configuration error" in result.stdout + result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "kuva", "serve", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert "not found" in missing.stdout + missing.stderr


def test_console_script_installed() -> None:
    script = Path(sys.executable).parent / "kuva"
    assert script.is_file()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "serve" in result.stdout and "tasks" in result.stdout
