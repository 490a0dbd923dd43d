"""Vectorised alarm conditions: limits with deadband, on/off delays, rate of change, stale data.

Per frame, every point's samples are evaluated at once with numpy: a carried row per point
(its condition, the start of its current run and its delayed state) is put in front of its new
samples, so forward fills and run starts never cross points and frames join seamlessly. Only the
sparse changes of the delayed state leave this module; the ISA-18.2 states are kept elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from plant.alarms.points import AlarmPoint, AlarmSettings, Condition

_USABLE = ("GOOD", "UNCERTAIN")
_NEVER = np.iinfo(np.int64).min // 2  # "long ago" in microseconds; halved so differences cannot overflow


@dataclass(frozen=True, slots=True)
class CondChanges:
    """Changes of the delayed condition of points: ts (us), point index, on (1) / off (0), value."""

    ts: np.ndarray
    point: np.ndarray
    on: np.ndarray
    value: np.ndarray

    @staticmethod
    def empty() -> CondChanges:
        return CondChanges(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0))

    @staticmethod
    def concat(parts: Sequence[CondChanges]) -> CondChanges:
        parts = [p for p in parts if len(p.ts)]
        if not parts:
            return CondChanges.empty()
        return CondChanges(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ts", "point", "on", "value")))

    def __len__(self) -> int:
        return len(self.ts)


def _ffill_index(valid: np.ndarray) -> np.ndarray:
    """For each row, the index of the last row at or before it where valid is true (-1 if none)."""
    idx = np.where(valid, np.arange(len(valid)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


class Evaluator:
    """Condition state of every point, carried from frame to frame."""

    def __init__(self, points: Sequence[AlarmPoint], cfg: AlarmSettings) -> None:
        self.points = list(points)
        self.cfg = cfg
        n = len(self.points)
        self.limit = np.array([p.limit for p in self.points], dtype=np.float64)
        self.deadband = np.array([p.deadband for p in self.points], dtype=np.float64)
        self.is_lo = np.array([p.condition == Condition.LO for p in self.points], dtype=bool)
        self.on_us = np.array([p.on_delay_s * 1e6 for p in self.points], dtype=np.int64)
        self.off_us = np.array([p.off_delay_s * 1e6 for p in self.points], dtype=np.int64)
        self.stale_us = np.where([p.condition == Condition.STALE for p in self.points], self.limit * 1e6, 0
                                 ).astype(np.int64)
        # carried state per point
        self.cond = np.zeros(n, np.int8)
        self.run_start = np.full(n, _NEVER, np.int64)
        self.active = np.zeros(n, np.int8)
        self.last_ts = np.full(n, _NEVER, np.int64)  # newest sample evaluated (late samples are skipped)
        self.last_usable = np.full(n, _NEVER, np.int64)  # stale points only
        self.late = 0
        # tag codes; per kind of evaluation, (tag code, point) pairs in point order
        self.tags = sorted({p.tag for p in self.points})
        self._code = {t: i for i, t in enumerate(self.tags)}
        self._enum = pl.Enum(self.tags)
        pairs: dict[str, list[tuple[int, int]]] = {"level": [], "roc": [], "stale": []}
        for i, p in enumerate(self.points):
            kind = {Condition.ROC: "roc", Condition.STALE: "stale"}.get(p.condition, "level")
            pairs[kind].append((self._code[p.tag], i))
        self._pairs = {k: (np.array([t for t, _ in v], np.int64), np.array([i for _, i in v], np.int64))
                       for k, v in pairs.items()}
        # per ROC tag: recent usable (ts, value) to look one window back across frames
        self._roc_tail: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- entry point
    def evaluate(self, frame: pl.DataFrame, watermark: int) -> CondChanges:
        """Changes caused by a frame of samples (tag, ts as int64 us, value, usable) up to `watermark`."""
        code = frame["tag"].cast(self._enum, strict=False).to_physical().to_numpy()
        ok = ~np.isnan(code.astype(np.float64)) if code.dtype.kind == "f" else np.ones(len(code), bool)
        code = np.nan_to_num(code.astype(np.float64), nan=-1).astype(np.int64) if code.dtype.kind == "f" else \
            code.astype(np.int64)
        ts = frame["ts"].to_numpy().astype(np.int64)
        value = frame["value"].to_numpy().astype(np.float64)
        usable = frame["usable"].to_numpy().astype(bool)
        keep = ok & (code >= 0)
        code, ts, value, usable = code[keep], ts[keep], value[keep], usable[keep]
        order = np.lexsort((ts, code))
        rows = _Rows(code[order], ts[order], np.where(usable[order], value[order], np.nan), usable[order],
                     len(self.tags))
        parts = [self._threshold(*rows.expand(*self._pairs["level"])), self._roc(rows),
                 self._stale(rows, watermark)]
        return CondChanges.concat(parts)

    # ---------------------------------------------------------------- rate of change
    def _roc(self, rows: _Rows) -> CondChanges:
        tag_codes, pts = self._pairs["roc"]
        if len(pts) == 0:
            return CondChanges.empty()
        win = int(self.cfg.roc_window_s * 1e6)
        rate_rows = rows.value.copy()
        for c in np.unique(tag_codes):
            a, b = rows.start[c], rows.start[c + 1]
            sel = np.flatnonzero(rows.usable[a:b]) + a
            t_old, v_old = self._roc_tail.get(int(c), (np.empty(0, np.int64), np.empty(0)))
            th = np.concatenate([t_old, rows.ts[sel]])
            vh = np.concatenate([v_old, rows.value[sel]])
            # the value one window back (at or before ts - window), if not older than two windows
            k = np.searchsorted(th, rows.ts[sel] - win, side="right") - 1
            valid = k >= 0
            kk = np.maximum(k, 0)
            dt = rows.ts[sel] - th[kk]
            rate = np.abs(rows.value[sel] - vh[kk]) / (np.maximum(dt, 1) / 6e7)
            rate_rows[a:b] = np.nan
            rate_rows[sel] = np.where(valid & (dt <= 2 * win), rate, np.nan)
            keep = th >= (th[-1] - 3 * win) if len(th) else np.zeros(0, bool)
            self._roc_tail[int(c)] = (th[keep], vh[keep])
        return self._threshold(*_Rows(rows.code, rows.ts, rate_rows, rows.usable, len(self.tags))
                               .expand(tag_codes, pts))

    def _threshold(self, p: np.ndarray, t: np.ndarray, v: np.ndarray) -> CondChanges:
        """Deadband, then on/off delays; NaN values hold the condition (bad data neither sets nor clears)."""
        keep = t > self.last_ts[p]
        if not keep.all():
            self.late += int((~keep).sum())
            p, t, v = p[keep], t[keep], v[keep]
        if len(p) == 0:
            return CondChanges.empty()
        # p is sorted by point then ts: put each point's carried row in front of its group
        starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
        present = p[starts]
        P = np.insert(p, starts, present)
        T = np.insert(t, starts, self.run_start[present])
        V = np.insert(v, starts, np.nan)
        carry = np.insert(np.zeros(len(p), bool), starts, True)
        lim, db, lo = self.limit[P], self.deadband[P], self.is_lo[P]
        with np.errstate(invalid="ignore"):
            set_ = np.where(lo, V < lim, V > lim)
            reset = np.where(lo, V >= lim + db, V <= lim - db)
        code = np.where(set_, 1, np.where(reset, 0, -1)).astype(np.int8)
        code[carry] = self.cond[P[carry]]
        cond = code[_ffill_index(code >= 0)]
        newrun = np.ones(len(P), bool)
        newrun[1:] = (cond[1:] != cond[:-1]) | (P[1:] != P[:-1])
        newrun[carry] = True
        run_start = T[_ffill_index(newrun)]
        delay = np.where(cond == 1, self.on_us[P], self.off_us[P])
        act_code = np.where(T - run_start >= delay, cond, -1).astype(np.int8)
        act_code[carry] = self.active[P[carry]]
        active = act_code[_ffill_index(act_code >= 0)]
        change = np.zeros(len(P), bool)
        change[1:] = (active[1:] != active[:-1]) & ~carry[1:]
        end = np.ones(len(P), bool)
        end[:-1] = P[1:] != P[:-1]
        pe = P[end]
        self.cond[pe], self.run_start[pe], self.active[pe] = cond[end], run_start[end], active[end]
        self.last_ts[pe] = T[end]
        return CondChanges(T[change], P[change], active[change], V[change])

    # ---------------------------------------------------------------- stale data
    def _stale(self, rows: _Rows, watermark: int) -> CondChanges:
        tag_codes, pts = self._pairs["stale"]
        if len(pts) == 0:
            return CondChanges.empty()
        # a tag counts as expected from its first sample of any quality on
        seen = rows.start[tag_codes + 1] > rows.start[tag_codes]
        fresh = seen & (self.last_usable[pts] == _NEVER)
        self.last_usable[pts[fresh]] = rows.ts[rows.start[tag_codes[fresh]]] - 1
        p, t, _ = rows.expand(tag_codes, pts, only_usable=True)
        keep = t > self.last_usable[p]
        p, t = p[keep], t[keep]
        out_t, out_p, out_on, out_v = [], [], [], []
        if len(p):
            prev = np.empty_like(t)
            prev[1:] = t[:-1]
            first_row = np.ones(len(p), bool)
            first_row[1:] = p[1:] != p[:-1]
            prev[first_row] = self.last_usable[p[first_row]]
            gap = t - prev
            lim = self.stale_us[p]
            was_on = np.zeros(len(p), bool)
            was_on[first_row] = self.active[p[first_row]] == 1
            # a gap longer than stale_s: stale from prev + stale_s (unless already stale), fresh again at t
            on_rows = (gap > lim) & ~was_on & (prev != _NEVER)
            off_rows = (gap > lim) | was_on
            out_t += [prev[on_rows] + lim[on_rows], t[off_rows]]
            out_p += [p[on_rows], p[off_rows]]
            out_on += [np.ones(on_rows.sum(), np.int8), np.zeros(off_rows.sum(), np.int8)]
            out_v += [np.full(on_rows.sum(), np.nan), gap[off_rows] / 1e6]
            end = np.ones(len(p), bool)
            end[:-1] = p[1:] != p[:-1]
            self.last_usable[p[end]] = t[end]
            self.active[p[end]] = 0
        # the tail: tags silent (or only bad) for longer than stale_s by the watermark
        idx = np.flatnonzero((self.stale_us > 0) & (self.last_usable != _NEVER) & (self.active == 0)
                             & (watermark - self.last_usable > self.stale_us))
        if len(idx):
            out_t.append(self.last_usable[idx] + self.stale_us[idx])
            out_p.append(idx)
            out_on.append(np.ones(len(idx), np.int8))
            out_v.append(np.full(len(idx), np.nan))
            self.active[idx] = 1
        if not out_t:
            return CondChanges.empty()
        return CondChanges(np.concatenate(out_t), np.concatenate(out_p), np.concatenate(out_on),
                           np.concatenate(out_v))


class _Rows:
    """A frame's samples sorted by (tag code, ts), with each tag's row range."""

    def __init__(self, code: np.ndarray, ts: np.ndarray, value: np.ndarray, usable: np.ndarray, ntags: int) -> None:
        self.code, self.ts, self.value, self.usable = code, ts, value, usable
        self.start = np.zeros(ntags + 1, np.int64)
        np.cumsum(np.bincount(code, minlength=ntags), out=self.start[1:])

    def expand(self, tag_codes: np.ndarray, points: np.ndarray,
               only_usable: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, ts, value) for every point's tag rows, sorted by point then ts."""
        a, b = self.start[tag_codes], self.start[tag_codes + 1]
        lengths = b - a
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        # row index = a[pair] + position within the pair's run
        offsets = np.repeat(a - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        idx = offsets + np.arange(total)
        p = np.repeat(points, lengths)
        if only_usable:
            u = self.usable[idx]
            idx, p = idx[u], p[u]
        return p, self.ts[idx], self.value[idx]


