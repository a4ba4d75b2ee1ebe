"""Retrieve benchmark: C-GET and WADO-RS throughput of kuva and Orthanc in the same run.

Usage::

    .venv/bin/python bench/retrieve.py [--instances 500] [--runs 3]
                                       [--database-url URL] [--keep]

A synthetic CT study (one series, 512 x 512, 16 bits, Explicit VR Little Endian,
about 0.5 MB per instance; 500 by default) is written to a temporary folder and
stored with dcmtk ``storescu`` into a fresh kuva (``kuva serve``, SQLite in its
data folder unless ``--database-url`` names another, empty, index database) and
into Orthanc (SQLite index, uncompressed storage, its DICOMweb plugin loaded when
installed). Then the whole study is retrieved from each, ``--runs`` times, the two
servers taking turns:

* **C-GET** (PS3.4 C.4.3): dcmtk ``getscu``, Study Root, study level, receiving
  on the same association and discarding what it receives (``--ignore``), with
  ``TCP_NODELAY=1``; once with getscu's default maximum PDU (16384 bytes) and
  once with its largest (``-pdu 131072``). MB counts the study's Part 10 files.
* **WADO-RS** (PS3.18 10.4, Retrieve Study): ``GET {root}/studies/{uid}`` with
  ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` and
  ``Accept-Encoding: identity``, read as a stream with httpx (the body is counted,
  parts are counted by their boundary, nothing is kept). MB counts body bytes.
* **WADO-RS, dicomweb-client**: ``DICOMwebClient.iter_study`` (requests, streamed,
  every part parsed by pydicom): what a Python client sees. MB counts the files.

Then kuva alone, the same paths again after an HL7 ADT^A08 corrected the patient's
name (rows "…, patient corrected"): every object goes out with a rewritten header
and an Original Attributes Sequence item, its pixel data streamed as stored.

The table gives, per path, the best and the median MB/s of each server over the
runs and kuva's best divided by Orthanc's best; a path a server cannot answer (an
HTTP error, a failed C-GET) gets a failure note instead of a figure. Then every
command used, and the command line that reproduces the run. MB means 10**6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.message
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # makes tests.support importable

from bench.shared import (  # noqa: E402
    MllpClient,
    acknowledged,
    adt,
    orthanc_version,
    pid,
    print_command_and_machine,
    print_rows,
)
from tests.support.memory import PeakRss  # noqa: E402
from tests.support.peers import (  # noqa: E402
    LOOPBACK,
    Orthanc,
    PeerStartError,
    dcmtk_available,
    dcmtk_env,
    dcmtk_tool,
    orthanc_available,
    orthanc_dicomweb_plugin,
    storescu,
    storescu_command,
)
from tests.support.server import KuvaServer  # noqa: E402
from tests.support.synthetic import make_ct_series, write_series  # noqa: E402

MB = 1_000_000
SENDER_AET = "BENCH"
GETSCU_AET = "GETSCU"
ORTHANC_AET = "ORTHANC"
PATIENT_ID = "150578-958K"  # a Finnish test identity code (8th character 9)
PATIENT_NAME = "Äyräpää^Öljy"
CORRECTED_NAME = "Äyräpää-Korjattu^Öljy"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RETRIEVE_TIMEOUT_S = 1800.0

C_GET = "C-GET (getscu)"
C_GET_LARGE_PDU = "C-GET (getscu -pdu 131072)"
WADO_RS = "WADO-RS (httpx stream)"
WADO_RS_CLIENT = "WADO-RS (dicomweb-client)"
PATHS = (C_GET, C_GET_LARGE_PDU, WADO_RS, WADO_RS_CLIENT)
#: getscu's largest maximum receive PDU (its default is 16384 bytes).
GETSCU_MAX_PDU = 131072


class RetrieveFailed(Exception):
    """A retrieve did not deliver the study; the message says what happened."""


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Sample:
    """One timed retrieve of the whole study."""

    seconds: float
    megabytes: float
    instances: int

    @property
    def throughput(self) -> float:
        """MB per second."""
        return self.megabytes / self.seconds

    @property
    def rate(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds


@dataclasses.dataclass
class Measurement:
    """The runs of one path against one server."""

    path: str
    server: str
    command: str = ""
    samples: list[Sample] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    rss_growth_mib: list[float] = dataclasses.field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.samples)

    def best(self) -> Sample:
        return max(self.samples, key=lambda s: s.throughput)

    def median_throughput(self) -> float:
        return statistics.median(s.throughput for s in self.samples)

    def median_rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)


@dataclasses.dataclass(frozen=True)
class Study:
    """The benchmark study as written to disk."""

    study_uid: str
    files: Path
    instances: int
    megabytes: float


@dataclasses.dataclass(frozen=True)
class Server:
    """A running server to retrieve from."""

    name: str
    aet: str
    dicom_port: int
    dicomweb_root: str | None  # None: no DICOMweb service (reason in dicomweb_note)
    dicomweb_note: str
    pid: int | None  # watched for its peak RSS while it serves (kuva only)
    command: str
    hl7_port: int | None = None  # kuva's MLLP listener


Retriever = Callable[[Server, Study], tuple[Sample, str]]


# --------------------------------------------------------------------------- data


def generate_study(directory: Path, instances: int) -> Study:
    """Write one CT series of ``instances`` slices, 50 in memory at a time."""
    started = time.perf_counter()
    out = directory / "study"
    study_uid = series_uid = None
    total = 0
    for first in range(0, instances, 50):
        datasets = make_ct_series(
            min(50, instances - first),
            patient_id=PATIENT_ID,
            patient_name=PATIENT_NAME,
            study_uid=study_uid,
            series_uid=series_uid,
            seed=first,
        )
        study_uid, series_uid = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
        for offset, ds in enumerate(datasets):
            ds.InstanceNumber = first + offset + 1
        total += sum(path.stat().st_size for path in write_series(datasets, out))
    assert study_uid is not None
    print(
        f"generated {instances} instances, {total / MB:.1f} MB in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Study(str(study_uid), out, instances, total / MB)


def store(study: Study, port: int, aet: str, label: str) -> str:
    """Send the study with storescu; return the command (raise when not all were stored)."""
    started = time.perf_counter()
    result = storescu(study.files, LOOPBACK, port, aet=SENDER_AET, aec=aet, timeout=3600)
    if result.returncode != 0:
        lines = [
            ln for ln in (result.stdout + result.stderr).splitlines() if ln[:2] in ("E:", "F:")
        ]
        raise RetrieveFailed(f"storescu to {label} exited {result.returncode}: {lines[:3]}")
    seconds = time.perf_counter() - started
    print(
        f"stored into {label} in {seconds:.1f} s ({study.instances / seconds:.0f} instances/s)",
        flush=True,
    )
    command = storescu_command(study.files, LOOPBACK, port, SENDER_AET, aet)
    return f"TCP_NODELAY=1 {shlex.join(command)}"


# --------------------------------------------------------------------------- C-GET

_COMPLETED = re.compile(r"Number of Completed Suboperations\s*:\s*(\d+)")
_FAILED = re.compile(r"Number of Failed Suboperations\s*:\s*(\d+)")


def getscu_command(server: Server, study: Study, max_pdu: int | None = None) -> list[str]:
    """dcmtk getscu: Study Root, study level, received objects discarded.

    ``max_pdu``: the maximum PDU length getscu announces it receives (``-pdu``);
    the SCP sends its C-STORE sub-operations in PDUs of at most that size.
    """
    getscu = dcmtk_tool("getscu")
    if getscu is None:
        raise RetrieveFailed("dcmtk getscu not found")
    return [
        getscu,
        "-v",
        "-S",
        "--ignore",
        *(["-pdu", str(max_pdu)] if max_pdu else []),
        "-aet",
        GETSCU_AET,
        "-aec",
        server.aet,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.study_uid}",
        LOOPBACK,
        str(server.dicom_port),
    ]


def c_get(server: Server, study: Study, max_pdu: int | None = None) -> tuple[Sample, str]:
    """Retrieve the study with getscu (PS3.4 C.4.3); every sub-operation must complete."""
    command = getscu_command(server, study, max_pdu)
    started = time.perf_counter()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=RETRIEVE_TIMEOUT_S,
        check=False,
    )
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    completed = [int(n) for n in _COMPLETED.findall(output)]
    failed = [int(n) for n in _FAILED.findall(output)]
    done = completed[-1] if completed else 0
    if result.returncode != 0 or done != study.instances:
        errors = [ln for ln in output.splitlines() if ln[:2] in ("E:", "F:")][:3]
        raise RetrieveFailed(
            f"getscu exit {result.returncode}, {done} of {study.instances} completed"
            + (f", {failed[-1]} failed" if failed else "")
            + (f": {' | '.join(errors)}" if errors else "")
        )
    return Sample(seconds, study.megabytes, done), f"TCP_NODELAY=1 {shlex.join(command)}"


# --------------------------------------------------------------------------- WADO-RS


class PartCounter:
    """Counts the body parts of a multipart message as it streams past (RFC 2046 5.1.1)."""

    def __init__(self, boundary: str) -> None:
        self._marker = b"--" + boundary.encode()
        self._tail = b""
        self.markers = 0
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        start = 0
        while (found := data.find(self._marker, start)) >= 0:
            end = found + len(self._marker)
            if len(data) < end + 2:
                break  # cannot tell a delimiter from the close delimiter yet
            self.markers += 1
            self.closed = self.closed or data[end : end + 2] == b"--"
            start = end
        keep = max(start, len(data) - len(self._marker) - 1)
        self._tail = data[keep:]

    @property
    def parts(self) -> int:
        """Body parts seen: delimiters before the close delimiter."""
        return self.markers - 1 if self.closed else self.markers


def _boundary(content_type: str) -> str:
    message = email.message.Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RetrieveFailed(f"no multipart boundary in Content-Type {content_type!r}")
    return boundary


def study_url(server: Server, study: Study) -> str:
    if server.dicomweb_root is None:
        raise RetrieveFailed(server.dicomweb_note)
    return f"{server.dicomweb_root}/studies/{study.study_uid}"


def curl_command(url: str) -> str:
    """A curl line doing the same request as :func:`wado_rs`."""
    return shlex.join(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-H",
            f"Accept: {WADO_ACCEPT}",
            "-w",
            "%{speed_download}\\n",
            url,
        ]
    )


def wado_rs(server: Server, study: Study) -> tuple[Sample, str]:
    """Retrieve Study (PS3.18 10.4.1) with httpx, streamed; the body is counted, not kept."""
    url = study_url(server, study)
    headers = {"Accept": WADO_ACCEPT, "Accept-Encoding": "identity"}
    timeout = httpx.Timeout(RETRIEVE_TIMEOUT_S, connect=10.0)
    received = 0
    with httpx.Client(timeout=timeout) as client:
        started = time.perf_counter()
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                body = response.read()[:160].decode(errors="replace").strip()
                raise RetrieveFailed(f"HTTP {response.status_code} {body}".strip())
            counter = PartCounter(_boundary(response.headers.get("content-type", "")))
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
                counter.feed(chunk)
        seconds = time.perf_counter() - started
    if counter.parts != study.instances or not counter.closed:
        raise RetrieveFailed(
            f"{counter.parts} parts of {study.instances} "
            f"({'closed' if counter.closed else 'no close delimiter'}), {received} bytes"
        )
    return Sample(seconds, received / MB, counter.parts), curl_command(url)


def dicomweb_client(server: Server, study: Study) -> tuple[Sample, str]:
    """Retrieve Study with dicomweb-client's ``iter_study`` (streamed, parsed by pydicom)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    study_url(server, study)  # a server without DICOMweb fails here
    assert server.dicomweb_root is not None
    session = requests.Session()
    session.headers["Accept-Encoding"] = "identity"
    client = DICOMwebClient(url=server.dicomweb_root, session=session)
    count = 0
    started = time.perf_counter()
    try:
        for ds in client.iter_study(study.study_uid):
            if "PixelData" in ds:
                count += 1
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise RetrieveFailed(f"HTTP {status}") from None
    except ValueError as error:  # not a multipart/related answer, or a part pydicom rejects
        raise RetrieveFailed(f"{type(error).__name__}: {error}") from None
    finally:
        session.close()
    seconds = time.perf_counter() - started
    if count != study.instances:
        raise RetrieveFailed(f"{count} images of {study.instances}")
    line = (
        f"DICOMwebClient(url={server.dicomweb_root!r}).iter_study({study.study_uid!r})"
        "  # dicomweb-client, Accept-Encoding: identity"
    )
    return Sample(seconds, study.megabytes, count), line


def c_get_large_pdu(server: Server, study: Study) -> tuple[Sample, str]:
    """C-GET with getscu announcing its largest maximum PDU: fewer, bigger PDUs."""
    return c_get(server, study, GETSCU_MAX_PDU)


RETRIEVERS: dict[str, Retriever] = {
    C_GET: c_get,
    C_GET_LARGE_PDU: c_get_large_pdu,
    WADO_RS: wado_rs,
    WADO_RS_CLIENT: dicomweb_client,
}


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def kuva_server(workdir: Path, database_url: str, timeout: float) -> Iterator[Server]:
    """``kuva serve`` on the embedded default (no [[nodes]]: any calling AE accepted)."""
    workdir.mkdir(parents=True, exist_ok=True)
    kuva = KuvaServer(workdir=workdir, database_url=database_url)
    try:
        kuva.start(timeout=timeout)
    except (RuntimeError, TimeoutError):
        kuva.kill()
        raise
    try:
        assert kuva.process is not None
        yield Server(
            name="kuva",
            aet=kuva.ae_title,
            dicom_port=kuva.dicom_port,
            dicomweb_root=f"{kuva.http}/dicom-web",
            dicomweb_note="",
            pid=kuva.process.pid,
            command=shlex.join(
                [sys.executable, "-m", "kuva", "serve", "--config", str(kuva.config_path)]
            ),
            hl7_port=kuva.hl7_port,
        )
    finally:
        kuva.stop()


@contextlib.contextmanager
def orthanc_server(workdir: Path) -> Iterator[Server]:
    """Orthanc with getscu's AE as a known modality and its DICOMweb plugin if installed."""
    plugin = orthanc_dicomweb_plugin()
    with Orthanc(
        workdir,
        aet=ORTHANC_AET,
        modalities={"getscu": (GETSCU_AET, LOOPBACK, 104)},
        dicomweb=plugin is not None,
    ) as orthanc:
        yield Server(
            name=f"Orthanc {orthanc_version()}".strip(),
            aet=orthanc.aet,
            dicom_port=orthanc.dicom_port,
            dicomweb_root=orthanc.dicomweb_url if plugin is not None else None,
            dicomweb_note="" if plugin else "DICOMweb plugin not installed (orthanc-dicomweb)",
            pid=None,
            command=f"TCP_NODELAY=1 Orthanc {orthanc.config_path}",
        )


# --------------------------------------------------------------------------- measuring


def measure(
    servers: Sequence[Server], study: Study, runs: int, paths: Sequence[str]
) -> list[Measurement]:
    """Every path ``runs`` times against every server, the servers taking turns."""
    results = {(p, s.name): Measurement(p, s.name) for p in paths for s in servers}
    for path in paths:
        for run in range(runs):
            for server in servers:
                measurement = results[(path, server.name)]
                if measurement.errors and not measurement.samples:
                    continue  # failed once and never worked: do not repeat the failure
                print(f"{path} from {server.name}, run {run + 1} of {runs} ...", flush=True)
                rss = PeakRss(server.pid) if server.pid is not None else None
                try:
                    with rss or contextlib.nullcontext():
                        sample, command = RETRIEVERS[path](server, study)
                except (
                    RetrieveFailed,
                    httpx.HTTPError,
                    OSError,
                    subprocess.SubprocessError,
                ) as error:
                    measurement.errors.append(f"{type(error).__name__}: {error}".strip())
                    measurement.command = measurement.command or _command_of(path, server, study)
                    continue
                measurement.samples.append(sample)
                measurement.command = command
                if rss is not None:
                    measurement.rss_growth_mib.append(rss.growth_mib)
    return list(results.values())


def corrected_pass(kuva: Server, study: Study, runs: int) -> list[Measurement]:
    """Every path from kuva again after an ADT^A08 corrected the patient's name: each
    object then goes out with a rewritten header (the current name, the stored one
    in Original Attributes Sequence) and its pixel data streamed as stored."""
    assert kuva.hl7_port is not None
    control = f"BENCH-A08-{uuid.uuid4().hex[:12]}"
    segment = pid(PATIENT_ID, CORRECTED_NAME, "19780515", "F")
    client = MllpClient(kuva.hl7_port)
    try:
        ack, _ = client.send(adt("A08", control, segment, structure="ADT_A01"))
    finally:
        client.close()
    if problem := acknowledged(ack, control):
        raise RetrieveFailed(f"the ADT^A08 was not applied: {problem}")
    results = measure([kuva], study, runs, PATHS)
    for measurement in results:
        measurement.path = f"{measurement.path}, patient corrected"
    return results


def _command_of(path: str, server: Server, study: Study) -> str:
    """The command of a path that failed before producing its own."""
    with contextlib.suppress(RetrieveFailed):
        if path.startswith("C-GET"):
            max_pdu = GETSCU_MAX_PDU if path == C_GET_LARGE_PDU else None
            return f"TCP_NODELAY=1 {shlex.join(getscu_command(server, study, max_pdu))}"
        return curl_command(study_url(server, study))
    return "-"


# --------------------------------------------------------------------------- report


def _figure(m: Measurement | None) -> tuple[str, str, str]:
    """(best MB/s, median MB/s, instances/s best/median) of a measurement, or its failure."""
    if m is None:
        return "-", "-", "-"
    if not m.measured:
        return "FAILED", "-", "-"
    best = m.best()
    return (
        f"{best.throughput:.1f}",
        f"{m.median_throughput():.1f}",
        f"{best.rate:.0f} / {m.median_rate():.0f}",
    )


def print_report(
    results: list[Measurement], servers: Sequence[Server], study: Study, options: Options
) -> None:
    kuva_name = servers[0].name
    peer_name = servers[1].name if len(servers) > 1 else "Orthanc"
    by_key = {(m.path, m.server): m for m in results}
    print()
    print(
        f"retrieve: one study of {study.instances} CT instances, {study.megabytes:.1f} MB "
        f"(Part 10, Explicit VR LE), loopback; best and median of {options.runs} run(s)"
    )
    header = [
        "path",
        f"{kuva_name} MB/s",
        "median",
        "inst/s",
        f"{peer_name} MB/s",
        "median",
        "inst/s",
        "ratio (best)",
    ]
    rows: list[list[str]] = []
    for path in dict.fromkeys(m.path for m in results):
        kuva = by_key.get((path, kuva_name))
        peer = by_key.get((path, peer_name))
        k_best, k_median, k_rate = _figure(kuva)
        p_best, p_median, p_rate = _figure(peer)
        ratio = "-"
        if kuva is not None and peer is not None and kuva.measured and peer.measured:
            ratio = f"{kuva.best().throughput / peer.best().throughput:.2f}x"
        rows.append([path, k_best, k_median, k_rate, p_best, p_median, p_rate, ratio])
    print_rows(header, rows)
    failures = [m for m in results if m.errors]
    if failures:
        print("failures:")
        for m in failures:
            shown = sorted(set(m.errors))
            print(f"  [{m.path}, {m.server}] {len(m.errors)} failed run(s): {shown[0]}")
    growth = ", ".join(f"{m.path} {max(m.rss_growth_mib):.0f}" for m in results if m.rss_growth_mib)
    if growth:
        print(f"{kuva_name} peak RSS growth while serving, MiB (largest of the runs): {growth}")
    print("commands:")
    for server in servers:
        print(f"  [{server.name} server] {server.command}")
    for m in results:
        if m.command:
            print(f"  [{m.path}, {m.server}] {m.command}")


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Options:
    instances: int
    runs: int
    database_url: str
    keep: bool
    kuva_timeout: float


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500, help="CT instances (500)")
    parser.add_argument("--runs", type=int, default=3, help="retrieves per path and server (3)")
    parser.add_argument(
        "--database-url",
        default="",
        help="kuva's index database, empty before the run (default: SQLite in the temp folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--kuva-timeout", type=float, default=120.0, help="seconds to wait for kuva (120)"
    )
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1:
        parser.error("--instances and --runs must be at least 1")
    return Options(args.instances, args.runs, args.database_url, args.keep, args.kuva_timeout)


def run(options: Options, scratch: Path) -> int:
    study = generate_study(scratch, options.instances)
    with contextlib.ExitStack() as stack:
        try:
            kuva = stack.enter_context(
                kuva_server(scratch / "kuva", options.database_url, options.kuva_timeout)
            )
        except (RuntimeError, TimeoutError) as error:
            print(f"kuva could not be started: {str(error).splitlines()[0]}", file=sys.stderr)
            return 1
        servers = [kuva]
        try:
            store_commands = [store(study, kuva.dicom_port, kuva.aet, kuva.name)]
        except RetrieveFailed as error:
            print(f"kuva did not take the study: {error}", file=sys.stderr)
            return 1
        if orthanc_available():
            try:
                orthanc = stack.enter_context(orthanc_server(scratch / "orthanc"))
            except (PeerStartError, FileNotFoundError) as error:
                print(f"Orthanc not measured: {str(error).splitlines()[0]}")
            else:
                try:
                    store_commands.append(
                        store(study, orthanc.dicom_port, orthanc.aet, orthanc.name)
                    )
                    servers.append(orthanc)
                except RetrieveFailed as error:
                    print(f"Orthanc not measured: {error}")
        else:
            print("Orthanc is not installed: kuva's figures only")
        results = measure(servers, study, options.runs, PATHS)
        try:
            results += corrected_pass(kuva, study, options.runs)
        except (RetrieveFailed, OSError) as error:
            print(f"kuva's corrected pass not measured: {error}")
        print_report(results, servers, study, options)
        for command in store_commands:
            print(f"  [store] {command}")
    print_command_and_machine("clients and servers on loopback")
    return 0 if all(m.measured for m in results if m.path.startswith("C-GET")) else 1


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if not dcmtk_available() or dcmtk_tool("getscu") is None:
        print("dcmtk (storescu, getscu) is required; install dcmtk", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="kuva-bench-retrieve-"))
    try:
        return run(options, scratch)
    finally:
        if options.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
