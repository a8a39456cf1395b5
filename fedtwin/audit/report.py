"""A self-contained HTML page for an auditor: what a run did, and whether its logs are intact.

Invariants: the page has no external asset (inline CSS, an inline SVG plot, no script); every
value taken from a log is HTML-escaped; only events of logs that verified (intact, or crashed
with their attested prefix intact) are shown, and the integrity table says which logs were
left out and why. Sections carry stable ids (``integrity``, ``runs``, ``sites``,
``participation``, ``consent``, ``privacy``, ``egress``, ``rejected``, ``lineage``,
``errors``) so tools can find them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from pathlib import Path

from fedtwin.audit import events as ev
from fedtwin.audit._files import atomic_write
from fedtwin.audit.events import AuditEvent
from fedtwin.audit.rundir import RunAudit, audit_run

_CSS = "".join(
    [
        "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;",
        "color:#1d2733;padding:0 1rem}h1{font-size:1.6rem;margin-bottom:.2rem}",
        "h2{margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}",
        "table{border-collapse:collapse;width:100%;margin:.6rem 0}",
        "th,td{border:1px solid #d5dbe3;padding:.3rem .5rem;text-align:left;vertical-align:top}",
        "th{background:#eef2f7}code{font-size:12px;word-break:break-all}",
        ".intact{color:#0b6b2b;font-weight:600}.crashed{color:#8a5a00;font-weight:600}",
        ".tampered,.unverifiable{color:#b00020;font-weight:600}.muted{color:#667}",
        ".banner{padding:.6rem .8rem;border-radius:4px;margin:1rem 0}",
        ".ok{background:#e6f4ea}.bad{background:#fde7e9}svg text{font:11px system-ui,sans-serif}",
    ]
)
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{content}</section>'


def _code(value: object) -> str:
    return f"<code>{_e(value)}</code>"


def _time(value: datetime) -> str:
    return _e(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _integrity(audit: RunAudit) -> str:
    rows = []
    for log in audit.logs:
        report = log.report
        cosigned = (
            ", ".join(f"{_e(n)}: {c}" for n, c in sorted(report.cosigned.items())) if report else ""
        )
        rows.append(
            [
                _e(log.party),
                f'<span class="{_e(log.verdict)}">{_e(log.verdict)}</span>',
                _e(report.entries) if report else "",
                _e(len(report.checkpoints)) if report else "",
                cosigned or '<span class="muted">none</span>',
                _e(log.summary()),
            ]
        )
    bad = [log.party for log in audit.logs if not log.trusted]
    banner = (
        f'<p class="banner ok">All {len(audit.logs)} logs verified.</p>'
        if not bad
        else f'<p class="banner bad">{len(bad)} of {len(audit.logs)} logs failed verification '
        f"({_e(', '.join(bad))}); their events are left out of this report.</p>"
    )
    headers = ["party", "verdict", "entries", "checkpoints", "cosignatures", "detail"]
    return banner + _table(headers, rows, "no logs")


def _runs(events: Sequence[AuditEvent]) -> str:
    finished = {e.run_id: e for e in events if isinstance(e, ev.RunFinished)}
    rows = []
    for run in (e for e in events if isinstance(e, ev.RunStarted)):
        end = finished.get(run.run_id)
        status = f"{end.status} after {end.rounds_completed} rounds" if end else "no end recorded"
        rows.append(
            [
                _code(run.run_id),
                _e(run.study_id),
                _e(run.purpose_code),
                _e(run.legal_basis),
                _code(run.app_hash),
                _code(run.config_hash),
                _code(run.policy_hash),
                _e(run.num_rounds),
                _e(status),
                _time(run.time),
            ]
        )
    headers = ["run", "study", "purpose", "legal basis", "code (app) hash", "config hash"]
    headers += ["policy hash", "rounds planned", "status", "started"]
    return _table(headers, rows, "no run_started event")


def _sites(events: Sequence[AuditEvent]) -> str:
    rows = []
    for event in events:
        if isinstance(event, ev.SiteJoined):
            rows.append([_e(event.site_id), "joined", _code(event.identity_fingerprint), ""])
        elif isinstance(event, ev.SiteRefused):
            reason = f"{event.reason_code}: {event.reason}"
            rows.append([_e(event.site_id), "refused", "", _e(reason)])
        elif isinstance(event, ev.PolicyDecision):
            verdict = "policy allows" if event.allowed else "policy denies"
            rows.append(
                [_e(event.site_id), _e(verdict), _code(event.policy_version_hash),
                 _e("; ".join(event.reasons))]
            )  # fmt: skip
    return _table(["site", "decision", "identity / policy", "reason"], rows, "no site events")


_PARTICIPATION_RANK = {
    "update received": 0,
    "refused (budget)": 1,
    "update rejected": 2,
    "contributed": 3,
}
"""When several events speak about one site in one round, the strongest wins."""


def _participation(events: Sequence[AuditEvent]) -> str:
    cells: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    sites: set[str] = set()

    def mark(key: tuple[str, int], site: str, state: str) -> None:
        sites.add(site)
        current = cells[key].get(site)
        if current is None or _PARTICIPATION_RANK[state] > _PARTICIPATION_RANK[current]:
            cells[key][site] = state

    for event in events:
        if event.round is None:
            continue
        key = (event.run_id, event.round)
        match event:
            case ev.Aggregated():
                for site in event.contributors:
                    mark(key, site, "contributed")
            case ev.UpdateRejected():
                mark(key, event.site_id, "update rejected")
            case ev.BudgetRefused():
                mark(key, event.site_id, "refused (budget)")
            case ev.UpdateReceived():
                mark(key, event.site_id, "update received")
    ordered = sorted(sites)
    rows = [
        [_code(run), _e(round_)] + [_e(cells[(run, round_)].get(site, "—")) for site in ordered]
        for run, round_ in sorted(cells)
    ]
    return _table(["run", "round", *ordered], rows, "no round-level events")


def _consent(events: Sequence[AuditEvent]) -> str:
    rows = []
    totals: dict[str, int] = defaultdict(int)
    for event in (e for e in events if isinstance(e, ev.ConsentFiltered)):
        for reason, count in event.denied_by_reason.items():
            totals[reason] += count
        denied = ", ".join(f"{r}: {n}" for r, n in sorted(event.denied_by_reason.items()))
        rows.append(
            [
                _e(event.site_id),
                _code(event.run_id),
                _e(event.round if event.round is not None else "—"),
                _time(event.consent_snapshot_time),
                _e(event.patients_total),
                _e(event.patients_permitted),
                _e(denied or "none"),
            ]
        )
    headers = ["site", "run", "round", "consent snapshot", "patients", "permitted", "excluded by"]
    total_rows = [[_e(reason), _e(count)] for reason, count in sorted(totals.items())]
    return _table(headers, rows, "no consent_filtered event") + _table(
        ["exclusion reason", "patients (all sites, all rounds)"], total_rows, "no exclusions"
    )


def _epsilon_plot(commits: Sequence[ev.BudgetCommitted]) -> str:
    steps = sorted({(c.run_id, c.round or 0) for c in commits}, key=lambda k: (k[0], k[1]))
    if not steps:
        return '<p class="muted">no committed privacy spend</p>'
    runs = {run for run, _ in steps}
    x_of = {step: i for i, step in enumerate(steps)}
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    caps = {c.epsilon_cap for c in commits}
    for c in commits:
        if c.epsilon_after is not None:
            series[c.site_id].append((x_of[(c.run_id, c.round or 0)], c.epsilon_after))
    top = max([*caps, *(y for points in series.values() for _, y in points)]) * 1.08
    width, height, left, right, top_pad, bottom = 680, 320, 56, 130, 16, 44
    plot_w, plot_h = width - left - right, height - top_pad - bottom

    def px(x: int) -> float:
        return left + (plot_w * x / max(len(steps) - 1, 1))

    def py(y: float) -> float:
        return top_pad + plot_h * (1 - y / top)

    parts = [
        f'<svg id="epsilon-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="epsilon per site over rounds">',
        "<title>ε per patient spent by each site, after each round</title>",
        f'<line x1="{left}" y1="{py(0):.1f}" x2="{left + plot_w}" y2="{py(0):.1f}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{py(0):.1f}" stroke="#333"/>',
    ]
    for tick in range(5):
        value = top * tick / 4
        parts.append(
            f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>'
        )
    for step, x in x_of.items():
        label = f"{step[0]}/r{step[1]}" if len(runs) > 1 else f"r{step[1]}"
        parts.append(
            f'<text x="{px(x):.1f}" y="{py(0) + 16:.1f}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>'
        f'<text x="14" y="{top_pad + plot_h / 2:.1f}" transform="rotate(-90 14 '
        f'{top_pad + plot_h / 2:.1f})" text-anchor="middle">ε per patient</text>'
    )
    for cap in sorted(caps):
        parts.append(
            f'<line class="cap" x1="{left}" y1="{py(cap):.1f}" x2="{left + plot_w}" '
            f'y2="{py(cap):.1f}" stroke="#999" stroke-dasharray="5 4"/>'
            f'<text x="{left + plot_w - 4}" y="{py(cap) - 4:.1f}" text-anchor="end">'
            f"cap ε = {cap:g}</text>"
        )
    for number, (site, points) in enumerate(sorted(series.items())):
        colour = _COLOURS[number % len(_COLOURS)]
        points.sort()
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-site="{_e(site)}" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        for x, y in points:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                f"<title>{_e(site)}: ε = {y:.4f}</title></circle>"
            )
        legend_y = top_pad + 14 + 18 * number
        parts.append(
            f'<rect x="{left + plot_w + 14}" y="{legend_y - 9}" width="12" height="12" '
            f'fill="{colour}"/><text x="{left + plot_w + 32}" y="{legend_y + 1}">{_e(site)}</text>'
        )
    parts.append("</svg>")
    caption = (
        "ε per patient (cumulative, as committed by each site's privacy ledger) after each "
        "round; dashed: each site's cap."
    )
    return f"<figure>{''.join(parts)}<figcaption>{caption}</figcaption></figure>"


def _privacy(events: Sequence[AuditEvent]) -> str:
    commits = [e for e in events if isinstance(e, ev.BudgetCommitted)]
    refusals = [e for e in events if isinstance(e, ev.BudgetRefused)]

    def eps(value: float | None) -> str:
        return "unbounded" if value is None else f"{value:.4f}"

    def row(e: ev.BudgetNumbers) -> list[str]:
        return [
            _e(e.site_id), _code(e.run_id), _e(e.round), _e(eps(e.epsilon_before)),
            _e(eps(e.epsilon_after)), _e(f"{e.epsilon_cap:g}"), _e(f"{e.delta:g}"),
            _e(f"{e.noise_multiplier:g}"), _e(f"{e.max_grad_norm:g}"), _e(f"{e.sample_rate:g}"),
            _e(e.steps), _e(e.accountant),
        ]  # fmt: skip

    headers = ["site", "run", "round", "ε before", "ε after", "cap", "δ", "noise σ", "clip C"]
    headers += ["sample rate", "steps", "accountant"]
    return (
        _epsilon_plot(commits)
        + "<h3>Committed spends</h3>"
        + _table(headers, (row(e) for e in commits), "no committed spend")
        + '<h3 id="budget-refusals">Budget refusals</h3>'
        + _table(headers, (row(e) for e in refusals), "no budget refusal")
    )


def _egress(events: Sequence[AuditEvent]) -> str:
    received = {
        (e.run_id, e.round, e.site_id): e.sha256 for e in events if isinstance(e, ev.UpdateReceived)
    }
    rows = []
    for e in events:
        if not isinstance(e, ev.UpdateSent):
            continue
        got = received.get((e.run_id, e.round, e.site_id))
        match = (
            "not in the coordinator's log"
            if got is None
            else "same digest received"
            if got == e.sha256
            else "DIFFERENT digest received"
        )
        rows.append(
            [_e(e.site_id), _code(e.run_id), _e(e.round), _code(e.sha256), _e(e.num_examples),
             _e(match)]
        )  # fmt: skip
    headers = ["site", "run", "round", "update digest", "examples", "coordinator side"]
    return (
        '<p class="muted">Only model updates leave a site; each is named by its SHA-256.</p>'
        + _table(headers, rows, "no update_sent event (site logs absent?)")
    )


def _rejected(events: Sequence[AuditEvent]) -> str:
    rows = [
        [_e(e.site_id), _code(e.run_id), _e(e.round), _e(e.reason_code), _e(e.reason)]
        for e in events
        if isinstance(e, ev.UpdateRejected)
    ]
    return _table(["site", "run", "round", "code", "reason"], rows, "no rejected update")


def _lineage(events: Sequence[AuditEvent]) -> str:
    rows = []
    for e in events:
        if isinstance(e, ev.Aggregated):
            rows.append([_code(e.run_id), _e(e.round), _code(e.model_version_hash),
                         _e(", ".join(e.contributors)), ""])  # fmt: skip
        elif isinstance(e, ev.ModelExported):
            rows.append([_code(e.run_id), "export", _code(e.model_version_hash), "", _e(e.path)])
    headers = ["run", "round", "model version", "contributors", "exported to"]
    return _table(headers, rows, "no aggregation recorded")


def _errors(events: Sequence[AuditEvent]) -> str:
    rows = []
    for e in events:
        if isinstance(e, ev.ErrorRaised):
            rows.append([_time(e.time), _e(e.actor), _e(e.where), _e(e.error_class),
                         _e(e.message)])  # fmt: skip
        elif isinstance(e, ev.LogRecovered):
            what = f"cut off a torn last line of {e.discarded_bytes} bytes"
            rows.append([_time(e.time), _e(e.actor), "audit log", "LogRecovered", _e(what)])
    return _table(["time", "party", "where", "error", "message"], rows, "no errors")


def render_report(audit: RunAudit, generated_at: datetime, appendices: Sequence[str] = ()) -> str:
    """The report page for a verified run directory.

    ``appendices`` are trusted, already escaped HTML ``<section>`` fragments rendered after the
    audit sections (e.g. the twin's evaluation, :func:`fedtwin.twins.evaluation.evaluation_html`);
    they are not derived from the logs, so the integrity verdict does not cover them.
    """
    events = audit.events()
    body = "".join(
        [
            _section("integrity", "Integrity of every log", _integrity(audit)),
            _section("runs", "Runs, purpose and legal basis", _runs(events)),
            _section("sites", "Sites and identities", _sites(events)),
            _section("participation", "Participation per round", _participation(events)),
            _section("consent", "Consent exclusions", _consent(events)),
            _section("privacy", "Privacy budget (ε per site)", _privacy(events)),
            _section("egress", "What left each site", _egress(events)),
            _section("rejected", "Rejected updates", _rejected(events)),
            _section("lineage", "Model lineage and contributors", _lineage(events)),
            _section("errors", "Errors and recoveries", _errors(events)),
            *appendices,
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fedtwin audit report</title><style>{_CSS}</style></head><body>"
        f'<h1>fedtwin audit report</h1><p class="muted">{_e(audit.layout.root)} — generated '
        f"{_time(generated_at)} from {len(audit.logs)} logs</p>{body}</body></html>\n"
    )


def write_report(
    run_dir: Path, out: Path, generated_at: datetime, appendices: Sequence[str] = ()
) -> RunAudit:
    """Verify a run directory's logs and write the report to ``out`` (atomically)."""
    audit = audit_run(run_dir)
    atomic_write(out, render_report(audit, generated_at, appendices).encode("utf-8"))
    return audit
