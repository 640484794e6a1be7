"""The built-in market simulator: seeded multi-symbol trades with regime-switching predictability.

The generating process (also described in the README): on a one-second grid, each symbol's
log price moves by

    r_t = vol_t * sigma * (beta * f_t + sqrt(1 - beta^2) * e_t)   common factor + own noise
        + [momentum regime]  mu_t       a persistent drift:  mu_t = rho_m * mu_{t-1} + noise
        + [reversion regime] d_t - d_{t-1}   a mispricing that decays: d_t = rho_d * d_{t-1} + noise

A hidden market regime (momentum, mean reversion, random walk) switches at random times
(exponential durations, mean `regime_minutes`), and independently a volatility regime
(calm/stormy, stormy = 2.5x volatility and 1.5x trading). Taker flow carries information:
in the momentum regime buyers lean with the drift (order-flow imbalance leads price), in the
reversion regime the flow is the noise that pushes the price away (imbalance predicts a
reversal), in the random walk it is balanced. So the sign and strength of the relation
between recent returns, flow and the next minutes' return switch between regimes: an online
model can follow it, a frozen one cannot.

Trades arrive as a Poisson process per symbol; each trade prints at the interpolated price
plus half a spread on its taker side, rounded to the symbol's tick size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from threading import Event

import numpy as np

from rtml_cli.sources import TickBatch

DEFAULT_SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD"]
BLOCK_SECONDS = 600  # generation granularity; the output does not depend on it
BLOCKS_PER_BATCH = 6


@dataclass(frozen=True)
class Profile:
    price: float  # starting price
    tick: float  # price increment
    rate: float  # trades per second in a calm market
    sigma: float  # log-return volatility per second
    qty: float  # median trade size

    @property
    def decimals(self) -> int:
        return max(0, round(-math.log10(self.tick)))


PROFILES = {
    "BTC/USD": Profile(65_000.0, 0.1, 8.0, 1.5e-4, 0.02),
    "ETH/USD": Profile(3_200.0, 0.01, 5.0, 2.0e-4, 0.3),
    "SOL/USD": Profile(150.0, 0.001, 3.0, 3.0e-4, 5.0),
}


def profile_for(symbol: str) -> Profile:
    if symbol in PROFILES:
        return PROFILES[symbol]
    h = zlib.crc32(symbol.encode())
    return Profile(20.0 + h % 980, 0.001, 2.0 + h % 5, 2.5e-4, 1.0 + h % 10)


REGIMES = ("momentum", "reversion", "random_walk")
RHO_MOMENTUM = math.exp(-1 / 120)  # drift persists ~2 minutes
RHO_REVERSION = math.exp(-1 / 120)  # mispricing decays over ~2 minutes
MU_STD = 0.12  # stationary std of the drift, in units of sigma
D_STD = 15.0  # stationary std of the mispricing, in units of sigma
BETA = 0.6  # loading on the common market factor
FLOW_TILT = 0.35  # how far flow leans: buy probability within 0.5 +/- this
HALF_SPREAD = 0.5e-4
STORM_VOL, STORM_RATE = 2.5, 1.5


def _ar1(shocks: np.ndarray, rho: float, y_prev: float) -> np.ndarray:
    """y_t = rho * y_{t-1} + shock_t, vectorised: y_t = rho^t (rho y_prev + sum_s rho^-s shock_s).

    Exact up to round-off for blocks of a few hundred steps (rho^-n stays small).
    """
    t = np.arange(shocks.size)
    return rho**t * (rho * y_prev + np.cumsum(shocks * rho ** (-t)))


@dataclass
class SymbolState:
    symbol: str
    profile: Profile
    rng: np.random.Generator
    log_price: float
    next_id: int
    mu: float = 0.0
    d: float = 0.0


class Simulator:
    """Generates trades block by block; the same seed and start give the same trades."""

    def __init__(
        self,
        symbols: list[str],
        seed: int,
        start_ns: int,
        regime_minutes: float = 30.0,
        resume: dict[str, tuple[float, int]] | None = None,
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
        self.regime_seconds = regime_minutes * 60
        self.regime = int(self.market_rng.integers(len(REGIMES)))
        self.regime_until = self._duration(self.regime_seconds)
        self.stormy = False
        self.storm_until = self._duration(2 * self.regime_seconds)
        self.regime_log: list[tuple[int, str, bool]] = [(0, REGIMES[self.regime], False)]

    def _duration(self, mean: float) -> int:
        return self.t + max(60, int(self.market_rng.exponential(mean)))

    def _regime_path(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        regime = np.empty(n, dtype=np.int8)
        stormy = np.empty(n, dtype=bool)
        t0 = self.t
        for i in range(n):
            t = t0 + i
            if t >= self.regime_until:
                others = [r for r in range(len(REGIMES)) if r != self.regime]
                self.regime = others[int(self.market_rng.integers(len(others)))]
                self.regime_until = t + max(60, int(self.market_rng.exponential(self.regime_seconds)))
                self.regime_log.append((t, REGIMES[self.regime], self.stormy))
            if t >= self.storm_until:
                self.stormy = not self.stormy
                self.storm_until = t + max(60, int(self.market_rng.exponential(2 * self.regime_seconds)))
                self.regime_log.append((t, REGIMES[self.regime], self.stormy))
            regime[i] = self.regime
            stormy[i] = self.stormy
        return regime, stormy

    def block(self, n: int = BLOCK_SECONDS) -> dict[str, np.ndarray]:
        """Simulate the next `n` seconds; returns columns of all symbols' trades in time order."""
        regime, stormy = self._regime_path(n)
        factor = self.market_rng.standard_normal(n)
        momentum = regime == 0
        reversion = regime == 1
        vol = np.where(stormy, STORM_VOL, 1.0)
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "lat", "sym", "price", "qty", "buy", "id")}
        for k, st in enumerate(self.states):
            p, rng = st.profile, st.rng
            own = rng.standard_normal(n)
            nu = rng.standard_normal(n)
            eta = rng.standard_normal(n)
            # AR(1) drift and mispricing, carried across blocks.
            mu = _ar1(nu * MU_STD * p.sigma * math.sqrt(1 - RHO_MOMENTUM**2), RHO_MOMENTUM, st.mu)
            d_prev = st.d
            # The mispricing is only pushed while the market mean-reverts; outside that regime
            # it decays unseen, so a new reversion spell starts from a fair price instead of
            # drifting off an old, invisible deviation.
            d_shock = np.where(reversion, eta, 0.0) * vol * D_STD * p.sigma * math.sqrt(1 - RHO_REVERSION**2)
            d = _ar1(d_shock, RHO_REVERSION, st.d)
            st.mu, st.d = float(mu[-1]), float(d[-1])
            dd = np.diff(d, prepend=d_prev)
            ret = vol * p.sigma * (BETA * factor + math.sqrt(1 - BETA**2) * own)
            ret += np.where(momentum, mu, 0.0) + np.where(reversion, dd, 0.0)
            buy_p = 0.5 + FLOW_TILT * np.where(
                momentum,
                np.tanh(mu / (MU_STD * p.sigma)),
                np.where(reversion, np.tanh(eta), 0.0),
            )
            # Trades: Poisson counts per second, uniform times within the second.
            counts = rng.poisson(p.rate * np.where(stormy, STORM_RATE, 1.0))
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
        regime_minutes: float = 30.0,
    ):
        self.symbols = symbols
        self.sim = Simulator(symbols, seed, start_ns, regime_minutes, resume)
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
