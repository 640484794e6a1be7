-- Closed time bars, with empty bars filled in, for every symbol of a step.
--
-- Input `ticks`: the trades to aggregate (none late, all in bars to emit): symbol (an id), bucket
--   (bar start, ns since the epoch), ord (the trades' order by time, then by arrival, so
--   equal timestamps are not ambiguous), price, qty, is_buy (the taker side; NULL if unknown).
-- Input `bounds`: per symbol, emit the bars starting in [first, stop); prev_close is the
--   close of the bar before `first` (NULL if none); carry_cap: the end of the empty bars that
--   may still follow the symbol's last bar with trades before `first`.
-- Parameters: $bar, the bar length in ns; $max_empty, the most empty bars after a bar with trades.
-- An empty bar carries the last close forward as open, high, low, close and vwap, with zero
-- volume and zero trades.
WITH agg AS (
    SELECT
        symbol,
        bucket,
        arg_min(price, ord) AS open,
        max(price) AS high,
        min(price) AS low,
        arg_max(price, ord) AS close,
        sum(qty) AS volume,
        count(*) AS n_trades,
        sum(price * qty) / sum(qty) AS vwap,
        -- NULL when no trade in the bar says its side (e.g. Kraken CSV dumps)
        CASE WHEN count(is_buy) > 0 THEN coalesce(sum(qty) FILTER (WHERE is_buy), 0) END AS buy_volume,
        CASE WHEN count(is_buy) > 0 THEN coalesce(sum(qty) FILTER (WHERE NOT is_buy), 0) END AS sell_volume
    FROM ticks
    GROUP BY symbol, bucket
),
-- The grid of bars to emit: each bar with trades and at most $max_empty empty bars after it
-- (a gap of days is a gap, not a million bars); and, from `first`, the empty bars still due
-- after the last bar with trades of an earlier step (up to `carry_cap`, exclusive).
starts AS (
    SELECT symbol, bucket AS start, bucket + (CAST($max_empty AS BIGINT) + 1) * CAST($bar AS BIGINT) AS cap FROM agg
    UNION ALL
    SELECT symbol, first AS start, carry_cap AS cap FROM bounds
    WHERE NOT EXISTS (SELECT 1 FROM agg WHERE agg.symbol = bounds.symbol AND agg.bucket = bounds.first)
),
spans AS (
    SELECT
        s.symbol,
        s.start,
        least(coalesce(lead(s.start) OVER (PARTITION BY s.symbol ORDER BY s.start), b.stop), b.stop, s.cap) AS stop,
        b.prev_close
    FROM starts s JOIN bounds b ON b.symbol = s.symbol
),
grid AS (
    SELECT symbol, unnest(range(start, stop, $bar)) AS bucket, prev_close FROM spans WHERE stop > start
),
carried AS (
    SELECT
        grid.symbol,
        grid.bucket,
        agg.* EXCLUDE (symbol, bucket),
        coalesce(
            last_value(agg.close IGNORE NULLS) OVER (
                PARTITION BY grid.symbol ORDER BY grid.bucket ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ),
            grid.prev_close
        ) AS last_close
    FROM grid
    LEFT JOIN agg ON agg.symbol = grid.symbol AND agg.bucket = grid.bucket
)
SELECT
    symbol,
    bucket,
    coalesce(open, last_close) AS open,
    coalesce(high, last_close) AS high,
    coalesce(low, last_close) AS low,
    coalesce(close, last_close) AS close,
    coalesce(volume, 0.0) AS volume,
    coalesce(n_trades, 0) AS n_trades,
    coalesce(vwap, last_close) AS vwap,
    CASE WHEN n_trades IS NULL THEN 0.0 ELSE buy_volume END AS buy_volume,
    CASE WHEN n_trades IS NULL THEN 0.0 ELSE sell_volume END AS sell_volume
FROM carried
ORDER BY symbol, bucket
