"""Child process for the historian crash and concurrency tests (not a test module).

    python historian_child.py write ROOT N_BATCHES ROWS   # append batch i, then print "ACK i"
    python historian_child.py read ROOT STOP_FILE         # read until STOP_FILE exists, print "COUNT n ..."
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from plant.historian import Historian
from plant.samples import SAMPLE_SCHEMA

T0 = datetime(2026, 3, 1, 20, 0, tzinfo=timezone.utc)


def batch(i: int, rows: int) -> pl.DataFrame:
    """Batch i: values i*rows .. i*rows+rows-1 (unique ids), spread over ~2 days so appends span partitions."""
    ids = pl.int_range(i * rows, (i + 1) * rows, eager=True)
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(T0, T0 + timedelta(seconds=rows - 1), "1s", eager=True, time_zone="UTC")
            .dt.offset_by(f"{(i * 97) % 2880}m"),
            "tag": ("w" + (ids % 7).cast(pl.String)),
            "value": ids.cast(pl.Float64),
            "quality": pl.Series(["GOOD", "BAD", "STALE"] * (rows // 3) + ["GOOD"] * (rows % 3)),
            "status": pl.Series(["", "BadSensorFailure", None] * (rows // 3) + [None] * (rows % 3)),
            "server_ts": None,
            "received_ts": None,
        },
    ).cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]


def write(root: str, n_batches: int, rows: int) -> None:
    h = Historian(root)
    for i in range(n_batches):
        h.append(batch(i, rows))
        print(f"ACK {i}", flush=True)  # only after append returned: the data is acknowledged


def read(root: str, stop_file: str) -> None:
    h = Historian(root)
    last, reads = -1, 0
    while True:
        done = Path(stop_file).exists()  # checked before reading so the final read sees everything
        n = h.read().height
        reads += 1
        if n < last:
            raise SystemExit(f"row count went backwards: {last} -> {n}")
        if n != last or done:  # print changes only, so the pipe never fills up
            print(f"COUNT {n} after {reads} reads", flush=True)
        last = n
        if done:
            return


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "write":
        write(args[0], int(args[1]), int(args[2]))
    elif mode == "read":
        read(args[0], args[1])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
