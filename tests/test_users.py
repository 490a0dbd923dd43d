"""Users: roles and permissions per action, lockout, sessions, e-signatures bound to record hashes."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from plant.audit import AuditTrail, record_hash
from plant.identity import IdentityProvider, LocalPasswords
from plant.records import Records
from plant.users import (
    ALL_PERMISSIONS,
    PERMISSIONS,
    ROLES,
    AccessDenied,
    AccountLocked,
    AuthError,
    SessionExpired,
    User,
    Users,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
PW = {role: f"pw-{i}-correct-horse" for i, role in enumerate(ROLES)}
# argon2id as in production, with small memory and time so the suite stays fast
FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.db"


def one_user_per_role(db: Path, clock: Clock):
    with Records.open(db) as records:
        u = Users(records, AuditTrail(records), identity=FAST, clock=clock)
        u.init_admin("admin", "Ada Admin", PW["admin"])
        for role in ROLES[:-1]:
            u.create("admin", role, f"{role.title()} Person", role, PW[role])
        yield u


@pytest.fixture
def users(db: Path, clock: Clock):
    yield from one_user_per_role(db, clock)


@pytest.fixture(scope="module")
def shared_users(tmp_path_factory: pytest.TempPathFactory):
    """One database for the 100 role x permission cases (each only reads, or adds a denial)."""
    yield from one_user_per_role(tmp_path_factory.mktemp("roles") / "records.db", Clock())


def last(users: Users, n: int = 1) -> list[tuple[str, str, str, str]]:
    frame = users.audit.entries().tail(n)
    return list(frame.select("actor", "action", "entity_id", "reason").iter_rows())


# -- permissions: every role x a sample of every action ---------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("permission", sorted(ALL_PERMISSIONS))
def test_each_role_and_action(shared_users: Users, role: str, permission: str) -> None:
    users = shared_users
    session = users.authenticate(role, PW[role])
    if permission in PERMISSIONS[role]:
        users.require(session, permission)
        assert users.allowed(role, permission)
    else:
        with pytest.raises(AccessDenied) as exc:
            users.require(session, permission)
        assert str(exc.value) == f"user {role!r} (role {role}) lacks permission {permission!r}"
        assert (exc.value.username, exc.value.role, exc.value.permission) == (role, role, permission)
        assert last(users) == [(role, "access_denied", permission, str(exc.value))]
        assert not users.allowed(role, permission)


def test_separation_of_duties() -> None:
    assert "user.manage" in PERMISSIONS["admin"]
    assert not PERMISSIONS["admin"] & {"batch.release", "deviation.close", "audit.review",
                                       "setpoint.write", "recommendation.decide"}
    assert "setpoint.write" not in PERMISSIONS["qa"] and "batch.release" in PERMISSIONS["qa"]
    assert [r for r in ROLES if "user.manage" in PERMISSIONS[r]] == ["admin"]


def test_unknown_permission_is_an_error(users: Users) -> None:
    with pytest.raises(ValueError, match="unknown permission 'deviation.clsoe'"):
        users.require("qa", "deviation.clsoe")


def test_role_change_applies_at_once(users: Users) -> None:
    session = users.authenticate("operator", PW["operator"])
    users.require(session, "setpoint.write")
    users.set_role("admin", "operator", "qa", "moved to QA")
    with pytest.raises(AccessDenied, match=r"\(role qa\) lacks permission 'setpoint.write'"):
        users.require(session, "setpoint.write")
    users.lock("admin", "operator", "left the site")
    with pytest.raises(AccessDenied, match="is locked"):
        users.require(session, "audit.read")


def test_only_user_managers_manage_users(users: Users) -> None:
    with pytest.raises(AccessDenied, match="'engineer' \\(role engineer\\) lacks permission "
                                           "'user.manage'"):
        users.create("engineer", "eve", "Eve", "admin", "a-long-password")
    with pytest.raises(AccessDenied):
        users.set_role("qa", "operator", "admin", "promote myself")
    with pytest.raises(ValueError, match="accounts exist already"):
        users.init_admin("root", "Root", "another-long-password")
    with pytest.raises(ValueError, match="last active admin"):
        users.set_role("admin", "admin", "qa", "oops")
    with pytest.raises(ValueError, match="a reason is required"):
        users.lock("admin", "qa", " ")


# -- passwords, lockout, sessions ------------------------------------------------------------


def test_passwords_are_argon2id_never_plain(users: Users, db: Path) -> None:
    (stored,) = sqlite3.connect(db).execute(
        "SELECT password_hash FROM users WHERE username = 'qa'").fetchone()
    assert stored.startswith("$argon2id$")
    assert PW["qa"].encode() not in db.read_bytes() + Path(f"{db}-wal").read_bytes()
    with pytest.raises(ValueError, match="at least 10 characters"):
        users.create("admin", "shorty", "Short", "qa", "short")
    with pytest.raises(ValueError, match="must not contain the username"):
        users.create("admin", "carol", "Carol", "qa", "carol-is-great")


def test_five_failures_lock_the_account(users: Users) -> None:
    for i in range(1, 5):
        with pytest.raises(AuthError, match="authentication failed for 'operator'") as exc:
            users.authenticate("operator", "wrong")
        assert type(exc.value) is AuthError
        assert last(users) == [("operator", "login_failed", "operator", f"wrong secret ({i} of 5)")]
    with pytest.raises(AccountLocked, match="after 5 failed attempts"):
        users.authenticate("operator", "wrong")
    assert last(users, 2) == [("operator", "login_failed", "operator", "wrong secret (5 of 5)"),
                              ("system", "lock", "operator", "5 consecutive failed attempts")]
    with pytest.raises(AccountLocked):  # the right password no longer helps
        users.authenticate("operator", PW["operator"])
    assert users.get("operator") == User("operator", "Operator Person", "operator", True, True)
    users.unlock("admin", "operator", "identity confirmed by phone")
    users.authenticate("operator", PW["operator"])


def test_a_success_resets_the_failure_count(users: Users) -> None:
    for _ in range(4):
        with pytest.raises(AuthError):
            users.authenticate("qa", "wrong")
    users.authenticate("qa", PW["qa"])
    for _ in range(4):
        with pytest.raises(AuthError):
            users.authenticate("qa", "wrong")
    assert not users.get("qa").locked


def test_unknown_and_deactivated_users_are_refused_and_recorded(users: Users) -> None:
    with pytest.raises(AuthError, match="authentication failed for 'nobody'"):
        users.authenticate("nobody", "whatever")
    assert last(users) == [("nobody", "login_failed", "nobody", "unknown user")]
    users.set_active("admin", "engineer", False, "left the company")
    with pytest.raises(AuthError, match="account deactivated: 'engineer'"):
        users.authenticate("engineer", PW["engineer"])


def test_session_times_out_when_idle(users: Users, clock: Clock) -> None:
    session = users.authenticate("engineer", PW["engineer"])
    assert session.expires_ts == T0 + timedelta(seconds=900)
    clock.now += timedelta(seconds=600)
    session = users.touch(session)
    clock.now += timedelta(seconds=600)  # 1200 s after login, but only 600 s idle
    users.require(session, "alarm.shelve")
    clock.now += timedelta(seconds=300)
    with pytest.raises(SessionExpired, match="'engineer' expired after 900 s idle"):
        users.require(session, "alarm.shelve")
    with pytest.raises(SessionExpired):
        users.touch(session)


# -- electronic signatures -------------------------------------------------------------------


RECORD = {"deviation": "DEV-12", "batch_id": "COI-DEMO-0000-0000-X", "capa": "replace probe",
          "opened_ts": T0}


def test_signature_binds_meaning_name_time_and_record_hash(users: Users, clock: Clock) -> None:
    sig = users.sign("qa", PW["qa"], "approved", "deviation", "DEV-12", RECORD, "CAPA adequate",
                     permission="deviation.approve")
    assert (sig.username, sig.full_name, sig.meaning, sig.ts) == ("qa", "Qa Person", "approved", T0)
    assert sig.record_hash == record_hash(RECORD)
    assert sig.manifest() == "Qa Person (qa) - approved - 2025-03-01 08:00:00 UTC"
    assert users.signatures("deviation", "DEV-12") == [sig]
    assert Users.signature_matches(sig, RECORD)
    assert not Users.signature_matches(sig, {**RECORD, "capa": "nothing"})
    (entry,) = users.audit.entries(entity="deviation", entity_id="DEV-12").iter_rows(named=True)
    assert entry["actor"] == "qa" and entry["action"] == "sign" and f'"signature_id":{sig.id}' in entry["new"]


def test_signature_with_wrong_password_is_refused_and_recorded(users: Users) -> None:
    with pytest.raises(AuthError, match="authentication failed for 'qa'"):
        users.sign("qa", "not-my-password", "approved", "deviation", "DEV-12", RECORD)
    assert users.signatures() == []
    assert last(users) == [("qa", "signature_failed", "qa", "wrong secret (1 of 5)")]
    for _ in range(3):
        with pytest.raises(AuthError):
            users.sign("qa", "not-my-password", "approved", "deviation", "DEV-12", RECORD)
    with pytest.raises(AccountLocked):  # signing failures count toward the lockout too
        users.sign("qa", "not-my-password", "approved", "deviation", "DEV-12", RECORD)
    with pytest.raises(AccountLocked):
        users.sign("qa", PW["qa"], "approved", "deviation", "DEV-12", RECORD)
    assert users.signatures() == []


def test_signature_needs_the_permission_when_asked(users: Users) -> None:
    with pytest.raises(AccessDenied, match="'operator' \\(role operator\\) lacks permission "
                                           "'deviation.close'"):
        users.sign("operator", PW["operator"], "closed", "deviation", "DEV-12", RECORD,
                   permission="deviation.close")
    assert users.signatures() == []
    with pytest.raises(ValueError, match="meaning must be one of"):
        users.sign("qa", PW["qa"], "ok", "deviation", "DEV-12", RECORD)


def test_signatures_are_append_only(users: Users, db: Path) -> None:
    users.sign("qa", PW["qa"], "reviewed", "deviation", "DEV-1", RECORD)
    for sql in ("UPDATE signatures SET meaning = 'rejected'", "DELETE FROM signatures"):
        with pytest.raises(sqlite3.DatabaseError, match="signatures is append-only"):
            sqlite3.connect(db, isolation_level=None).execute(sql)
    assert users.audit.verify().ok


def test_audit_trail_of_user_management_verifies(users: Users) -> None:
    users.reset_password("admin", "qa", "a-brand-new-password", "forgotten")
    users.change_password("qa", "a-brand-new-password", "another-new-password")
    users.authenticate("qa", "another-new-password")
    actions = users.audit.entries(entity_id="qa")["action"].to_list()
    assert actions == ["create", "reset_password", "change_password", "login"]
    assert "$argon2" not in "".join(users.audit.entries()["new"].drop_nulls())
    assert users.audit.verify().ok


def test_identity_provider_hook() -> None:
    assert isinstance(FAST, IdentityProvider)
    assert FAST.verify("x", "pw-pw-pw-pw", FAST.hash_secret("x", "pw-pw-pw-pw"))
    assert not FAST.verify("x", "wrong", None)  # unknown user: still hashes, still False


def test_permissions_table_matches_the_docs() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "compliance.md").read_text()
    table = text.split("<!-- permissions-table:start -->")[1].split("<!-- permissions-table:end -->")[0]
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("| `")]
    header = [c.strip() for c in table.strip().splitlines()[0].strip("|").split("|")]
    assert header == ["permission", *ROLES]
    documented = {}
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        documented[cells[0].strip("`")] = {r for r, c in zip(ROLES, cells[1:], strict=True) if c == "yes"}
    assert documented == {p: {r for r in ROLES if p in PERMISSIONS[r]} for p in ALL_PERMISSIONS}


def test_accounts_edited_in_the_database_are_named(users: Users, db: Path) -> None:
    from plant.account_check import check_accounts

    users.lock("admin", "engineer", "holiday")
    users.reset_password("admin", "operator", "a-brand-new-password", "forgotten")
    assert check_accounts(users.audit) == []
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE users SET role = 'qa' WHERE username = 'operator'")
    con.execute("UPDATE users SET password_hash = (SELECT password_hash FROM users "
                "WHERE username = 'admin') WHERE username = 'qa'")
    con.execute("UPDATE users SET locked = 0 WHERE username = 'engineer'")
    con.execute("INSERT INTO users VALUES ('mallory', 'M', 'admin', 1, 0, NULL, 0, "
                "'2025-01-01 00:00:00.000000')")
    assert check_accounts(users.audit) == [
        "user 'engineer': locked is False but the audit trail says True",
        "user 'mallory' has no 'create' entry on the audit trail (added outside cellwatch)",
        "user 'operator': role is 'qa' but the audit trail says 'operator'",
        "user 'qa': password hash changed outside cellwatch"]
