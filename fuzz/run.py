"""Longer fuzzing of the parsers at kuva's edge (issue 19), run by hand, not in CI.

    .venv/bin/python fuzz/run.py soap --seconds 60
    .venv/bin/python fuzz/run.py all --seconds 40          # every target, one after another
    .venv/bin/python fuzz/run.py soap --reproduce fuzz/crashes/soap/<name>.bin

Each target is a check of tests/support/fuzzing.py (the same ones the CI property tests
of tests/unit/test_edge_fuzz.py use): an input is fed to one parser the way kuva's
adapter feeds it, and anything but the parser's documented answers - another
exception, a malformed answer - is a crash. Engines: ``atheris`` (coverage-guided
libFuzzer, optional: see fuzz/README.md) or ``random`` (the mutations of
tests.support.fuzzing on its seeds, no coverage feedback; the default without atheris).

A crash does not stop the run: its input is saved under fuzz/crashes/<target>/ (with
the traceback beside it) and counted by its signature (exception type and where it
was raised). An input that takes longer than ``--timeout`` seconds is counted as a
timeout and saved too. At the end a table: inputs tried, crashes, timeouts.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

TARGETS = ["hl7", "mllp", "soap", "mtom", "multipart", "content-type", "stow", "part10",
           "notices", "syslog", "pdu"]  # fmt: skip


@dataclass
class Stats:
    target: str
    engine: str
    seconds: float
    timeout: float
    started: float = field(default_factory=time.monotonic)
    inputs: int = 0
    timeouts: int = 0
    slowest: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: collections.Counter[str] = field(default_factory=collections.Counter)
    saved: dict[str, str] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self, check: Callable[[bytes], str], data: bytes) -> None:
        self.inputs += 1
        started = time.perf_counter()
        try:
            outcome = check(data)
        except Exception as exc:  # a crash: counted, kept, the run goes on
            signature = _signature(exc)
            self.crashes[signature] += 1
            if signature not in self.saved:
                self.saved[signature] = str(self._save("crashes", data, traceback.format_exc()))
            outcome = "crash"
        took = time.perf_counter() - started
        self.slowest = max(self.slowest, took)
        if took > self.timeout:
            self.timeouts += 1
            self._save("timeouts", data, f"{took:.2f} s")
        self.outcomes[outcome] += 1

    def _save(self, kind: str, data: bytes, note: str) -> Path:
        folder = HERE / kind / self.target
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha1(data).hexdigest()[:16]}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(note)
        return path

    def result(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "engine": self.engine,
            "seconds": round(self.elapsed, 1),
            "inputs": self.inputs,
            "crashes": sum(self.crashes.values()),
            "timeouts": self.timeouts,
            "slowest": round(self.slowest, 3),
            "signatures": {s: [n, self.saved[s]] for s, n in self.crashes.items()},
            "outcomes": dict(self.outcomes.most_common(6)),
        }


def _signature(exc: BaseException) -> str:
    """The exception's type and the innermost frame of kuva (or the last frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/src/kuva/" in f.filename] or frames[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'target':<13} {'engine':<8} {'seconds':>7} {'inputs':>9} {'crashes':>8} "
          f"{'timeouts':>8} {'slowest s':>9}")  # fmt: skip
    for r in results:
        if "died" in r:
            print(f"{r['target']:<13} {r.get('engine', ''):<8} {'':>7} {'':>9} "
                  f"{'died: ' + r['died']}")  # fmt: skip
            continue
        print(f"{r['target']:<13} {r['engine']:<8} {r['seconds']:>7} {r['inputs']:>9} "
              f"{r['crashes']:>8} {r['timeouts']:>8} {r['slowest']:>9}")  # fmt: skip
    for r in results:
        for signature, (count, path) in r.get("signatures", {}).items():
            print(f"  {r['target']}: {count} x {signature}  (first input: {path})")
    for r in results:
        if "outcomes" in r:
            outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
            print(f"  {r['target']} outcomes: {outcomes}")


def finish(stats: Stats, close: Callable[[], None]) -> None:
    close()
    result = stats.result()
    print_table([result])
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(1 if result["crashes"] else 0)


def run_random(target_name: str, seconds: float, timeout: float, seed: int) -> None:
    from tests.support.fuzzing import make_target, mutate

    target = make_target(target_name)
    stats = Stats(target_name, "random", seconds, timeout)
    rng = random.Random(seed)
    while stats.elapsed < seconds:
        if rng.random() < 0.05:
            data = rng.randbytes(rng.randint(0, 512))
        else:
            data = mutate(rng, rng.choice(target.seeds), target.tokens, rng.randint(1, 8))
        stats.run(target.check, data)
    finish(stats, target.close)


def run_atheris(target_name: str, seconds: float, timeout: float, corpus: str | None) -> None:
    import atheris

    with atheris.instrument_imports(include=["kuva", "hl7"]):
        from tests.support.fuzzing import make_target

    target = make_target(target_name)
    stats = Stats(target_name, "atheris", seconds, timeout)
    folder = corpus or tempfile.mkdtemp(prefix=f"kuva-fuzz-{target_name}-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for seed in target.seeds:
        (Path(folder) / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    max_len = max(len(seed) for seed in target.seeds) + 4096

    def one_input(data: bytes) -> None:
        stats.run(target.check, data)
        if stats.elapsed >= seconds:
            finish(stats, target.close)

    argv = [
        sys.argv[0],
        folder,
        f"-max_len={max_len}",
        f"-timeout={max(10, int(timeout * 5))}",
        "-rss_limit_mb=2048",
        f"-max_total_time={int(seconds) + 60}",
        "-print_final_stats=0",
    ]
    stats.started = time.monotonic()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def reproduce(target_name: str, path: str) -> None:
    from tests.support.fuzzing import make_target

    target = make_target(target_name)
    try:
        print(target.check(Path(path).read_bytes()))
    finally:
        target.close()


def run_all(targets: list[str], args: argparse.Namespace) -> None:
    results = []
    for name in targets:
        command = [sys.executable, str(Path(__file__)), name, "--seconds", str(args.seconds),
                   "--timeout", str(args.timeout), "--engine", args.engine]  # fmt: skip
        print(f"--- {name}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            results.append(json.loads(lines[-1][len("RESULT ") :]))
        else:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            results.append({"target": name, "engine": args.engine, "died": " / ".join(tail)})
    print_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds an input may take")
    parser.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    parser.add_argument("--seed", type=int, default=19, help="of the random engine")
    parser.add_argument("--corpus", help="atheris: keep the corpus in this folder")
    parser.add_argument("--reproduce", metavar="FILE", help="run one input and show the error")
    args = parser.parse_args()
    if args.engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            args.engine = "random"
        else:
            args.engine = "atheris"
    if args.reproduce:
        reproduce(args.target, args.reproduce)
    elif args.target == "all":
        run_all(TARGETS, args)
    elif args.engine == "atheris":
        run_atheris(args.target, args.seconds, args.timeout, args.corpus)
    else:
        run_random(args.target, args.seconds, args.timeout, args.seed)


if __name__ == "__main__":
    main()
