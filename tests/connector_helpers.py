"""Shared set-up for the connector tests: the demo site on free loopback ports, users, a refusing historian."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plant.secrets import Credentials, ServerUser
from plant.site import Site, demo_site_text, parse_site

USERS = {"ingest": ServerUser("ingest", "operator", "ingest-secret-1"),
         "engineer": ServerUser("engineer", "engineer", "engineer-secret-1")}
INGEST = Credentials("ingest", "ingest-secret-1")
ENGINEER = Credentials("engineer", "engineer-secret-1")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def demo_site_text_on_free_ports(interval_ms: int = 200, backoff_max_s: float = 1.0) -> str:
    """The demo site with every endpoint on a free port and quick polling/backoff for tests."""
    text = demo_site_text()
    ports = iter(free_ports(1 + len(re.findall(r"^port = \d+", text, flags=re.M))))
    text = text.replace("opc.tcp://127.0.0.1:4840/cellwatch", f"opc.tcp://127.0.0.1:{next(ports)}/cellwatch")
    text = re.sub(r"^port = \d+", lambda _: f"port = {next(ports)}", text, flags=re.M)
    tuning = f"interval_ms = {interval_ms}\nbackoff_max_s = {backoff_max_s}\n"
    text = re.sub(r'^(timeout_s = [\d.]+\n)', lambda m: m.group(1) + tuning, text, flags=re.M)
    return re.sub(r'^(security = "Basic256Sha256_SignAndEncrypt"\n)', lambda m: m.group(1) + tuning, text, flags=re.M)


def demo_site_on_free_ports(**kw: float) -> Site:
    return parse_site(demo_site_text_on_free_ports(**kw), source="test-site.toml")


def write_secrets(path: Path, endpoint_ids: list[str]) -> Path:
    lines = []
    for ep in endpoint_ids:
        lines += [f'[opcua."{ep}"]', f'username = "{INGEST.username}"', f'password = "{INGEST.password}"', ""]
    for u in USERS.values():
        lines += [f"[twin_users.{u.name}]", f'role = "{u.role}"', f'password = "{u.password}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    os.chmod(path, 0o600)
    return path


@contextmanager
def refuse_writes(root: Path) -> Iterator[None]:
    """The historian folder is replaced by a plain file: every write fails with a real OSError (works as root,
    where permissions would not stop a write); afterwards the folder comes back untouched."""
    held = root.with_name(root.name + ".held")
    os.rename(root, held)
    root.write_text("not a folder: the historian is unavailable\n")
    try:
        yield
    finally:
        root.unlink()
        os.rename(held, root)


async def until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> float:
    """Wait for a condition that has no event of its own (files on disk); returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic() - t0
