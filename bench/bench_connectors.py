"""Benchmark the connectors against the raw library ceiling measured in the same run.

    python bench/bench_connectors.py            # 1000 OPC UA tags on 3 server processes, 15 s windows
    python bench/bench_connectors.py --quick    # 6 s windows
    python bench/bench_connectors.py --security None   # without encryption

OPC UA: server processes write every tag at 1 Hz and at 10 Hz (source and server timestamp = write time).
A bare asyncua client per server counts data-change notifications (the ceiling) before and after the
ingest service runs on the same servers (the ceiling is the mean of the two, so load that other work puts
on the machine during the run biases neither side): values/s committed to the historian, and p50/p99 latency from the
server's change (ServerTimestamp) to the historian commit. Both clients run in this process with its start-up
heap frozen for the garbage collector (the ingest service does that itself, IngestSettings.gc_freeze), so the
ceiling is not lowered by collector pauses the service avoids. The 1-minute load average is printed with each
row: other work on the machine shows in every figure. Modbus: one device process with 500 float32
tags; polls with block grouping against one request per tag. Prints one table; targets are the issue's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from connectors.ingest import IngestService, IngestSettings
from connectors.modbus import ModbusConnector
from connectors.opcua import queue_size
from connectors.opcua_session import ClientSecurity, make_client, resolve
from plant.historian import Historian
from plant.secrets import Credentials, ServerUser
from plant.site import Site, parse_site

USER = ServerUser("bench", "operator", "bench-password")
UNITS_PER_SERVER_TAGS = 10  # tags per unit


def bench_site(n_tags: int, servers: int, ports: list[int], security: str, interval_ms: int, mb_tags: int) -> str:
    """A synthetic site: n_tags OPC UA tags over `servers` endpoints, plus one Modbus device."""
    units = math.ceil(n_tags / UNITS_PER_SERVER_TAGS)
    out = ['[site]\nname = "bench"\ncode = "BENCH"\n', '[[areas]]\nid = "A"\nname = "a"\n',
           '[[rooms]]\nid = "R1"\narea = "A"\nname = "r"\ngrade = "C"\ndp_setpoint_pa = 30\ntype = "r"\n']
    for u in range(units):
        out.append(f'[[units]]\nid = "U{u:03d}"\nkind = "rocking_bag"\nroom = "R1"\ntype = "g{u % servers}"\n'
                   "initial_volume_l = 0.5\nworking_volume_l = 1.0\n")
    for s in range(servers):
        out.append(f'[[endpoints]]\nid = "srv{s}"\nprotocol = "opcua"\nurl = "opc.tcp://127.0.0.1:{ports[s]}/bench"\n'
                   f'security = "{security}"\ninterval_ms = {interval_ms}\nstale_intervals = 0\ntimeout_s = 5.0\n')
    out.append(f'[[endpoints]]\nid = "mb0"\nprotocol = "modbus"\nhost = "127.0.0.1"\nport = {ports[-1]}\n'
               "timeout_s = 2.0\n")
    for s in range(servers):
        out.append(f'[[unit_types]]\nid = "g{s}"\n')
        for k in range(UNITS_PER_SERVER_TAGS):
            out.append(f'[[unit_types.tags]]\nname = "V{k}"\nuom = "1"\neng_range = [0.0, 1.0e9]\n'
                       f'opcua = {{ endpoint = "srv{s}", browse_path = "{{unit}}/V{k}", sampling_ms = 100 }}\n')
    out.append('[[room_types]]\nid = "r"\n')
    for i in range(mb_tags):
        out.append(f'[[room_types.tags]]\nname = "M{i:03d}"\nuom = "1"\neng_range = [0.0, 1.0e9]\n'
                   f'modbus = {{ endpoint = "mb0", function = 3, address = {2 * i}, type = "float32" }}\n')
    out.append('[[recipes]]\nid = "R"\nunit_kinds = ["rocking_bag"]\nseed_density = 1.0e6\ntransduction_day = 1\n'
               "feed_start_day = 3\nharvest_day = 12\nsetpoints = {}\n")
    return "\n".join(out)


# ---- child processes ------------------------------------------------------------------------


async def serve_opcua(site: Site, endpoint: str, pki: Path, rate: float, seconds: float) -> None:
    """Write every tag of the endpoint at `rate` Hz for `seconds`; print the achieved writes/s."""
    from asyncua import ua

    from plant.samples import utcnow
    from plant.sim.opcua_server import UnitOpcUaServer

    srv = UnitOpcUaServer(site, endpoint, pki, {USER.name: USER})
    await srv.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    nodes = list(srv.node_ids.values())
    loop = asyncio.get_running_loop()
    t0 = due = loop.time()
    writes, k = 0, 0
    write = srv.server.write_attribute_value  # type: ignore[union-attr]
    while loop.time() - t0 < seconds and not stop.is_set():
        now = utcnow()
        k += 1
        for i, nid in enumerate(nodes):
            await write(nid, ua.DataValue(ua.Variant(float(k * 10_000 + i), ua.VariantType.Double),
                                          SourceTimestamp=now, ServerTimestamp=now))
        writes += len(nodes)
        due += 1.0 / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
    print(json.dumps({"writes_per_s": writes / (loop.time() - t0)}), flush=True)
    await srv.stop()


async def serve_modbus(site: Site, seconds: float) -> None:
    from datetime import datetime, timezone

    from plant.sim.modbus_server import DeviceServer

    dev = DeviceServer(site, site.endpoints["mb0"])
    rng = np.random.default_rng(1)
    await dev.start()
    await dev.update({t.name: float(v) for t, v in zip(dev.tags, rng.normal(20, 2, len(dev.tags)))},
                     datetime.now(timezone.utc))
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await dev.stop()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def spawn(args: list[str]) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        raise RuntimeError(f"child {args} did not start: {line!r}")
    return p


# ---- measurements ---------------------------------------------------------------------------


async def raw_rate(site: Site, sec: ClientSecurity, endpoints: list[str], warm: float,
                   window: float) -> tuple[float, float, float, float]:
    """(notifications/s, p50, p99 of receive time - ServerTimestamp, CPU share) of a bare asyncua client."""
    counts = dict.fromkeys(endpoints, 0)
    clients, tasks, lat = [], [], []
    measuring = False

    async def drain(ep_id: str, sub) -> None:  # noqa: ANN001
        async for ev in sub:
            counts[ep_id] += 1
            if measuring and counts[ep_id] % 10 == 0:  # every 10th: the clock read stays cheap
                lat.append((datetime.now(timezone.utc) - ev.data.monitored_item.Value.ServerTimestamp).total_seconds())

    for ep_id in endpoints:
        ep = site.endpoints[ep_id]
        client = await make_client(ep, sec)
        await client.connect()
        tags = [t for t in site.tags.values() if t.opcua and t.opcua.endpoint == ep_id]
        nodes, _ = await resolve(client, ep, tags)
        sub = await client.create_subscription(ep.interval_ms, None, queue_maxsize=0)
        await sub.subscribe_data_change([client.get_node(n) for n in nodes.values()],  # same queue as ingest
                                        queuesize=queue_size(ep.interval_ms, tags[0].opcua.sampling_ms))
        clients.append(client)
        tasks.append(asyncio.create_task(drain(ep_id, sub)))
    await asyncio.sleep(warm)
    start, measuring, cpu = sum(counts.values()), True, time.process_time()
    await asyncio.sleep(window)
    got, cpu = sum(counts.values()) - start, time.process_time() - cpu
    for t in tasks:
        t.cancel()
    for c in clients:
        await c.disconnect()
    return got / window, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), cpu / window


async def ingest_rate(site: Site, pki: Path, secrets: Path, endpoints: list[str], root: Path, warm: float,
                      window: float) -> tuple[float, float, float, float]:
    """(values/s committed, p50, p99 latency in s, CPU share incl. writer threads) of the ingest service."""
    svc = IngestService(site, Historian(root / "historian"), root / "spool", None, pki, secrets,
                        IngestSettings(flush_s=0.25, metrics_port=None, compact_s=0, record_latency=True), endpoints)
    await svc.start()
    await asyncio.sleep(warm)
    l0, cpu = len(svc.latencies), time.process_time()
    # Commits land in bursts (one per flush): rate = values between the first and the last commit seen in the
    # window over the time between them, so a burst falling just inside or outside the window edge biases nothing.
    marks: list[tuple[float, int]] = []
    end = time.perf_counter() + window
    while time.perf_counter() < end:
        n = svc.committed_total
        if not marks or n != marks[-1][1]:
            marks.append((time.perf_counter(), n))
        await asyncio.sleep(0.01)
    lat, cpu = np.array(svc.latencies[l0:]), time.process_time() - cpu
    await svc.stop()
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
    return rate, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), cpu / window


async def modbus_rates(site: Site, seconds: float) -> dict[str, tuple[int, float]]:
    """Per mode: (requests per poll, polls/s)."""
    out = {}
    for mode, grouping in (("block grouping", True), ("one request per tag", False)):
        conn = ModbusConnector(site, site.endpoints["mb0"], lambda s: None, grouping=grouping)
        assert await conn.connect()
        t0, polls = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            samples, ok = await conn.poll_once()
            assert ok and len(samples) == len(conn.tags)
            polls += 1
        out[mode] = (len(conn.blocks), polls / (time.perf_counter() - t0))
        conn._close()
    return out


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--security", default="Basic256Sha256_SignAndEncrypt",
                    choices=["Basic256Sha256_SignAndEncrypt", "None"])
    ap.add_argument("--modbus-tags", type=int, default=500)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--site", help=argparse.SUPPRESS)
    ap.add_argument("--pki", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:  # child mode
        site = parse_site(Path(a.site).read_text(), a.site)
        if a.serve == "mb0":
            asyncio.run(serve_modbus(site, a.seconds))
        else:
            asyncio.run(serve_opcua(site, a.serve, Path(a.pki), a.rate, a.seconds))
        return
    warm, window = (3.0, 6.0) if a.quick else (5.0, 15.0)
    root = Path(tempfile.mkdtemp(prefix="bench-connectors-"))
    ports = free_ports(a.servers + 1)
    text = bench_site(a.tags, a.servers, ports, a.security, 100, a.modbus_tags)
    (root / "site.toml").write_text(text)
    site = parse_site(text, "bench-site.toml")
    pki, secrets = root / "pki", root / "secrets.toml"
    secrets.write_text("".join(f'[opcua.srv{s}]\nusername = "bench"\npassword = "bench-password"\n'
                               for s in range(a.servers)))
    os.chmod(secrets, 0o600)
    eps = [f"srv{s}" for s in range(a.servers)]
    sec = ClientSecurity(pki, Credentials(USER.name, USER.password))
    asyncio.run(_prepare_pki(pki))
    gc.collect()
    gc.freeze()  # as IngestService.start does: the raw ceiling gets the same collector set-up as the service
    rows = []
    for rate in (1.0, 10.0):
        run_s = 3 * (warm + window) + 120  # an upper bound: the servers are terminated after the three runs
        procs = [spawn(["--serve", ep, "--site", str(root / "site.toml"), "--pki", str(pki), "--rate", str(rate),
                        "--seconds", str(run_s)]) for ep in eps]
        raw, r50, r99, rcpu = asyncio.run(raw_rate(site, sec, eps, warm, window))
        got, p50, p99, icpu = asyncio.run(ingest_rate(site, pki, secrets, eps, root / f"ingest-{rate:g}", warm, window))
        raw2, _, _, rcpu2 = asyncio.run(raw_rate(site, sec, eps, warm, window))
        print(f"{rate:g} Hz: raw {raw:,.0f}/s before and {raw2:,.0f}/s after the ingest run ({got:,.0f}/s)",
              flush=True)
        raw, rcpu = (raw + raw2) / 2, (rcpu + rcpu2) / 2
        writes = 0.0
        for p in procs:
            p.terminate()
            out, _ = p.communicate(timeout=30)
            writes += next((json.loads(x)["writes_per_s"] for x in out.splitlines() if x.startswith("{")), math.nan)
        rows.append((rate, a.tags * rate, writes, raw, r50, r99, got, p50, p99, rcpu, icpu, os.getloadavg()[0]))
    mb = spawn(["--serve", "mb0", "--site", str(root / "site.toml"), "--seconds", "60"])
    try:
        mrates = asyncio.run(modbus_rates(site, 3.0 if a.quick else 8.0))
    finally:
        mb.terminate()
        mb.wait(timeout=30)
    report(a, rows, mrates)


async def _prepare_pki(pki: Path) -> None:
    from plant.pki import ensure_certificate
    from plant.sim.opcua_server import SERVER_URI

    await ensure_certificate(pki, "server", SERVER_URI, server=True)  # before the servers race to make it
    await ensure_certificate(pki, "client", "urn:cellwatch:ingest", server=False)


def report(a: argparse.Namespace, rows: list[tuple], mrates: dict[str, tuple[int, float]]) -> None:
    print(f"\nOPC UA: {a.tags} tags on {a.servers} server processes, security {a.security}, publishing 100 ms")
    print(f"{'rate':>5} {'offered/s':>9} {'server writes/s':>15} {'raw recv/s':>10} {'raw p50/p99':>12} "
          f"{'ingest->historian/s':>19} {'ingest/raw':>10} {'ingest p50/p99':>15} {'CPU raw/ingest':>15} {'load':>5}")
    for rate, offered, writes, raw, r50, r99, got, p50, p99, rcpu, icpu, load in rows:
        print(f"{rate:>4g}Hz {offered:>9,.0f} {writes:>15,.0f} {raw:>10,.0f} {r50:>5.2f}/{r99:<5.2f}s "
              f"{got:>19,.0f} {got / raw:>10.0%} {p50:>7.2f}/{p99:<5.2f}s {rcpu:>7.0%}/{icpu:<6.0%} {load:>5.1f}")
    print("(latency: raw = server change -> client receive; ingest = server change -> historian commit; "
          f"load = 1-min load average after the row, on {os.cpu_count()} CPUs)")
    print(f"\nModbus: one device, {a.modbus_tags} float32 tags (holding registers), one poll = every tag once")
    print(f"{'mode':<22} {'requests/poll':>14} {'polls/s':>9} {'reads/s':>9} {'tag values/s':>13} {'speed-up':>9}")
    base = mrates["one request per tag"][1]
    for mode, (reqs, polls) in mrates.items():
        print(f"{mode:<22} {reqs:>14} {polls:>9.1f} {reqs * polls:>9,.0f} {polls * a.modbus_tags:>13,.0f} "
              f"{polls / base:>8.1f}x")
    ten = rows[-1]
    print("\ntargets: ingest/raw >= 70 %  |  >= 10,000 values/s into the historian with p99 < 2 s  |  grouping >= 10x")
    print(f"measured: {min(r[6] / r[3] for r in rows):.0%} (worst)  |  {ten[6]:,.0f} values/s, p99 {ten[8]:.2f} s  |  "
          f"{mrates['block grouping'][1] / base:.1f}x")


if __name__ == "__main__":
    main()
