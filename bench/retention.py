"""Retention benchmark: what keeping each study's expiry costs the ingest transaction,
and how long recomputing every study's expiry takes.

Usage::

    .venv/bin/python bench/retention.py [--instances N] [--database sqlite|postgresql|both]

For each database (SQLite in a temporary folder; PostgreSQL at 127.0.0.1:5432 in a
fresh ``kuva_bench_<random>`` database, dropped at the end), N (3,000) synthetic
instances (``kuva.bench_support.synthetic_instance``: 100 instances a series, 4
series a study) are indexed one transaction each, the way ingest does
(``InstanceRepository.add``), with the retention hook
(``RetentionService.instance_added``) timed on its own: without policies, and with
two (images: 12 years after death, else 10 after the study; patient records: 12
after death, else 120 after birth), and with a third by SOP class (CT Image
Storage: 15 years after the study). Then ``recompute_all`` over every study.
Prints the hook's mean per instance, its median on a series' first instance (the
only instances that pay a statement) and the recompute's studies per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.shared import (  # noqa: E402
    DatabaseUnavailable,
    add_connection_arguments,
    add_database_argument,
    chosen_databases,
    print_command_and_machine,
    print_rows,
    scratch_database,
)

from kuva.bench_support import synthetic_instance  # noqa: E402
from kuva.config import load_settings  # noqa: E402
from kuva.index.database import make_engine, migrate  # noqa: E402
from kuva.index.uow import UnitOfWork  # noqa: E402
from kuva.services.retention import RetentionService  # noqa: E402
from kuva.storage.filesystem import FileBlobStore  # noqa: E402

# A policy by SOP class (CT Image Storage, the class of every synthetic instance).
BY_CLASS = {
    "name": "ct",
    "periods": [{"after": "study_date", "years": 15}],
    "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"],
}
POLICIES = [
    {
        "name": "images",
        "periods": [{"after": "death", "years": 12}, {"after": "study_date", "years": 10}],
    },
    {
        "name": "records",
        "periods": [{"after": "death", "years": 12}, {"after": "birth", "years": 120}],
    },
]


def measure(url: str, folder: Path, instances: int, policies: list[dict[str, object]]) -> list[str]:
    engine = make_engine(url)
    migrate(engine)
    settings = load_settings(None, retention={"policies": policies})
    service = RetentionService(engine, FileBlobStore(folder / "blobs"), settings)
    base = datetime(2020, 1, 1, tzinfo=UTC)
    every: list[float] = []
    starts: list[float] = []
    try:
        for n in range(instances):
            new = synthetic_instance(n, base)
            with UnitOfWork(engine) as uow:
                uow.instances.add(new)
                added = uow.instances.last_added
                assert added is not None
                began = time.perf_counter()
                service.instance_added(uow, new, added)
                spent = time.perf_counter() - began
                uow.commit()
            every.append(spent)
            if added.new_series:
                starts.append(spent)
        began = time.perf_counter()
        studies = service.recompute_all()
        recompute = time.perf_counter() - began
    finally:
        engine.dispose()
    return [
        f"{len(policies)}",
        f"{statistics.mean(every) * 1e6:.1f}",
        f"{statistics.median(starts) * 1e3:.2f}",
        f"{studies / recompute:,.0f}" if policies else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3000, help="(3000)")
    add_database_argument(parser)
    add_connection_arguments(parser, kuva_server=False)
    args = parser.parse_args()
    print_command_and_machine("in one process")
    rows: list[list[str]] = []
    for database in chosen_databases(args.database):
        for policies in ([], POLICIES, [*POLICIES, BY_CLASS]):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    with scratch_database(database, args.pg_admin_url) as url:
                        url = url or f"sqlite:///{Path(tmp) / 'index.sqlite'}"
                        rows.append([database, *measure(url, Path(tmp), args.instances, policies)])
                except DatabaseUnavailable as error:
                    rows.append([database, str(error)])
    print_rows(
        ["database", "policies", "hook us/instance", "ms on a series' 1st", "recompute studies/s"],
        rows,
    )


if __name__ == "__main__":
    main()
