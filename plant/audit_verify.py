"""Audit-trail verification: the entry hash spec, and the walk that names what broke in a chain."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

UTC = timezone.utc
GENESIS = "0" * 64  # prev_hash of entry 1


def entry_hash(seq: int, ts: datetime, actor: str, action: str, entity: str, entity_id: str,
               old: str | None, new: str | None, reason: str, prev_hash: str) -> str:
    """The hash an entry must carry: `record_hash` of its fields in order, seq and prev_hash
    included, so it covers its position and its predecessor."""
    # spelled out (equal to record_hash([...]), a test pins it): the generic path costs 2x
    fields_ = [seq, ts.astimezone(UTC).isoformat(timespec="microseconds"), actor, action, entity,
               entity_id, old, new, reason, prev_hash]
    text = json.dumps(fields_, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_ts(raw: object) -> datetime:
    """A stored timestamp as aware UTC; SQLite hands back its text as written."""
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
    ts = datetime.fromisoformat(str(raw))
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class ChainCheck:
    """Walks the entries in seq order and collects what is wrong with each."""

    MOVE_WINDOW = 64  # how far from its position a moved entry is looked for
    MAX_SEARCHES = 1000  # stop looking for moves when whole ranges were tampered with

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.count, self.last_seq, self.last_hash = 0, 0, GENESIS
        self.last_ok, self.last_ts, self.searches = True, None, 0

    def feed(self, row: Any) -> None:
        seq, self.count = row.seq, self.count + 1
        if seq != self.last_seq + 1:
            self.problems.append(f"{span(self.last_seq + 1, seq - 1)} missing (deleted): "
                                 f"entry {seq} follows entry {self.last_seq}")
        ok = self._content(row)
        # a broken link right after a bad entry says nothing new; after a good one it shows
        # an entry altered and re-hashed (or removed and the rest re-numbered)
        if ok and self.last_ok and seq == self.last_seq + 1 and row.prev_hash != self.last_hash:
            self.problems.append(f"entry {seq}: prev_hash does not match entry {self.last_seq}'s "
                                 f"hash (entry {self.last_seq} altered and re-hashed, or entries "
                                 "re-ordered)")
        self.last_seq, self.last_hash, self.last_ok = seq, row.hash, ok

    def _content(self, row: Any) -> bool:
        seq = row.seq
        try:
            ts = parse_ts(row.ts)
        except ValueError:
            self.problems.append(f"entry {seq}: unreadable timestamp {row.ts!r} (edited?)")
            return False
        if self.last_ts is not None and ts < self.last_ts:
            self.warnings.append(f"entry {seq}: timestamp {ts:%Y-%m-%d %H:%M:%S.%f} is earlier "
                                 f"than entry {self.last_seq}'s (clock stepped back?)")
        self.last_ts = ts
        fields_ = (ts, row.actor, row.action, row.entity, row.entity_id, row.old, row.new,
                   row.reason, row.prev_hash)
        if entry_hash(seq, *fields_) == row.hash:
            return True
        origin = self._origin(seq, fields_, row.hash)
        if origin is not None:
            self.problems.append(f"entry {seq}: holds entry {origin} moved here "
                                 "(entries re-ordered)")
        else:
            self.problems.append(f"entry {seq}: content altered (its hash no longer matches; "
                                 f"actor={row.actor!r} action={row.action!r} "
                                 f"entity={row.entity!r})")
        return False

    def _origin(self, seq: int, fields_: tuple[Any, ...], digest: str) -> int | None:
        """The position an intact entry was hashed at, when it sits nearby (a re-ordering)."""
        self.searches += 1
        if self.searches > self.MAX_SEARCHES:
            return None
        for k in range(max(1, seq - self.MOVE_WINDOW), seq + self.MOVE_WINDOW + 1):
            if k != seq and entry_hash(k, *fields_) == digest:
                return k
        return None


def check_head(head: Any, last_seq: int, last_hash: str) -> list[str]:
    if head is None:
        return ["audit_head row is missing (deleted?); cannot check for removed newest entries"]
    if head.seq > last_seq:
        return [(f"{span(last_seq + 1, head.seq)} missing (deleted): the chain head is entry "
                 f"{head.seq}, the newest entry is {last_seq}")]
    if head.seq < last_seq:
        return [(f"{span(head.seq + 1, last_seq)} not appended through the audit trail "
                 f"(the chain head is entry {head.seq})")]
    if head.hash != last_hash:
        return [f"entry {last_seq}: hash differs from the chain head's (newest entry altered)"]
    return []


def span(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}..{last}"
