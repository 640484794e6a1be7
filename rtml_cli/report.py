"""The backtest report: metrics.json, predictions.parquet, charts (PNG) and one self-contained HTML page.

Charts are drawn with matplotlib: well kept, renders PNG without a browser or network, and
the page embeds the PNGs, so it opens anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rtml_cli import atomic


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the arrays kept for the report."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_report(result: dict[str, Any], ds, directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "metrics.json", directory / "predictions.parquet"]
    atomic.write_json(written[0], public(result))
    _predictions(result, ds, written[1])
    charts = _charts(result, ds)
    for name, png in charts.items():
        path = directory / f"{name}.png"
        atomic.write_bytes(path, png)
        written.append(path)
    page = directory / "report.html"
    atomic.write_bytes(page, _html(result, charts).encode())
    written.append(page)
    return written


def _predictions(result: dict[str, Any], ds, path: Path) -> None:
    """Every row, every model and refresh interval, and the baselines: one long table."""
    import polars as pl

    base = pl.DataFrame({
        "row": pl.int_range(0, ds.n, eager=True),
        "ts": pl.Series(ds.ts).cast(pl.Datetime("ns", "UTC")) if ds.ts is not None else pl.repeat(None, ds.n, eager=True),
        "symbol": pl.Series([ds.stream_names[s] for s in ds.stream], dtype=pl.String),
        "target": ds.y,
    })
    parts = [base.with_columns(model=pl.lit(name), refresh=pl.lit("-"), prediction=pl.Series(pred, dtype=pl.Float64))
             for name, pred in result["_baselines"].items()]
    for rep in result["_replays"]:
        for label, pred in rep.preds.items():
            parts.append(base.with_columns(model=pl.lit(rep.model), refresh=pl.lit(label),
                                           prediction=pl.Series(pred, dtype=pl.Float64)))
    tmp = atomic.temp_path_for(path)
    try:
        pl.concat(parts).write_parquet(tmp, compression="zstd")
        atomic.publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _charts(result: dict[str, Any], ds) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import polars as pl
    from matplotlib import pyplot as plt

    from rtml_cli.backtest import period_times, trade

    w, window = result["warmup"], max(10, min(500, result["scored_rows"] // 20))
    out: dict[str, bytes] = {}
    series = [("zero", "-", result["_baselines"]["zero"])]
    for rep in result["_replays"]:
        for label in ("1", "never"):
            series.append((rep.model, label, np.asarray(rep.preds[label])))

    def name(model: str, label: str) -> str:
        return model if label == "-" else f"{model} (refresh {label})"

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    x = ds.ts[w:].astype("datetime64[ns]") if ds.ts is not None else np.arange(w, ds.n)
    fig, (ax, ax_hit) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    y = ds.y[w:]
    for model, label, pred in series:
        err = pl.Series(np.abs(pred[w:] - y)).rolling_mean(window).to_numpy()
        (line,) = ax.plot(x, err, label=name(model, label), lw=1)
        if model != "zero":  # rows with a zero target are left out, as in the hit rate
            hit = np.where(y != 0, ((np.sign(pred[w:]) == np.sign(y)) & (pred[w:] != 0)).astype(float), np.nan)
            ax_hit.plot(x, pl.Series(hit).fill_nan(None).rolling_mean(window, min_samples=window // 2).to_numpy(),
                        color=line.get_color(), lw=1)
    ax.set_title(f"Rolling MAE and hit rate ({window} rows)")
    ax.set_ylabel("MAE")
    ax.legend(fontsize=8)
    ax_hit.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_hit.set_ylabel("hit rate")
    out["rolling_error"] = png(fig)

    if ds.returns != "none":
        fig, ax = plt.subplots(figsize=(10, 4))
        curves = [(m, lab, p) for m, lab, p in series if m != "zero"] + [("persistence", "-", result["_baselines"]["persistence"])]
        for model, label, pred in curves:
            _, keys, r = trade(ds, pred, w, result["fee_bps"], result["band"])
            ax.plot(period_times(ds, w, keys), np.cumprod(1 + r), label=name(model, label), lw=1)
        _, keys, r = trade(ds, np.zeros(ds.n), w, result["fee_bps"], result["band"], always_long=True)
        ax.plot(period_times(ds, w, keys), np.cumprod(1 + r), label="buy and hold", lw=1, color="grey")
        ax.set_title(f"Equity of a sign strategy (fees {result['fee_bps']:g} bp per unit traded)")
        ax.set_ylabel("equity (start = 1)")
        ax.legend(fontsize=8)
        out["equity"] = png(fig)

    fig, axes = plt.subplots(1, 2 if ds.returns != "none" else 1, figsize=(10, 4), squeeze=False)
    for rep in result["_replays"]:
        rows = [r for r in result["results"] if r["model"] == rep.model]
        labels = [r["refresh"] for r in rows]
        axes[0][0].plot(labels, [r.get("mae_vs_zero") or np.nan for r in rows], marker="o", label=rep.model)
        if ds.returns != "none":
            axes[0][1].plot(labels, [r.get("sharpe") or np.nan for r in rows], marker="o", label=rep.model)
    axes[0][0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0][0].set_title("MAE / MAE of the zero baseline")
    axes[0][0].set_xlabel("serving refresh interval (rows)")
    axes[0][0].legend(fontsize=8)
    if ds.returns != "none":
        axes[0][1].set_title("Sharpe ratio (annualised)")
        axes[0][1].set_xlabel("serving refresh interval (rows)")
    out["staleness"] = png(fig)
    return out


ACCURACY = [("model", "model"), ("refresh", "refresh"), ("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"),
            ("mae_vs_zero", "MAE/zero"), ("hit_rate", "hit rate"), ("ic", "IC"), ("drifts", "drifts")]
TRADING = [("model", "model"), ("refresh", "refresh"), ("total_return", "return"), ("sharpe", "Sharpe"),
           ("max_drawdown", "max DD"), ("turnover", "turnover"), ("exposure", "exposure")]
COLUMNS = ACCURACY + TRADING[2:]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _html(result: dict[str, Any], charts: dict[str, bytes]) -> str:
    cols = [(k, t) for k, t in COLUMNS if any(k in r for r in result["results"])]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k)))}</td>" for k, _ in cols) + "</tr>" for r in result["results"]
    )
    images = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(charts[key]).decode()}">'
        for key, title in (("staleness", "The cost of staleness"), ("equity", "Equity curves"),
                           ("rolling_error", "Rolling error and hit rate"))
        if key in charts
    )
    meta = html.escape(json.dumps({k: result[k] for k in ("source", "rows", "scored_rows", "label_delay_rows",
                                                           "holding_rows", "warmup", "fee_bps", "returns")}))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rtml backtest</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}code{{font-size:90%}}</style>
</head><body><h1>rtml backtest</h1><p><code>{meta}</code></p>
<table><tr>{head}</tr>{body}</table>{images}</body></html>
"""
