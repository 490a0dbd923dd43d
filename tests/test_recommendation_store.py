"""Recommendation records: pending advice, signed decisions, refusals."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from plant.audit import AuditTrail
from argon2 import PasswordHasher

from plant.identity import LocalPasswords
from plant.recommendations import Recommendation, RecommendationStore
from plant.records import Records
from plant.roles import AccessDenied, AuthError
from plant.users import Users

FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))  # fast hashing for tests
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)


def rec(proposed: float = 37.5) -> Recommendation:
    return Recommendation("COI-DEMO-AAAA-BBBB-C", "BR01", "TEMP_SP", 37.0, proposed, 0.08, 0.02, 0.15, -0.01,
                          (("temp_mean_24h", 0.12), ("vcd_last", -0.05)), "batch_yield/3", "ab" * 32, T0)


@pytest.fixture
def setup(tmp_path):
    with Records.open(tmp_path / "records.db") as records:
        users = Users(records, AuditTrail(records), identity=FAST)
        users.init_admin("admin", "Ada Admin", "Ada-Lovelace-1815")
        users.create("admin", "eng", "Eve Engineer", "engineer", "Eve-Builds-4242")
        users.create("admin", "qa", "Quinn QA", "qa", "Quinn-Check-777")
        yield RecommendationStore(records), users


def test_pending_then_signed_acceptance_on_the_audit_trail(setup):
    store, users = setup
    [rid] = store.add([rec()])
    assert store.add([rec()]) == [rid]  # the same advice is not stored twice
    assert store.table(status="pending").height == 1
    sig = store.decide(users, "eng", "Eve-Builds-4242", rid, "accepted")
    assert sig.full_name == "Eve Engineer" and sig.meaning == "accepted"
    row = store.table().row(0, named=True)
    assert row["status"] == "accepted" and row["applied_value"] == 37.5 and row["signature_id"] == sig.id
    trail = users.audit.entries(entity="recommendation", entity_id=rid)
    assert "decide" in trail["action"].to_list()
    with pytest.raises(ValueError, match="already accepted"):
        store.decide(users, "eng", "Eve-Builds-4242", rid, "rejected", "changed my mind")


def test_wrong_password_role_and_missing_reason_are_refused(setup):
    store, users = setup
    [rid] = store.add([rec(37.8)])
    with pytest.raises(AuthError):
        store.decide(users, "eng", "wrong", rid, "accepted")
    with pytest.raises(AccessDenied):
        store.decide(users, "qa", "Quinn-Check-777", rid, "accepted")  # QA cannot accept a setpoint change
    with pytest.raises(ValueError, match="reason"):
        store.decide(users, "eng", "Eve-Builds-4242", rid, "rejected")
    assert store.get(rid)[1] == "pending"
    store.decide(users, "eng", "Eve-Builds-4242", rid, "modified", "half the step", modified_to=37.4)
    assert store.table().row(0, named=True)["applied_value"] == 37.4


def test_gain_outside_its_interval_is_refused():
    with pytest.raises(ValueError, match="outside its interval"):
        Recommendation("B", "BR01", "TEMP_SP", 37.0, 37.5, 0.5, 0.0, 0.1, 0.0, (), "m/1", "x", T0)
