"""Acceptance run of the yield and deviation models on 300 seeded twin batches; prints tables.

    .venv/bin/python bench/bench_models.py            # histories are generated once into bench/out/models/

Two histories (seed 1, 300 batches): the twin as it is (yield), and the same plant with one extra unit fault
injected in every second batch (early warning: the twin's own rare faults give too few examples per kind).
Runs: train with tracking (timed), train again (determinism), export + import + train (round trip).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.config import load_config  # noqa: E402
from models.exporter import export_history  # noqa: E402
from models.importer import import_history  # noqa: E402
from models.pipeline import train  # noqa: E402
from models.predict import BatchPredictor  # noqa: E402
from models.registry import Tracking  # noqa: E402
from plant.historian import Historian  # noqa: E402
from plant.records import Records  # noqa: E402
from plant.sim.history import generate_history  # noqa: E402
from plant.sim.inject import every_nth_batch  # noqa: E402
from plant.site import load_demo_site  # noqa: E402

OUT = ROOT / "bench" / "out" / "models"
N, SEED = 300, 1
SITE = load_demo_site()
CFG = load_config()
TRAIN_BUDGET_S, INFER_BUDGET_MS = 180.0, 50.0


def history(name: str, inject: bool) -> Path:
    out = OUT / name
    if not (out / ".done").exists():
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        inj = every_nth_batch(SITE, N, SEED) if inject else []
        generate_history(SITE, out, N, SEED, injections=inj, workers=2)
        (out / ".done").write_text(f"{time.perf_counter() - t:.1f} s, {len(inj)} injections\n")
    return out


def fresh(folder: Path, store: bool) -> None:
    """Forget the hold-out lock of earlier bench runs (and, for a tracked run, the MLflow store)."""
    for p in (folder / "mlflow.db", folder / "mlruns") if store else ():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    from sqlalchemy import text

    with Records.open(folder / "records.db") as rec, rec.engine.begin() as conn:
        for table in ("model_holdouts", "model_promotions"):
            conn.execute(text(f"DELETE FROM {table}")) if rec.engine.dialect.has_table(conn, table) else None


def timed_train(folder: Path, track: bool) -> tuple[object, dict[str, float]]:
    fresh(folder, track)
    load0, cpu0, t0 = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    r = train(folder, SITE, CFG, Tracking.for_data(folder) if track else None, out_dir=folder / "report")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return r, {"wall_s": time.perf_counter() - t0, "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
               "load_before": load0, "load_after": os.getloadavg()[0]}


def latency(folder: Path) -> dict[str, float]:
    pred = BatchPredictor.from_registry(Tracking.for_data(folder), SITE, "challenger")
    hist = Historian(folder / "historian")
    with Records.open(folder / "records.db") as rec:
        batches = rec.batches().tail(10).iter_rows(named=True)
        model_ms, total_ms = [], []
        for b in batches:
            for day in (2, 4, 6):
                at = b["start_ts"] + timedelta(days=day, minutes=7)
                t = time.perf_counter()
                row = pred.features(hist, rec, b["batch_id"], at)
                t1 = time.perf_counter()
                pred.predict_row(row)
                t2 = time.perf_counter()
                model_ms.append(1000 * (t2 - t1))
                total_ms.append(1000 * (t2 - t))
    q = statistics.quantiles
    return {"model_p50_ms": statistics.median(model_ms), "model_p90_ms": q(model_ms, n=10)[-1],
            "total_p50_ms": statistics.median(total_ms), "total_p90_ms": q(total_ms, n=10)[-1]}


def row(name: str, value: float | str, target: str, ok: bool | None) -> str:
    v = f"{value:.4g}" if isinstance(value, float) else str(value)
    flag = "" if ok is None else ("PASS" if ok else "FAIL")
    return f"| {name} | {v} | {target} | {flag} |"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plain, enriched = history("default", inject=False), history("injected", inject=True)
    print(f"histories: {plain} ({(plain / '.done').read_text().strip()}), {enriched} "
          f"({(enriched / '.done').read_text().strip()})")
    y1, ty1 = timed_train(plain, track=True)
    lat = latency(plain)
    from models.registry import load_models
    from models.training import holdout_yield_rows, split_batches
    from models.dataset import load_plant_data

    dom = load_models(Tracking.for_data(plain), "challenger").domain
    with Records.open(plain / "records.db") as rec:
        data = load_plant_data(Historian(plain / "historian"), rec, SITE)
        rows = holdout_yield_rows(data, split_batches(data, rec, CFG))
    trusted = sum(v.trustworthy for v in dom.check(rows)) / rows.height
    y2, _ = timed_train(plain, track=False)
    export_dir, imported = OUT / "export", OUT / "imported"
    shutil.rmtree(export_dir, ignore_errors=True)
    shutil.rmtree(imported, ignore_errors=True)
    t = time.perf_counter()
    paths = export_history(plain, export_dir, SITE, "parquet")
    res = import_history(imported, SITE, **{k: paths[k] for k in ("telemetry", "batches", "offline", "covariates",
                                                                  "setpoints", "deviations")})
    t_io = time.perf_counter() - t
    y3, _ = timed_train(imported, track=False)
    d1, td1 = timed_train(enriched, track=True)

    m, d = y1.metrics, d1.metrics
    days = y1.yield_eval.by_day.filter(y1.yield_eval.by_day["day"] >= 3)
    lines = ["", "## Yield (300 twin batches, seed 1; train 240 older, hold-out 60 newer)", "",
             "| day | n | RMSE log10 LightGBM | RMSE PLS | ratio | RMSE PLS (outliers removed) | R2 | coverage 80 % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in y1.yield_eval.by_day.iter_rows(named=True):
        lines.append(f"| {r['day']} | {r['n']} | {r['rmse']:.4f} | {r['rmse_pls']:.4f} | "
                     f"{r['rmse'] / r['rmse_pls']:.2f} | {r['rmse_pls_robust']:.4f} | {r['r2']:.3f} | "
                     f"{r['coverage']:.2f} |")
    lines += ["", "## Early warning (300 batches, seed 1, one injected unit fault in every second batch)", "",
              "| kind | faults | detected | limit alarm | PCA same FA | median lead h (both alarmed) | "
              "median lead h (censored) |", "|---|---|---|---|---|---|---|"]
    for r in d1.deviation_eval.by_kind.iter_rows(named=True):
        lines.append(f"| {r['kind']} | {r['n']} | {r['detected']:.2f} | {r['limit_detected']:.2f} | "
                     f"{r['pca_detected']:.2f} | {r['median_lead_h'] if r['median_lead_h'] is not None else '-'} | "
                     f"{r['median_lead_censored_h'] if r['median_lead_censored_h'] is not None else '-'} |")
    acc = ["", "## Acceptance", "", "| criterion | measured | target | |", "|---|---|---|---|",
           row("yield RMSE day 5 / PLS", m["yield_rmse_ratio_pls_day5"], "<= 0.80", m["yield_rmse_ratio_pls_day5"]
               <= 0.8),
           row("  (vs PLS with outlier batches removed)", m["yield_rmse_ratio_pls_robust_day5"], "(<= 0.80)",
               m["yield_rmse_ratio_pls_robust_day5"] <= 0.8),
           row("yield no worse than PLS on every day >= 3", bool((days["rmse"] <= days["rmse_pls"]).all()), "true",
               bool((days["rmse"] <= days["rmse_pls"]).all())),
           row("80 % interval coverage, days >= 3 pooled", m["yield_coverage_day3plus"], "0.75..0.85",
               0.75 <= m["yield_coverage_day3plus"] <= 0.85),
           row("held-out yield rows trustworthy (applicability)", trusted, "(info)", None),
           row("faults detected (online signature)", d["dev_detection_rate"], ">= 0.90", d["dev_detection_rate"] >= 0.9),
           row("false alarms per batch-day", d["dev_false_alarms_per_batch_day"], "<= 0.20",
               d["dev_false_alarms_per_batch_day"] <= 0.2),
           row("median lead over limit alarm, h (censored at fault end)", d["dev_median_lead_h_censored"], ">= 2",
               d["dev_median_lead_h_censored"] >= 2),
           row("median lead, h (only faults both alarmed)", d["dev_median_lead_h_both_alarmed"], "(>= 2)",
               d["dev_median_lead_h_both_alarmed"] >= 2),
           row("PCA T2/SPE detection at the same FA rate", d["dev_pca_detected_share_matched_fa"],
               f"< {d['dev_detection_rate']:.3g}", d["dev_pca_detected_share_matched_fa"] < d["dev_detection_rate"]),
           row("same seed, same metrics", y1.metrics == y2.metrics, "true", y1.metrics == y2.metrics),
           row("export + import round trip, same metrics", y1.metrics == y3.metrics and y1.fingerprint ==
               y3.fingerprint, "true", y1.metrics == y3.metrics),
           ]
    speed = ["", "## Speed (2 shared cores; load average before/after shown)", "",
             "| what | measured | budget | ratio to budget |", "|---|---|---|---|",
             f"| train both models, 30 trials each, 300 batches (wall) | {ty1['wall_s']:.0f} s | "
             f"{TRAIN_BUDGET_S:.0f} s | {ty1['wall_s'] / TRAIN_BUDGET_S:.2f} |",
             f"| same, CPU time of the process | {ty1['cpu_s']:.0f} s | {TRAIN_BUDGET_S:.0f} s | "
             f"{ty1['cpu_s'] / TRAIN_BUDGET_S:.2f} |",
             f"| load average before / after | {ty1['load_before']:.1f} / {ty1['load_after']:.1f} | | |",
             f"| inference, one batch, feature row -> yield + interval + drivers + domain + risk (p50/p90) | "
             f"{lat['model_p50_ms']:.1f} / {lat['model_p90_ms']:.1f} ms | {INFER_BUDGET_MS:.0f} ms | "
             f"{lat['model_p50_ms'] / INFER_BUDGET_MS:.2f} |",
             f"| the same from historian + records (read, features, predict) p50/p90 | {lat['total_p50_ms']:.0f} / "
             f"{lat['total_p90_ms']:.0f} ms | {INFER_BUDGET_MS:.0f} ms | {lat['total_p50_ms'] / INFER_BUDGET_MS:.2f} |",
             f"| export + import of 300 batches ({res.samples:,} samples) | {t_io:.0f} s | | |",
             "", "stage timings of the timed run: " + ", ".join(f"{k} {v:.1f}" for k, v in y1.timings.items())]
    text = "\n".join(lines + acc + speed)
    print(text)
    (OUT / "results.md").write_text(text + "\n")
    (OUT / "results.json").write_text(json.dumps({"yield": y1.metrics, "deviation": d1.metrics, "train": ty1,
                                                  "train_deviation_data": td1, "latency": lat,
                                                  "determinism": y1.metrics == y2.metrics,
                                                  "round_trip": y1.metrics == y3.metrics}, indent=1, default=str))


if __name__ == "__main__":
    main()
