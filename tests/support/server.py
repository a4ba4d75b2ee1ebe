"""Run ``kuva serve`` as a real process on loopback, configured the way an operator
does it. The process is forked from a warm interpreter (tests.support.forked)."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.forked import ForkedProcess, run_kuva

# Re-exported: the one picker of test ports (tests.support.peers.free_ports).
from tests.support.peers import free_port as free_port
from tests.support.xua import site_idp

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table (e.g. [[retention.policies]] in a list)
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    path: Path,
    sections: dict[str, dict[str, Any]],
    nodes: list[dict[str, Any]],
    organizations: list[dict[str, Any]],
    arrays: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    for org in organizations:
        lines.append("[[organizations]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in org.items())
        lines.append("")
    for node in nodes:
        lines.append("[[nodes]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in node.items())
        lines.append("")
    for name, tables in (arrays or {}).items():
        for table in tables:
            lines.append(f"[[{name}]]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


@dataclass
class KuvaServer:
    """A kuva process with its own data folder, ports and (optionally) PostgreSQL database."""

    workdir: Path
    database_url: str = ""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    organizations: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Arrays of tables, e.g. {"access.rules": [{...}, ...]} -> [[access.rules]].
    arrays: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ae_title: str = "KUVA"
    # Set [http] base_url to this server's own URL (for clients whose Host header
    # carries no port, such as dicomweb-client).
    public_url: bool = False
    # With [http] tls: the client context (a client certificate) the readiness check
    # and ``http`` (https://...) use.
    client_tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "kuva.toml"
        self.log_path = self.workdir / "kuva.log"
        self.process: ForkedProcess | None = None
        self._started = False  # ports are kept once a start succeeded
        self._configure()

    def _configure(self) -> None:
        """Pick free ports and write the config file."""
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.hl7_port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "archive": {"data_dir": str(self.data_dir), "database_url": self.database_url},
            # One process unless a test is about the worker processes: tests read the
            # main process's log and send commitment reports on the same association.
            "dicom": {
                "ae_title": self.ae_title,
                "host": "127.0.0.1",
                "port": self.dicom_port,
                "workers": 1,
            },
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "hl7": {"host": "127.0.0.1", "port": self.hl7_port},
            # A short lease: a task caught running by a SIGKILL is taken again within
            # seconds (the default, 300 s, suits production, not a 30 s test wait).
            "tasks": {
                "poll_seconds": 0.2,
                "backoff_base_seconds": 0.2,
                "backoff_max_seconds": 1.0,
                "lease_seconds": 10,
            },
            # Off unless a test is about it: a registration adds a manifest (an
            # instance) to the study and tasks to the outbox, which tests of other
            # things do not expect.
            "registration": {"enabled": False},
            # Off unless a test is about it: the continuous integrity check reads
            # every blob again, load that tests of other things do not need.
            "integrity": {"scrub_bytes_per_second": 0},
        }
        if self.public_url:
            sections["http"]["base_url"] = self.http
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        # Every test site trusts the tests' identity provider for XUA (tests.support.xua).
        arrays = {"xds.xua_issuers": [site_idp().settings()], **self.arrays}
        write_config(self.config_path, sections, self.nodes, self.organizations, arrays)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def http(self) -> str:
        scheme = "https" if self.client_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> KuvaServer:
        """Start and wait until every listener is ready. A port taken by another
        process between ``free_port`` and the bind (a race other test servers and
        peers share) makes a first start pick new ports and try again."""
        for attempt in range(3):
            try:
                self._start(timeout)
            except RuntimeError as exc:
                if self._started or "Address already in use" not in str(exc) or attempt == 2:
                    raise
                self.log_path.rename(self.log_path.with_suffix(f".failed{attempt}"))
                self._configure()
            else:
                self._started = True
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _start(self, timeout: float) -> KuvaServer:
        self.process = ForkedProcess(
            ["serve", "--config", str(self.config_path)], cwd=self.workdir, stdout=self.log_path
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kuva exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"{self.http}/healthz", timeout=1, context=self.client_tls
                ) as response:
                    if response.status == 200 and "ready: HL7" in self.log():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"kuva did not become ready:\n{self.log()}")

    def log(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if (self.log_path.exists())
            else ""
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def kuva(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run another kuva command (tasks, db ...) against this server's config."""
        return run_kuva(
            [*args, "--config", str(self.config_path)],
            cwd=self.workdir,
            env={**os.environ, "COLUMNS": "200"},
            check=check,
        )
