"""The one-command demo: history, models, users, then the live plant, ingest, panel and MLflow UI.

Layout of the demo folder (default data/demo):

    history/          twin history (records.db, historian/): what the models are trained and gated on
    mlflow.db mlruns/ the MLflow store (runs, registered models) the panel and the MLflow UI open
    plant/            the live plant: records.db (users, audit trail, alarms, the twin's batch records),
                      historian/ (ingest), spool/
    recommender/      the setpoint recommender's models (trained on history/ on first run)
    pki/ secrets.toml the OPC UA certificates and the servers' user passwords (generated on first run)
    demo-users.txt    the demo users' passwords (owner-only)
    logs/             one log per service

Every step is skipped when its result exists, so a second run starts the services at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

DEMO_USERS = (  # username, printed name, role
    ("admin", "Ada Admin", "admin"),
    ("operator", "Oscar Operator", "operator"),
    ("engineer", "Erin Engineer", "engineer"),
    ("qa", "Quinn QA", "qa"),
    ("scientist", "Sam Scientist", "data_scientist"),
)
CREDENTIALS = "demo-users.txt"
# The demo's model config: the built-in one, but the deviation alert threshold is set for 0.10 false alarms
# per batch-day instead of 0.15, so that on the demo's small history (8 faults in the hold-out) the gate's
# limit of 0.20 is met with a margin. The acceptance criteria themselves are unchanged.
MODELS_TOML = "target_false_alarms_per_batch_day = 0.10\n"
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class DemoConfig:
    data: Path
    batches: int = 200
    seed: int = 1
    trials: int = 10
    panel_port: int = 8501
    mlflow_port: int = 5000
    ingest_port: int = 9108
    fault_scale: float = 10.0
    # 30 h: the twin starts its units 90 min apart, so at go-live five of the eight batches are past culture hour 24,
    # where the recommender's advisory window opens (and the other three reach it within 4.5 h)
    preroll_h: float = 30.0
    alarms_every_s: float = 60.0
    recommend_every_min: float = 2.0
    wait_s: float = 300.0

    @property
    def history(self) -> Path:
        # a demo folder of an earlier version holds its history at the top
        if (self.data / "records.db").exists() and not (self.data / "history").exists():
            return self.data
        return self.data / "history"

    @property
    def plant(self) -> Path:
        return self.data / "plant"

    @property
    def mlflow_db(self) -> Path:
        return self.data / "mlflow.db"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def recommender(self) -> Path:
        return self.data / "recommender"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    argv: list[str]
    url: str | None
    ready: Callable[[], bool] | None  # True once the service answers
    env: dict[str, str] = field(default_factory=dict)


def _cellwatch(*args: str) -> list[str]:
    # -P: a folder named like a package in the working directory (the demo's own plant/) must not shadow it
    return [sys.executable, "-P", "-m", "cellwatch.cli", *args]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port(port: int, taken: set[int] | None = None) -> int:
    """The port if it is free on 127.0.0.1 (and not already handed out), else any free one."""
    taken = taken if taken is not None else set()
    if port and port not in taken and port_free(port):
        taken.add(port)
        return port
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            got = s.getsockname()[1]
        if got not in taken:
            taken.add(got)
            return got


def _tcp_up(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


# ------------------------------------------------------------------------------------------ set-up steps

def ensure_history(cfg: DemoConfig) -> bool:
    """Generate the twin history once (into a temporary folder, renamed when complete); True if generated."""
    from plant.sim.history import generate_history
    from plant.site import load_demo_site

    if (cfg.history / "records.db").exists():
        click.echo(f"reusing the history in {cfg.history}")
        return False
    tmp = cfg.data / "history.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"first run: generating {cfg.batches} batches of plant history into {cfg.history} ...")
    t0 = time.monotonic()
    with click.progressbar(length=1, label="simulating", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)
        generate_history(load_demo_site(), tmp, cfg.batches, cfg.seed, workers=2, progress=progress)
    tmp.rename(cfg.history)
    click.echo(f"history generated in {time.monotonic() - t0:.0f} s")
    return True


def _versions(cfg: DemoConfig) -> dict[str, dict[str, str | None]]:
    """Per model kind, the champion and challenger versions registered in the demo's MLflow store."""
    if not cfg.mlflow_db.exists():
        return {}
    from models.registry import MODEL_NAMES, Tracking, resolve, setup

    tracking = Tracking(cfg.mlflow_db, cfg.data / "mlruns")
    setup(tracking)
    out: dict[str, dict[str, str | None]] = {}
    for kind in MODEL_NAMES:
        try:
            out[kind] = {alias: resolve(tracking, kind, alias) for alias in ("champion", "challenger")}
        except Exception:  # noqa: BLE001 - a model never registered
            out[kind] = {"champion": None, "challenger": None}
    return out


def _run_step(name: str, argv: list[str], log_dir: Path) -> subprocess.CompletedProcess[str]:
    """A set-up command as a child process, its output kept in log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "a") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            out, _ = proc.communicate()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            raise
        log.write(out)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def ensure_models(cfg: DemoConfig) -> None:
    """Train and register both models once; promote the first versions through the gate when no champion."""
    have = _versions(cfg)
    registered = have and all(v["champion"] or v["challenger"] for v in have.values())
    if registered:
        click.echo("reusing the models: " + ", ".join(
            f"{k} " + (f"v{v['champion']} (champion)" if v["champion"] else f"v{v['challenger']} (challenger, "
                       "no champion: the gate refused it)") for k, v in have.items()))
        return
    click.echo(f"first run: training the yield and deviation models ({cfg.trials} Optuna trials each; "
               f"log: {cfg.logs / 'train.log'}) ...")
    config = cfg.data / "models.toml"
    config.write_text(MODELS_TOML)
    t0 = time.monotonic()
    done = _run_step("train", _cellwatch("train", "--data", str(cfg.history), "--mlflow-db", str(cfg.mlflow_db),
                                         "--config", str(config), "--trials", str(cfg.trials)), cfg.logs)
    if done.returncode != 0:
        raise click.ClickException(f"training failed (exit {done.returncode}); see {cfg.logs / 'train.log'}")
    click.echo(f"trained and registered in {time.monotonic() - t0:.0f} s")
    for line in done.stdout.splitlines():
        if "registered:" in line or line.strip().startswith("acceptance"):
            click.echo("  " + line.strip())
    have = _versions(cfg)
    if any(v["champion"] is None for v in have.values()):
        click.echo("promoting the first versions to champion through the gate (acceptance on the locked hold-out)")
        done = _run_step("promote", _cellwatch("models", "promote", "--data", str(cfg.history), "--mlflow-db",
                                               str(cfg.mlflow_db), "--config", str(config), "--by", "demo", "--reason",
                                               "first models of the demo plant"), cfg.logs)
        for line in done.stdout.splitlines():
            if line.startswith(("yield:", "deviation:")):
                click.echo("  " + line.strip())
        if done.returncode != 0:
            click.echo("  the gate refused a model (see above); the panel says so where a prediction would be, "
                       "and a data scientist can retrain and promote on the Models page", err=True)


def ensure_recommender(cfg: DemoConfig) -> bool:
    """Train the setpoint recommender on the history once (saved in data/recommender/); True when there is one."""
    if (cfg.recommender / "version.json").exists():
        version = json.loads((cfg.recommender / "version.json").read_text()).get("version", "?")
        click.echo(f"reusing the setpoint recommender {version}")
        return True
    refused = cfg.data / "recommender.refused"
    if refused.exists():
        click.echo(f"no setpoint recommender: {refused.read_text().strip()} (remove {refused} to try again)")
        return False
    click.echo(f"first run: training the setpoint recommender (log: {cfg.logs / 'recommend-train.log'}) ...")
    tmp = cfg.data / "recommender.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    done = _run_step("recommend-train", _cellwatch("recommend", "train", "--history", str(cfg.history), "--out",
                                                   str(tmp)), cfg.logs)
    if done.returncode != 0:
        why = next((line for line in reversed(done.stdout.splitlines()) if line.startswith(("error", "Error"))),
                   f"exit {done.returncode}")
        click.echo(f"  the recommender could not be trained ({why}); the demo runs without setpoint advice "
                   f"(see {cfg.logs / 'recommend-train.log'})", err=True)
        shutil.rmtree(tmp, ignore_errors=True)
        refused.write_text(f"training refused on this history ({why})\n")
        return False
    tmp.rename(cfg.recommender)
    version = json.loads((cfg.recommender / "version.json").read_text()).get("version", "?")
    click.echo(f"  {version} trained in {time.monotonic() - t0:.0f} s")
    return True


def ensure_users(records_db: Path, credentials: Path) -> tuple[list[tuple[str, str, str]], bool]:
    """Create the demo users once (random passwords, kept owner-only); ((user, role, password), created)."""
    from plant.audit import AuditTrail
    from plant.records import Records
    from plant.users import Users

    records_db.parent.mkdir(parents=True, exist_ok=True)
    with Records.open(records_db) as records:
        users = Users(records, AuditTrail(records))
        existing = set(users.list()["username"].to_list())
        if existing:
            if not credentials.exists():
                raise click.ClickException(
                    f"{records_db} holds users but {credentials} is gone: set new passwords with "
                    f"`cellwatch users reset-password --data {records_db.parent} ...`, or remove {records_db.parent}")
            rows = [line.split("\t") for line in credentials.read_text().splitlines()
                    if line and not line.startswith("#")]
            return [(u, r, p) for u, r, p in rows], False
        out = []
        for i, (name, full, role) in enumerate(DEMO_USERS):
            password = _password(name)
            if i == 0:
                users.init_admin(name, full, password)
            else:
                users.create(DEMO_USERS[0][0], name, full, role, password)
            out.append((name, role, password))
    credentials.parent.mkdir(parents=True, exist_ok=True)
    credentials.touch(mode=0o600)
    credentials.chmod(0o600)
    credentials.write_text("# cellwatch demo users: username<TAB>role<TAB>password\n" +
                           "".join(f"{u}\t{r}\t{p}\n" for u, r, p in out))
    return out, True


def _password(username: str) -> str:
    """14 random letters and digits, never containing the user name (the password policy refuses that)."""
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(14))
        if username.lower() not in pw.lower():
            return pw


def site_for_demo(data: Path, taken: set[int]) -> tuple[Path | None, list[str]]:
    """The demo site, or a copy in data/site.toml with free ports when its OPC UA or Modbus ports are taken."""
    from plant.site import demo_site_text, load_demo_site

    site = load_demo_site()
    text, changed = demo_site_text(), False
    urls: list[str] = []
    for e in site.endpoints.values():
        if e.protocol == "opcua":
            m = re.search(r":(\d+)/", e.url)
            old = int(m.group(1)) if m else 4840
            new = free_port(old, taken)
            if new != old:
                text, changed = text.replace(e.url, e.url.replace(f":{old}/", f":{new}/")), True
            urls.append(f"OPC UA {e.url.replace(f':{old}/', f':{new}/')}")
        else:
            old = int(e.port)
            new = free_port(old, taken)
            if new != old:
                text, changed = re.sub(rf"(\nport\s*=\s*){old}\b", rf"\g<1>{new}", text), True
            urls.append(f"Modbus {e.id} {HOST}:{new}")
    if not changed:
        return None, urls
    path = data / "site.toml"
    path.write_text("# the demo site with free ports (written by `cellwatch demo`)\n" + text)
    return path, urls


# ------------------------------------------------------------------------------------------ services

def services(cfg: DemoConfig, site: Path | None, panel_port: int, mlflow_port: int,
             ingest_port: int, recommend: bool = False) -> list[Service]:
    """The long-running processes of the demo: `cellwatch` commands and the MLflow UI (and the recommender over
    the running batches when it could be trained)."""
    d = cfg.data
    common = ["--pki", str(d / "pki"), "--secrets", str(d / "secrets.toml"), *(["--site", str(site)] if site else [])]
    mlflow_url = f"http://{HOST}:{mlflow_port}/"
    advice = [Service("recommend", _cellwatch("recommend", "run", "--data", str(cfg.plant), "--models",
                                              str(cfg.recommender), *(["--site", str(site)] if site else []),
                                              "--every-min", f"{cfg.recommend_every_min:g}"), None, None)
              ] if recommend and cfg.recommend_every_min > 0 else []
    return advice + [
        Service("plant", _cellwatch("plant", "serve", *common, "--seed", str(cfg.seed), "--speed", "1",
                                    "--preroll-h", f"{cfg.preroll_h:g}", "--fault-scale", f"{cfg.fault_scale:g}",
                                    "--records", str(cfg.plant / "records.db"),
                                    "--backfill", str(cfg.plant / "historian"), "--log-level", "WARNING"),
                None, None),
        Service("ingest", _cellwatch("ingest", *common, "--data", str(cfg.plant), "--metrics-port", str(ingest_port),
                                     "--log-level", "WARNING"),
                f"http://{HOST}:{ingest_port}/metrics", lambda: _http_ok(f"http://{HOST}:{ingest_port}/health")),
        Service("panel", _cellwatch("panel", "--data", str(cfg.plant), "--history", str(cfg.history),
                                    "--mlflow", str(cfg.mlflow_db), "--port", str(panel_port)),
                f"http://{HOST}:{panel_port}/", lambda: _http_ok(f"http://{HOST}:{panel_port}/_stcore/health"),
                {"CELLWATCH_MLFLOW_UI": mlflow_url, **({"CELLWATCH_SITE": str(site)} if site else {})}),
        Service("mlflow", [sys.executable, "-P", "-m", "mlflow", "ui", "--backend-store-uri",
                           f"sqlite:///{cfg.mlflow_db.resolve()}", "--default-artifact-root",
                           str((d / "mlruns").resolve()), "--host", HOST, "--port", str(mlflow_port),
                           "--workers", "1"],
                mlflow_url, lambda: _http_ok(f"http://{HOST}:{mlflow_port}/health"),
                {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),  # no job runner + 7 workers (1.5 GB) for a UI
    ]


class Supervisor:
    """Starts services in their own process groups and stops them all (SIGINT, then SIGKILL) on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = False

    def start(self, s: Service) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{s.name}.log", "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(s.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(s.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **s.env})
        self.procs[s.name] = proc
        return proc

    def wait_ready(self, s: Service, deadline: float) -> None:
        """Until the service answers; ClickException when it exits or the deadline passes (or on Ctrl-C)."""
        proc = self.procs[s.name]
        while not self.stop:
            if s.ready is None or s.ready():
                return
            if proc.poll() is not None:
                raise click.ClickException(f"{s.name} exited with code {proc.returncode} while starting; "
                                           f"see {self.log_dir / s.name}.log")
            if time.monotonic() > deadline:
                raise click.ClickException(f"{s.name} did not come up in time; see {self.log_dir / s.name}.log")
            time.sleep(0.3)

    def dead(self) -> str | None:
        for name, p in self.procs.items():
            if not name.startswith("_") and p.poll() is not None:
                return name
        return None

    def shutdown(self, grace_s: float = 15.0) -> None:
        """SIGINT to every process group, SIGKILL to what is left after grace_s; reaps every child."""
        for p in self.procs.values():
            if p.poll() is None:
                _signal_group(p, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        for p in self.procs.values():  # grandchildren that outlived their parent (e.g. a server's workers)
            _signal_group(p, signal.SIGKILL)


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def run(cfg: DemoConfig) -> None:
    """The whole demo: set-up steps, then the services until Ctrl-C (exit code 0) or one of them dies."""
    t_start = time.monotonic()
    cfg.data.mkdir(parents=True, exist_ok=True)
    ensure_history(cfg)
    ensure_models(cfg)
    recommend = ensure_recommender(cfg)
    users, created = ensure_users(cfg.plant / "records.db", cfg.data / CREDENTIALS)
    click.echo(("created" if created else "reusing") + f" the demo users ({cfg.data / CREDENTIALS})")

    taken: set[int] = set()
    panel_port = free_port(cfg.panel_port, taken)
    mlflow_port = free_port(cfg.mlflow_port, taken)
    ingest_port = free_port(cfg.ingest_port, taken)
    site, plant_urls = site_for_demo(cfg.data, taken)
    wanted = services(cfg, site, panel_port, mlflow_port, ingest_port, recommend)
    by_name = {s.name: s for s in wanted}

    sup = Supervisor(cfg.logs)

    def on_signal(*_: object) -> None:
        sup.stop = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    died = None
    try:
        click.echo(f"starting the live plant ({cfg.preroll_h:g} h of its past first), ingest, panel and MLflow UI "
                   f"(logs: {cfg.logs}) ...")
        for name in ("plant", "panel", "mlflow"):
            sup.start(by_name[name])
        deadline = time.monotonic() + cfg.wait_s
        _wait_plant(sup, cfg, deadline)
        sup.start(by_name["ingest"])
        if "recommend" in by_name:  # advice from the first minute: the preroll's telemetry and records are stored
            sup.start(by_name["recommend"])
        for name in ("panel", "mlflow", "ingest"):
            sup.wait_ready(by_name[name], deadline)
        if not sup.stop:
            _banner(cfg, by_name, plant_urls, users, time.monotonic() - t_start)
        died = _supervise(sup, cfg)
    finally:
        if sup.procs:
            click.echo("stopping the demo ...", err=True)
        sup.shutdown()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if died is not None:
        raise click.ClickException(f"the demo stopped because {died} exited; see {cfg.logs / died}.log")
    click.echo("demo stopped", err=True)


def _wait_plant(sup: Supervisor, cfg: DemoConfig, deadline: float) -> None:
    """The plant is up once its log says it serves (after the preroll)."""
    log = cfg.logs / "plant.log"
    start = log.stat().st_size if log.exists() else 0
    proc = sup.procs["plant"]
    while not sup.stop:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if "serving " in text:
            return
        if proc.poll() is not None:
            raise click.ClickException(f"the plant exited with code {proc.returncode} while starting; see {log}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"the plant did not come up in time; see {log}")
        time.sleep(0.3)


def _banner(cfg: DemoConfig, by_name: dict[str, Service], plant_urls: list[str],
            users: list[tuple[str, str, str]], took: float) -> None:
    click.echo(f"\ncellwatch demo is up (started in {took:.0f} s):")
    click.echo(f"  panel      {by_name['panel'].url}   log in as one of the users below")
    click.echo(f"  MLflow UI  {by_name['mlflow'].url}")
    ingest = by_name["ingest"].url or ""
    click.echo(f"  ingest     {ingest}   (health: {ingest.replace('/metrics', '/health')})")
    ports = sorted(int(u.rsplit(":", 1)[1]) for u in plant_urls[1:])
    modbus = (f"{HOST}:{ports[0]}-{ports[-1]}" if ports == list(range(ports[0], ports[-1] + 1))
              else ", ".join(f"{HOST}:{p}" for p in ports)) if ports else "none"
    click.echo(f"  plant      {plant_urls[0]}; Modbus TCP {modbus} ({len(ports)} devices)")
    if "recommend" in by_name:
        click.echo(f"  advice     the setpoint recommender runs over the running batches every "
                   f"{cfg.recommend_every_min:g} min (log: {cfg.logs / 'recommend.log'}); pending advice is on "
                   "the panel's Recommendations page")
    click.echo(f"users (passwords also in {cfg.data / CREDENTIALS}):")
    for u, r, p in users:
        click.echo(f"  {u:10s} {r:15s} {p}")
    click.echo(f"logs in {cfg.logs}; faults are injected at {cfg.fault_scale:g}x the usual rates. "
               "Ctrl-C stops everything.\n")


def _supervise(sup: Supervisor, cfg: DemoConfig) -> str | None:
    """Until Ctrl-C or a service dies (its name is returned); meanwhile the alarm engine runs over the new
    telemetry every so often."""
    next_alarms = time.monotonic() + min(cfg.alarms_every_s, 20.0)
    alarms: subprocess.Popen[bytes] | None = None
    while not sup.stop:
        if (dead := sup.dead()) is not None:
            click.echo(f"{dead} exited with code {sup.procs[dead].returncode}", err=True)
            return dead
        if cfg.alarms_every_s > 0 and (alarms is None or alarms.poll() is not None) \
                and time.monotonic() >= next_alarms:
            alarms = sup.start(Service("_alarms", _cellwatch("alarms", "run", "--data", str(cfg.plant)), None, None))
            next_alarms = time.monotonic() + cfg.alarms_every_s
        time.sleep(0.3)
