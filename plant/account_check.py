"""Accounts against their history: the users table must equal what the audit trail says happened.

Someone with write access to the database could grant themselves a role or swap in a password
hash they know; the triggers cannot refuse that (accounts must stay updatable), but replaying
the audit trail's user entries shows it, naming the user and the field.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from plant.audit import AuditTrail
from plant.users import fingerprint, users_table

_TRACKED = ("role", "active", "locked", "credential")


def expected_accounts(audit: AuditTrail) -> dict[str, dict[str, Any]]:
    """Each account's role, active, locked and credential fingerprint as the audit trail tells."""
    accounts: dict[str, dict[str, Any]] = {}
    for action, username, new in audit.entries(entity="user").select(
            "action", "entity_id", "new").iter_rows():
        values = json.loads(new) if new else {}
        if action == "create":
            accounts[username] = {"role": values.get("role"), "active": True, "locked": False,
                                  "credential": values.get("credential")}
        elif username in accounts:
            accounts[username].update({k: v for k, v in values.items() if k in _TRACKED})
    return accounts


def check_accounts(audit: AuditTrail) -> list[str]:
    """Problems naming each account whose stored state differs from its audit history."""
    expected = expected_accounts(audit)
    t = users_table
    with audit.engine.connect() as conn:
        rows = {r.username: r for r in conn.execute(select(t))}
    problems = [f"user {u!r} is missing from the users table (deleted outside cellwatch)"
                for u in sorted(set(expected) - set(rows))]
    for username, row in sorted(rows.items()):
        want = expected.get(username)
        if want is None:
            problems.append(f"user {username!r} has no 'create' entry on the audit trail "
                            "(added outside cellwatch)")
            continue
        have = {"role": row.role, "active": bool(row.active), "locked": bool(row.locked),
                "credential": fingerprint(row.password_hash)}
        for field in _TRACKED:
            if have[field] != want[field]:
                what = ("password hash" if field == "credential"
                        else f"{field} is {have[field]!r} but the audit trail says {want[field]!r}")
                problems.append(f"user {username!r}: {what} changed outside cellwatch"
                                if field == "credential" else f"user {username!r}: {what}")
    return problems
