"""`cellwatch audit ...`: verify the chain, search, export, and QA review/disposition of a batch."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click
import polars as pl

from cellwatch.auth_cli import (
    Secrets,
    data_option,
    parse_ts,
    refusals,
    stdin_option,
    stores,
)
from plant.account_check import check_accounts
from plant.audit_review import AuditReview
from plant.gmp_records import file_hash


@click.group("audit")
def audit() -> None:
    """Audit trail: verify, search, export, head; per-batch review and release."""


def _anchor(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise click.BadParameter(f"expected SEQ:HASH (64 hex digits), got {value!r}")
    return int(seq), digest.lower()


@audit.command("verify")
@data_option
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH",
              help="A head recorded elsewhere (`cellwatch audit head`); repeatable.")
def verify(data: Path, anchors: tuple[str, ...]) -> None:
    """Recompute the hash chain and name every altered, removed or re-ordered entry, and every
    account changed outside cellwatch (exit 1)."""
    with stores(data) as s:
        result = s.audit.verify([_anchor(a) for a in anchors])
        problems = result.problems + check_accounts(s.audit)  # accounts edited around the trail
    for w in result.warnings:
        click.echo(f"warning: {w}")
    if problems:
        for p in problems:
            click.echo(f"PROBLEM: {p}")
        click.echo(f"audit trail FAILED verification: {len(problems)} problem(s) in "
                   f"{result.entries} entries", err=True)
        sys.exit(1)
    click.echo(f"audit trail OK: {result.entries} entries, head {result.head_seq}:{result.head_hash}")


@audit.command("head")
@data_option
def head(data: Path) -> None:
    """Print SEQ:HASH of the newest entry, to keep outside the database as an anchor."""
    with stores(data) as s:
        seq, digest = s.audit.head()
    click.echo(f"{seq}:{digest}")


def _filters(entity: str | None, entity_id: str | None, actor: str | None, since: str | None,
             until: str | None, text: str | None) -> dict[str, object]:
    return {"entity": entity, "entity_id": entity_id, "actor": actor, "text": text,
            "since": parse_ts(since, "--since"), "until": parse_ts(until, "--until")}


def filter_options(fn):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.option("--entity", help="e.g. batch, deviation, user, recommendation, model."),
        click.option("--entity-id", help="e.g. a batch id or a user name."),
        click.option("--actor", help="Who did it."),
        click.option("--since", help="From this UTC time (ISO), inclusive."),
        click.option("--until", help="Before this UTC time (ISO)."),
        click.option("--text", help="Case-insensitive search in every field."),
    ]):
        fn = opt(fn)
    return fn


def _show(frame: pl.DataFrame) -> None:
    for seq, ts, actor, action, entity, entity_id, old, new, reason, *_ in frame.iter_rows():
        change = "" if old is None and new is None else f" {old or '-'} -> {new or '-'}"
        why = f" ({reason})" if reason else ""
        click.echo(f"{seq:>6} {ts:%Y-%m-%d %H:%M:%S} {actor} {action} {entity}:{entity_id}"
                   f"{change}{why}")


@audit.command("search")
@data_option
@filter_options
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1),
              help="Show at most the newest N matches.")
def search(data: Path, limit: int, **filters: str | None) -> None:
    """Search entries: one line each (seq, UTC time, actor, action, entity, old -> new, reason)."""
    with stores(data) as s:
        frame = s.audit.entries(**_filters(**filters))
    _show(frame.tail(limit))
    click.echo(f"{frame.height} matching entries" + (f", newest {limit} shown"
                                                     if frame.height > limit else ""))


@audit.command("export")
@data_option
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]),
              help="Default: from OUT's suffix.")
@filter_options
def export(data: Path, out: Path, fmt: str | None, **filters: str | None) -> None:
    """Export entries to CSV or Parquet; prints the file's sha256 and the chain head."""
    with stores(data) as s:
        s.audit.export(out, fmt, **_filters(**filters))
        rows = (pl.read_parquet(out) if (fmt or out.suffix.lstrip(".")) == "parquet"
                else pl.read_csv(out)).height
        digest = file_hash(out)
        seq, head_hash = s.audit.head()
        # the export itself is on the audit trail: who took which data out, and its hash
        s.audit.append(f"os:{getpass.getuser()}", "export", "audit_trail", out.name, None,
                       {"rows": rows, "sha256": digest, "filters": {k: v for k, v in filters.items()
                                                                  if v is not None}})
    click.echo(f"{rows} entries -> {out} (sha256 {digest}); head {seq}:{head_hash}")


@audit.command("review")
@data_option
@click.argument("batch_id")
@click.option("--as", "actor", required=True, metavar="QA", help="The QA reviewer who signs.")
@click.option("--reason", default="", help="Comment on the review.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation after showing the entries.")
@stdin_option
@refusals
def review(data: Path, batch_id: str, actor: str, reason: str, yes: bool,
           password_stdin: bool) -> None:
    """Show a batch's audit entries and sign them as "reviewed" (needed before release)."""
    with stores(data) as s:
        rv = AuditReview(s.audit, s.users)
        excerpt = rv.excerpt(batch_id)
        _show(excerpt)
        if excerpt.is_empty():
            raise click.ClickException(f"batch {batch_id}: no audit entries to review")
        click.echo(f"{excerpt.height} audit entries for batch {batch_id}")
        if not yes and not click.confirm("sign these entries as reviewed?", err=True):
            raise click.Abort()
        sig = rv.sign_review(actor, Secrets(password_stdin).get(f"password of {actor}"), batch_id,
                             excerpt, reason)
    click.echo(f"signed: {sig.manifest()} [{sig.record_hash}]")


@audit.command("release")
@data_option
@click.argument("batch_id")
@click.option("--as", "actor", required=True, metavar="QA", help="The QA person who signs.")
@click.option("--reject", is_flag=True, help="Reject the batch instead of releasing it.")
@click.option("--reason", default="", help="Why (required by site SOPs for a rejection).")
@stdin_option
@refusals
def release(data: Path, batch_id: str, actor: str, reject: bool, reason: str,
            password_stdin: bool) -> None:
    """Release (or reject) a harvested batch; refused without a current audit-trail review."""
    with stores(data) as s:
        rv = AuditReview(s.audit, s.users)
        rv.require_reviewed(batch_id)  # before asking for a password
        sig = rv.dispose(s.records, actor, Secrets(password_stdin).get(f"password of {actor}"),
                         batch_id, "rejected" if reject else "released", reason)
    click.echo(f"batch {batch_id} {sig.meaning}: {sig.manifest()}")
