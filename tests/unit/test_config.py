"""config.load_settings: defaults, a TOML file, environment overrides and checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from kuva.config import LOCAL_ORGANIZATION_OID, load_settings
from kuva.model.xds import Code

ORG_A = "1.2.246.10.1234567.10"
ORG_B = "1.2.246.10.7654321.10"

CONFIG = f"""
[archive]
data_dir = "archive-data"
database_url = "postgresql://kuva@db.example/kuva"

[dicom]
ae_title = "KUVA_TEST"
port = 4242
max_associations = 8

[http]
port = 8181

[hl7]
host = "0.0.0.0"
port = 2576

[tasks]
max_attempts = 3
backoff_base_seconds = 0.5

[[organizations]]
oid = "{ORG_A}"
name = "Hospital District A"

[[organizations]]
oid = "{ORG_B}"
name = "Hospital District B"

[[nodes]]
ae_title = "CT1"
host = "10.0.0.5"
port = 11113
organization = "{ORG_A}"
ian = true

[[nodes]]
ae_title = "MR1"
organization = "{ORG_B}"

[[nodes]]
ae_title = "WORKSTATION"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KUVA_* variable from the surroundings leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("KUVA_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    """Write ``text`` as the configuration file and return its path."""
    path = tmp_path / "kuva.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    """With no file and no environment every key has its documented default."""
    settings = load_settings()
    assert settings.archive.data_dir == Path("var/kuva")
    assert settings.archive.database_url == ""
    assert settings.dicom.ae_title == "KUVA"
    assert settings.dicom.port == 11112
    assert settings.dicom.host == "127.0.0.1"
    assert settings.http.port == 8080
    assert settings.http.host == "127.0.0.1"
    assert settings.hl7.port == 2575
    assert settings.hl7.host == "127.0.0.1"
    assert settings.nodes == []
    assert settings.organizations == []
    assert settings.open_access is True


def test_default_locations_follow_data_dir(tmp_path: Path) -> None:
    """The embedded default puts the SQLite index and the blobs under data_dir."""
    settings = load_settings(archive={"data_dir": tmp_path})
    assert settings.archive.resolved_database_url() == (
        f"sqlite:///{(tmp_path / 'index.sqlite').resolve()}"
    )
    assert settings.archive.resolved_blob_dir() == tmp_path / "blobs"


def test_file_values(tmp_path: Path) -> None:
    """Values from the TOML file replace defaults; keys not given keep them."""
    settings = load_settings(write_config(tmp_path, CONFIG))
    assert settings.archive.data_dir == Path("archive-data")
    assert settings.archive.resolved_database_url() == "postgresql://kuva@db.example/kuva"
    assert settings.dicom.ae_title == "KUVA_TEST"
    assert settings.dicom.port == 4242
    assert settings.dicom.max_associations == 8
    assert settings.dicom.host == "127.0.0.1"
    assert settings.http.port == 8181
    assert settings.hl7.host == "0.0.0.0"
    assert settings.hl7.port == 2576
    assert settings.tasks.max_attempts == 3
    assert settings.tasks.backoff_base_seconds == 0.5
    assert settings.tasks.backoff_max_seconds == 600.0


def test_path_given_as_string(tmp_path: Path) -> None:
    """The file may be named by a string as well as a Path."""
    settings = load_settings(str(write_config(tmp_path, "[dicom]\nport = 5000\n")))
    assert settings.dicom.port == 5000


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KUVA_<SECTION>__<KEY> wins over the file; other keys of the section stay."""
    monkeypatch.setenv("KUVA_DICOM__PORT", "5104")
    monkeypatch.setenv("KUVA_HTTP__HOST", "0.0.0.0")
    settings = load_settings(write_config(tmp_path, CONFIG))
    assert settings.dicom.port == 5104
    assert settings.dicom.ae_title == "KUVA_TEST"
    assert settings.dicom.max_associations == 8
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 8181


def test_environment_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment overrides also apply to the defaults."""
    monkeypatch.setenv("KUVA_DICOM__PORT", "5105")
    monkeypatch.setenv("KUVA_TASKS__WORKERS", "7")
    settings = load_settings()
    assert settings.dicom.port == 5105
    assert settings.tasks.workers == 7


def test_file_is_not_remembered(tmp_path: Path) -> None:
    """A later call without a path does not read the earlier call's file."""
    load_settings(write_config(tmp_path, CONFIG))
    assert load_settings().dicom.port == 11112


def test_nodes_and_organizations(tmp_path: Path) -> None:
    """[[nodes]] and [[organizations]] tables become lists, with node defaults."""
    settings = load_settings(write_config(tmp_path, CONFIG))
    assert [(o.oid, o.name) for o in settings.organizations] == [
        (ORG_A, "Hospital District A"),
        (ORG_B, "Hospital District B"),
    ]
    assert [n.ae_title for n in settings.nodes] == ["CT1", "MR1", "WORKSTATION"]
    ct = settings.node("CT1")
    assert ct is not None
    assert (ct.host, ct.port, ct.organization, ct.ian) == ("10.0.0.5", 11113, ORG_A, True)
    mr = settings.node("MR1")
    assert mr is not None
    assert (mr.host, mr.port, mr.organization, mr.ian) == ("127.0.0.1", 104, ORG_B, False)
    assert settings.node("UNKNOWN") is None
    assert settings.open_access is False


def test_organization_of(tmp_path: Path) -> None:
    """A node's organisation; the local one for a node without; None for strangers."""
    settings = load_settings(write_config(tmp_path, CONFIG))
    assert settings.organization_of("CT1") == ORG_A
    assert settings.organization_of("MR1") == ORG_B
    assert settings.organization_of("WORKSTATION") == LOCAL_ORGANIZATION_OID
    assert settings.organization_of("STRANGER") is None
    assert settings.organization_of("ct1") is None  # AE titles are case sensitive


def test_organization_of_in_open_access() -> None:
    """With no nodes configured any calling AE belongs to the local organisation."""
    settings = load_settings()
    assert settings.open_access is True
    assert settings.organization_of("ANYONE") == LOCAL_ORGANIZATION_OID


@pytest.mark.parametrize("title", ["", "A" * 17, "BACK\\SLASH"])
def test_invalid_ae_title(tmp_path: Path, title: str) -> None:
    """An AE title must be 1-16 characters without a backslash."""
    path = write_config(tmp_path, f"[dicom]\nae_title = {title!r}\n")
    with pytest.raises(ValidationError, match="AE title"):
        load_settings(path)


def test_sixteen_character_ae_title(tmp_path: Path) -> None:
    """Exactly 16 characters is allowed."""
    path = write_config(tmp_path, f"[dicom]\nae_title = {'A' * 16!r}\n")
    assert load_settings(path).dicom.ae_title == "A" * 16


def test_invalid_ae_title_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is validated like the file."""
    monkeypatch.setenv("KUVA_DICOM__AE_TITLE", "X" * 20)
    with pytest.raises(ValidationError):
        load_settings()


def test_unknown_organization(tmp_path: Path) -> None:
    """A node naming an organisation that is not configured is refused."""
    text = f"""
[[organizations]]
oid = "{ORG_A}"
name = "A"

[[nodes]]
ae_title = "CT1"
organization = "{ORG_B}"
"""
    with pytest.raises(ValueError, match="not configured"):
        load_settings(write_config(tmp_path, text))


def test_invalid_organization_oid(tmp_path: Path) -> None:
    """An organisation OID must be a well-formed OID."""
    text = '[[organizations]]\noid = "1.2.03"\nname = "A"\n'
    with pytest.raises(ValidationError, match="not a valid OID"):
        load_settings(write_config(tmp_path, text))


def test_duplicate_node_titles(tmp_path: Path) -> None:
    """Two nodes with the same AE title are refused."""
    text = '[[nodes]]\nae_title = "CT1"\n\n[[nodes]]\nae_title = "CT1"\nport = 105\n'
    with pytest.raises(ValueError, match="unique"):
        load_settings(write_config(tmp_path, text))


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    """A misspelt section is an error, not silently ignored."""
    with pytest.raises(ValidationError):
        load_settings(write_config(tmp_path, "[dicomm]\nport = 1\n"))


def test_missing_file(tmp_path: Path) -> None:
    """A named configuration file that does not exist is an error."""
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def test_node_defaults_for_what_it_leaves_out(tmp_path: Path) -> None:
    """[[nodes]] default_issuer and default_character_set: "" unless set."""
    text = (
        '[[nodes]]\nae_title = "PACS1"\ndefault_issuer = "1.2.246.21"\n'
        'default_character_set = "ISO_IR 100"\n\n[[nodes]]\nae_title = "CT1"\n'
    )
    settings = load_settings(write_config(tmp_path, text))
    pacs, ct = settings.nodes
    assert (pacs.default_issuer, pacs.default_character_set) == ("1.2.246.21", "ISO_IR 100")
    assert (ct.default_issuer, ct.default_character_set) == ("", "")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("default_issuer", "KANTA", "default_issuer 'KANTA' is not an OID"),
        ("default_issuer", "1.2.0246", "not an OID"),
        ("default_character_set", "UTF-8", "not a Defined Term of Specific Character Set"),
        ("default_character_set", "latin1", "not a Defined Term"),
    ],
)
def test_node_defaults_checked_at_load(tmp_path: Path, key: str, value: str, message: str) -> None:
    text = f'[[nodes]]\nae_title = "PACS1"\n{key} = "{value}"\n'
    with pytest.raises(ValidationError, match=message):
        load_settings(write_config(tmp_path, text))


def test_local_time_zone_and_manifest_codes(tmp_path: Path) -> None:
    """[archive] local_time_zone and the manifest's [registration] codes: defaults,
    values from the file, and what is refused at load."""
    settings = load_settings()
    assert settings.archive.local_time_zone == "Europe/Helsinki"
    assert str(settings.archive.zone()) == "Europe/Helsinki"
    registration = settings.registration
    assert registration.class_code.value() == Code(
        "18726-0", "2.16.840.1.113883.6.1", "Radiology studies (set)"
    )
    assert registration.type_code.value().code == "55113-5"
    assert registration.practice_setting_code.value().code == "394914008"
    assert registration.healthcare_facility_type_code.value().display_name == "Hospital"

    given = load_settings(
        write_config(
            tmp_path,
            '[archive]\nlocal_time_zone = "America/New_York"\n'
            '[registration.class_code]\ncode = "IMG"\nscheme = "1.2.246.537.6.12"\n'
            'display_name = "Kuvantaminen"\n',
        )
    )
    assert str(given.archive.zone()) == "America/New_York"
    assert given.registration.class_code.value() == Code("IMG", "1.2.246.537.6.12", "Kuvantaminen")
    assert given.registration.type_code.value().code == "55113-5"


@pytest.mark.parametrize(
    "text",
    [
        '[archive]\nlocal_time_zone = "Europe/Nowhere"\n',
        '[archive]\nlocal_time_zone = ""\n',
        '[registration.type_code]\ncode = ""\nscheme = "1.2.3"\ndisplay_name = "x"\n',
        '[registration.type_code]\ncode = "a^b"\nscheme = "1.2.3"\ndisplay_name = "x"\n',
        '[registration.type_code]\ncode = "a"\nscheme = "1.2.3"\n',
        '[registration.type_code]\ncode = "a"\nscheme = "1.2.3"\ndisplay_name = "x"\nx = 1\n',
    ],
)
def test_bad_zone_or_code_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(write_config(tmp_path, text))
