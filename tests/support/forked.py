"""kuva's processes forked from an interpreter that has already imported kuva.

Importing kuva (FastAPI, SQLAlchemy, pydicom, Alembic ...) takes about 1.4 s of CPU,
most of what starting a test server or running a CLI command costs. The integration
tests start some 400 servers and run many commands; on two cores under four pytest
workers that was a third of the suite's CPU time. multiprocessing's forkserver
imports kuva once per pytest worker and forks every test server and command from
it. What runs in the child is kuva's own command line (``kuva.cli``) with the same
arguments, configuration, working folder and environment as a subprocess would get;
only the interpreter's start is shared. Tests about how the
``kuva`` executable itself starts (tests/integration/test_serve.py) still run it as a
plain subprocess.

``ForkedProcess`` offers the part of ``subprocess.Popen`` the tests use, ``run_kuva``
the part of ``subprocess.run`` (a CLI command such as ``kuva tasks list``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
# Imported once, in the fork server, before any child is forked.
_CONTEXT.set_forkserver_preload(["kuva.cli", "kuva.app", "tests.support.forked"])


def _run_kuva(argv: list[str], cwd: str, stdout: str, stderr: str, environ: dict[str, str]) -> None:
    """The child: kuva's command line, its output appended to the files named."""
    for target, path in ((1, stdout), (2, stderr)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = ["kuva", *argv]
    from kuva.cli import main

    main()


class ForkedProcess:
    """``kuva *argv`` in a child of the fork server."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        stdout: Path,
        stderr: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = ["kuva", *argv]
        self._process = _CONTEXT.Process(
            target=_run_kuva,
            args=(argv, str(cwd), str(stdout), str(stderr or stdout), env or dict(os.environ)),
            name="kuva",
        )
        self._process.start()
        pid = self._process.pid
        assert pid is not None
        self.pid: int = pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_kuva(
    argv: list[str], *, cwd: Path, env: dict[str, str], check: bool
) -> subprocess.CompletedProcess[str]:
    """``kuva *argv`` to its end, as ``subprocess.run(..., capture_output=True,
    text=True)`` would run it."""
    with tempfile.TemporaryDirectory(prefix="kuva-cli-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = ForkedProcess(argv, cwd=cwd, stdout=out, stderr=err, env=env)
        code = process.wait()
        result = subprocess.CompletedProcess(
            process.args,
            code,
            out.read_text(encoding="utf-8", errors="replace"),
            err.read_text(encoding="utf-8", errors="replace"),
        )
    if check:
        result.check_returncode()
    return result
