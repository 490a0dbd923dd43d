"""Shared pieces of the `cellwatch users` and `cellwatch audit` commands: stores, secrets, errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from plant.audit import AuditTrail
from plant.audit_review import ReviewRequired
from plant.oidc import load_identity
from plant.records import Records
from plant.users import AccessDenied, AuthError, Users

F = TypeVar("F", bound=Callable[..., Any])

data_option = click.option(
    "--data", "-d", default=Path("data") / "demo", show_default=True, envvar="CELLWATCH_DATA",
    type=click.Path(path_type=Path, file_okay=False), help="Folder holding records.db.")
stdin_option = click.option(
    "--password-stdin", is_flag=True,
    help="Read passwords from standard input, one a line, instead of prompting.")


class Refused(click.ClickException):
    """Refused: authentication, permission or review; one line, exit code 2."""

    exit_code = 2


def refusals(fn: F) -> F:
    """Turn authentication, permission and review refusals into one-line errors."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (AuthError, AccessDenied, ReviewRequired) as exc:
            raise Refused(f"refused: {exc}") from None
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Stores:
    records: Records
    audit: AuditTrail
    users: Users


@contextmanager
def stores(data: Path, must_exist: bool = True) -> Iterator[Stores]:
    """Open records.db in `data` with its audit trail and users."""
    db = data / "records.db"
    if must_exist and not db.exists():
        raise click.ClickException(f"{db}: no records database; run `cellwatch users init -d {data}`"
                                   " or `cellwatch simulate --out` first")
    records = Records.open(db)
    try:
        audit = AuditTrail(records)
        yield Stores(records, audit, Users(records, audit, identity=load_identity()))
    finally:
        records.close()


class Secrets:
    """Passwords from prompts (hidden) or, with --password-stdin, from stdin lines; never argv."""

    def __init__(self, from_stdin: bool) -> None:
        self._lines: Iterator[str] | None = None
        if from_stdin:
            self._lines = iter(sys.stdin.read().splitlines())

    def get(self, prompt: str, confirm: bool = False) -> str:
        if self._lines is None:
            return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm,
                                    err=True))
        try:
            return next(self._lines)
        except StopIteration:
            raise click.ClickException(f"--password-stdin: no line left for {prompt!r}") from None


def parse_ts(value: str | None, option: str) -> datetime | None:
    """An ISO date/time option as aware UTC (naive means UTC)."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise click.ClickException(f"{option}: not an ISO date/time: {value!r}") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
