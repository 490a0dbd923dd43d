"""The one-command demo: history, models, users, then the live plant, ingest, panel and MLflow UI."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

DEMO_USERS = (  # username, printed name, role
    ("admin", "Ada Admin", "admin"),
    ("operator", "Oscar Operator", "operator"),
    ("engineer", "Erin Engineer", "engineer"),
    ("qa", "Quinn QA", "qa"),
    ("scientist", "Sam Scientist", "data_scientist"),
)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    argv: list[str]
    url: str | None
    health: tuple[str, int] | None  # host, port that accepts connections when the service is up


def _free(port: int) -> int:
    """The port if it is free on 127.0.0.1, else any free one."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def ensure_users(records_db: Path, credentials: Path) -> list[tuple[str, str, str]]:
    """Create the demo users once (random passwords, kept owner-only); return (user, role, password)."""
    from plant.audit import AuditTrail
    from plant.records import Records
    from plant.users import Users

    if credentials.exists():
        rows = [line.split("\t") for line in credentials.read_text().splitlines() if line and not line.startswith("#")]
        return [(u, r, p) for u, r, p in rows]
    out = []
    with Records.open(records_db) as records:
        users = Users(records, AuditTrail(records))
        for i, (name, full, role) in enumerate(DEMO_USERS):
            password = f"{name}-{secrets.token_urlsafe(9)}"
            if i == 0:
                users.init_admin(name, full, password)
            else:
                users.create("admin", name, full, role, password)
            out.append((name, role, password))
    credentials.parent.mkdir(parents=True, exist_ok=True)
    credentials.write_text("# demo users: username<TAB>role<TAB>password\n" +
                           "".join(f"{u}\t{r}\t{p}\n" for u, r, p in out))
    credentials.chmod(0o600)
    return out


def services(data: Path, seed: int, panel_port: int, mlflow_port: int, metrics_port: int) -> list[Service]:
    """The long-running processes of the demo, each a `cellwatch` (or mlflow) command."""
    cw = [sys.executable, "-m", "cellwatch.cli"]
    common = ["--pki", str(data / "pki"), "--secrets", str(data / "secrets.toml")]
    plant = data / "plant"
    return [
        Service("plant", [*cw, "plant", "serve", *common, "--seed", str(seed), "--speed", "600",
                          "--fault-scale", "5", "--data", str(plant)], None, None),
        Service("ingest", [*cw, "ingest", *common, "--data", str(plant), "--metrics-port", str(metrics_port)],
                f"http://127.0.0.1:{metrics_port}/metrics", ("127.0.0.1", metrics_port)),
        Service("panel", [*cw, "panel", "--data", str(plant), "--history", str(data / "history"),
                          "--mlflow", str(data / "mlflow.db"), "--port", str(panel_port)],
                f"http://127.0.0.1:{panel_port}/", ("127.0.0.1", panel_port)),
        Service("mlflow", [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                           f"sqlite:///{(data / 'mlflow.db').resolve()}", "--host", "127.0.0.1", "--port",
                           str(mlflow_port)], f"http://127.0.0.1:{mlflow_port}/", ("127.0.0.1", mlflow_port)),
    ]


def _up(host_port: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(host_port, timeout=0.5):
            return True
    except OSError:
        return False


def supervise(procs: dict[str, subprocess.Popen], wanted: list[Service], log_dir: Path) -> None:
    """Wait until Ctrl-C or a service dies; then stop every service (SIGINT, then SIGKILL after 10 s)."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for s in wanted:
                if procs[s.name].poll() is not None:
                    click.echo(f"{s.name} exited with code {procs[s.name].returncode}; see {log_dir / s.name}.log",
                               err=True)
                    stop = True
            time.sleep(0.5)
    finally:
        click.echo("stopping ...", err=True)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(wanted: list[Service], log_dir: Path, wait_s: float = 120.0) -> dict[str, subprocess.Popen]:
    """Start every service with its output in log_dir/<name>.log; wait until each is reachable."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {}
    for s in wanted:
        log = open(log_dir / f"{s.name}.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        procs[s.name] = subprocess.Popen(s.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
    deadline = time.monotonic() + wait_s
    for s in wanted:
        while s.health is not None and not _up(s.health):
            if procs[s.name].poll() is not None:
                raise click.ClickException(f"{s.name} failed to start; see {log_dir / s.name}.log")
            if time.monotonic() > deadline:
                raise click.ClickException(f"{s.name} did not come up in {wait_s:.0f} s; see {log_dir / s.name}.log")
            time.sleep(0.3)
    return procs
