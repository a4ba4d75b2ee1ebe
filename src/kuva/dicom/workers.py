"""DICOM on every core: worker processes accepting on the archive's listening socket.

One Python process serves its associations on one core (the GIL). With
``[dicom] workers`` = N (0: one per core), the main process binds the listening
socket and starts N - 1 worker processes (``kuva dicom-worker``) that inherit it
(pre-fork style: the kernel hands each new connection to one of the processes
waiting in accept). Each worker is a whole archive without the background
duties: the same ingest, query, retrieve and commitment services on the same
index and blob store, so an association is served the same whichever process
took it. Outbox tasks, retention, the integrity walk, HTTP, HL7 and syslog run in
the main process only; what a worker enqueues (registration, commitment reports,
audit deliveries) is picked up by the main process's task workers at their next
poll (``[tasks] poll_seconds``).

Durability is per process and unchanged: a worker answers a C-STORE only after
its blob is fsynced and its index row committed, so SIGKILL of any process loses
nothing acknowledged. The main process restarts a worker that dies, and a worker
exits when its parent is gone. The settings go to a worker as JSON on its
standard input (never on the command line, where other users could read them).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from kuva.config import Settings

log = logging.getLogger(__name__)

# A worker that dies is started again after this long (a crash loop costs little).
RESTART_SECONDS = 1.0


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A DICOM listening socket on (host, port) that other processes of this user may
    bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class WorkerProcesses:
    """Starts, watches and stops the DICOM worker processes of the main process."""

    def __init__(self, settings: Settings, port: int, count: int, log_level: str) -> None:
        # Workers bind the port the main process got (when [dicom] port is 0, too).
        dicom = settings.dicom.model_copy(update={"port": port})
        self._settings = settings.model_copy(update={"dicom": dicom})
        self._count = count
        self._log_level = log_level
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.poll() is None]

    def start(self) -> None:
        for slot in range(self._count):
            self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="kuva-dicom-workers", daemon=True)
        self._thread.start()

    def _spawn(self, slot: int) -> None:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kuva",
                "dicom-worker",
                "--parent",
                str(os.getpid()),
                "--log-level",
                self._log_level,
            ],
            stdin=subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(self._settings.model_dump_json().encode("utf-8"))
        process.stdin.close()
        self._processes[slot] = process
        log.info("DICOM worker %d started (pid %d)", slot + 1, process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_SECONDS):
            for slot, process in enumerate(self._processes):
                if process is None or process.poll() is None:
                    continue
                log.warning(
                    "DICOM worker %d (pid %d) ended with %s: starting another",
                    slot + 1,
                    process.pid,
                    process.returncode,
                )
                self._spawn(slot)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: each worker stops accepting and lets its associations finish; those
        still running after ``timeout`` are killed."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        running = [p for p in self._processes if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("DICOM worker pid %d did not stop: killed", process.pid)
                process.kill()
                process.wait()


def _terminate_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent dies (prctl PR_SET_PDEATHSIG),
    so a SIGKILLed main process does not leave workers holding its port. Elsewhere
    the parent is polled every second instead (``run_worker``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) not available")


_PR_SET_PDEATHSIG = 1


def run_worker(settings: Settings, parent: int) -> None:
    """The body of ``kuva dicom-worker``: serve DICOM on ``[dicom] host/port`` beside
    the main process ``parent`` until SIGTERM or until that process is gone (also
    when it was gone before this one got this far)."""
    from kuva.app import Archive

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    _terminate_with_parent()
    if os.getppid() != parent:
        log.warning("DICOM worker: the main process is gone, not starting")
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C is the parent's
    archive = Archive(settings, dicom_worker=True)
    # Bound only once the archive is built: the kernel routes connections to a
    # listening socket at once, and they would wait there until the acceptor runs.
    archive.start_dicom_worker(listening_socket(settings.dicom.host, settings.dicom.port))
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("DICOM worker: the main process is gone, stopping")
            break
    archive.stop_dicom_worker()
