"""`cellwatch users ...`: accounts and roles. Passwords come from prompts or stdin, never argv."""

from __future__ import annotations

from pathlib import Path

import click

from cellwatch.auth_cli import Secrets, data_option, refusals, stdin_option, stores
from plant.users import ROLES

as_option = click.option("--as", "actor", required=True, metavar="ADMIN",
                         help="The admin doing this (authenticates with their password).")
reason_option = click.option("--reason", required=True, help="Why (goes on the audit trail).")


@click.group("users")
def users() -> None:
    """User accounts: init, create, list, set-role, lock/unlock, reset-password."""


@users.command("init")
@data_option
@click.option("--username", required=True, help="The first admin's user name.")
@click.option("--full-name", required=True, help="Printed name, shown on signatures.")
@stdin_option
def init(data: Path, username: str, full_name: str, password_stdin: bool) -> None:
    """Create the first admin at set-up (refused once any account exists)."""
    pw = Secrets(password_stdin).get(f"password for {username}", confirm=True)
    with stores(data, must_exist=False) as s:
        s.users.init_admin(username, full_name, pw)
    click.echo(f"created admin {username} in {data / 'records.db'}")


@users.command("create")
@data_option
@click.argument("username")
@click.option("--full-name", required=True, help="Printed name, shown on signatures.")
@click.option("--role", required=True, type=click.Choice(ROLES))
@as_option
@stdin_option
@refusals
def create(data: Path, username: str, full_name: str, role: str, actor: str,
           password_stdin: bool) -> None:
    """Create an account (stdin lines: the admin's password, then the new user's)."""
    sec = Secrets(password_stdin)
    with stores(data) as s:
        session = s.users.authenticate(actor, sec.get(f"password of {actor}"))
        s.users.create(session.username, username, full_name, role,
                       sec.get(f"new password for {username}", confirm=True))
    click.echo(f"created {role} {username}")


@users.command("list")
@data_option
def list_users(data: Path) -> None:
    """List accounts: role, active, locked, failed attempts."""
    with stores(data) as s:
        frame = s.users.list()
    click.echo(f"{'username':<16} {'full name':<28} {'role':<15} {'active':<7} {'locked':<7} failures")
    for u, name, role, active, locked, failures, _ in frame.iter_rows():
        click.echo(f"{u:<16} {name:<28} {role:<15} {'yes' if active else 'no':<7} "
                   f"{'yes' if locked else 'no':<7} {failures}")


def _admin_change(data: Path, actor: str, password_stdin: bool, what: str, *args: object) -> None:
    with stores(data) as s:
        session = s.users.authenticate(actor, Secrets(password_stdin).get(f"password of {actor}"))
        user = getattr(s.users, what)(session.username, *args)
    click.echo(f"{user.username}: role {user.role}, {'active' if user.active else 'deactivated'}, "
               f"{'locked' if user.locked else 'unlocked'}")


@users.command("set-role")
@data_option
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@as_option
@reason_option
@stdin_option
@refusals
def set_role(data: Path, username: str, role: str, actor: str, reason: str,
             password_stdin: bool) -> None:
    """Change a user's role."""
    _admin_change(data, actor, password_stdin, "set_role", username, role, reason)


@users.command("lock")
@data_option
@click.argument("username")
@as_option
@reason_option
@stdin_option
@refusals
def lock(data: Path, username: str, actor: str, reason: str, password_stdin: bool) -> None:
    """Lock an account."""
    _admin_change(data, actor, password_stdin, "lock", username, reason)


@users.command("unlock")
@data_option
@click.argument("username")
@as_option
@reason_option
@stdin_option
@refusals
def unlock(data: Path, username: str, actor: str, reason: str, password_stdin: bool) -> None:
    """Unlock an account and clear its failed attempts."""
    _admin_change(data, actor, password_stdin, "unlock", username, reason)


@users.command("deactivate")
@data_option
@click.argument("username")
@as_option
@reason_option
@stdin_option
@refusals
def deactivate(data: Path, username: str, actor: str, reason: str, password_stdin: bool) -> None:
    """Deactivate an account (accounts are never deleted, so records stay attributable)."""
    _admin_change(data, actor, password_stdin, "set_active", username, False, reason)


@users.command("reset-password")
@data_option
@click.argument("username")
@as_option
@reason_option
@stdin_option
@refusals
def reset_password(data: Path, username: str, actor: str, reason: str,
                   password_stdin: bool) -> None:
    """Set a new password for a user (stdin lines: the admin's, then the new one)."""
    sec = Secrets(password_stdin)
    with stores(data) as s:
        session = s.users.authenticate(actor, sec.get(f"password of {actor}"))
        s.users.reset_password(session.username, username,
                               sec.get(f"new password for {username}", confirm=True), reason)
    click.echo(f"{username}: password reset, account unlocked")


@users.command("passwd")
@data_option
@click.argument("username")
@stdin_option
@refusals
def passwd(data: Path, username: str, password_stdin: bool) -> None:
    """Change your own password (stdin lines: the old, then the new)."""
    sec = Secrets(password_stdin)
    with stores(data) as s:
        s.users.change_password(username, sec.get("current password"),
                                sec.get("new password", confirm=True))
    click.echo(f"{username}: password changed")
