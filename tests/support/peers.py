"""Real DICOM peers run as subprocesses on loopback, for tests and benchmarks.

* :class:`StoreSCP`: dcmtk ``storescp`` writing what it receives to a folder.
* :class:`Orthanc`: an Orthanc server with its own temporary configuration,
  storage and ports, optionally with its DICOMweb plugin loaded.
* :func:`storescu` / :func:`echoscu`: run the dcmtk SCUs against a peer.

dcmtk programs get ``TCP_NODELAY=1`` in their environment (dcmtk then disables
Nagle's algorithm on its sockets). Every server is started in a new process
group and stopped by signalling that group only, so ``storescp --fork`` children
go away with their parent.

pynetdicom installs Python scripts also called ``storescu``, ``storescp`` and
``echoscu`` into the virtual environment; :func:`dcmtk_tool` skips those so the
real dcmtk binaries are used even when the environment's ``bin`` is on PATH.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pydicom

__all__ = [
    "LOOPBACK",
    "STORESCU_PROPOSE_OPTION",
    "Orthanc",
    "PeerStartError",
    "StoreSCP",
    "dcmtk_available",
    "dcmtk_env",
    "dcmtk_tool",
    "echoscu",
    "free_port",
    "free_ports",
    "orthanc_available",
    "orthanc_dicomweb_plugin",
    "stop_process_group",
    "store_response_counts",
    "storescu",
    "storescu_command",
    "storescu_propose_args",
]

StrPath = str | os.PathLike[str]

LOOPBACK = "127.0.0.1"


class PeerStartError(RuntimeError):
    """A peer process exited or did not become ready in time."""


# --------------------------------------------------------------------------- discovery


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    return free_ports(1)[0]


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux), else IANA's."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


# Each pytest-xdist worker draws from its own slice of the ports below the ephemeral
# range (the controller, or a run without workers, from slice 0), in turn.
_SLICES = 8


def _port_slice() -> range:
    low, _ = _ephemeral_range()
    first = max(10240, low - 16384)
    size = (low - first) // _SLICES
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    index = int(worker[2:]) + 1 if worker[:2] == "gw" and worker[2:].isdigit() else 0
    start = first + (index % _SLICES) * size
    return range(start, start + size)


_next_port: list[int] = []


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on loopback that are free right now.

    They are taken in turn from this process's own slice of the ports below the
    kernel's ephemeral range, so no port is handed out twice until the slice has come
    round. A port from the ephemeral range (what binding port 0 gives) stays free
    only until the next outgoing connection of any process takes it as its local
    port: between the pick and the bind of a server started later (an IAN receiver
    brought up after an outage) another test's connection, or kuva's own retries
    connecting to that very port, took it and the bind failed. A port drawn at
    random below the range could still be drawn by another pytest worker before the
    first one bound it (a kuva's HTTP readiness check then met a DICOM peer);
    slices per worker leave no two workers the same port."""
    ports = _port_slice()
    if len(ports) < 1024:  # an unusual ephemeral range: let the kernel choose
        return _kernel_ports(count)
    if not _next_port:
        _next_port.append(random.randrange(len(ports)))
    chosen: list[int] = []
    for _ in range(len(ports)):
        if len(chosen) == count:
            break
        port = ports[_next_port[0] % len(ports)]
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError(f"no {count} free ports on loopback in {ports}")
    return chosen


def _kernel_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _is_script(path: Path) -> bool:
    """True if ``path`` starts with ``#!`` (an interpreted script, not a binary)."""
    with path.open("rb") as fp:
        return fp.read(2) == b"#!"


@functools.cache
def dcmtk_tool(name: str) -> str | None:
    """Absolute path of dcmtk program ``name`` on PATH, skipping Python scripts."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(folder or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and not _is_script(candidate):
            return str(candidate.resolve())
    return None


def _require_dcmtk(name: str) -> str:
    """Like :func:`dcmtk_tool` but raise FileNotFoundError when it is missing."""
    path = dcmtk_tool(name)
    if path is None:
        raise FileNotFoundError(f"dcmtk program {name!r} not found on PATH")
    return path


def dcmtk_available() -> bool:
    """True if the dcmtk programs the tests drive are installed."""
    return all(dcmtk_tool(name) for name in ("storescu", "storescp", "echoscu", "dcmdump"))


def orthanc_available() -> bool:
    """True if an ``Orthanc`` server binary is on PATH."""
    return shutil.which("Orthanc") is not None


#: File name of Orthanc's DICOMweb plugin (Debian package ``orthanc-dicomweb``).
_DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def orthanc_dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin of the installed Orthanc, or None when it is not installed.

    Looked for where packages put Orthanc plugins relative to the ``Orthanc``
    binary's prefix (``<prefix>/sbin/Orthanc``): ``<prefix>/share/orthanc/plugins``
    (Debian's orthanc-dicomweb) and ``<prefix>/lib/orthanc``.
    """
    orthanc = shutil.which("Orthanc")
    if orthanc is None:
        return None
    prefixes = dict.fromkeys([Path(orthanc).parent.parent, Path(orthanc).resolve().parent.parent])
    for prefix in prefixes:
        for folder in (prefix / "share" / "orthanc" / "plugins", prefix / "lib" / "orthanc"):
            exact = folder / _DICOMWEB_PLUGIN
            if exact.exists():
                return exact
            versioned = sorted(folder.glob(f"{_DICOMWEB_PLUGIN}.*"))
            if versioned:
                return versioned[-1]
    return None


def set_nodelay_handler(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on a pynetdicom peer's socket
    (without it each small DIMSE message waits on Nagle's algorithm and delayed
    ACKs, 40-90 ms a message on loopback)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def dcmtk_env() -> dict[str, str]:
    """The current environment plus ``TCP_NODELAY=1`` for dcmtk programs."""
    return {**os.environ, "TCP_NODELAY": "1"}


# --------------------------------------------------------------------------- process plumbing


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerStartError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise PeerStartError(f"nothing listening on port {port} after {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group led by ``process``; SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    # Children (storescp --fork) may outlive a leader that already exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _start(
    command: Sequence[str], log: IO[bytes], env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, output to ``log``."""
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
    )


class _ServerProcess:
    """Shared start/stop/log handling of the server context managers."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final_log = ""

    @property
    def pid(self) -> int:
        """Process id of the running server (also its process group id)."""
        if self._process is None:
            raise RuntimeError("server is not running")
        return self._process.pid

    def log_text(self) -> str:
        """Everything the server printed so far (still available after it stopped)."""
        if self._log is None:
            return self._final_log
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _launch(self, command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        # Kept open for the server's lifetime; read and closed in _shutdown.
        self._log = tempfile.TemporaryFile(prefix="kuva-peer-log-")  # noqa: SIM115
        self._final_log = ""
        self._process = _start(command, self._log, env)
        return self._process

    def _failed_start(self, error: Exception) -> PeerStartError:
        self._shutdown(5.0)
        return PeerStartError(f"{error}\n--- server output ---\n{self.log_text()[-4000:]}")

    def _shutdown(self, timeout: float) -> None:
        if self._process is not None:
            stop_process_group(self._process, timeout)
            self._process = None
        if self._log is not None:
            self._final_log = self.log_text()
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------- storescp


class StoreSCP(_ServerProcess):
    """dcmtk ``storescp`` on loopback, storing received objects under ``directory``.

    Use as a context manager::

        with StoreSCP(tmp_path / "in") as scp:
            storescu(files, LOOPBACK, scp.port, aec=scp.aet)
            assert len(scp.received()) == len(files)

    ``fork=True`` adds ``--fork`` (one child process per association) so several
    associations are served at once. ``accept_all=True`` (the default) adds
    ``+xa`` so compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are
    accepted too; plain storescp accepts uncompressed ones only. ``extra_args``
    are passed to storescp as is.
    """

    def __init__(
        self,
        directory: StrPath,
        *,
        port: int | None = None,
        aet: str = "STORESCP",
        fork: bool = False,
        accept_all: bool = True,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.port = port or free_port()
        self.aet = aet
        self.fork = fork
        self.accept_all = accept_all
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout

    @property
    def command(self) -> list[str]:
        """The storescp command line."""
        fork = ["--fork"] if self.fork else []
        accept = ["+xa"] if self.accept_all else []
        return [
            _require_dcmtk("storescp"),
            *fork,
            *accept,
            "-aet",
            self.aet,
            "-od",
            str(self.directory),
            *self.extra_args,
            str(self.port),
        ]

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        process = self._launch(self.command, dcmtk_env())
        try:
            _wait_for_port(self.port, process, self.startup_timeout)
        except PeerStartError as error:
            raise self._failed_start(error) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown(10.0)

    def received(self) -> list[Path]:
        """Files stored so far (storescp names them ``<modality>.<SOP Instance UID>``)."""
        return sorted(p for p in self.directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- Orthanc


class Orthanc(_ServerProcess):
    """An Orthanc server with a temporary JSON configuration, on loopback.

    Storage and index live in ``workdir`` (a temporary directory removed on exit
    when not given). ``modalities`` become ``DicomModalities``: name ->
    (AE title, host, port). ``extra_config`` entries override the defaults.
    The server accepts C-STORE from any AE (``DicomAlwaysAllowStore``), serves
    REST on loopback only without authentication and stores files uncompressed.

    ``dicomweb=True`` loads the DICOMweb plugin (:func:`orthanc_dicomweb_plugin`;
    FileNotFoundError on entry when it is not installed) with its root at
    ``/dicom-web/``: QIDO-RS, WADO-RS and STOW-RS (PS3.18) at :attr:`dicomweb_url`.

    Orthanc's DICOM side is dcmtk, which reads ``TCP_NODELAY`` from the
    environment too; without it each C-STORE response waits on Nagle's
    algorithm and a delayed ACK (about 20 instead of 140 CT slices/s measured
    on loopback). ``tcp_nodelay=True`` (the default) therefore starts Orthanc
    with ``TCP_NODELAY=1``, like the dcmtk programs.

    Example::

        with Orthanc(modalities={"kuva": ("KUVA", LOOPBACK, 11112)}) as orthanc:
            storescu(files, LOOPBACK, orthanc.dicom_port, aec=orthanc.aet)
            assert orthanc.instance_count() == len(files)
    """

    def __init__(
        self,
        workdir: StrPath | None = None,
        *,
        aet: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        tcp_nodelay: bool = True,
        dicomweb: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.tcp_nodelay = tcp_nodelay
        self.dicomweb = dicomweb
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.aet = aet
        spare = free_ports(2)
        self.dicom_port = dicom_port or spare[0]
        self.http_port = http_port or spare[1]
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.startup_timeout = startup_timeout
        # The temporary workdir (when none is given) exists only once entered.
        self.workdir = self._given_workdir or Path()

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb plugin's services (only served with ``dicomweb=True``)."""
        return f"{self.url}/dicom-web"

    @property
    def config_path(self) -> Path:
        """Where the JSON configuration is written."""
        return self.workdir / "orthanc.json"

    @property
    def storage_dir(self) -> Path:
        """Orthanc's StorageDirectory (received files)."""
        return self.workdir / "storage"

    def config(self) -> dict[str, Any]:
        """The configuration written for this server."""
        config: dict[str, Any] = {
            "Name": "kuva-test-orthanc",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "SaveJobs": False,
        }
        if self.dicomweb:
            plugin = orthanc_dicomweb_plugin()
            if plugin is None:
                raise FileNotFoundError("Orthanc's DICOMweb plugin is not installed")
            config["Plugins"] = [str(plugin)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Ssl": False}
        config.update(self.extra_config)
        return config

    def __enter__(self) -> Self:
        if self._given_workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="kuva-orthanc-")
            self.workdir = Path(self._tempdir.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        orthanc = shutil.which("Orthanc")
        try:
            if orthanc is None:
                raise FileNotFoundError("Orthanc is not installed")
            self.config_path.write_text(json.dumps(self.config(), indent=2))
        except FileNotFoundError:
            self._cleanup()
            raise
        env = dcmtk_env() if self.tcp_nodelay else os.environ
        process = self._launch([orthanc, str(self.config_path)], env)
        try:
            self._wait_ready(process)
        except PeerStartError as error:
            self._cleanup()
            raise self._failed_start(error) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown(30.0)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until ``GET /system`` answers and the DICOM port accepts connections."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PeerStartError(f"Orthanc exited with {process.returncode}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.rest_get("/system", timeout=1.0)
                _wait_for_port(self.dicom_port, process, max(deadline - time.monotonic(), 0.1))
                return
            time.sleep(0.1)
        raise PeerStartError(f"Orthanc did not answer /system within {self.startup_timeout} s")

    def rest_get(self, path: str, *, timeout: float = 30.0) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def rest_post(self, path: str, body: Any, *, timeout: float = 60.0) -> Any:
        """POST JSON ``body`` to ``path`` and decode the JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def rest_put(self, path: str, body: bytes | str, *, timeout: float = 30.0) -> bytes:
        """PUT a plain body to ``path`` (e.g. ``/tools/default-encoding``); return the answer."""
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(self.url + path, data=data, method="PUT")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: bytes = response.read()
            return answer

    def rest_get_bytes(self, path: str, *, timeout: float = 60.0) -> bytes:
        """GET ``path`` from the REST API; the raw body (e.g. of ``/instances/{id}/file``)."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def instance_count(self) -> int:
        """Number of instances Orthanc holds (``/statistics`` CountInstances)."""
        return int(self.rest_get("/statistics")["CountInstances"])


# --------------------------------------------------------------------------- SCUs

#: storescu option that proposes a file's transfer syntax (checked with dcmtk 3.6.7).
#: storescu proposes uncompressed transfer syntaxes only unless told otherwise and
#: cannot convert compressed files, so a JPEG file sent without ``-xy`` fails with
#: "unable to convert dataset". One ``-x?`` option per call: send files of
#: different compressed syntaxes in separate calls (see :func:`storescu_propose_args`).
STORESCU_PROPOSE_OPTION: dict[str, str] = {
    "1.2.840.10008.1.2": "-xi",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "-xe",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99": "-xd",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS Lossy
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
}


def storescu_propose_args(path: StrPath) -> list[str]:
    """storescu arguments that make it send the file at ``path`` in its own syntax."""
    transfer_syntax = pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID
    option = STORESCU_PROPOSE_OPTION.get(str(transfer_syntax))
    return [option] if option else []


def _as_paths(files_or_dir: StrPath | Sequence[StrPath]) -> list[str]:
    if isinstance(files_or_dir, str | os.PathLike):
        return [os.fspath(files_or_dir)]
    return [os.fspath(p) for p in files_or_dir]


def storescu_command(
    files_or_dir: StrPath | Sequence[StrPath],
    host: str,
    port: int,
    aet: str = "STORESCU",
    aec: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The dcmtk storescu command line :func:`storescu` runs.

    Directories among the inputs make storescu scan them recursively (``+sd +r``).
    """
    paths = _as_paths(files_or_dir)
    scan = ["+sd", "+r"] if any(Path(p).is_dir() for p in paths) else []
    return [
        _require_dcmtk("storescu"),
        *scan,
        "-aet",
        aet,
        "-aec",
        aec,
        *extra_args,
        host,
        str(port),
        *paths,
    ]


def storescu(
    files_or_dir: StrPath | Sequence[StrPath],
    host: str,
    port: int,
    aet: str = "STORESCU",
    aec: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    *,
    timeout: float | None = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or a directory, recursively) with dcmtk storescu in one association.

    Runs with ``TCP_NODELAY=1``; output is captured as text and the exit status
    is not checked. Compressed files need the matching ``-x?`` option in
    ``extra_args`` (:func:`storescu_propose_args`). storescu exits non-zero
    when it halts: at a file it cannot send (1) or at the first failure status
    from the peer (e.g. 167). With ``--no-halt`` it carries on and exits 0 even
    if the peer refused files, so add ``-v`` to ``extra_args`` and count the
    "Received Store Response" lines with :func:`store_response_counts`.
    """
    command = storescu_command(files_or_dir, host, port, aet, aec, extra_args)
    return subprocess.run(
        command, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
    )


def echoscu(
    host: str, port: int, aet: str = "ECHOSCU", aec: str = "ANY-SCP", *, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """C-ECHO the peer with dcmtk echoscu; exit status 0 means success."""
    command = [_require_dcmtk("echoscu"), "-aet", aet, "-aec", aec, host, str(port)]
    return subprocess.run(
        command, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
    )


_STORE_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def store_response_counts(output: str) -> Counter[str]:
    """Count C-STORE response statuses in verbose (``-v``) storescu output.

    Keys are the words storescu prints, e.g. ``{"Success": 299, "Warning": 1}``;
    failures appear as e.g. ``"Failure"`` or ``"Error: ..."`` depending on status.
    """
    return Counter(match.group(1).strip() for match in _STORE_RESPONSE.finditer(output))
