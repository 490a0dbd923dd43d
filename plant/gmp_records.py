"""How the other modules put their GMP records on the audit trail (entity and action names fixed).

| record                      | entity           | entity_id          | action(s)                      |
|-----------------------------|------------------|--------------------|--------------------------------|
| recommendation decision     | recommendation   | recommendation id  | sign, decide                   |
| model promotion             | model            | model name         | sign, promote                  |
| connector state change      | connector        | connector name     | state_change                   |
| setpoint write              | setpoint         | "<batch>/<tag>"    | write                          |

Signed records also carry a `Signature` (users.signatures) bound to the record's hash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection

from plant.audit import AuditEntry, AuditTrail
from plant.users import Signature, Users

DECISIONS = ("accepted", "modified", "rejected")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, e.g. a model's evaluation report."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_recommendation_decision(users: Users, username: str, password: str,
                                   recommendation_id: str, batch_id: str, decision: str,
                                   recommendation: object, reason: str = "",
                                   modified_to: object = None,
                                   also: Callable[[Connection, Signature], None] | None = None) -> Signature:
    """A human's signed decision on a recommendation: accepted, modified (to what) or rejected.

    Needs "recommendation.decide"; modified/rejected need a reason. The signature (meaning =
    decision) binds the recommendation as shown, the decision and the modification.
    """
    if decision not in DECISIONS:
        raise ValueError(f"recommendation {recommendation_id}: decision must be one of "
                         f"{DECISIONS}, got {decision!r}")
    if decision != "accepted" and not reason.strip():
        raise ValueError(f"recommendation {recommendation_id}: a {decision} decision needs a reason")
    if (decision == "modified") != (modified_to is not None):
        raise ValueError(f"recommendation {recommendation_id}: modified_to is required for "
                         "'modified' and only for it")
    record = {"recommendation": recommendation, "batch_id": batch_id, "decision": decision,
              "modified_to": modified_to}

    def store(conn: Connection, sig: Signature) -> None:
        users.audit.append(username, "decide", "recommendation", recommendation_id, None,
                           {"decision": decision, "batch_id": batch_id,
                            "modified_to": modified_to, "signature_id": sig.id}, reason,
                           conn=conn)
        if also is not None:  # e.g. the recommendation's status, in the same transaction
            also(conn, sig)

    return users.sign(username, password, decision, "recommendation", recommendation_id, record,
                      reason, permission="recommendation.decide", on_signed=store)


def record_model_promotion(users: Users, username: str, password: str, model: str, version: str,
                           stage: str, evaluation_report_hash: str, reason: str,
                           previous_version: str | None = None) -> Signature:
    """A signed model promotion: who, why, and the hash of the evaluation report it rests on.

    Needs "model.promote"; the signature (meaning "approved") binds model, version, stage and
    report hash, so a report edited later no longer matches.
    """
    if not _HEX64.fullmatch(evaluation_report_hash or ""):
        raise ValueError(f"model {model} {version}: evaluation_report_hash must be 64 lowercase "
                         f"hex digits (sha256; see file_hash), got {evaluation_report_hash!r}")
    if not reason.strip():
        raise ValueError(f"model {model} {version}: a promotion needs a reason")
    record = {"model": model, "version": version, "stage": stage,
              "previous_version": previous_version, "evaluation_report_hash": evaluation_report_hash}

    def store(conn: Connection, sig: Signature) -> None:
        users.audit.append(username, "promote", "model", model, {"version": previous_version},
                           {"version": version, "stage": stage, "signature_id": sig.id,
                            "evaluation_report_hash": evaluation_report_hash}, reason, conn=conn)

    return users.sign(username, password, "approved", "model", model, record, reason,
                      permission="model.promote", on_signed=store)


def record_connector_state(audit: AuditTrail, connector: str, old: str | None, new: str,
                           detail: str = "") -> AuditEntry:
    """A connector's state change (CONNECTING, READY, RECONNECTING, STOPPED), by the system.

    Record transitions only, once each (a reconnect loop logs one RECONNECTING, not every try).
    """
    return audit.append(f"system:{connector}", "state_change", "connector", connector,
                        None if old is None else {"state": old}, {"state": new}, detail)


def record_setpoint_write(audit: AuditTrail, actor: str, batch_id: str, tag: str,
                          old: float | None, new: float, reason: str, source: str = "operator",
                          *, conn: Connection | None = None) -> AuditEntry:
    """A setpoint written to the plant (after `users.require(..., "setpoint.write")`)."""
    if not reason.strip():
        raise ValueError(f"setpoint {tag} of {batch_id}: a reason is required")
    return audit.append(actor, "write", "setpoint", f"{batch_id}/{tag}",
                        None if old is None else {"value": old}, {"value": new, "source": source}, reason, conn=conn)
