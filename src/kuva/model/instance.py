"""What the archive knows of one received instance, at every level of the study tree.

The adapters fill these from the wire (a DIMSE data set, a STOW-RS part); the
services validate and store them. Values are DICOM strings as received (dates as
``YYYYMMDD``), "" when absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kuva.model.rejection import RejectionNote


@dataclass(frozen=True)
class PatientAttributes:
    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class StudyAttributes:
    study_instance_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    description: str = ""
    referring_physician_name: str = ""


@dataclass(frozen=True)
class SeriesAttributes:
    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    body_part_examined: str = ""
    series_date: str = ""
    series_time: str = ""
    institution_name: str = ""
    station_name: str = ""


@dataclass(frozen=True)
class InstanceAttributes:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    patient: PatientAttributes
    study: StudyAttributes
    series: SeriesAttributes
    instance_number: int | None = None
    content_date: str = ""
    content_time: str = ""
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    # DICOM JSON (PS3.18 F.2) of the whole data set, bulk data as references.
    dataset_json: str = "{}"
    # Problems found while reading the data set (unparseable values ...).
    parse_problems: tuple[str, ...] = field(default=())
    # Set when the instance is an IOCM rejection note (model.rejection).
    rejection_note: RejectionNote | None = None
