"""``fedtwin consent``: evaluate a site's FHIR consents and check its policy documents.

These commands run at the site, for the site's own staff: ``evaluate`` prints *local* patient
ids (its output must not leave the site; what leaves is the audit log, with counts and keyed
pseudonyms only). Exit codes: 0 done, 2 bad input (one line ``fedtwin: error: ...`` naming the
file and line or the flag). Only typer and rich are imported at module level.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fedtwin.consent import ConsentSnapshot
    from fedtwin.fhir import ParsedResource

app = typer.Typer(
    help=(
        "Consent at a site: which patients' consents permit a purpose, and why. "
        "Prints local patient ids: for the site's own staff, never to leave the site."
    ),
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def _instant(text: str | None, flag: str) -> datetime | None:
    from fedtwin.consent.timing import TimeValueError, parse_instant
    from fedtwin.errors import ConfigError

    if text is None:
        return None
    try:
        return parse_instant(text)
    except TimeValueError as error:
        raise ConfigError(f"{flag}: {error}") from error


def _patient_ids(folder: Path, fhir_version: str) -> list[str] | None:
    """Ids in ``Patient.ndjson`` (``None`` when the folder has no Patient file)."""
    from fedtwin.errors import IngestError
    from fedtwin.fhir import iter_resources
    from fedtwin.fhir.ndjson import find_resource_file

    path = find_resource_file(folder, "Patient")
    if path is None:
        return None
    ids = []
    for parsed in iter_resources(path, "Patient", fhir_version=fhir_version):  # type: ignore[arg-type]
        if not parsed.resource.id:
            raise IngestError(f"{parsed.file}:{parsed.line}: Patient has no id")
        ids.append(parsed.resource.id)
    return ids


def _read(folder: Path, fhir_version: str) -> tuple[list[str], dict[str, list[ParsedResource]]]:
    """Every patient (Patient.ndjson plus those named by consents) and their consents."""
    from fedtwin.errors import ConfigError
    from fedtwin.fhir import read_consents
    from fedtwin.fhir.ndjson import find_resource_file

    if not folder.is_dir():
        raise ConfigError(f"--consents: {folder}: not a folder")
    if fhir_version not in ("auto", "R4B", "R5"):
        raise ConfigError(f"--fhir-version: {fhir_version!r} is not auto, R4B or R5")
    known = _patient_ids(folder, fhir_version)
    if known is None and find_resource_file(folder, "Consent") is None:
        raise ConfigError(f"--consents: {folder}: no Consent.ndjson or Patient.ndjson")
    consents = read_consents(
        folder,
        fhir_version=fhir_version,  # type: ignore[arg-type]
        patient_ids=None if known is None else set(known),
    )
    patients = sorted(set(known or ()) | set(consents))
    return patients, consents


def _summary(snapshot: ConsentSnapshot) -> str:
    denied = snapshot.denied_by_reason()
    reasons = ", ".join(f"{reason} {count}" for reason, count in denied.items())
    permitted = len(snapshot.permitted)
    return (
        f"{snapshot.total} patients at {snapshot.at.isoformat()} ({snapshot.regime.value}, "
        f"{snapshot.request.purpose}): {permitted} permit, {snapshot.total - permitted} deny"
        + (f" ({reasons})" if reasons else "")
    )


def _print_table(snapshot: ConsentSnapshot) -> None:
    table = Table(title="consent decisions (local ids: do not share)", title_justify="left")
    for name in ("patient", "decision", "reasons", "consent", "provision"):
        table.add_column(name, overflow="fold")
    for patient, decision in snapshot.decisions.items():
        style = "green" if decision.permitted else "red"
        table.add_row(
            patient,
            f"[{style}]{decision.decision.value}[/{style}]",
            ", ".join(reason.value for reason in decision.reasons),
            ", ".join(decision.consent_ids) or "—",
            decision.provision_path or "—",
        )
    console.print(table)
    console.print(_summary(snapshot), markup=False)


@app.command()
def evaluate(
    consents: Annotated[
        Path,
        typer.Option(
            help="Bulk FHIR export folder with Consent.ndjson; patients are those in "
            "Patient.ndjson (if present) plus those the consents name"
        ),
    ],
    purpose: Annotated[str, typer.Option(help="v3-ActReason purpose of use, e.g. HRESCH")],
    actor: Annotated[
        list[str] | None,
        typer.Option(help="recipient reference, e.g. Organization/fedtwin-consortium (repeat)"),
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="decision time, ISO 8601 with offset (default: now)")
    ] = None,
    regime: Annotated[str, typer.Option(help="opt-in or opt-out")] = "opt-in",
    data_class: Annotated[
        list[str] | None,
        typer.Option(
            help="resource type the use reads (repeat; default: the types fedtwin trains on)"
        ),
    ] = None,
    data_from: Annotated[
        str | None, typer.Option(help="start of the data used (default: unbounded)")
    ] = None,
    data_to: Annotated[
        str | None, typer.Option(help="end of the data used (default: the decision time)")
    ] = None,
    fhir_version: Annotated[
        str, typer.Option(help="auto (R5 where a resource carries R5-only elements), R4B or R5")
    ] = "auto",
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help='one {"patient", "decision", "reasons"} object per line; summary on stderr',
        ),
    ] = False,
) -> None:
    """Decide, per patient, whether the consents permit a purpose at a time, and why."""
    from pydantic import ValidationError

    from fedtwin.consent import (
        TRAINING_RESOURCE_TYPES,
        ConsentRequest,
        Regime,
        consent_records,
        evaluate_all,
    )
    from fedtwin.errors import ConfigError

    if regime not in {r.value for r in Regime}:
        raise ConfigError(f"--regime: {regime!r} is not opt-in or opt-out")
    moment = _instant(at, "--at") or datetime.now(UTC)
    flags = {"purpose": "--purpose", "data_to": "--data-to", "data_classes": "--data-class"}
    try:
        request = ConsentRequest(
            purpose=purpose,
            actors=tuple(actor or ()),
            data_classes=tuple(data_class) if data_class else TRAINING_RESOURCE_TYPES,
            data_from=_instant(data_from, "--data-from"),
            # No record is newer than the decision time: the window ends there by default.
            data_to=_instant(data_to, "--data-to") or moment,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "data_to"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{flags.get(field, field)}: {message}") from error
    patients, parsed = _read(consents, fhir_version)
    records = consent_records(parsed)
    snapshot = evaluate_all(
        records, request, at=moment, regime=Regime(regime), patient_ids=patients
    )
    if json_output:
        lines = [
            json.dumps(
                {
                    "patient": patient,
                    "decision": decision.decision.value,
                    "reasons": [reason.value for reason in decision.reasons],
                },
                ensure_ascii=False,
            )
            for patient, decision in snapshot.decisions.items()
        ]
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
        stderr.print(f"summary: {_summary(snapshot)}", markup=False)
    else:
        _print_table(snapshot)


def _policy_line(kind: str, path: Path, policy: Any) -> str:
    from fedtwin.consent import policy_hash

    return f"{kind} policy {path}: valid, version {policy.version}, {policy_hash(policy)}"


@app.command()
def policy(
    site: Annotated[Path | None, typer.Option(help="a site policy (TOML)")] = None,
    consortium: Annotated[Path | None, typer.Option(help="a consortium policy (TOML)")] = None,
) -> None:
    """Validate policy documents and print their hashes; with both, check they fit together."""
    from fedtwin.consent import (
        RunRequest,
        SiteGuard,
        load_consortium_policy,
        load_site_policy,
    )
    from fedtwin.errors import ConfigError

    if site is None and consortium is None:
        raise ConfigError("give --site FILE and/or --consortium FILE")
    site_policy = load_site_policy(site) if site is not None else None
    consortium_policy = load_consortium_policy(consortium) if consortium is not None else None
    if site_policy is not None and site is not None:
        console.print(_policy_line("site", site, site_policy), markup=False)
    if consortium_policy is not None and consortium is not None:
        console.print(_policy_line("consortium", consortium, consortium_policy), markup=False)
    if site_policy is None or consortium_policy is None:
        return
    guard = SiteGuard(site_policy, consortium_policy)
    for kind in consortium_policy.twin_kinds:
        run = RunRequest(
            consortium_id=consortium_policy.consortium_id,
            study_id=consortium_policy.study_id,
            purpose=consortium_policy.purpose,
            twin_kind=kind.value,
            epsilon=consortium_policy.max_epsilon_per_patient,
            delta=consortium_policy.delta,
            actors=consortium_policy.actors,
        )
        check = guard.check_run(run, at=datetime.now(UTC))
        verdict = "accepts" if check.allowed else "refuses"
        detail = "; ".join(r.line() for r in check.refusals)
        console.print(
            f"site {site_policy.site_id} {verdict} {kind.value} runs of study "
            f"{consortium_policy.study_id} at ε {run.epsilon:g}"
            + (f" ({detail})" if detail else ""),
            markup=False,
        )


def policy_consent_check(
    policy_path: Path,
    consents_by_patient: Mapping[str, Sequence[ParsedResource]],
    patient_ids: Sequence[str],
    at: str | None,
) -> list[str]:
    """What ``fedtwin site check --policy`` prints: patients the consents permit, per purpose.

    The request is the site policy's own: its trusted actors, the data classes of its twin
    kinds, its data window at ``at`` (ISO 8601, default now) and its regime. Counts only, no
    patient ids.

    Raises
    ------
    ConfigError
        If the policy cannot be loaded or ``at`` is not a date-time with offset.
    IngestError
        If a consent has an invalid code or period.
    """
    from fedtwin.consent import (
        TWIN_DATA_CLASSES,
        ConsentRequest,
        consent_records,
        evaluate_all,
        load_site_policy,
        policy_hash,
    )

    site = load_site_policy(policy_path)
    moment = _instant(at, "--at") or datetime.now(UTC)
    records = consent_records(consents_by_patient)
    classes = sorted({c for kind in site.accepted_twin_kinds for c in TWIN_DATA_CLASSES[kind]})
    window = site.data_window.interval(moment)
    lines = [f"consent under site policy {policy_path} ({policy_hash(site)}):"]
    for purpose in site.accepted_purposes:
        request = ConsentRequest(
            purpose=purpose,
            actors=site.trusted_actors,
            data_classes=tuple(classes),
            data_from=window.start,
            data_to=window.end,
        )
        snapshot = evaluate_all(
            records, request, at=moment, regime=site.regime, patient_ids=patient_ids
        )
        minimum = site.min_eligible_patients_per_round
        note = "" if len(snapshot.permitted) >= minimum else f" — below the site minimum {minimum}"
        lines.append(f"  {_summary(snapshot)}{note}")
    return lines
