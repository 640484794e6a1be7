"""The built-in market simulator: seeded multi-symbol trades with regime-switching predictability.

The generating process (also described in docs/ingest.md, with its calibration): on a
one-second grid, each symbol's log price moves by

    r_t = v_t * sigma * (beta * f_t + sqrt(1 - beta^2) * e_t)   common factor + own noise
        + [momentum regime]  MOMENTUM * sigma * q_t             a drift in the flow's direction
        + [reversion regime] d_t - d_{t-1}                      d follows IMPACT * sigma * q_t:
                                                                the price pushed off fair value

f and e are Student-t shocks (4 degrees of freedom, unit variance): fat tails. v_t is a
stochastic volatility shared by the market, exp of an AR(1) with a half-life of hours:
volatility clusters. q_t is each symbol's order-flow pressure, an AR(1) with a half-life of
about 7 minutes, which takers' sides reveal in every regime (buy probability 0.5 + 0.05
tanh(q)). A hidden market regime switches at random times (exponential durations, mean
`regime_minutes`) between momentum (informed flow: the price follows it) and reversion
(uninformed flow: it pushes the price off fair value, which comes back as the pressure
fades). So the sign of the relation between order flow and the next minutes' return
flips with the regime: an online model can follow it, a frozen one cannot. A market held
in the random walk (`regime="random_walk"`) has flow that moves nothing.

Calibrated to crypto (`tools/market_calibration.py`, docs/ingest.md and tests/test_synthetic.py):
annualised volatility 45-75% per symbol, no drift, fat-tailed returns, volatility
clustering, and an oracle knowing the hidden state hits the sign of the next five minutes
about 57% of the time (`oracle`).

Trades arrive as a Poisson process per symbol, faster when volatility is high; each trade
prints at the interpolated price plus half a spread on its taker side, rounded to the
symbol's tick size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from threading import Event

import numpy as np

from rtml_cli.sources import TickBatch

DEFAULT_SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD"]
BLOCK_SECONDS = 600  # generation granularity; the output does not depend on it
BLOCKS_PER_BATCH = 6
YEAR_SECONDS = 365.25 * 86_400


@dataclass(frozen=True)
class Profile:
    price: float  # starting price
    tick: float  # price increment
    rate: float  # trades per second at average volatility
    vol: float  # annualised volatility of the noise (before the regimes' own moves)
    qty: float  # median trade size

    @property
    def decimals(self) -> int:
        return max(0, round(-math.log10(self.tick)))

    @property
    def sigma(self) -> float:
        """The noise's standard deviation per second."""
        return self.vol / math.sqrt(YEAR_SECONDS)


PROFILES = {
    "BTC/USD": Profile(65_000.0, 0.1, 5.0, 0.45, 0.02),
    "ETH/USD": Profile(3_200.0, 0.01, 3.0, 0.60, 0.3),
    "SOL/USD": Profile(150.0, 0.001, 2.0, 0.75, 5.0),
}


def profile_for(symbol: str) -> Profile:
    if symbol in PROFILES:
        return PROFILES[symbol]
    h = zlib.crc32(symbol.encode())
    return Profile(20.0 + h % 980, 0.001, 1.0 + h % 3, 0.5 + (h % 30) / 100, 1.0 + h % 10)


REGIMES = ("momentum", "reversion", "random_walk")
SWITCHING = (0, 1)  # the regimes a switching market moves between; random_walk only when held
TAU_PRESSURE = 600.0  # seconds: the memory of a symbol's order-flow pressure q (half-life ~7 minutes)
MOMENTUM = 0.022  # momentum: the drift per second is MOMENTUM * sigma * q
IMPACT = 12.0  # reversion: the price sits IMPACT * sigma * q off fair value (smoothed over a minute)
TAU_IMPACT = 60.0
BETA = 0.6  # loading on the common market factor
T_DF = 4.0  # Student-t degrees of freedom of the shocks
FLOW_TILT = 0.05  # takers' buy probability is 0.5 + FLOW_TILT * tanh(q)
HALF_SPREAD = 0.5e-4
TAU_VOL = 4 * 3600.0  # seconds: volatility's memory
VOL_STD = 0.45  # stationary std of log volatility
RHO_PRESSURE = math.exp(-1 / TAU_PRESSURE)
RHO_IMPACT = math.exp(-1 / TAU_IMPACT)
RHO_VOL = math.exp(-1 / TAU_VOL)


def _ar1(shocks: np.ndarray, rho: float, y_prev: float) -> np.ndarray:
    """y_t = rho * y_{t-1} + shock_t, vectorised: y_t = rho^t (rho y_prev + sum_s rho^-s shock_s).

    Exact up to round-off for blocks of a few hundred steps (rho^-n stays small).
    """
    t = np.arange(shocks.size)
    return rho**t * (rho * y_prev + np.cumsum(shocks * rho ** (-t)))


def _t_shocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Student-t shocks scaled to unit variance."""
    return rng.standard_t(T_DF, n) * math.sqrt((T_DF - 2) / T_DF)


@dataclass
class SymbolState:
    symbol: str
    profile: Profile
    rng: np.random.Generator
    log_price: float
    next_id: int
    q: float = 0.0  # the order-flow pressure, unit variance
    d: float = 0.0  # the price's offset from fair value (reversion regime), in log terms


@dataclass
class Trace:
    """The hidden state each second, kept when asked for: what an oracle would know."""

    regime: list[np.ndarray] = field(default_factory=list)  # int8 per second
    q: list[list[np.ndarray]] = field(default_factory=list)  # per block, per symbol: the pressure q_t
    d: list[list[np.ndarray]] = field(default_factory=list)  # per block, per symbol: the offset d_t

    def series(self, name: str, k: int) -> np.ndarray:
        return np.concatenate([block[k] for block in getattr(self, name)])


class Simulator:
    """Generates trades block by block; the same seed and start give the same trades.

    `regime` fixes the market regime (a stationary market); by default it switches.
    `trace` keeps the hidden state of every second (for `oracle`).
    """

    def __init__(
        self,
        symbols: list[str],
        seed: int,
        start_ns: int,
        regime_minutes: float = 720.0,
        resume: dict[str, tuple[float, int]] | None = None,
        regime: str | None = None,
        trace: bool = False,
    ):
        resume = resume or {}
        start_s = start_ns // 1_000_000_000
        self.start_ns = start_ns
        self.t = 0  # seconds simulated so far
        self.market_rng = np.random.default_rng([seed, start_s, 0])
        self.states = []
        for symbol in symbols:
            prof = profile_for(symbol)
            price, next_id = resume.get(symbol, (prof.price, 0))
            rng = np.random.default_rng([seed, start_s, zlib.crc32(symbol.encode()) + 1])
            self.states.append(SymbolState(symbol, prof, rng, math.log(price), next_id))
        if regime is not None and regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, not {regime!r}")
        self.fixed = regime
        self.regime_seconds = regime_minutes * 60
        self.regime = REGIMES.index(regime) if regime else SWITCHING[int(self.market_rng.integers(len(SWITCHING)))]
        self.regime_until = math.inf if regime else self._duration(self.regime_seconds)
        self.log_vol = float(self.market_rng.standard_normal()) * VOL_STD  # start anywhere in its range
        self.regime_log: list[tuple[int, str]] = [(0, REGIMES[self.regime])]
        self.trace = Trace() if trace else None

    def _duration(self, mean: float) -> int:
        return self.t + max(60, int(self.market_rng.exponential(mean)))

    def _regime_path(self, n: int) -> np.ndarray:
        regime = np.empty(n, dtype=np.int8)
        t0 = self.t
        for i in range(n):
            t = t0 + i
            if t >= self.regime_until:
                others = [r for r in SWITCHING if r != self.regime]
                self.regime = others[int(self.market_rng.integers(len(others)))]
                self.regime_until = t + max(60, int(self.market_rng.exponential(self.regime_seconds)))
                self.regime_log.append((t, REGIMES[self.regime]))
            regime[i] = self.regime
        return regime

    def block(self, n: int = BLOCK_SECONDS) -> dict[str, np.ndarray]:
        """Simulate the next `n` seconds; returns columns of all symbols' trades in time order."""
        regime = self._regime_path(n)
        factor = _t_shocks(self.market_rng, n)
        log_vol = _ar1(self.market_rng.standard_normal(n) * VOL_STD * math.sqrt(1 - RHO_VOL**2), RHO_VOL, self.log_vol)
        self.log_vol = float(log_vol[-1])
        vol = np.exp(log_vol - VOL_STD**2)  # E[vol^2] = 1: the profile's volatility on average
        momentum = regime == 0
        reversion = regime == 1
        if self.trace is not None:
            self.trace.regime.append(regime)
            self.trace.q.append([])
            self.trace.d.append([])
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "lat", "sym", "price", "qty", "buy", "id")}
        for k, st in enumerate(self.states):
            p, rng = st.profile, st.rng
            sigma = p.sigma
            own = _t_shocks(rng, n)
            # The symbol's order-flow pressure: persistent, seen in every regime through the
            # takers' side. What it does to the price is the regime's: in momentum it is
            # informed (a drift in its direction follows), in reversion it is not (the price
            # is pushed off fair value and comes back as the pressure fades), in the random
            # walk it does nothing.
            q = _ar1(rng.standard_normal(n) * math.sqrt(1 - RHO_PRESSURE**2), RHO_PRESSURE, st.q)
            d_prev = st.d
            d = _ar1(np.where(reversion, (1 - RHO_IMPACT) * IMPACT * sigma * q, 0.0), RHO_IMPACT, st.d)
            st.q, st.d = float(q[-1]), float(d[-1])
            if self.trace is not None:
                self.trace.q[-1].append(q)
                self.trace.d[-1].append(d)
            ret = vol * sigma * (BETA * factor + math.sqrt(1 - BETA**2) * own)
            ret += np.where(momentum, MOMENTUM * sigma * q, 0.0) + (d - np.concatenate(([d_prev], d[:-1])))
            buy_p = 0.5 + FLOW_TILT * np.tanh(q)
            # Trades: Poisson counts per second (more when volatile), uniform times within the second.
            counts = rng.poisson(p.rate * np.minimum(vol, 4.0))
            sec = np.repeat(np.arange(n), counts)
            m = sec.size
            frac = np.sort(rng.random(m) + sec) - sec  # sorted times, fractions within seconds
            frac = np.clip(frac, 0.0, 0.999_999_999)
            level = st.log_price + np.concatenate(([0.0], np.cumsum(ret)[:-1]))
            buy = rng.random(m) < buy_p[sec]
            logp = level[sec] + frac * ret[sec] + np.where(buy, HALF_SPREAD, -HALF_SPREAD)
            price = np.maximum(np.round(np.exp(logp), p.decimals), p.tick)
            qty = np.maximum(np.round(p.qty * np.exp(rng.standard_normal(m)), 8), 1e-8)
            st.log_price += float(ret.sum())
            out["ts"].append(self.start_ns + (self.t + sec) * 1_000_000_000 + (frac * 1e9).astype(np.int64))
            out["lat"].append((rng.exponential(0.02, m) * 1e9).astype(np.int64) + 1_000_000)
            out["sym"].append(np.full(m, k, dtype=np.int32))
            out["price"].append(price)
            out["qty"].append(qty)
            out["buy"].append(buy)
            out["id"].append(np.arange(st.next_id, st.next_id + m, dtype=np.int64))
            st.next_id += m
        self.t += n
        cols = {k: np.concatenate(v) for k, v in out.items()}
        order = np.argsort(cols["ts"], kind="stable")
        return {k: v[order] for k, v in cols.items()}


def expected_move(regime: np.ndarray, q: np.ndarray, d: np.ndarray, sigma: float, seconds: int) -> np.ndarray:
    """The expected log return over the next `seconds`, given the regime and the state now
    (regime switches on the way not foreseen; the common factor and noise have mean zero)."""
    rq, ri = RHO_PRESSURE, RHO_IMPACT
    drift = MOMENTUM * sigma * q * rq * (1 - rq**seconds) / (1 - rq)  # sum of the expected drifts
    # d follows (1 - ri) * IMPACT * sigma * q smoothed: its expected value H seconds on, less now
    later = ri**seconds * d + (1 - ri) * IMPACT * sigma * q * rq * (ri**seconds - rq**seconds) / (ri - rq)
    return np.where(regime == 0, drift, np.where(regime == 1, later - d, 0.0))


def oracle(sim: Simulator, closes: np.ndarray, bar_s: int, horizon: int) -> dict[str, float]:
    """What knowing the hidden state is worth: the hit rate of the sign of the expected log
    return over the next `horizon` bars, given the regime, drift and mispricing at each bar's
    close (and the parameters), against the realised one.

    `closes` is symbols x bars: each bar's last trade price (bars of `bar_s` seconds from the
    simulation's start, as `rtml features` builds them). Bars in the random walk have no
    view (an expectation of exactly zero): the overall hit rate counts them as a coin flip.
    """
    tr = sim.trace
    assert tr is not None, "the oracle needs a simulation run with trace=True"
    regime = np.concatenate(tr.regime)
    n_bars = closes.shape[1]
    ends = np.arange(1, n_bars + 1) * bar_s - 1  # the last second of each bar
    ends = ends[ends + horizon * bar_s < len(regime)]
    hits, views = [], []
    for k, st in enumerate(sim.states):
        expect = expected_move(
            regime[ends], tr.series("q", k)[ends], tr.series("d", k)[ends], st.profile.sigma, horizon * bar_s
        )
        c = closes[k]
        realised = np.log(c[horizon:] / c[:-horizon])[: len(ends)]
        expect = expect[: len(realised)]
        has_view = (expect != 0) & (realised != 0)
        hits.append((np.sign(expect) == np.sign(realised))[has_view])
        views.append(has_view)
    hit = np.concatenate(hits)
    view = np.concatenate(views)
    share = float(view.mean())
    return {
        "hit_rate_with_a_view": float(hit.mean()),
        "share_with_a_view": share,
        "hit_rate": float(hit.mean()) * share + 0.5 * (1 - share),
    }


class SyntheticSource:
    """`rtml ingest --source synthetic`: the simulator as a tick source."""

    name = "synthetic"

    def __init__(
        self,
        symbols: list[str],
        seed: int,
        start_ns: int,
        max_ticks: int | None,
        resume: dict[str, tuple[float, int]] | None = None,
        regime_minutes: float = 720.0,
        regime: str | None = None,
    ):
        self.symbols = symbols
        self.sim = Simulator(symbols, seed, start_ns, regime_minutes, resume, regime)
        self.max_ticks = max_ticks
        self.total = max_ticks

    def batches(self, stop: Event) -> Iterator[TickBatch]:
        import polars as pl

        from rtml_cli.schema import ns_to_utc

        emitted = 0
        names = pl.Series(self.symbols, dtype=pl.String)
        while not stop.is_set():
            # Several blocks per batch: the pipeline's per-batch cost is then amortised.
            blocks = [self.sim.block() for _ in range(BLOCKS_PER_BATCH)]
            cols = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
            m = cols["ts"].size
            if self.max_ticks is not None:
                m = min(m, self.max_ticks - emitted)
            frame = pl.DataFrame(
                {
                    "ts": cols["ts"][:m],
                    "recv_ts": cols["ts"][:m] + cols["lat"][:m],
                    "sym": cols["sym"][:m],
                    "price": cols["price"][:m],
                    "qty": cols["qty"][:m],
                    "buy": cols["buy"][:m],
                    "id": cols["id"][:m],
                }
            ).select(
                ns_to_utc(pl.col("ts")).alias("ts"),
                ns_to_utc(pl.col("recv_ts")).alias("recv_ts"),
                pl.col("sym").replace_strict(list(range(len(names))), names).alias("symbol"),
                "price",
                "qty",
                pl.when("buy").then(pl.lit("buy")).otherwise(pl.lit("sell")).alias("side"),
                pl.format("sim-{}", "id").alias("trade_id"),
                pl.lit(None, dtype=pl.String).alias("_parse_problem"),
            )
            emitted += m
            if m:
                yield TickBatch(frame, raw=pl.format("synthetic {}", "trade_id"), where=pl.lit("synthetic"), progress=m)
            if self.max_ticks is not None and emitted >= self.max_ticks:
                return
