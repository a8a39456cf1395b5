"""The auditor's HTML page: self-contained, escaped, complete, and rendered by a real browser."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fedtwin.audit import (
    AuditLog,
    AuditSigner,
    UpdateRejected,
    audit_run,
    render_report,
    write_report,
)

NOW = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)
SECTIONS = {
    "integrity",
    "runs",
    "sites",
    "participation",
    "consent",
    "privacy",
    "egress",
    "rejected",
    "lineage",
    "errors",
}
HOSTILE = '<img src=x onerror="alert(1)">'


class _Dom(HTMLParser):
    """Element names, ids, attributes of polylines and the text, from an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.series: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "polyline" and found.get("class") == "series":
            self.series.append(str(found.get("data-site")))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _add_hostile_rejection(run: Any, signers: dict[str, AuditSigner]) -> None:
    with AuditLog.open(run.layout.root, "coordinator") as log:
        log.record(
            UpdateRejected,
            run_id="run-0001",
            round=3,
            site_id="site-a",
            reason_code="shape",
            reason=HOSTILE,
        )
        log.checkpoint(signers["coordinator"], "fedtwin/run-0001/coordinator")


def _check_dom(dom: _Dom) -> None:
    assert dom.ids >= SECTIONS
    assert "epsilon-plot" in dom.ids
    assert sorted(dom.series) == ["site-a", "site-b"]
    assert "img" not in dom.tags and "script" not in dom.tags
    text = " ".join(dom.text)
    assert HOSTILE in text  # shown as text, never as markup
    assert text.count("intact") >= 3
    for expected in (
        "HRESCH",
        "GDPR Art. 9(2)(j)",
        "withdrawn",
        "norm-too-large",
        "update rejected",
        "refused (budget)",
    ):
        assert expected in text


def test_report_is_self_contained_and_escapes_log_content(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    _add_hostile_rejection(run, signers)
    html = render_report(audit_run(run.run_dir), NOW)
    dom = _Dom(html)
    _check_dom(dom)
    links = [value or "" for name, value in dom.attributes if name in {"src", "href"}]
    assert links == []
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_report_shows_a_tampered_log_and_leaves_out_its_events(run: Any, tmp_path: Path) -> None:
    path = run.log("site-b")
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3] + lines[4:]))
    out = tmp_path / "report.html"
    audit = write_report(run.run_dir, out, NOW)
    dom = _Dom(out.read_text())
    text = " ".join(dom.text)
    assert "1 of 3 logs failed verification (site-b)" in text
    assert "tampered: entry 3: removed" in text
    assert [log.verdict for log in audit.logs] == ["intact", "intact", "tampered"]
    assert dom.series == ["site-a"]


def test_report_renders_in_headless_chromium(
    run: Any, signers: dict[str, AuditSigner], tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it with apt-get)")
    _add_hostile_rejection(run, signers)
    out = tmp_path / "report.html"
    write_report(run.run_dir, out, NOW)
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _check_dom(_Dom(result.stdout))
