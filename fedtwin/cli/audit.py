"""``fedtwin audit``: verify logs offline, print proofs and roots, report, export to FHIR.

Exit codes: 0 intact (``verify`` also exits 0 for a crashed write whose attested entries
verify, saying so), 1 tampered (one line naming the first bad entry and why), 2 unusable
input. Only typer and rich are imported here; the audit library is imported inside each
command so ``fedtwin --help`` stays fast.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fedtwin.audit.entries import LogLines

app = typer.Typer(
    help="Verify audit logs offline; proofs, roots, HTML report, FHIR export.",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

LogArg = Annotated[Path, typer.Argument(help="a <party>.audit.jsonl file", show_default=False)]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _complete_lines(log: Path) -> LogLines:
    from fedtwin.audit.entries import read_log_lines

    content = read_log_lines(log)
    if content.partial is not None:
        stderr.print(
            f"fedtwin: warning: {log.name}: partial last line at entry {content.size} "
            "(crashed write) ignored",
            markup=False,
        )
    return content


@app.command()
def verify(
    log: LogArg,
    key: Annotated[str, typer.Option(help="the log party's verifier key (file or string)")],
    checkpoints: Annotated[
        Path | None, typer.Option(help="checkpoints folder [default: <party>.checkpoints]")
    ] = None,
    cosigner: Annotated[
        list[str] | None,
        typer.Option(help="a cosigner's verifier key whose cosignatures must be present"),
    ] = None,
) -> None:
    """Verify a log against its signed checkpoints; exit 1 naming the first bad entry."""
    from fedtwin.audit.keys import load_verifier_key
    from fedtwin.audit.verify import verify_log
    from fedtwin.errors import VerificationError

    log_key = load_verifier_key(key)
    cosigners = [load_verifier_key(k) for k in cosigner or []]
    report = verify_log(log, log_key, checkpoints, cosigners)
    if not report.ok:
        raise VerificationError(f"{log.name}: {report.summary()}")
    console.print(f"{log.name}: {report.summary()}", markup=False)


@app.command()
def prove(
    log: LogArg,
    index: Annotated[int | None, typer.Option(help="inclusion proof of this entry")] = None,
    size: Annotated[
        int | None, typer.Option(help="tree size of the inclusion proof [default: all]")
    ] = None,
    from_size: Annotated[
        int | None, typer.Option("--from", help="consistency proof from this tree size")
    ] = None,
    to_size: Annotated[
        int | None, typer.Option("--to", help="consistency proof to this tree size")
    ] = None,
) -> None:
    """Print an RFC 9162 inclusion or consistency proof as JSON (base64 hashes)."""
    from fedtwin.audit.merkle import leaf_hash
    from fedtwin.audit.tree import MerkleTree
    from fedtwin.errors import ConfigError

    inclusion = index is not None
    consistency = from_size is not None or to_size is not None
    if inclusion == consistency or (consistency and (from_size is None or to_size is None)):
        raise ConfigError("give either --index N [--size S] or --from SIZE1 --to SIZE2")
    tree = MerkleTree(leaf_hash(line) for line in _complete_lines(log).lines)
    if index is not None:
        tree_size = tree.size if size is None else size
        if not 0 <= tree_size <= tree.size or not 0 <= index < tree_size:
            raise ConfigError(
                f"--index {index} --size {tree_size}: the log has {tree.size} entries"
            )
        document = {
            "leafIdx": index,
            "treeSize": tree_size,
            "root": _b64(tree.root(tree_size)),
            "leafHash": _b64(tree.leaf(index)),
            "proof": [_b64(p) for p in tree.inclusion_proof(index, tree_size)],
        }
    else:
        assert from_size is not None and to_size is not None
        if not 0 < from_size <= to_size <= tree.size:
            raise ConfigError(
                f"--from {from_size} --to {to_size}: need 0 < from <= to <= {tree.size} entries"
            )
        document = {
            "size1": from_size,
            "size2": to_size,
            "root1": _b64(tree.root(from_size)),
            "root2": _b64(tree.root(to_size)),
            "proof": [_b64(p) for p in tree.consistency_proof(from_size, to_size)],
        }
    console.print(json.dumps(document, indent=2), markup=False)


@app.command()
def root(
    log: LogArg,
    size: Annotated[int | None, typer.Option(help="tree size [default: all entries]")] = None,
) -> None:
    """Print the tree size and the hex RFC 9162 root of the log's lines."""
    from fedtwin.audit.merkle import leaf_hash
    from fedtwin.audit.tree import MerkleTree
    from fedtwin.errors import ConfigError

    tree = MerkleTree(leaf_hash(line) for line in _complete_lines(log).lines)
    tree_size = tree.size if size is None else size
    if not 0 <= tree_size <= tree.size:
        raise ConfigError(f"--size {tree_size}: the log has {tree.size} entries")
    console.print(f"{tree_size} {tree.root(tree_size).hex()}", markup=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/<id>)")],
    out: Annotated[Path, typer.Option(help="where to write the HTML page")] = Path("report.html"),
) -> None:
    """Verify every log of a run and write a self-contained HTML report for an auditor."""
    from fedtwin.audit.report import write_report
    from fedtwin.errors import ConfigError, VerificationError

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    audit = write_report(run_dir, out, datetime.now(UTC))
    failed = [f"{log.party} ({log.verdict})" for log in audit.logs if not log.trusted]
    if failed:
        raise VerificationError(f"wrote {out}; logs failing verification: {', '.join(failed)}")
    console.print(f"wrote {out}: {len(audit.logs)} logs verified", markup=False)


@app.command("export-fhir")
def export_fhir(
    log: LogArg,
    out: Annotated[Path, typer.Option(help="where to write the FHIR Bundle (JSON)")] = Path(
        "bundle.json"
    ),
    key: Annotated[
        str | None, typer.Option(help="verify the log with this key first (recommended)")
    ] = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="checkpoints folder [default: <party>.checkpoints]")
    ] = None,
) -> None:
    """Export a log as FHIR R4 AuditEvent resources (one per entry) in a Bundle."""
    from fedtwin.audit.entries import check_chain, parse_entries, party_of
    from fedtwin.audit.fhir_export import audit_bundle, write_bundle
    from fedtwin.audit.keys import load_verifier_key
    from fedtwin.audit.merkle import leaf_hash
    from fedtwin.audit.verify import verify_log
    from fedtwin.errors import VerificationError

    content = _complete_lines(log)
    if key is not None:
        verified = verify_log(log, load_verifier_key(key), checkpoints)
        if not verified.ok:
            raise VerificationError(f"{log.name}: {verified.summary()}")
    parsed = parse_entries(content.lines)
    check_chain(parsed.links, [leaf_hash(line) for line in content.lines])
    if parsed.schema_error is not None:
        index, reason = parsed.schema_error
        raise VerificationError(f"{log.name}: entry {index}: schema: {reason}")
    events = [event for event in parsed.events if event is not None]
    party = party_of(log) or (events[0].actor if events else "unknown")
    bundle = audit_bundle(events, content.lines, party, datetime.now(UTC))
    write_bundle(out, bundle)
    console.print(f"wrote {out}: {len(events)} AuditEvent resources", markup=False)
