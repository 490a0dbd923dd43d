"""Child process for the audit-trail concurrency test (not a test module).

    python audit_child.py DB NAME N GO_FILE   # wait for GO_FILE, append N entries as NAME, print "DONE n"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from plant.audit import AuditTrail
from plant.records import Records


def main() -> None:
    db, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    with Records.open(db) as records:
        audit = AuditTrail(records)
        print("READY", flush=True)
        while not go.exists():  # both children start appending at the same moment
            time.sleep(0.005)
        for i in range(n):
            audit.append(name, "write", "setpoint", f"{name}-{i}", {"value": i}, {"value": i + 1},
                         f"{name} step {i}")
            time.sleep(0.001)  # real writers do work between appends; gives the other a turn
    print(f"DONE {n}", flush=True)


if __name__ == "__main__":
    main()
