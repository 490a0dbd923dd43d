"""Per-batch audit review before release, and the GMP record helpers of the other modules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from plant.audit import AuditTrail, record_hash
from plant.audit_review import AuditReview, ReviewRequired, excerpt_record
from plant.gmp_records import (
    file_hash,
    record_connector_state,
    record_model_promotion,
    record_recommendation_decision,
    record_setpoint_write,
)
from plant.identity import LocalPasswords
from plant.records import BatchRecord, Records, coi_id
from plant.users import AccessDenied, AuthError, Users

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
PW = "correct-horse-battery"
B1, B2 = coi_id("DEMO", 1, b"k" * 16), coi_id("DEMO", 2, b"k" * 16)


@pytest.fixture
def env(tmp_path: Path):
    with Records.open(tmp_path / "records.db") as records:
        audit = AuditTrail(records)
        users = Users(records, audit, identity=FAST)
        users.init_admin("admin", "Ada Admin", PW)
        for name, role in (("quinn", "qa"), ("olga", "operator"), ("dana", "data_scientist")):
            users.create("admin", name, name.title(), role, PW)
        for b in (B1, B2):
            records.add_batches([BatchRecord(b, "BR01", "DEMO", "CART-v1", "production", T0,
                                             T0 + timedelta(days=10), T0 + timedelta(days=10),
                                             "harvested")])
        record_setpoint_write(audit, "olga", B1, "BR01.TempSP", 37.0, 36.5, "cooler per SOP-12")
        audit.append("olga", "open", "deviation", "DEV-1", None, {"batch_id": B1, "kind": "pH"})
        record_setpoint_write(audit, "olga", B2, "BR01.TempSP", 37.0, 36.8, "other batch")
        yield records, audit, users, AuditReview(audit, users)


def test_excerpt_lists_the_batch_entries(env) -> None:
    review = env[3]
    ex = review.excerpt(B1)
    assert ex["entity"].to_list() == ["setpoint", "deviation"]
    assert excerpt_record(B1, ex) == {"batch_id": B1,
                                      "entries": [[s, h] for s, h in ex.select("seq", "hash").rows()]}
    assert review.excerpt(B2).height == 1


def test_release_needs_a_current_review(env) -> None:
    records, audit, _, review = env
    with pytest.raises(ReviewRequired, match=f"batch {B1}: audit trail not reviewed by QA"):
        review.dispose(records, "quinn", PW, B1)
    sig = review.sign_review("quinn", PW, B1, reason="no gaps")
    assert sig.meaning == "reviewed" and sig.record_hash == record_hash(
        excerpt_record(B1, review.excerpt(B1, before_seq=audit.head()[0])))
    assert review.status(B1).reviewed and not review.status(B2).reviewed
    # an entry about the batch after the review makes it stale
    audit.append("olga", "close", "deviation", "DEV-1", None, {"batch_id": B1, "state": "closed"})
    st = review.status(B1)
    assert not st.reviewed and st.new_entries == [audit.head()[0]]
    with pytest.raises(ReviewRequired, match=r"audit entries \[\d+\] were added after QA review"):
        review.dispose(records, "quinn", PW, B1)
    review.sign_review("quinn", PW, B1)
    rel = review.dispose(records, "quinn", PW, B1, reason="meets spec")
    assert records.get_batch(B1).disposition == "released"
    assert rel.meaning == "released" and rel.record_type == "batch"
    last = audit.entries(entity="batch", entity_id=B1).row(-1, named=True)
    assert (last["action"], last["actor"]) == ("released", "quinn")
    assert audit.verify().ok
    with pytest.raises(ValueError, match="already has disposition 'released'"):
        review.sign_review("quinn", PW, B1)
        review.dispose(records, "quinn", PW, B1)


def test_review_and_release_need_qa(env) -> None:
    records, _, _, review = env
    with pytest.raises(AccessDenied, match="'olga' \\(role operator\\) lacks permission 'audit.review'"):
        review.sign_review("olga", PW, B1)
    review.sign_review("quinn", PW, B1)
    with pytest.raises(AccessDenied, match="lacks permission 'batch.release'"):
        review.dispose(records, "olga", PW, B1)
    with pytest.raises(AuthError):
        review.dispose(records, "quinn", "wrong-password", B1)
    assert records.get_batch(B1).disposition is None


def test_review_of_an_altered_excerpt_is_not_valid(env) -> None:
    _, audit, _, review = env
    shown = review.excerpt(B1)
    audit.append("olga", "note", "batch", B1, reason="arrived while QA was reading")
    review.sign_review("quinn", PW, B1, excerpt=shown)  # signs what was shown, not the newer state
    assert "changed before it was signed or since" in review.status(B1).why


def test_recommendation_decisions(env) -> None:
    _, audit, users, _ = env
    rec = {"id": "REC-5", "tag": "BR01.pHSP", "from": 7.1, "to": 7.0}
    with pytest.raises(ValueError, match="a rejected decision needs a reason"):
        record_recommendation_decision(users, "olga", PW, "REC-5", B1, "rejected", rec)
    with pytest.raises(ValueError, match="modified_to is required"):
        record_recommendation_decision(users, "olga", PW, "REC-5", B1, "modified", rec, "smaller")
    with pytest.raises(AccessDenied, match="'dana' .* lacks permission 'recommendation.decide'"):
        record_recommendation_decision(users, "dana", PW, "REC-5", B1, "accepted", rec)
    sig = record_recommendation_decision(users, "olga", PW, "REC-5", B1, "modified", rec,
                                         "half the step", modified_to={"to": 7.05})
    assert sig.meaning == "modified" and Users.signature_matches(
        sig, {"recommendation": rec, "batch_id": B1, "decision": "modified",
              "modified_to": {"to": 7.05}})
    decided = audit.entries(entity="recommendation", entity_id="REC-5")
    assert decided["action"].to_list() == ["sign", "decide"]
    assert B1 in decided["new"][1]  # so the decision is part of the batch's review excerpt


def test_model_promotion_and_connector_state(env, tmp_path: Path) -> None:
    _, audit, users, _ = env
    report = tmp_path / "eval.html"
    report.write_text("<h1>RMSE 0.12</h1>")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        record_model_promotion(users, "dana", PW, "yield", "7", "production", "abc", "better")
    with pytest.raises(AccessDenied):
        record_model_promotion(users, "olga", PW, "yield", "7", "production", file_hash(report),
                               "better")
    sig = record_model_promotion(users, "dana", PW, "yield", "7", "production", file_hash(report),
                                 "RMSE -18 % on hold-out", previous_version="6")
    promo = audit.entries(entity="model", entity_id="yield").row(-1, named=True)
    assert promo["action"] == "promote" and file_hash(report) in promo["new"]
    assert f'"signature_id":{sig.id}' in promo["new"] and promo["old"] == '{"version":"6"}'
    e = record_connector_state(audit, "opcua-br", "READY", "RECONNECTING", "socket closed")
    assert (e.actor, e.entity, e.old, e.new) == ("system:opcua-br", "connector", '{"state":"READY"}',
                                                 '{"state":"RECONNECTING"}')
    assert audit.verify().ok
