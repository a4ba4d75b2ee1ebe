"""S3 client benchmark: obstore (kuva.storage.s3's client) against boto3, the standard.

Usage::

    .venv/bin/python bench/s3_client.py [--requests N] [--rounds R]

Starts SeaweedFS (``weed server -s3``, an identity, so requests are signed and
checked) in a temporary folder and times, in alternating rounds, the requests the
archive makes per object:

* a create-only PUT of 0.5 MB (a CT slice) with its SHA-256 checksum
  (``If-None-Match: *``; boto3 sends the checksum kuva computed, obstore computes it);
* a GET of 0.5 MB;
* an 8 KB ranged GET (a frame or bulk data element).

For each: the median wall time per request and the CPU the client spent (this
process's user + system time), median of the rounds. Nothing is kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # makes tests.support importable

import boto3  # noqa: E402
import obstore  # noqa: E402
from bench.shared import print_rows  # noqa: E402
from botocore.config import Config  # noqa: E402
from tests.support.seaweedfs import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedS3  # noqa: E402


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call over ``n`` calls."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per round (40)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="kuva-s3-bench-") as scratch,
        SeaweedS3(Path(scratch)) as s3,
    ):
        store = s3.blob_store("bench")
        ob = store.client
        boto = boto3.client(
            "s3",
            endpoint_url=s3.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        data = os.urandom(512 * 1024)
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        obstore.put(ob, "object", data)

        def boto_put() -> None:
            boto.put_object(
                Bucket=BUCKET,
                Key=f"bench/put/{uuid.uuid4().hex}",
                Body=data,
                ChecksumSHA256=checksum,
                IfNoneMatch="*",
            )

        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "PUT 0.5 MB, create-only, SHA-256 checked",
                boto_put,
                lambda: obstore.put(ob, f"put/{uuid.uuid4().hex}", data, mode="create"),
            ),
            (
                "GET 0.5 MB",
                lambda: boto.get_object(Bucket=BUCKET, Key="bench/object")["Body"].read(),
                lambda: obstore.get(ob, "object").bytes(),
            ),
            (
                "GET 8 KB range",
                lambda: boto.get_object(Bucket=BUCKET, Key="bench/object", Range="bytes=1000-9191")[
                    "Body"
                ].read(),
                lambda: obstore.get_range(ob, "object", start=1000, end=9192),
            ),
        ]
        rows: list[list[str]] = []
        for name, with_boto, with_obstore in cases:
            runs: dict[str, list[tuple[float, float]]] = {"boto3": [], "obstore": []}
            for _ in range(args.rounds):
                runs["boto3"].append(timed(with_boto, args.requests))
                runs["obstore"].append(timed(with_obstore, args.requests))
            figures = {
                client: (
                    statistics.median(w for w, _ in values),
                    statistics.median(c for _, c in values),
                )
                for client, values in runs.items()
            }
            rows.append(
                [
                    name,
                    f"{figures['obstore'][0]:.2f} ms",
                    f"{figures['obstore'][1]:.2f} ms",
                    f"{figures['boto3'][0]:.2f} ms",
                    f"{figures['boto3'][1]:.2f} ms",
                ]
            )
        store.close()
    print(f"SeaweedFS S3 on loopback; median of {args.rounds} alternating rounds")
    print_rows(
        ["request", "obstore wall", "obstore CPU", "boto3 wall", "boto3 CPU"],
        rows,
    )
    print(
        f"command: .venv/bin/python bench/s3_client.py --requests {args.requests} "
        f"--rounds {args.rounds}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
