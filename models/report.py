"""Evaluation report: PNG plots and one self-contained HTML page (plots embedded) for MLflow and QA."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import polars as pl

from models.evaluate import DeviationEval, YieldEval, calibration_table


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are built in CI and on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str, out: dict[str, bytes]) -> None:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    out[name] = buf.getvalue()
    _plt().close(fig)


def yield_plots(ye: YieldEval, out: dict[str, bytes]) -> None:
    plt = _plt()
    d = ye.by_day.sort("day")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(d["day"], d["rmse"], "o-", label="LightGBM")
    for col, label in (("rmse_pls", "PLS per day"), ("rmse_pls_robust", "PLS, outlier batches removed")):
        if col in d.columns:
            ax.plot(d["day"], d[col].clip(upper_bound=1.0), "s--", label=label)
    ax.set(xlabel="culture day", ylabel="RMSE log10 cells (PLS clipped at 1)", title="Harvest yield: error by day")
    ax.legend()
    _save(fig, "yield_rmse_by_day.png", out)
    fig, ax = plt.subplots(figsize=(6, 3.0))
    ax.axhspan(0.75, 0.85, color="0.9", label="75-85 %")
    ax.plot(d["day"], d["coverage"], "o-", label="80 % interval coverage")
    ax.set(xlabel="culture day", ylabel="coverage", ylim=(0, 1.02), title="Interval coverage by day")
    ax.legend(loc="lower right")
    _save(fig, "yield_coverage_by_day.png", out)
    p5 = ye.predictions.filter(pl.col("day") == 5)
    if p5.height:
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.errorbar(p5["y"], p5["pred"], yerr=[p5["pred"] - p5["lo"], p5["hi"] - p5["pred"]], fmt="o", ms=3,
                    alpha=0.7, label="LightGBM, 80 % interval")
        if "pls" in p5.columns:
            ax.plot(p5["y"], p5["pls"].clip(p5["y"].min() - 1, p5["y"].max() + 1), "x", alpha=0.6, label="PLS")
        lo, hi = float(p5["y"].min()), float(p5["y"].max())
        ax.plot([lo, hi], [lo, hi], "k:")
        ax.set(xlabel="actual log10 harvest cells", ylabel="predicted on day 5", title="Day 5 predictions")
        ax.legend(fontsize=8)
        _save(fig, "yield_day5_scatter.png", out)


def deviation_plots(de: DeviationEval, out: dict[str, bytes], n_faults: int = 6) -> None:
    plt = _plt()
    k = de.by_kind
    if k.height:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        x = range(k.height)
        for i, (col, label) in enumerate((("detected", "LightGBM"), ("pca_detected", "PCA T2/SPE, same FA rate"),
                                          ("limit_detected", "limit alarm"))):
            ax.bar([v + 0.27 * (i - 1) for v in x], k[col].fill_null(0), width=0.27, label=label)
        ax.set_xticks(list(x), [f"{a}\n(n={n})" for a, n in zip(k["kind"], k["n"], strict=True)], rotation=30,
                      ha="right", fontsize=7)
        ax.set(ylabel="detected", ylim=(0, 1.05), title="Faults detected per kind (held-out batches)")
        ax.legend(fontsize=8)
        _save(fig, "deviation_detection_by_kind.png", out)
    tl = de.timeline
    y = tl["y"].to_numpy()
    keep = ~(tl["excused"].to_numpy() & (y == 0))
    cal = calibration_table(tl["p"].to_numpy()[keep], y[keep].astype(float))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k:")
    ax.plot(cal["predicted"], cal["observed"], "o-")
    ax.set(xlabel="predicted risk", ylabel="observed rate", title="Calibration (held-out)")
    _save(fig, "deviation_calibration.png", out)
    faults = de.faults.sort("kind").unique("kind", keep="first", maintain_order=True).head(n_faults)
    if faults.height:
        fig, axes = plt.subplots(faults.height, 1, figsize=(7, 1.7 * faults.height), squeeze=False)
        for ax, f in zip(axes[:, 0], faults.iter_rows(named=True), strict=True):
            w = tl.filter(pl.col("batch_id") == f["batch_id"])
            ax.plot(w["t_h"], w["p"], lw=1)
            thr = de.metrics["dev_threshold"]
            ax.axhline(thr, color="r", lw=0.8, ls="--")
            s = (f["start_ts"] - w["t"][0]).total_seconds() / 3600 + w["t_h"][0]
            e = (f["end_ts"] - w["t"][0]).total_seconds() / 3600 + w["t_h"][0]
            ax.axvspan(s, e, color="orange", alpha=0.3)
            lim = w.filter(pl.col("limit_alarm"))
            ax.plot(lim["t_h"], [1.02] * lim.height, "k|", ms=6)
            ax.set_ylim(0, 1.08)
            ax.set_ylabel("risk", fontsize=7)
            ax.set_title(f"{f['kind']} ({f['batch_id']}): fault shaded, limit alarm |, threshold --", fontsize=8)
        axes[-1, 0].set_xlabel("culture hour")
        _save(fig, "deviation_timelines.png", out)


def _table(df: pl.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for r in df.iter_rows():
        cells = [f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v)) for v in r]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render(title: str, sections: list[tuple[str, str]], plots: dict[str, bytes]) -> str:
    """One HTML page: sections of (heading, html) then every plot embedded as a data URI."""
    css = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}.fail{color:#b00}.pass{color:#070}")
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections]
    for name, png in plots.items():
        body.append(f"<h3>{html.escape(name)}</h3><img src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{css}</style></head><body>{''.join(body)}</body></html>"


def build(title: str, ye: YieldEval | None, de: DeviationEval | None, summary: list[tuple[str, str]],
          out_dir: Path) -> dict[str, Path]:
    """Write report.html and the plots into out_dir; returns their paths by name."""
    plots: dict[str, bytes] = {}
    sections = list(summary)
    if ye is not None:
        yield_plots(ye, plots)
        sections.append(("Yield by culture day (held-out batches)", _table(ye.by_day)))
    if de is not None:
        deviation_plots(de, plots)
        sections.append(("Early warning per fault kind", _table(de.by_kind)))
        cols = ["batch_id", "kind", "start_ts", "end_ts", "first_alert", "first_limit_alarm", "lead_h", "delay_h"]
        sections.append(("Faults with an online signature", _table(de.faults.select(cols).sort("start_ts"))))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, png in plots.items():
        (out_dir / name).write_bytes(png)
        paths[name] = out_dir / name
    (out_dir / "report.html").write_text(render(title, sections, plots), encoding="utf-8")
    paths["report.html"] = out_dir / "report.html"
    return paths


def metrics_table(metrics: dict[str, float], keys: list[str]) -> str:
    return _table(pl.DataFrame({"metric": keys, "value": [float(metrics.get(k, float("nan"))) for k in keys]}), 4)
