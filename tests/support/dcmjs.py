"""A second, independent Instance Availability Notification SCP (PS3.4 Annex R) for
tests: ``tests/peers/dcmjs_ian/ian_scp.js`` on the npm package dcmjs-dimse, run with
Node.js as a subprocess. :class:`DcmjsIanReceiver` has the API of
:class:`tests.support.ian.IanReceiver`, so a test can use either one.

The script prints one JSON line per N-CREATE it receives; a reader thread turns
them into :class:`DcmjsReceivedIan` (``study_uid``, ``instances()``, ``at`` like
``ReceivedIan``, plus the Retrieve AE Title of every instance).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.support.server import REPO, free_port

PEER_DIR = REPO / "tests" / "peers" / "dcmjs_ian"
SCRIPT = PEER_DIR / "ian_scp.js"
_INSTALLED = PEER_DIR / "node_modules" / "dcmjs-dimse" / "package.json"
_install_lock = threading.Lock()


def ensure_dcmjs_installed(timeout: float = 300.0) -> None:
    """Install dcmjs-dimse into tests/peers/dcmjs_ian/node_modules when it is missing
    (``npm ci`` from package-lock.json). Raises RuntimeError saying why it cannot."""
    with _install_lock:
        if _INSTALLED.is_file():
            return
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise RuntimeError("Node.js (node and npm) not found on PATH")
        verb = "ci" if (PEER_DIR / "package-lock.json").is_file() else "install"
        try:
            done = subprocess.run(
                [npm, verb, "--no-audit", "--no-fund"],
                cwd=PEER_DIR,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"npm {verb} in {PEER_DIR.relative_to(REPO)} failed: {exc}") from exc
        if done.returncode != 0 or not _INSTALLED.is_file():
            head = (done.stderr or done.stdout).strip().splitlines()[:4]  # npm's error code first
            raise RuntimeError(
                f"npm {verb} in {PEER_DIR.relative_to(REPO)} failed: " + " | ".join(head)
            )


def dcmjs_available() -> bool:
    """True if node and npm are present and dcmjs-dimse is (or could be) installed."""
    try:
        ensure_dcmjs_installed()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class DcmjsReceivedIan:
    sop_instance_uid: str  # the IAN's own (Affected SOP Instance UID)
    sop_class_uid: str  # Affected SOP Class UID of the N-CREATE
    study_uid: str
    availability: dict[str, str] = field(repr=False)  # SOP Instance UID -> availability
    retrieve_ae: dict[str, str] = field(repr=False)  # SOP Instance UID -> Retrieve AE Title
    at: float = 0.0  # time.time() when it arrived

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Instance Availability."""
        return dict(self.availability)

    @classmethod
    def from_report(cls, report: dict[str, Any], at: float) -> DcmjsReceivedIan:
        return cls(
            sop_instance_uid=str(report.get("affected_sop_instance_uid", "")),
            sop_class_uid=str(report.get("sop_class", "")),
            study_uid=str(report.get("study", "")),
            availability={str(k): str(v) for k, v in report.get("instances", {}).items()},
            retrieve_ae={str(k): str(v) for k, v in report.get("retrieve_ae", {}).items()},
            at=at,
        )


class DcmjsIanReceiver:
    """dcmjs-dimse IAN SCP listening on ``port`` (0: any free one) as ``ae_title``,
    answering every N-CREATE with ``status``; ``close`` and a new receiver on the
    same port make a peer that was down and came back."""

    def __init__(
        self,
        port: int = 0,
        *,
        ae_title: str = "DCMJSIAN",
        status: int = 0x0000,
        start_timeout: float = 30.0,
    ) -> None:
        ensure_dcmjs_installed()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found on PATH")
        self.status = status
        self.ae_title = ae_title
        self.port = port or free_port()
        self.received: list[DcmjsReceivedIan] = []
        self._arrived = threading.Condition()
        self._listening = threading.Event()
        self._ended = False
        self._stderr: deque[str] = deque(maxlen=20)  # its last lines, for errors
        command = [node, str(SCRIPT), "--port", str(self.port), "--ae", ae_title]
        self._process = subprocess.Popen(
            [*command, "--status", hex(status)],
            cwd=PEER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, name="dcmjs-ian-stdout", daemon=True),
            threading.Thread(target=self._drain_stderr, name="dcmjs-ian-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + start_timeout
        while not self._listening.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                why = " | ".join(self._stderr) or f"exit status {self._process.poll()}"
                raise RuntimeError(f"dcmjs-dimse IAN SCP did not start on port {self.port}: {why}")

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not one of the script's lines
            if "listening" in message:
                self._listening.set()
                continue
            received = DcmjsReceivedIan.from_report(message, time.time())
            with self._arrived:
                self.received.append(received)
                self._arrived.notify_all()
        with self._arrived:
            self._ended = True
            self._arrived.notify_all()

    def _drain_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        for line in stderr:
            if line.strip():
                self._stderr.append(line.strip())

    def wait_for(self, count: int, timeout: float = 30.0) -> list[DcmjsReceivedIan]:
        """Wait until ``count`` IANs have arrived; returns them all (raises on timeout)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    why = "the SCP has exited" if self._ended else "timed out"
                    raise TimeoutError(
                        f"{len(self.received)} IAN(s) arrived, {count} expected ({why})"
                    )
                self._arrived.wait(left)
            return list(self.received)

    def of_study(self, study_uid: str) -> list[DcmjsReceivedIan]:
        with self._arrived:
            return [ian for ian in self.received if ian.study_uid == study_uid]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
