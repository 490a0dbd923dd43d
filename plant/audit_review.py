"""Per-batch audit-trail review: QA signs "reviewed" over a batch's excerpt; disposition needs it.

A batch's excerpt is every entry whose entity_id is or contains the batch id, or whose old/new
value or reason mentions it (COI ids are unique, so a mention is a reliable link). The review
signature binds to the (seq, hash) list of that excerpt; an entry about the batch appended after
the review makes it stale, and release then asks for a new review.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import polars as pl
from sqlalchemy import Connection, or_, select, update

from plant.audit import AUDIT_SCHEMA, AuditTrail, audit_table
from plant.records import DISPOSITIONS, Records, batches_table
from plant.users import Signature, Users

REVIEW_TYPE = "batch_audit_trail"  # signature record_type (and audit entity) of a review


class ReviewRequired(ValueError):
    """A batch has no valid, current QA review of its audit trail; names the batch and why."""


@dataclass(frozen=True, slots=True)
class ReviewStatus:
    """Whether a batch's audit trail has a current QA review, and if not, why."""

    batch_id: str
    reviewed: bool
    why: str
    signature: Signature | None = None
    through_seq: int | None = None  # the review covered the batch's entries before this seq
    new_entries: list[int] = field(default_factory=list)  # batch entries since the review


def excerpt_record(batch_id: str, excerpt: pl.DataFrame) -> dict[str, object]:
    """What a review signs: the batch id and the (seq, hash) of each entry, which cover content."""
    return {"batch_id": batch_id, "entries": [list(r) for r in excerpt.select("seq", "hash").rows()]}


class AuditReview:
    """List a batch's audit entries, record QA's review signature, and gate disposition on it."""

    def __init__(self, audit: AuditTrail, users: Users) -> None:
        self.audit, self.users = audit, users

    def excerpt(self, batch_id: str, before_seq: int | None = None) -> pl.DataFrame:
        """The batch's audit entries (AUDIT_SCHEMA) by seq, those before `before_seq` if given."""
        if not isinstance(batch_id, str) or len(batch_id) < 4:
            raise ValueError(f"batch id too short to search the audit trail for: {batch_id!r}")
        t = audit_table
        cols = (t.c.entity_id, t.c.old, t.c.new, t.c.reason)
        where = [or_(*(c.contains(batch_id, autoescape=True) for c in cols))]
        if before_seq is not None:
            where.append(t.c.seq < before_seq)
        stmt = select(*(t.c[n] for n in AUDIT_SCHEMA)).where(*where).order_by(t.c.seq)
        with self.audit.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        return pl.DataFrame(rows, schema=AUDIT_SCHEMA, orient="row")

    def sign_review(self, username: str, password: str, batch_id: str,
                    excerpt: pl.DataFrame | None = None, reason: str = "") -> Signature:
        """QA signs "reviewed" over the excerpt it was shown (default: the current one)."""
        shown = self.excerpt(batch_id) if excerpt is None else excerpt
        if shown.is_empty():
            raise ValueError(f"batch {batch_id}: no audit entries to review")
        return self.users.sign(username, password, "reviewed", REVIEW_TYPE, batch_id,
                               excerpt_record(batch_id, shown), reason, permission="audit.review")

    def status(self, batch_id: str) -> ReviewStatus:
        """The newest review of the batch, checked against the audit trail as it is now."""
        reviews = [s for s in self.users.signatures(REVIEW_TYPE, batch_id) if s.meaning == "reviewed"]
        if not reviews:
            return ReviewStatus(batch_id, False, f"batch {batch_id}: audit trail not reviewed by QA")
        sig = reviews[-1]
        signed = self.audit.entries(entity=REVIEW_TYPE, entity_id=batch_id).filter(
            pl.col("action") == "sign",
            pl.col("new").map_elements(lambda s: json.loads(s).get("signature_id"),
                                       return_dtype=pl.Int64) == sig.id)
        if signed.is_empty():
            return ReviewStatus(batch_id, False, f"batch {batch_id}: review signature {sig.id} "
                                "has no audit entry (audit trail damaged?)", sig)
        through = int(signed["seq"][0])
        before = self.excerpt(batch_id, before_seq=through)
        if not Users.signature_matches(sig, excerpt_record(batch_id, before)):
            return ReviewStatus(batch_id, False, f"batch {batch_id}: the entries reviewed in "
                                f"signature {sig.id} changed before it was signed or since; "
                                "review again", sig, through)
        later = self.excerpt(batch_id).filter(pl.col("seq") > through,
                                              pl.col("entity") != REVIEW_TYPE)
        new = [int(s) for s in later["seq"]]
        if new:
            return ReviewStatus(batch_id, False, f"batch {batch_id}: audit entries {new} were "
                                f"added after QA review {sig.id}; review again", sig, through, new)
        return ReviewStatus(batch_id, True, f"reviewed: {sig.manifest()}", sig, through)

    def require_reviewed(self, batch_id: str) -> Signature:
        """The current review signature; ReviewRequired naming the batch and why otherwise."""
        st = self.status(batch_id)
        if not st.reviewed or st.signature is None:
            raise ReviewRequired(st.why)
        return st.signature

    def dispose(self, records: Records, username: str, password: str, batch_id: str,
                disposition: str = "released", reason: str = "") -> Signature:
        """QA releases (or rejects) a harvested batch: needs "batch.release", a current review and
        a signature bound to the batch record; the change and its audit entry are atomic."""
        if disposition not in DISPOSITIONS:
            raise ValueError(f"disposition must be one of {DISPOSITIONS}, got {disposition!r}")
        self.users.require(username, "batch.release")
        review = self.require_reviewed(batch_id)
        batch = records.get_batch(batch_id)
        new = replace(batch, disposition=disposition)  # validates: only harvested batches release
        if batch.disposition is not None:
            raise ValueError(f"batch {batch_id} already has disposition {batch.disposition!r}")

        def store(conn: Connection, sig: Signature) -> None:
            conn.execute(update(batches_table).where(batches_table.c.batch_id == batch_id)
                         .values(disposition=disposition))
            self.audit.append(username, disposition, "batch", batch_id, {"disposition": None},
                              {"disposition": disposition, "signature_id": sig.id,
                               "review_signature_id": review.id}, reason, conn=conn)

        record = {"batch": new, "review_signature_id": review.id, "review_hash": review.record_hash}
        return self.users.sign(username, password, disposition, "batch", batch_id, record, reason,
                               permission="batch.release", on_signed=store)
