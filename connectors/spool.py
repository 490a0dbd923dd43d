"""Store-and-forward buffer: accepted samples are durable here until the historian has them.

One Arrow IPC file per accepted batch, ``b-<seq>-<rows>.arrow``, written to a temp file, fsynced and
renamed (so a file is either whole or absent), replayed in seq order and deleted only once the
historian holds it. ``state.json`` keeps the last committed seq and, per tag, the newest committed
timestamp, so a restarted service can drop re-sent duplicates. A file that cannot be read is moved to
``corrupt/`` with a log line naming it; the files after it still go through.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from plant.samples import SAMPLE_SCHEMA

log = logging.getLogger("cellwatch.connectors.spool")
_NAME = re.compile(r"^b-(\d{20})-(\d+)\.arrow$")
_STATE = "state.json"
_RUNNING = "running"


class SpoolError(RuntimeError):
    """A spool file or the spool state cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class SpoolFile:
    seq: int
    rows: int
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable ordered buffer of sample frames in a folder (single writer)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob("*.tmp"):  # a batch whose write never finished was never accepted
            tmp.unlink(missing_ok=True)
        self._files = self._scan()
        self._marks: dict[str, tuple[str, datetime]] | None = None  # state's last_ts, parsed (see record_committed)
        self._next = max([f.seq for f in self._files], default=self.committed_seq()) + 1

    def _scan(self) -> list[SpoolFile]:
        out = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append(SpoolFile(int(m.group(1)), int(m.group(2)), p))
        return sorted(out, key=lambda f: f.seq)

    # ---- accepting -----------------------------------------------------------------------------

    def append(self, df: pl.DataFrame) -> SpoolFile:
        """Write a batch durably; once this returns the batch is accepted."""
        seq = self._next
        path = self.root / f"b-{seq:020d}-{df.height}.arrow"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            df.write_ipc(f, compression="lz4")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        _fsync_dir(self.root)
        self._next = seq + 1
        sf = SpoolFile(seq, df.height, path)
        self._files.append(sf)
        return sf

    # ---- forwarding ----------------------------------------------------------------------------

    def pending(self) -> list[SpoolFile]:
        """Files not yet in the historian, oldest first."""
        return list(self._files)

    @property
    def depth(self) -> int:
        return sum(f.rows for f in self._files)

    def read(self, sf: SpoolFile) -> pl.DataFrame:
        """The batch in a file; SpoolError names the file when it is unreadable or not samples."""
        try:
            df = pl.read_ipc(io.BytesIO(sf.path.read_bytes()))  # bytes, not a memory map: the file is deleted soon
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise SpoolError(f"spool file {sf.path} is unreadable: {type(exc).__name__}: {exc}") from None
        if list(df.columns) != list(SAMPLE_SCHEMA) or df.height != sf.rows:
            raise SpoolError(f"spool file {sf.path} holds {df.height} rows with columns {df.columns}; expected "
                             f"{sf.rows} rows with {list(SAMPLE_SCHEMA)}")
        return df

    def quarantine(self, sf: SpoolFile, reason: str) -> Path:
        """Move a damaged file aside (never deleted: someone may recover it) and forget it."""
        dest = self.root / "corrupt" / sf.path.name
        dest.parent.mkdir(exist_ok=True)
        os.rename(sf.path, dest)
        self._files = [f for f in self._files if f.seq != sf.seq]
        log.error("%s; moved to %s, later batches continue", reason, dest)
        return dest

    def committed(self, files: list[SpoolFile], last_ts: dict[str, datetime]) -> None:
        """Record that the historian holds these files (state first, then delete: a crash in between only
        leaves a file the next start recognises as already committed)."""
        self.record_committed(files, last_ts)
        self.forget(files)

    def record_committed(self, files: list[SpoolFile], last_ts: dict[str, datetime]) -> None:
        """The disk half of committed(): state file (fsync) and deletes; may run in a worker thread while the
        owner keeps the files in pending() until it calls forget()."""
        if not files:
            return
        if self._marks is None:  # read once: this process is the only writer of the state
            self._marks = {k: (v, datetime.fromisoformat(v)) for k, v in self.state().get("last_ts", {}).items()}
        marks = self._marks
        for tag, ts in last_ts.items():
            old = marks.get(tag)
            if old is None or old[1] < ts:
                marks[tag] = (ts.isoformat(), ts)
        self._write_state({"committed_seq": max(f.seq for f in files),
                           "last_ts": {tag: text for tag, (text, _) in marks.items()}})
        for f in files:
            f.path.unlink(missing_ok=True)

    def forget(self, files: list[SpoolFile]) -> None:
        """Drop committed files from pending() (the in-memory half of committed())."""
        done = {f.seq for f in files}
        self._files = [f for f in self._files if f.seq not in done]

    # ---- state ---------------------------------------------------------------------------------

    def state(self) -> dict:
        path = self.root / _STATE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not an object")
            return state
        except (ValueError, OSError) as exc:
            # Losing the marks costs only duplicate checks against the historian, never data.
            log.error("spool state %s is unreadable (%s); continuing without it", path, exc)
            return {}

    def committed_seq(self) -> int:
        return int(self.state().get("committed_seq", 0))

    def last_ts(self) -> dict[str, datetime]:
        return {k: datetime.fromisoformat(v) for k, v in self.state().get("last_ts", {}).items()}

    def _write_state(self, state: dict) -> None:
        path = self.root / _STATE
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)

    # ---- clean / unclean stop -----------------------------------------------------------------

    def mark_running(self) -> bool:
        """Note that a service runs on this spool; True when the previous run did not stop cleanly."""
        flag = self.root / _RUNNING
        crashed = flag.exists()
        flag.write_text(str(os.getpid()), encoding="utf-8")
        return crashed

    def mark_stopped(self) -> None:
        (self.root / _RUNNING).unlink(missing_ok=True)
