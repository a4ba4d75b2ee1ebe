"""C-FIND answer encoding benchmark: one match's identifier, byte path against Dataset.

Usage::

    .venv/bin/python bench/find_answers.py [--matches 32] [--repeat 7] [--number 2000]

A STUDY-level request with 12 keys (Study Root: StudyInstanceUID, PatientName,
PatientID, PatientBirthDate, StudyDate, StudyTime, AccessionNumber, StudyID,
StudyDescription, ReferringPhysicianName, NumberOfStudyRelatedInstances,
ModalitiesInStudy) and ``--matches`` index rows as the query service gives them
(``QueryResult``; synthetic values, Finnish names with ä, ö and å in half of
them). Each row is encoded, in Implicit and in Explicit VR Little Endian:

* **byte path**: ``kuva.codec.find_answers.FindAnswers.encode``, one encoder per
  request (as the C-FIND SCP makes one), bytes joined per match;
* **Dataset + pydicom**: the answer as the C-FIND SCP has built it on pynetdicom
  (a pydicom Dataset per match, ``find_answers.answer_dataset``) written by
  ``pydicom.filewriter.write_dataset``, which is what ``pynetdicom.dsutils.encode``
  does.

Requests ask in the default repertoire (ISO_IR 6) and in ISO_IR 100; the Finnish
names make half the answers of the first ISO_IR 192. Every byte path answer is
checked to equal the Dataset one before timing. Each figure is the median over
``--repeat`` runs of ``--number`` encodings (``timeit``), per match in µs, and
the time to encode all ``--matches`` answers of one request in ms. No network, no
database: the cost of turning index rows into identifier bytes, nothing else.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))  # bench.shared (and kuva when not installed)

from bench.shared import print_command_and_machine, print_rows  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from kuva.codec.find_answers import FindAnswers, answer_dataset, encode_dataset  # noqa: E402
from kuva.model.query import QueryLevel, QueryResult  # noqa: E402

AE_TITLE = "KUVA"
KEYS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "NumberOfStudyRelatedInstances",
    "ModalitiesInStudy",
)
NAMES = ("Virtanen^Matti", "Äikäs^Åke", "Korhonen^Aino", "Mäkelä^Jörö")


def request(character_set: str) -> Dataset:
    query = Dataset()
    query.SpecificCharacterSet = character_set
    query.QueryRetrieveLevel = "STUDY"
    for keyword in KEYS:
        setattr(query, keyword, "")
    return query


def matches(count: int) -> list[QueryResult]:
    """``count`` index rows of a study query, as the query service yields them."""
    return [
        QueryResult(
            {
                "StudyInstanceUID": f"1.2.246.562.10.{20240000 + i}.{i * 7919}",
                "PatientName": NAMES[i % len(NAMES)],
                "PatientID": f"0101{80 + i % 20:02d}-9{i % 100:02d}X",
                "PatientBirthDate": f"19{50 + i % 50:02d}0101",
                "StudyDate": f"2024{1 + i % 12:02d}{1 + i % 28:02d}",
                "StudyTime": f"{8 + i % 10:02d}3000",
                "AccessionNumber": f"A{100000 + i}",
                "StudyID": str(i),
                "StudyDescription": "TT-kuvaus vatsa" if i % 2 else "Keuhkot",
                "ReferringPhysicianName": "Lääkäri^Liisa",
                "NumberOfStudyRelatedInstances": 400 + i,
                "ModalitiesInStudy": "CT\\SR" if i % 3 else "CT",
            }
        )
        for i in range(count)
    ]


def median_seconds(
    encode: Callable[[QueryResult], bytes], results: list[QueryResult], repeat: int, number: int
) -> float:
    """The median over ``repeat`` runs of ``number`` encodings (cycling through
    ``results``) of one encoding, in seconds."""
    index = iter(range(10**12))

    def one() -> bytes:
        return encode(results[next(index) % len(results)])

    return statistics.median(timeit.repeat(one, repeat=repeat, number=number)) / number


def compare(
    query: Dataset, results: list[QueryResult], *, implicit: bool, repeat: int, number: int
) -> tuple[float, float] | None:
    """(byte path, Dataset + pydicom) seconds per match; None when their bytes differ."""
    elements = [e for e in query if e.keyword in KEYS]
    answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=implicit)

    def dataset_path(result: QueryResult) -> bytes:
        answer = answer_dataset(query, elements, QueryLevel.STUDY, result, AE_TITLE)
        return encode_dataset(answer, implicit_vr=implicit)

    if any(answers.encode(result) != dataset_path(result) for result in results):
        return None
    return (
        median_seconds(answers.encode, results, repeat, number),
        median_seconds(dataset_path, results, repeat, number),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--matches", type=int, default=32, help="matches per request (32)")
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs per figure (7)")
    parser.add_argument("--number", type=int, default=2000, help="encodings per run (2000)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    results = matches(options.matches)
    rows = []
    for character_set in ("ISO_IR 6", "ISO_IR 100"):
        for implicit in (True, False):
            syntax = "Implicit VR LE" if implicit else "Explicit VR LE"
            timed = compare(
                request(character_set),
                results,
                implicit=implicit,
                repeat=options.repeat,
                number=options.number,
            )
            if timed is None:
                print(f"DIFFERENT bytes: {character_set}, {syntax}", file=sys.stderr)
                return 1
            fast, slow = timed
            for path, seconds in (("byte path", fast), ("Dataset + pydicom", slow)):
                rows.append(
                    [
                        character_set,
                        syntax,
                        path,
                        f"{seconds * 1e6:.1f}",
                        f"{seconds * options.matches * 1e3:.2f}",
                        f"{slow / seconds:.1f}x",
                    ]
                )
    print_command_and_machine("no network, no database")
    print(
        f"STUDY level, {len(KEYS)} keys, {options.matches} matches per request; median of "
        f"{options.repeat} runs of {options.number} encodings; every answer checked equal"
    )
    print_rows(
        [
            "asked (0008,0005)",
            "transfer syntax",
            "encoding",
            "µs/match",
            f"ms/{options.matches} matches",
            "vs Dataset",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
