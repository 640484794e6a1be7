"""Trading a backtest's predictions, marked to market period by period.

The book is a sign strategy with overlapping positions: at each scored row (a decision
point) it opens a slice of 1/h units, long when the prediction is above the band, short when
below -band, flat in between, and holds it for h periods, the target's horizon. During each
period a stream holds the sum of its open slices, and earns that position times the period's
own simple return (from the price at the previous point to this one); a change of the net
position pays the fee on its size. So the volatility inside a holding period is seen, and an
h-period horizon does not compound h-period returns as if they were one period's.

Each stream (symbol) trades a sub-account holding an equal share of the starting capital,
compounding on its own and never rebalanced; the portfolio's equity is their sum. So
buy-and-hold of several symbols returns the average of their returns. Every position is
opened and closed inside the backtest: the ones still open after the last point are closed
there, paying the fee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FEE_LADDER_BPS = (0.0, 1.0, 5.0, 10.0)  # the fee-sensitivity line of every strategy


@dataclass
class Tape:
    """Where positions are marked: each stream's points in time order (streams one after the
    other), with the global period of each point and the simple return of the step that
    ends there (0 at a stream's first point)."""

    stream: np.ndarray  # int, non-decreasing
    period: np.ndarray  # int64, increasing within a stream
    ret: np.ndarray  # float64
    period_ns: np.ndarray | None = None  # the time of each global period number, for charts

    def spans(self) -> list[tuple[int, int, int]]:
        """(stream, first index, end index) of each stream's points."""
        import numpy as np

        if len(self.stream) == 0:
            return []
        cuts = np.flatnonzero(np.diff(self.stream)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(self.stream)]])
        return [(int(self.stream[a]), int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def tape_from_prices(
    stream: np.ndarray, period: np.ndarray, price: np.ndarray, period_ns: np.ndarray | None = None
) -> Tape:
    """A tape of prices (rows in any order): returns between consecutive points of a stream."""
    import numpy as np

    order = np.lexsort((period, stream))
    stream, period, price = stream[order], period[order], price[order].astype(np.float64)
    ret = np.zeros(len(price))
    if len(price) > 1:
        same = stream[1:] == stream[:-1]
        ret[1:] = np.where(same, price[1:] / price[:-1] - 1.0, 0.0)
    return Tape(stream, period.astype(np.int64), ret, period_ns)


def directions(pred: np.ndarray, band: float) -> np.ndarray:
    """+1 above the band, -1 below -band, 0 inside it (and for a missing prediction)."""
    import numpy as np

    p = np.asarray(pred, dtype=np.float64)
    return np.where(p > band, 1.0, np.where(p < -band, -1.0, 0.0))


@dataclass
class Book:
    """A strategy's marked-to-market result."""

    periods: np.ndarray  # global period numbers of `equity` (the first is the start, equity 1)
    equity: np.ndarray  # portfolio equity at the end of each period, per fee level
    fees_bps: tuple[float, ...]
    stream_returns: dict[int, float]  # total return of each stream's sub-account (first fee level)
    turnover: float | None  # mean |change of the net position| per stream and period
    exposure: float | None  # mean |net position| per stream and period

    def returns(self, level: int = 0) -> np.ndarray:
        """The portfolio's simple return in each period after the start."""
        e = self.equity[level]
        return e[1:] / e[:-1] - 1.0


def mark(
    tape: Tape, point_direction: np.ndarray, hold: int, fees_bps: tuple[float, ...], always_long: bool = False
) -> Book:
    """Mark a strategy to market. `point_direction[k]` is the decision at tape point k (NaN
    where no decision is made there); a stream trades from its first decision on.

    `always_long` is buy-and-hold: one whole unit from the first decision to the end.
    """
    import numpy as np

    spans = []
    for s, a, b in tape.spans():
        decided = np.flatnonzero(~np.isnan(point_direction[a:b]))
        if len(decided):
            spans.append((s, a + int(decided[0]), b))
    if not spans:
        return Book(np.array([], dtype=np.int64), np.ones((len(fees_bps), 0)), fees_bps, {}, None, None)
    p0 = min(int(tape.period[a]) for _, a, _ in spans)
    p1 = max(int(tape.period[b - 1]) for _, _, b in spans)
    grid = np.arange(p0, p1 + 1, dtype=np.int64)
    total = np.zeros((len(fees_bps), len(grid)))
    stream_returns: dict[int, float] = {}
    turn_sum = expo_sum = steps = 0.0
    for s, a, b in spans:
        ret = tape.ret[a:b].copy()
        ret[0] = 0.0
        m = b - a
        if always_long:
            pos = np.ones(m)
            pos[0] = 0.0
        else:
            d = np.nan_to_num(point_direction[a:b], nan=0.0)
            c = np.concatenate([[0.0], np.cumsum(d)])
            k = np.arange(m)
            pos = (c[k] - c[np.maximum(k - hold, 0)]) / hold  # slices opened at points k-h..k-1
        change = np.abs(np.diff(pos, prepend=0.0))
        change[-1] += abs(pos[-1])  # what is still open is closed at the last point
        turn_sum += float(change.sum())
        expo_sum += float(np.abs(pos[1:]).sum())
        steps += m - 1
        gain = pos * ret
        at = np.searchsorted(tape.period[a:b], grid, side="right") - 1  # the stream's point at each period
        for level, fee in enumerate(fees_bps):
            equity = np.cumprod(1.0 + gain - fee / 10_000 * change)
            total[level] += np.where(at >= 0, equity[np.maximum(at, 0)], 1.0)
            if level == 0:
                stream_returns[s] = float(equity[-1] - 1.0)
    equity = total / len(spans)
    return Book(
        grid, equity, fees_bps, stream_returns, turn_sum / steps if steps else None, expo_sum / steps if steps else None
    )


def summarize(book: Book, periods_per_year: float) -> dict[str, float | None]:
    """Total return, annualised Sharpe ratio, maximum drawdown, turnover and exposure (at
    the book's first fee level), and the total return at every fee level."""
    import numpy as np

    if len(book.periods) < 2:
        return {"total_return": None, "sharpe": None, "max_drawdown": None, "turnover": None, "exposure": None}
    r = book.returns(0)
    e = book.equity[0]
    sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    peak = np.maximum.accumulate(e)
    out = {
        "total_return": float(e[-1] - 1.0),
        "sharpe": float(r.mean() / sd * math.sqrt(periods_per_year)) if sd > 0 else None,
        "max_drawdown": float(np.max(1.0 - e / peak)),
        "turnover": book.turnover,
        "exposure": book.exposure,
    }
    for level, fee in enumerate(book.fees_bps[1:], start=1):
        out[f"return_at_{fee:g}bp"] = float(book.equity[level][-1] - 1.0)
    return out
