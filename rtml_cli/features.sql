-- rtml's default feature set, one row per closed bar.
--
-- Input view `bars`: symbol, ts (bar start, TIMESTAMPTZ in UTC), open, high, low, close,
-- volume, n_trades, vwap, buy_volume, sell_volume; it holds the new bars plus up to
-- --lookback earlier ones, so that windows are complete.
-- Contract for a replacement (--sql FILE): return every column of `bars` plus numeric
-- feature columns, one row per input row; use only the current and earlier bars of the same
-- symbol (windows that end at CURRENT ROW), never later ones.
-- A feature whose window is not yet full is NULL rather than computed on fewer bars.
WITH returns AS (
    SELECT *, ln(close / lag(close) OVER (PARTITION BY symbol ORDER BY ts)) AS r_1
    FROM bars
)
SELECT
    symbol, ts, open, high, low, close, volume, n_trades, vwap, buy_volume, sell_volume,
    -- log returns over several lags
    r_1,
    ln(close / lag(close, 3) OVER w) AS r_3,
    ln(close / lag(close, 5) OVER w) AS r_5,
    ln(close / lag(close, 15) OVER w) AS r_15,
    -- realised volatility: root of the summed squared 1-bar returns over trailing windows
    CASE WHEN count(r_1) OVER w5 = 5 THEN sqrt(sum(r_1 * r_1) OVER w5) END AS rv_5,
    CASE WHEN count(r_1) OVER w15 = 15 THEN sqrt(sum(r_1 * r_1) OVER w15) END AS rv_15,
    CASE WHEN count(r_1) OVER w30 = 30 THEN sqrt(sum(r_1 * r_1) OVER w30) END AS rv_30,
    -- the bar's range and where it closed against its volume-weighted price
    ln(high / low) AS hl_range,
    ln(close / vwap) AS vwap_dist,
    -- activity against the last 30 bars
    CASE WHEN count(*) OVER w30 = 30
        THEN (volume - avg(volume) OVER w30) / nullif(stddev_samp(volume) OVER w30, 0) END AS volume_z,
    CASE WHEN count(*) OVER w30 = 30
        THEN (n_trades - avg(n_trades) OVER w30) / nullif(stddev_samp(n_trades) OVER w30, 0) END AS trades_z,
    -- signed order-flow imbalance of taker volume, in [-1, 1]; NULL when sides are unknown
    CASE WHEN volume = 0 THEN 0.0
        ELSE (buy_volume - sell_volume) / nullif(buy_volume + sell_volume, 0) END AS ofi,
    -- ... and over the last 5, 15 and 30 bars (each bar's volume weighs by its size)
    CASE WHEN count(buy_volume) OVER w5 = 5
        THEN coalesce(sum(buy_volume - sell_volume) OVER w5 / nullif(sum(buy_volume + sell_volume) OVER w5, 0), 0.0) END AS ofi_5,
    CASE WHEN count(buy_volume) OVER w15 = 15
        THEN coalesce(sum(buy_volume - sell_volume) OVER w15 / nullif(sum(buy_volume + sell_volume) OVER w15, 0), 0.0) END AS ofi_15,
    CASE WHEN count(buy_volume) OVER w30 = 30
        THEN coalesce(sum(buy_volume - sell_volume) OVER w30 / nullif(sum(buy_volume + sell_volume) OVER w30, 0), 0.0) END AS ofi_30
    -- No time of day: a crypto market trades around the clock, the simulated one has no
    -- daily pattern, and a model frozen after a warm-up of hours would see times of day
    -- tens of its deviations away later: its error would come from the clock, not the market.
FROM returns
WINDOW
    w AS (PARTITION BY symbol ORDER BY ts),
    w5 AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 4 PRECEDING AND CURRENT ROW),
    w15 AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 14 PRECEDING AND CURRENT ROW),
    w30 AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
ORDER BY symbol, ts
