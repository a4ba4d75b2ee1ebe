"""``kuva orgs`` and ``kuva nodes``: the directory of customer organisations and their
DICOM nodes, changed on a running archive (services.directory; in force on every
node within seconds, no restart). Every change is audited with the operator's name
(``--by``, default the login name)."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated, Any, TypeVar

import jinja2
import typer
from rich.markup import escape
from rich.table import Table

from kuva import cli
from kuva.model.directory import (
    NodeSettings,
    OrganizationLimits,
    OrganizationSettings,
    OrganizationState,
)
from kuva.services.directory import DirectoryError, DirectoryService
from kuva.services.onboarding import OnboardingService, UnknownOrganization

orgs_app = typer.Typer(
    no_args_is_help=True,
    help="Customer organisations: add, list, show, and their state (testing, active, "
    "suspended, terminated).",
)
nodes_app = typer.Typer(no_args_is_help=True, help="The organisations' DICOM nodes.")

EntryT = TypeVar("EntryT", OrganizationSettings, NodeSettings, OrganizationLimits)

ByOption = Annotated[
    str, typer.Option("--by", help="who makes the change (audited; default: login name)")
]
PlainOption = Annotated[bool, typer.Option("--plain", help="tab-separated, for scripts")]


def _operator(by: str) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@contextmanager
def _directory(
    config: cli.ConfigOption, report: list[OnboardingService] | None = None
) -> Iterator[DirectoryService]:
    """The directory of this configuration's index, the file's entries seeded (and
    in ``report``, when given, the acceptance reports' service)."""
    from kuva.app import build_audit

    settings = cli._settings(config)
    engine = cli._index(settings)
    try:
        onboarding = OnboardingService(engine, settings)
        if report is not None:
            report.append(onboarding)
        service = DirectoryService(
            engine, audit=build_audit(settings, engine), acceptance=onboarding.missing
        )
        service.seed(settings.organizations, settings.nodes)
        yield service
    except DirectoryError as exc:
        cli.console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _organization_row(org: OrganizationSettings) -> list[str]:
    return [
        org.oid,
        org.name,
        str(org.state),
        org.business_id,
        org.notice_date.isoformat() if org.notice_date else "",
        org.termination_date.isoformat() if org.termination_date else "",
    ]


def _entry(model: type[EntryT], **values: Any) -> EntryT:
    """The entry, or exit 2 saying which value is wrong."""
    try:
        return model(**values)
    except ValueError as exc:
        cli.console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


def _print_rows(
    title: str, columns: tuple[str, ...], rows: list[list[str]], *, plain: bool
) -> None:
    """A table, or with ``plain`` tab-separated lines."""
    if plain:
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title=f"{title}: {len(rows)}")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    cli.console.print(table)


# ---------------------------------------------------------------------- orgs


@orgs_app.command("add")
def orgs_add(
    oid: Annotated[str, typer.Argument(help="the organisation's OID")],
    name: Annotated[str, typer.Option("--name", help="its name")],
    testing: Annotated[
        bool, typer.Option("--testing", help="start in testing (the acceptance test)")
    ] = False,
    business_id: Annotated[str, typer.Option(help="business id (Y-tunnus)")] = "",
    contact: Annotated[
        list[str] | None, typer.Option("--contact", help="a contact (repeatable)")
    ] = None,
    config: cli.ConfigOption = None,
    by: ByOption = "",
) -> None:
    """Add an organisation: active, or with ``--testing`` in testing (test identity
    codes only, its data kept apart) until ``kuva orgs activate``."""
    org = _entry(
        OrganizationSettings,
        oid=oid,
        name=name,
        business_id=business_id,
        contacts=contact or [],
        state=OrganizationState.TESTING if testing else OrganizationState.ACTIVE,
    )
    with _directory(config) as directory:
        directory.add_organization(org, by=_operator(by))
    cli.console.print(f"organisation {oid} added ({org.state})")


@orgs_app.command("list")
def orgs_list(config: cli.ConfigOption = None, plain: PlainOption = False) -> None:
    """Every organisation: OID, name, state, business id, notice and termination dates.

    ``--plain``: those fields tab-separated."""
    with _directory(config) as directory:
        _, snapshot = directory.load()
    rows = [_organization_row(org) for org in snapshot.organizations]
    columns = ("OID", "name", "state", "business id", "notice", "terminated")
    _print_rows("organisations", columns, rows, plain=plain)


@orgs_app.command("show")
def orgs_show(
    oid: str,
    config: cli.ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="as JSON")] = False,
) -> None:
    """One organisation and its nodes."""
    with _directory(config) as directory:
        org = directory.organization(oid)
        nodes = directory.nodes_of(oid)
    shown = {
        **org.model_dump(mode="json"),
        "nodes": [node.model_dump(mode="json") for node in nodes],
    }
    if as_json:
        print(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    for key, value in shown.items():
        if key != "nodes":
            cli.console.print(f"{key}: {escape(str(value))}")
    for node in nodes:
        cli.console.print(f"node: {node.ae_title} {node.host}:{node.port}")


def _set_state(
    config: cli.ConfigOption,
    oid: str,
    state: OrganizationState,
    by: str,
    *,
    notice_date: date | None = None,
    force: bool = False,
) -> None:
    with _directory(config) as directory:
        after = directory.set_state(
            oid, state, by=_operator(by), notice_date=notice_date, force=force
        )
    cli.console.print(f"organisation {oid} is {after.state}")


@orgs_app.command("activate")
def orgs_activate(
    oid: str,
    force: Annotated[
        bool, typer.Option("--force", help="activate before the acceptance test passed")
    ] = False,
    config: cli.ConfigOption = None,
    by: ByOption = "",
) -> None:
    """Take the organisation into use (from testing or suspended). From testing it is
    refused while a required function of the acceptance test has not passed
    (``kuva onboarding report``) unless ``--force`` (audited)."""
    _set_state(config, oid, OrganizationState.ACTIVE, by, force=force)


@orgs_app.command("suspend")
def orgs_suspend(oid: str, config: cli.ConfigOption = None, by: ByOption = "") -> None:
    """Refuse its associations and requests at once; nothing is deleted."""
    _set_state(config, oid, OrganizationState.SUSPENDED, by)


@orgs_app.command("terminate")
def orgs_terminate(
    oid: str,
    notice_date: Annotated[
        str | None, typer.Option("--notice-date", help="YYYY-MM-DD: written notice given")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="terminate before the one-month notice ends")
    ] = False,
    config: cli.ConfigOption = None,
    by: ByOption = "",
) -> None:
    """End the organisation's use: no new material, no reads of its own; what it
    archived stays for its retention period. Needs the notice date; refused before
    one month has passed since it unless ``--force`` (audited)."""
    try:
        notice = date.fromisoformat(notice_date) if notice_date else None
    except ValueError:
        cli.console.print(f"[red]--notice-date {escape(notice_date or '')}: not YYYY-MM-DD[/red]")
        raise typer.Exit(2) from None
    _set_state(config, oid, OrganizationState.TERMINATED, by, notice_date=notice, force=force)


@orgs_app.command("limits")
def orgs_limits(
    oid: str,
    associations: Annotated[
        int | None, typer.Option("--associations", help="DICOM associations open at once")
    ] = None,
    requests_per_second: Annotated[
        float | None,
        typer.Option("--requests-per-second", help="HTTP, DIMSE and HL7 requests per second"),
    ] = None,
    request_bytes: Annotated[
        int | None, typer.Option("--request-bytes", help="bytes of one STOW-RS or ITI-41 body")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="no limits at all")] = False,
    config: cli.ConfigOption = None,
    by: ByOption = "",
) -> None:
    """Show or set what the organisation may use of each node at once (services.limits):
    the options given replace those limits, the others stay; ``--clear`` lifts all.
    In force on every node within a second (audited)."""
    with _directory(config) as directory:
        org = directory.organization(oid)
        given = {
            "associations": associations,
            "requests_per_second": requests_per_second,
            "request_bytes": request_bytes,
        }
        values = {} if clear else org.limits.model_dump()
        values |= {key: value for key, value in given.items() if value is not None}
        if clear or any(value is not None for value in given.values()):
            limits = _entry(OrganizationLimits, **values)
            org = directory.set_limits(oid, limits, by=_operator(by))
    shown = {key: value for key, value in org.limits.model_dump().items() if value is not None}
    cli.console.print(
        f"organisation {oid} limits: "
        + (", ".join(f"{key} {value}" for key, value in shown.items()) or "none")
    )


@orgs_app.command("purge-test")
def orgs_purge_test(oid: str, config: cli.ConfigOption = None, by: ByOption = "") -> None:
    """Destroy the test data of an organisation in testing: every study it holds,
    with a destruction record each (``kuva retention list-destroyed``). Refused for an
    organisation in any other state."""
    settings = cli._settings(config)
    with _directory(config) as directory:
        org = directory.organization(oid)
        if org.state is not OrganizationState.TESTING:
            raise DirectoryError(f"organisation {oid} is {org.state}: only test data is purged")
        engine, retention = cli._retention(settings)
        try:
            destroyed = retention.purge_test_data(oid, by=_operator(by))
        finally:
            engine.dispose()
    cli.console.print(
        f"{len(destroyed)} stud(y/ies) of {oid} destroyed: "
        + (", ".join(d.study_instance_uid for d in destroyed) or "none")
    )


# ---------------------------------------------------------------------- nodes


@nodes_app.command("add")
def nodes_add(
    ae_title: Annotated[str, typer.Argument(help="the node's AE title")],
    host: Annotated[str, typer.Option("--host")],
    port: Annotated[int, typer.Option("--port")],
    organization: Annotated[str, typer.Option("--organization", help="its organisation's OID")],
    ian: Annotated[bool, typer.Option("--ian", help="it takes IANs")] = False,
    tls: Annotated[bool, typer.Option("--tls", help="kuva's associations to it use TLS")] = False,
    as_received: Annotated[
        bool, typer.Option("--as-received", help="it retrieves objects as received")
    ] = False,
    default_issuer: Annotated[str, typer.Option(help="Issuer of Patient ID it omits")] = "",
    default_character_set: Annotated[
        str, typer.Option(help="Specific Character Set it omits")
    ] = "",
    config: cli.ConfigOption = None,
    by: ByOption = "",
) -> None:
    """Add a DICOM node of an organisation: it may associate at once."""
    node = _entry(
        NodeSettings,
        ae_title=ae_title,
        host=host,
        port=port,
        organization=organization,
        ian=ian,
        tls=tls,
        as_received=as_received,
        default_issuer=default_issuer,
        default_character_set=default_character_set,
    )
    with _directory(config) as directory:
        directory.add_node(node, by=_operator(by))
    cli.console.print(f"node {ae_title} added to {organization}")


@nodes_app.command("list")
def nodes_list(config: cli.ConfigOption = None, plain: PlainOption = False) -> None:
    """Every node: AE title, host, port, organisation, IAN, TLS.

    ``--plain``: those fields tab-separated."""
    with _directory(config) as directory:
        _, snapshot = directory.load()
    rows = [
        [
            n.ae_title,
            n.host,
            str(n.port),
            n.organization,
            "ian" if n.ian else "",
            "tls" if n.tls else "",
        ]
        for n in snapshot.nodes
    ]
    columns = ("AE title", "host", "port", "organisation", "IAN", "TLS")
    _print_rows("nodes", columns, rows, plain=plain)


@nodes_app.command("remove")
def nodes_remove(ae_title: str, config: cli.ConfigOption = None, by: ByOption = "") -> None:
    """Remove a node: its associations are refused from now on."""
    with _directory(config) as directory:
        directory.remove_node(ae_title, by=_operator(by))
    cli.console.print(f"node {ae_title} removed")


# ---------------------------------------------------------------------- onboarding

onboarding_app = typer.Typer(
    no_args_is_help=True, help="A customer's acceptance test, from what its systems did."
)

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Acceptance test: {{ r.name }}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.passed{color:#060}.failed{color:#a00}.not-run{color:#666}</style></head><body>
<h1>Acceptance test: {{ r.name }}</h1>
<p>{{ r.organization }}, {{ r.state }}; evidence since {{ r.since }}.
{% if r.missing %}Not passed yet: {{ r.missing | join(", ") }}.{% else %}Every required
function has passed.{% endif %}</p>
<table><tr><th>function</th><th>status</th><th>required</th><th>evidence</th>
<th>reason</th></tr>
{% for f in r.functions %}<tr><td>{{ f.id }}</td><td class="{{ f.status }}">{{ f.status }}</td>
<td>{{ "yes" if f.required else "no" }}</td><td>{% for e in f.evidence %}{{ e.source }}
{{ e.id }} at {{ e.time }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td>
<td>{{ f.reason }}</td></tr>
{% endfor %}</table></body></html>
"""


@onboarding_app.command("report")
def onboarding_report(
    oid: str,
    output: Annotated[str, typer.Option("--format", help="text, json or html")] = "text",
    config: cli.ConfigOption = None,
) -> None:
    """For every function of the acceptance test: passed, failed or not-run, with the
    evidence (audit record ids, commitments, tasks, rejection notes, notices, and
    their UTC times) and why one failed. Exits 1 while a required one has not
    passed."""
    if output not in ("text", "json", "html"):
        cli.console.print("[red]--format is text, json or html[/red]")
        raise typer.Exit(2)
    services: list[OnboardingService] = []
    with _directory(config, services):
        try:
            report = services[0].report(oid)
        except UnknownOrganization as exc:
            raise DirectoryError(str(exc)) from None
    shown = report.to_json()
    if output == "json":
        print(json.dumps(shown, ensure_ascii=False, indent=2))
    elif output == "html":
        print(jinja2.Environment(autoescape=True).from_string(_HTML).render(r=shown))
    else:
        rows = [
            [
                f.id,
                f.status,
                "yes" if f.required else "no",
                ", ".join(f"{e.source} {e.id} {e.at:%Y-%m-%dT%H:%M:%SZ}" for e in f.shown()),
                f.reason,
            ]
            for f in report.functions
        ]
        columns = ("function", "status", "required", "evidence", "reason")
        _print_rows(f"acceptance test of {oid} ({report.state})", columns, rows, plain=False)
    if report.missing:
        raise typer.Exit(1)
