"""The backtest report: metrics.json, predictions.parquet, charts (PNG) and one self-contained HTML page.

Charts are drawn with matplotlib: well kept, renders PNG without a browser or network, and
the page embeds the PNGs, so it opens anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

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

    base = pl.DataFrame(
        {
            "row": pl.int_range(0, ds.n, eager=True),
            "ts": pl.Series(ds.ts).cast(pl.Datetime("ns", "UTC"))
            if ds.ts is not None
            else pl.repeat(None, ds.n, eager=True),
            "symbol": pl.Series(ds.stream_names, dtype=pl.String).gather(ds.stream),
            "target": ds.y,
        }
    )
    parts = [
        base.with_columns(model=pl.lit(name), refresh=pl.lit("-"), prediction=pl.Series(pred, dtype=pl.Float64))
        for name, pred in result["_baselines"].items()
    ]
    for rep in result["_replays"]:
        for label, pred in rep.preds.items():
            parts.append(
                base.with_columns(
                    model=pl.lit(rep.model), refresh=pl.lit(label), prediction=pl.Series(pred, dtype=pl.Float64)
                )
            )
    tmp = atomic.temp_path_for(path)
    try:
        pl.concat(parts).write_parquet(tmp, compression="zstd")
        atomic.publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _charts(result: dict[str, Any], ds) -> dict[str, bytes]:
    """rolling_error, equity, drawdown and staleness charts; one colour per series in all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import polars as pl
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    from rtml_cli.backtest import period_times

    w, window = result["warmup"], max(10, min(500, result["scored_rows"] // 20))
    unit = "bars" if result["refresh_unit"] == "bars" else "rows"
    timed = ds.ts is not None
    series = [("zero", "-", result["_baselines"]["zero"]), ("persistence", "-", result["_baselines"]["persistence"])]
    for rep in result["_replays"]:
        for label in ("1", "never"):
            series.append((rep.model, label, np.asarray(rep.preds[label])))
    names = list(
        dict.fromkeys([name(m, lab) for m, lab, _ in series] + [name(m, lab) for m, lab in result["_books"]])
    )  # every refresh traded
    cmap = cast(ListedColormap, plt.get_cmap("tab10" if len(names) <= 9 else "tab20"))
    colours: list[tuple[float, ...]] = list(cmap.colors)  # type: ignore[arg-type]  # tab10/tab20: RGB tuples
    palette = [c for c in colours if len(set(c)) > 1]  # no greys: buy and hold is the grey one
    colour: dict[str, Any] = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    colour["buy and hold"] = "0.45"
    out: dict[str, bytes] = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    def time_axis(ax) -> None:
        if timed:
            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # month and day, then hours
            ax.set_xlabel("time (UTC)")
        else:
            ax.set_xlabel(unit)

    x = ds.ts[w:].astype("datetime64[ns]") if timed else np.arange(w, ds.n)
    fig, (ax, ax_hit) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    y = ds.y[w:]
    for model, label, pred in series:
        if model == "persistence":
            continue
        n = name(model, label)
        err = pl.Series(np.abs(pred[w:] - y)).rolling_mean(window).to_numpy()
        ax.plot(x, err, label=n, lw=1, color=colour[n])
        if model != "zero":  # rows with a zero target are left out, as in the hit rate
            hit = np.where(y != 0, ((np.sign(pred[w:]) == np.sign(y)) & (pred[w:] != 0)).astype(float), np.nan)
            ax_hit.plot(
                x,
                pl.Series(hit).fill_nan(None).rolling_mean(window, min_samples=window // 2).to_numpy(),
                color=colour[n],
                lw=1,
            )
    ax.set_title(f"Rolling MAE and hit rate (over {window} rows)")
    ax.set_ylabel("MAE")
    ax.legend(fontsize=8)
    ax_hit.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_hit.set_ylabel("hit rate")
    time_axis(ax_hit)
    out["rolling_error"] = png(fig)

    books = result["_books"]
    if books:
        costs = "before costs" if not result["fee_bps"] else f"fees {result['fee_bps']:g} bp per unit traded"
        fig, ax = plt.subplots(figsize=(10, 4))
        fig_dd, ax_dd = plt.subplots(figsize=(10, 3))
        for (model, label), book in books.items():
            if model == "zero" or len(book.periods) < 2:
                continue
            n = name(model, label)
            when = period_times(ds, book.periods)
            equity = book.equity[0]
            ax.plot(when, equity, label=n, lw=1, color=colour[n])
            ax_dd.plot(when, equity / np.maximum.accumulate(equity) - 1, label=n, lw=1, color=colour[n])
        ax.set_title(f"Equity of a sign strategy, marked to market ({costs})")
        ax.set_ylabel("equity (start = 1)")
        ax.legend(fontsize=8)
        time_axis(ax)
        out["equity"] = png(fig)
        ax_dd.set_title("Drawdown from the running peak")
        ax_dd.set_ylabel("drawdown")
        time_axis(ax_dd)
        out["drawdown"] = png(fig_dd)

    trading = bool(result["trades_on"])
    fig, axes = plt.subplots(1, 2 if trading else 1, figsize=(10, 4), squeeze=False)
    for rep in result["_replays"]:
        rows = [r for r in result["results"] if r["model"] == rep.model]
        labels = [r["refresh"] for r in rows]
        c = colour[name(rep.model, "1")]
        axes[0][0].plot(labels, [r.get("mae_vs_zero") or np.nan for r in rows], marker="o", label=rep.model, color=c)
        if trading:
            axes[0][1].plot(labels, [r.get("sharpe") or np.nan for r in rows], marker="o", label=rep.model, color=c)
    axes[0][0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0][0].set_title("MAE / MAE of the zero baseline")
    axes[0][0].set_xlabel(f"serving refresh interval ({unit})")
    axes[0][0].legend(fontsize=8)
    if trading:
        axes[0][1].set_title("Sharpe ratio (annualised)")
        axes[0][1].set_xlabel(f"serving refresh interval ({unit})")
    out["staleness"] = png(fig)
    return out


def name(model: str, label: str) -> str:
    return model if label == "-" else f"{model} (refresh {label})"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_p(value: float | None) -> str:
    """A p-value: three decimals, or '<0.001'."""
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _interval(r: dict[str, Any]) -> str:
    low, high = r.get("sharpe_low"), r.get("sharpe_high")
    return "-" if low is None or high is None else f"{low:.3g} .. {high:.3g}"


def _row_at(r: dict[str, Any]) -> str:
    return "-" if r.get("diverged_at_row") is None else f"row {r['diverged_at_row']:,}"


# Each column: (title, how to show it from a result row). The terminal, the HTML page and
# --json all show the same rows of `result["results"]`.
Column = tuple[str, Callable[[dict[str, Any]], str]]


def _col(key: str, title: str, show: Callable[[Any], str] = fmt) -> Column:
    return title, lambda r: show(r.get(key))


ACCURACY: list[Column] = [
    _col("model", "model"),
    _col("refresh", "refresh"),
    _col("mae", "MAE"),
    _col("r2", "R²"),
    _col("mae_vs_zero", "MAE/zero"),
    _col("vs_zero_p", "p vs zero", fmt_p),
    _col("hit_rate", "hit rate"),
    _col("hit_p", "p vs coin", fmt_p),
    _col("ic", "IC"),
    _col("drifts", "drifts"),
    ("diverged", _row_at),
]
TRADING: list[Column] = [
    _col("model", "model"),
    _col("refresh", "refresh"),
    _col("total_return", "return"),
    _col("sharpe", "Sharpe"),
    ("Sharpe 95% CI", _interval),
    _col("max_drawdown", "max DD"),
    _col("turnover", "turnover"),
    _col("exposure", "exposure"),
]


@dataclass
class Section:
    """One table of a backtest's story: rows of strings, ready for any renderer."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    dim: list[bool] = field(default_factory=list)  # rows to show faintly (the baselines)
    keys: int = 2  # the leading columns that say what a row is (repeated when a table is split)


def header_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    """What was backtested: data, models, horizon, fees, version."""
    models = "; ".join(f"{m} {json.dumps(v['params'], sort_keys=True)}" for m, v in result["models"].items())
    if result.get("model_per_symbol") and models:
        models += " (--by-symbol: one model per symbol, each learning only its own rows)"
    span = f"{result['scored_from'][:19]} .. {result['scored_to'][:19]} UTC, " if result.get("scored_from") else ""
    fees = f"{result['fee_bps']:g} bp per unit of position changed"
    if not result["fee_bps"]:
        fees += " (all trading figures are before costs)"
    return [
        ("data", f"{result['source']}"),
        (
            "scored",
            f"{span}{result['scored_rows']:,} rows after a warm-up of {result['warmup']:,} "
            f"({result['rows_without_target']:,} rows without a target left out)",
        ),
        (
            "symbols",
            ", ".join(result["symbols"][:12])
            + (f" and {len(result['symbols']) - 12} more" if len(result["symbols"]) > 12 else ""),
        ),
        ("models", models or "-"),
        (
            "horizon",
            f"labels {result['label_delay_rows']} rows late; positions held {result['holding_rows']} "
            f"{'bars' if result['refresh_unit'] == 'bars' else 'rows'}",
        ),
        (
            "trading",
            f"marked to {result['trades_on']}; fees {fees}" if result["trades_on"] else f"none: {result['no_trading']}",
        ),
        ("rtml", result["rtml"]),
    ]


def sections(result: dict[str, Any]) -> list[Section]:
    """The backtest's tables, in reading order."""
    out = []
    rows = result["results"]
    dim = [r["baseline"] and r["refresh"] == "-" for r in rows]

    def table(title: str, cols: list[Column], caption: str = "", subset=None, faint=None) -> Section:
        chosen = rows if subset is None else subset
        cells = [[show(r) for _, show in cols] for r in chosen]
        shown = [i for i in range(len(cols)) if i < 2 or any(row[i] != "-" for row in cells)]  # no empty columns
        return Section(
            title,
            [cols[i][0] for i in shown],
            [[row[i] for i in shown] for row in cells],
            caption,
            faint if faint is not None else dim,
        )

    out.append(
        table(
            "accuracy",
            ACCURACY,
            f"p vs zero: Diebold-Mariano test of the absolute errors against the zero baseline's; p vs coin: "
            f"the hit rate against 0.5 (both allow for {result['holding_rows']}-period overlap). Refresh: "
            f"{result['refresh_unit']} between serving-model refreshes (1: the learner itself; never: frozen "
            "after the warm-up).",
        )
    )
    if result["trades_on"]:
        hold = result.get("buy_and_hold") or {}
        costs = " (before costs)" if not result["fee_bps"] else f" (fees {result['fee_bps']:g} bp)"
        out.append(
            table(
                f"trading a sign strategy, marked to market{costs}",
                TRADING,
                f"buy and hold: return {fmt(hold.get('total_return'))}, Sharpe {fmt(hold.get('sharpe'))} "
                f"({_interval(hold)}), max drawdown {fmt(hold.get('max_drawdown'))}. Sharpe ratios are "
                f"annualised at {result['periods_per_year']:,.0f} periods a year; the interval is Lo's (2002), "
                "robust to fat tails and autocorrelation.",
            )
        )
        ladder = result["fee_ladder_bps"]
        fee_cols = [_col("model", "model"), _col("refresh", "refresh")] + [
            _col(f"return_at_{f:g}bp", f"{f:g} bp") for f in ladder
        ]
        trading_rows = [r for r in rows if r["model"] != "zero"]
        out.append(
            table(
                "return after fees (bp per unit of position changed)",
                fee_cols,
                "",
                trading_rows,
                [r["baseline"] and r["refresh"] == "-" for r in trading_rows],
            )
        )
    out.extend(staleness(result))
    out.append(per_symbol(result))
    return out


def staleness(result: dict[str, Any]) -> list[Section]:
    """Per model: refresh interval x metrics, with each interval tested against the frozen model."""
    unit = result["refresh_unit"]
    cols: list[Column] = [
        (
            "refresh every",
            lambda r: (
                r["refresh"]
                if r["refresh"] == "never"
                else f"{r['refresh']} {unit[:-1] if r['refresh'] == '1' else unit}"
            ),
        ),
        _col("mae", "MAE"),
        _col("mae_vs_zero", "MAE/zero"),
        _col("hit_rate", "hit rate"),
        _col("ic", "IC"),
        _col("vs_frozen_mae_diff", "MAE - frozen's"),
        _col("vs_frozen_p", "p", fmt_p),
    ]
    if result["trades_on"]:
        cols += [_col("sharpe", "Sharpe"), _col("total_return", "return")]
    out = []
    for model in result["models"]:
        mine = [r for r in result["results"] if r["model"] == model]
        out.append(
            Section(
                f"the cost of staleness: {model}",
                [t for t, _ in cols],
                [[show(r) for _, show in cols] for r in mine],
                "p: Diebold-Mariano test of this copy's absolute errors against the frozen model's "
                "(negative difference: the fresher copy is better)",
                [False] * len(mine),
                keys=1,
            )
        )
    return out


def per_symbol(result: dict[str, Any]) -> Section:
    cols: list[Column] = [
        _col("symbol", "symbol"),
        _col("model", "model"),
        _col("refresh", "refresh"),
        _col("rows", "rows"),
        _col("mae_vs_zero", "MAE/zero"),
        _col("hit_rate", "hit rate"),
        _col("ic", "IC"),
    ]
    if result["trades_on"]:
        cols.append(_col("total_return", "return"))
    rows = result["by_symbol"]
    return Section(
        "by symbol (live and frozen models, buy and hold)",
        [t for t, _ in cols],
        [[show(r) for _, show in cols] for r in rows],
        "",
        [r["model"] == "buy and hold" for r in rows],
        keys=3,
    )


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _html(result: dict[str, Any], charts: dict[str, bytes]) -> str:
    e = html.escape

    def table(sec: Section) -> str:
        head = "".join(f"<th>{e(t)}</th>" for t in sec.headers)
        body = "".join(
            f"<tr{' class=dim' if faint else ''}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
            for row, faint in zip(sec.rows, sec.dim or [False] * len(sec.rows), strict=True)
        )
        caption = f"<p class=cap>{e(sec.caption)}</p>" if sec.caption else ""
        return f"<h2>{e(sec.title)}</h2><table><tr>{head}</tr>{body}</table>{caption}"

    header = "".join(f"<tr><th>{e(k)}</th><td class=l>{e(v)}</td></tr>" for k, v in header_lines(result))
    warned = "".join(f"<li>{e(w)}</li>" for w in result["warnings"])
    warned = f"<div class=warn><b>Read with care</b><ul>{warned}</ul></div>" if warned else ""
    images = "".join(
        f'<h2>{e(title)}</h2><img alt="{e(title)}" src="data:image/png;base64,{_base64(charts[key])}">'
        for key, title in (
            ("staleness", "The cost of staleness"),
            ("equity", "Equity curves"),
            ("drawdown", "Drawdowns"),
            ("rolling_error", "Rolling error and hit rate"),
        )
        if key in charts
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rtml backtest</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td.l{{text-align:left}}tr.dim{{color:#777}}
img{{max-width:100%}}.cap{{font-size:90%;color:#444;max-width:900px}}
.warn{{background:#fff4e0;border:1px solid #e0a040;padding:0.5em 1em;margin:1em 0}}</style>
</head><body><h1>rtml backtest</h1><table>{header}</table>{warned}
{"".join(table(sec) for sec in sections(result))}{images}</body></html>
"""
