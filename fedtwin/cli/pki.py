"""``fedtwin pki``: the consortium's certificates and keys (CA, coordinator TLS, site enrolment).

Output names files, fingerprints and expiry dates only: no key material is ever printed.
``show`` exits 1 when a certificate has expired or a private key is readable by others, and
warns when a certificate has fewer than 30 days left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Consortium PKI: CA, coordinator TLS certificate, site enrolment bundles.",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)

PkiOption = Annotated[Path, typer.Option("--pki", help="the consortium's PKI folder")]


@app.command()
def init(
    consortium: Annotated[str, typer.Option(help="consortium name (letters, digits, . _ -)")],
    out: Annotated[Path, typer.Option(help="new PKI folder to create")] = Path("pki"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="DNS name or IP the sites use to reach the coordinator (repeat; "
            "default: localhost, 127.0.0.1, ::1)"
        ),
    ] = None,
    ca_days: Annotated[int, typer.Option(help="validity of the CA, days")] = 3650,
    tls_days: Annotated[int, typer.Option(help="validity of the TLS certificate, days")] = 365,
) -> None:
    """Create the consortium CA, the coordinator's TLS certificate and its audit key."""
    from fedtwin.pki import DEFAULT_HOSTS, PkiLayout, init_consortium

    hosts = tuple(host) if host else DEFAULT_HOSTS
    info = init_consortium(out, consortium, hosts, ca_days=ca_days, tls_days=tls_days)
    layout = PkiLayout(out)
    console.print(f"[bold]consortium[/] {info.consortium}: PKI created in {out}")
    console.print(f"CA certificate        {layout.ca_cert}  {info.ca_fingerprint}")
    console.print(f"coordinator TLS       {layout.tls_cert}  SANs {', '.join(info.hosts)}")
    console.print(f"coordinator audit key {layout.coordinator_verifier_key}")
    console.print(
        f"keep {layout.ca_key} offline; next: fedtwin pki enroll-site SITE_ID --pki {out}"
    )


@app.command("enroll-site")
def enroll_site(
    site_id: Annotated[str, typer.Argument(help="the site's id (lowercase, digits, dashes)")],
    pki: PkiOption = Path("pki"),
    supernode_public_key: Annotated[
        Path | None,
        typer.Option(help="the site's own supernode.pub (from `fedtwin site keygen`)"),
    ] = None,
    audit_verifier_key: Annotated[
        Path | None, typer.Option(help="the site's own site.vkey (from `fedtwin site keygen`)")
    ] = None,
) -> None:
    """Enrol a site: register its public keys and write its enrolment bundle."""
    from fedtwin.pki import PkiLayout
    from fedtwin.pki import enroll_site as enroll

    layout = PkiLayout(pki)
    enrolment = enroll(
        layout,
        site_id,
        supernode_public_key=supernode_public_key,
        audit_verifier_key=audit_verifier_key,
    )
    bundle = layout.bundle(site_id).root
    console.print(f"[bold]{site_id}[/] enrolled in {enrolment.consortium}")
    console.print(f"SuperNode key   {enrolment.supernode_key_fingerprint}")
    console.print(f"audit key       {enrolment.site_audit_key}")
    console.print(f"bundle          {bundle}")
    if enrolment.private_keys_in_bundle:
        console.print(
            "the bundle holds the site's private keys: hand it over on a secure channel, "
            "then delete it here"
        )
    console.print(
        "register it with a running coordinator: fedtwin coordinator register --config ..."
    )


@app.command()
def show(
    pki: PkiOption = Path("pki"),
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Fingerprints, SANs and expiry of every credential; warn < 30 days, fail when expired."""
    from fedtwin.errors import FederationError
    from fedtwin.pki import EXPIRY_WARNING_DAYS, Health, PkiLayout, inspect_pki

    inventory = inspect_pki(PkiLayout(pki))
    if json_output:
        typer.echo(inventory.model_dump_json(indent=2))
    else:
        console.print(
            f"[bold]consortium[/] {inventory.consortium}: "
            f"{len(inventory.enrolled_sites)} site(s) enrolled"
        )
        for credential in inventory.credentials:
            style = {"ok": "green", "expiring": "yellow"}.get(credential.health.value, "red")
            expires = (
                f"expires {credential.not_after.date().isoformat()} ({credential.days_left} d)"
                if credential.not_after
                else ""
            )
            console.print(
                f"{credential.role:<34} [{style}]{credential.health.value:<9}[/] {expires}"
            )
            detail = credential.fingerprint or str(credential.path)
            names = f"  SANs {', '.join(credential.names)}" if credential.not_after else ""
            console.print(f"  [dim]{detail}{names}[/]")
    for credential in inventory.credentials:
        if credential.health is Health.EXPIRING:
            console.print(
                f"[yellow]warning[/]: {credential.role} expires in {credential.days_left} days "
                f"(< {EXPIRY_WARNING_DAYS})",
                style=None,
            )
    for site in inventory.bundles_not_handed_over:
        console.print(f"[yellow]warning[/]: bundle of {site} still here: hand it over, delete it")
    failing = [
        c
        for c in inventory.credentials
        if c.health in (Health.EXPIRED, Health.EXPOSED, Health.MISSING, Health.NOT_YET_VALID)
    ]
    if failing:
        first = failing[0]
        raise FederationError(f"{first.path}: {first.role} is {first.health.value}")


@app.command("renew-tls")
def renew_tls(
    pki: PkiOption = Path("pki"),
    host: Annotated[
        list[str] | None, typer.Option(help="new SANs (repeat; default: the current ones)")
    ] = None,
    tls_days: Annotated[int, typer.Option(help="validity of the TLS certificate, days")] = 365,
) -> None:
    """Issue a new coordinator TLS certificate from the same CA (restart the coordinator)."""
    from fedtwin.pki import PkiLayout
    from fedtwin.pki import renew_tls as renew

    info = renew(PkiLayout(pki), tuple(host) if host else None, tls_days=tls_days)
    console.print(f"coordinator TLS renewed: {info.tls_fingerprint}, SANs {', '.join(info.hosts)}")
