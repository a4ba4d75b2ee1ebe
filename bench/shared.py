"""Helpers every benchmark shares: the database it runs on, what it records of a run,
latencies, aligned tables, the command line.

Imported by the scripts in this folder as ``bench.shared`` (each puts the
repository root on ``sys.path`` first). Nothing here imports kuva or
``tests.support`` when the module is loaded: ``ingest.py`` measures its peers
without kuva installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import secrets
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASES = ("sqlite", "postgresql")
# The command line a run's ``kuva serve`` (tests.support.server.KuvaServer) stands for.
SERVER_COMMAND = shlex.join(["python", "-m", "kuva", "serve", "--config", "<tmp>/kuva.toml"])
# The query benchmarks' (query.py, xds.py) target for each query kind and interface.
TARGET_P95_MS = 20.0

# --------------------------------------------------------------------------- the database


class DatabaseUnavailable(Exception):
    """The database a run needs cannot be had; the message says why."""


def database_size_mb(engine: Engine, sqlite_file: Path | None) -> float:
    if sqlite_file is not None:
        files = [sqlite_file, Path(f"{sqlite_file}-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6
    with engine.connect() as conn:
        database = conn.execute(select(func.current_database())).scalar_one()
        return int(conn.execute(select(func.pg_database_size(database))).scalar_one()) / 1e6


def database_version(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect() as conn:
        return " ".join(str(conn.execute(select(func.version())).scalar_one()).split()[:2])


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database for the run (dropped afterwards); yields its URL."""
    name = f"kuva_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_database(database: str, admin_url: str) -> Iterator[str]:
    """The run's database URL: "" for ``sqlite`` (kuva's default, a file in its data
    folder); for ``postgresql`` a fresh database (:func:`postgres_database`), or
    DatabaseUnavailable when it cannot be made."""
    if database != "postgresql":
        yield ""
        return
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_database(admin_url))
        except Exception as error:
            raise DatabaseUnavailable(
                f"PostgreSQL not available: {type(error).__name__}: {error}"
            ) from error
        yield url


def table_counts(engine: Engine, tables: Iterable[Table]) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in tables
        }


def query_plan(
    conn: Connection, statement: str, parameters: Any, *, postgres_indent: str = ""
) -> list[str]:
    """The plan of ``statement``: SQLite ``EXPLAIN QUERY PLAN`` as a tree (two spaces
    a level), PostgreSQL ``EXPLAIN (ANALYZE, BUFFERS)`` (it runs the statement), each
    line after ``postgres_indent``."""
    lines: list[str] = []
    if conn.dialect.name == "sqlite":
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        depth: dict[int, int] = {0: 0}
        for node, parent, _, detail in plan:
            depth[node] = depth.get(parent, 0) + 1
            lines.append("  " * depth[node] + str(detail))
    else:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).all()
        lines.extend(postgres_indent + str(line) for (line,) in plan)
    return lines


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass
class BaseRun:
    """What every benchmark records of its run on one database."""

    database: str
    version: str = ""
    server_command: str = ""
    server_problems: list[str] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def title(self) -> str:
        return self.database + (f" ({self.version})" if self.version else "")


@dataclasses.dataclass
class PrefilledRun(BaseRun):
    """A run on a prefilled database: how long the prefill and ANALYZE took, its rows
    and size."""

    prefill_s: float = 0.0
    analyze_s: float = 0.0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    size_mb: float = 0.0

    @property
    def counts_text(self) -> str:
        return ", ".join(f"{name} {count}" for name, count in self.counts.items())


def analyze_prefilled(
    run: PrefilledRun, engine: Engine, tables: Iterable[Table], sqlite_file: Path | None
) -> None:
    """``kuva.index.bulk.analyze`` the prefilled database, timed into ``run``, then its
    tables' row counts, its size and its version."""
    from kuva.index.bulk import analyze  # not at the top: see the module's docstring

    started = time.perf_counter()
    analyze(engine)
    run.analyze_s = time.perf_counter() - started
    run.counts = table_counts(engine, tables)
    run.size_mb = database_size_mb(engine, sqlite_file)
    run.version = database_version(engine)


RunT = TypeVar("RunT", bound=BaseRun)


def failure_note(error: Exception) -> str:
    """The note of a run that raised ``error``."""
    if isinstance(error, DatabaseUnavailable):
        return str(error)
    return f"failed: {type(error).__name__}: {error}"


def run_each(
    databases: Iterable[str], run: Callable[[str], RunT], failed: type[RunT]
) -> list[RunT]:
    """``run(database)`` for each database in turn; one that raises is recorded as
    ``failed(database, note=...)`` and leaves the others' figures."""
    runs = []
    for database in databases:
        try:
            runs.append(run(database))
        except Exception as error:  # one database failing leaves the other's table
            runs.append(failed(database, note=failure_note(error)))
    return runs


def server_problems(log: str, *, expected: Sequence[str] = ()) -> list[str]:
    """The WARNING and ERROR lines of a server's log, but those with an ``expected`` text."""
    return [
        line
        for line in log.splitlines()
        if (" WARNING " in line or " ERROR " in line) and not any(e in line for e in expected)
    ]


def print_server_problems(problems: Sequence[str]) -> None:
    if problems:
        print(f"server log, {len(problems)} warning/error line(s), the first ones:")
        for line in problems[:5]:
            print(f"    {line}")


def print_run_notes(run: BaseRun) -> None:
    """The lines under a run's table: its note, its server and what the server logged."""
    if run.note:
        print(f"note: {run.note}")
    if run.server_command:
        print(f"server: {run.server_command}")
    print_server_problems(run.server_problems)


# --------------------------------------------------------------------------- latencies


def percentile(values: Sequence[float], p: int) -> float:
    """The ``p``-th percentile (inclusive method); nan of no values."""
    if not values:
        return float("nan")
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


@dataclasses.dataclass
class LatencyRow:
    """One query kind on one interface: the latencies, the matches of each answer and
    the wrong answers; ``targeted``: held to TARGET_P95_MS."""

    kind: str
    interface: str
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    matches: list[int] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    targeted: bool = True

    def percentile(self, p: int) -> float:
        return percentile(self.latencies_ms, p)

    @property
    def slow(self) -> bool:
        return self.targeted and bool(self.latencies_ms) and self.percentile(95) > TARGET_P95_MS


@dataclasses.dataclass
class LatencyRun(PrefilledRun):
    """A query benchmark's run on one database: its rows and the plans it printed."""

    rows: list[LatencyRow] = dataclasses.field(default_factory=list)
    plans: dict[str, list[str]] = dataclasses.field(default_factory=dict)


QueryT = TypeVar("QueryT")
AnswerT = TypeVar("AnswerT")


def time_queries(
    kind: str,
    interface: str,
    queries: Sequence[QueryT],
    warmup: Sequence[QueryT],
    run: Callable[[QueryT], AnswerT],
    check: Callable[[QueryT, AnswerT], tuple[int, str] | None],
) -> LatencyRow:
    """Time ``run`` on each of ``queries`` after the ``warmup`` ones (not timed).
    ``check(query, answer)``: the answer's matches and what is wrong with it ("" when
    right), or None when there is nothing to check. An error ends the row with a note."""
    row = LatencyRow(kind, interface)
    try:
        for query in warmup:
            run(query)
        for query in queries:
            started = time.perf_counter()
            answer = run(query)
            row.latencies_ms.append((time.perf_counter() - started) * 1000)
            checked = check(query, answer)
            if checked is None:
                continue
            matches, wrong = checked
            row.matches.append(matches)
            if wrong:
                row.wrong.append(wrong)
    except Exception as error:  # a broken interface is a row note, not a crash
        row.note = f"{type(error).__name__}: {error}"
    return row


def print_latency_rows(
    run: LatencyRun, per_query: str, figures: Callable[[LatencyRow], list[str]]
) -> None:
    """The run's table, a line per row: n and p50/p95/p99, then ``figures(row)`` under
    the columns ``per_query``, "answers" and the target (a row without latencies: its
    note). Under it the wrong answers, the run's notes and server, and the plans."""
    header = [
        "query kind",
        "interface",
        "n",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        per_query,
        "answers",
        f"p95 < {TARGET_P95_MS:.0f} ms",
    ]
    lines: list[list[str]] = []
    for row in run.rows:
        if not row.latencies_ms:
            lines.append([row.kind, row.interface, row.note or "no measurement"])
            continue
        lines.append(
            [
                row.kind,
                row.interface,
                str(len(row.latencies_ms)),
                f"{row.percentile(50):.2f}",
                f"{row.percentile(95):.2f}",
                f"{row.percentile(99):.2f}",
                *figures(row),
            ]
        )
    print_rows(header, lines)
    for row in run.rows:
        for wrong in row.wrong[:3]:
            print(f"  wrong answer ({row.kind}, {row.interface}): {wrong}")
    print_run_notes(run)
    for kind, plan in run.plans.items():
        slow = any(row.slow for row in run.rows if row.kind == kind)
        print(f"plan for {kind}{' (p95 over target)' if slow else ''}:")
        for line in plan:
            print(f"    {line}")


# --------------------------------------------------------------------------- tables


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """Aligned columns; a row shorter than the header runs its last cell on."""
    widths = [len(title) for title in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        else:
            widths = [max(w, len(c)) for w, c in zip(widths, row[:-1], strict=False)] + widths[
                len(row) - 1 :
            ]
    print("  ".join(title.ljust(w) for title, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


# --------------------------------------------------------------------------- peers


def orthanc_version() -> str:
    """What ``Orthanc --version`` says its version is; "" when it says nothing usable."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        output = subprocess.run(
            ["Orthanc", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        if output[:1] == ["Orthanc"] and len(output) > 1:
            return output[1]
    return ""


# --------------------------------------------------------------------------- command line


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """``--database sqlite|postgresql|both``; :func:`chosen_databases` reads it."""
    parser.add_argument("--database", choices=(*DATABASES, "both"), default="both", help="(both)")


def add_connection_arguments(parser: argparse.ArgumentParser, *, kuva_server: bool) -> None:
    """``--pg-admin-url``; with ``kuva_server`` also ``--server-timeout`` (kuva's start)."""
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help=f"({PG_ADMIN_URL})")
    if kuva_server:
        parser.add_argument(
            "--server-timeout", type=float, default=120.0, help="kuva start (120 s)"
        )


def chosen_databases(choice: str) -> tuple[str, ...]:
    return DATABASES if choice == "both" else (choice,)


def command_line() -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(python)
        if not relative.startswith(".."):
            python = relative
    return shlex.join([python, *sys.argv])


def print_command_and_machine(where: str) -> None:
    """The command line that reproduces the run, and the machine it ran on; ``where``:
    where its clients and servers ran."""
    print(f"command: {command_line()}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {where}"
    )


# --------------------------------------------------------------------------- HL7 over MLLP

VT, FS_CR = b"\x0b", b"\x1c\x0d"
# PID-3 of a Finnish test identity code (issuer 1.2.246.21, tests.support.synthetic).
PID3 = "{}^^^&1.2.246.21&ISO"


def adt(event: str, control: str, *segments: str, structure: str = "") -> bytes:
    kind = f"ADT^{event}^{structure}" if structure else f"ADT^{event}"
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    header = (
        f"MSH|^~\\&|RIS|TESTSAIRAALA|KUVA|KANTA|{now}||{kind}|{control}|P|2.5|||||FIN|UNICODE UTF-8"
    )
    return ("\r".join([header, f"EVN|{event}|{now}", *segments]) + "\r").encode("utf-8")


def pid(patient_id: str, name: str, birth: str, sex: str) -> str:
    return f"PID|||{PID3.format(patient_id)}||{name}||{birth}|{sex}"


class MllpClient:
    """One MLLP connection; each message waits for its ACK."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, message: bytes) -> tuple[str, float]:
        """The ACK and the milliseconds from sending the frame to receiving it whole."""
        started = time.perf_counter()
        self.sock.sendall(VT + message + FS_CR)
        while FS_CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the HL7 listener closed the connection")
            self.buffer += chunk
        elapsed = (time.perf_counter() - started) * 1000
        reply, _, self.buffer = self.buffer.partition(FS_CR)
        return reply.lstrip(VT).decode("utf-8", "replace"), elapsed

    def close(self) -> None:
        self.sock.close()


def msa(ack: str) -> tuple[str, str]:
    for line in ack.replace("\n", "\r").split("\r"):
        if line.startswith("MSA|"):
            fields = line.split("|")
            return fields[1], fields[2] if len(fields) > 2 else ""
    return "", ""


def acknowledged(ack: str, control: str) -> str:
    """ "" when MSA-1 is AA for ``control``; otherwise what is wrong."""
    code, echoed = msa(ack)
    if code == "AA" and echoed == control:
        return ""
    err = [line for line in ack.replace("\n", "\r").split("\r") if line.startswith("ERR|")]
    return f"MSA {code or '(none)'} for {echoed or '(none)'}" + (f": {err[0]}" if err else "")
