"""Trade files a user already has (Kraken, Binance, Tardis dumps, rtml's own), streamed in chunks.

CSV files are read in byte chunks cut at line ends and parsed by polars with every column as
text, so memory stays bounded whatever the file size, and a value that does not parse is
kept verbatim for the quarantine. `.gz` and `.zip` are decompressed on the fly. Parquet
files are read a row group batch at a time.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import os
import re
import time
import zipfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, BinaryIO

from rtml_cli.errors import InputFormatError, RtmlError
from rtml_cli.schema import MAX_NS, Field, ms_or_us_to_ns, parse_problems, problems
from rtml_cli.sources import TickBatch
from rtml_cli.sources.layouts import (
    FORMATS,
    LAYOUTS,
    RTML_REQUIRED,
    Layout,
    by_header,
    hint,
    normalise,
    parquet_columns,
    parquet_layout,
    resembles,
    split_line,
)

if TYPE_CHECKING:
    import polars as pl

CHUNK_BYTES = 8 << 20
CARRY_ROWS = 1000  # occurrence counts are carried for the timestamps of the last rows read
EXTRA_FIELDS_SEEN = 8  # fields past a CSV layout's read to tell a row with extra fields


def expand_paths(path: str) -> list[Path]:
    """A file, or a glob pattern matching files; a clear error when nothing matches."""
    if any(ch in path for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not paths:
            raise InputFormatError(f"no files match {path!r}; check the pattern")
        return paths
    p = Path(path)
    if p.is_dir():
        raise InputFormatError(f"{path} is a directory; give a file or a glob such as '{path}/*.csv'")
    if not p.exists():
        raise InputFormatError(f"{path} does not exist")
    return [p]


# -- opening files --------------------------------------------------------------------------


class _Input:
    """A file's decompressed byte stream and how far into the file on disk it has got."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        try:
            self._raw = open(path, "rb")  # noqa: SIM115 (held open across batches; close() closes it)
        except OSError as exc:
            raise InputFormatError(f"cannot open {path}: {exc.strerror}") from None
        self._zip: zipfile.ZipFile | None = None
        head = self._raw.read(4)
        self._raw.seek(0)
        if head[:2] == b"\x1f\x8b":
            self.stream: BinaryIO = gzip.GzipFile(fileobj=self._raw)  # type: ignore[assignment]
        elif head == b"PK\x03\x04":
            try:
                self._zip = zipfile.ZipFile(self._raw)
            except zipfile.BadZipFile as exc:
                self._raw.close()
                raise InputFormatError(f"{path} is a damaged zip archive ({exc})") from None
            members = [i for i in self._zip.infolist() if not i.is_dir()]
            if len(members) != 1:
                raise InputFormatError(
                    f"{path} holds {len(members)} files; rtml reads zip archives with exactly one "
                    "trade file inside (unzip it and pass the files with a glob)"
                )
            self._member_size = max(members[0].file_size, 1)
            self.stream = self._zip.open(members[0])  # type: ignore[assignment]
            self._read = 0
        else:
            self.stream = self._raw
        self.is_parquet = head == b"PAR1"

    def read(self, n: int) -> bytes:
        try:
            data = self.stream.read(n)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            # gzip.BadGzipFile is an OSError; a truncated download ends in EOFError, which
            # click would otherwise turn into a bare "Aborted!".
            raise InputFormatError(f"{self.path} cannot be read to its end: {exc} (damaged or truncated?)") from None
        if self._zip is not None:
            self._read += len(data)
        return data

    def position(self) -> int:
        if self._zip is not None:
            return min(self.size, self.size * self._read // self._member_size)
        return self._raw.tell()

    def close(self) -> None:
        self.stream.close()
        if self._zip is not None:
            self._zip.close()
        self._raw.close()


MAX_LINE_BYTES = 1 << 20  # a trade record is well under a kilobyte
# what stands in for a line longer than MAX_LINE_BYTES: its first bytes, quarantined as line_too_long
TOO_LONG = b"RTML-LINE-TOO-LONG "


def _csv_chunks(inp: _Input, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Chunks of whole lines, with the bytes of the file on disk consumed so far.

    A line still unfinished MAX_LINE_BYTES past the end of a read is not held: it is read
    past in constant memory and stands in the chunk as one short line, TOO_LONG and its
    first 200 bytes, which the parser quarantines. So time stays linear and memory bounded
    whatever the file holds. (A long line that fits inside one read is an ordinary bad
    record.)
    """
    rest = b""  # the unfinished line carried over from the last read
    skipping: bytes | None = None  # the start of an overlong line being read past
    while True:
        data = inp.read(chunk_bytes)
        if not data:
            if skipping is not None:
                yield _too_long(skipping), inp.position()
            elif rest.strip():
                yield rest, inp.position()
            return
        if skipping is not None:
            nl = data.find(b"\n")
            if nl < 0:
                continue
            yield _too_long(skipping), inp.position()
            rest, data, skipping = b"", data[nl + 1 :], None
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(rest) + len(data) > MAX_LINE_BYTES:
                skipping, rest = (rest + data[:200])[:200], b""
            else:
                rest += data
            continue
        nl = data.find(b"\n")
        if len(rest) + nl > MAX_LINE_BYTES:  # the carried line ended here, too long
            buf = _too_long((rest + data[:200])[:200]) + data[nl + 1 : cut + 1]
        else:
            buf = rest + data[: cut + 1]
        rest = data[cut + 1 :]
        if len(rest) > MAX_LINE_BYTES:
            skipping, rest = rest[:200], b""
        yield buf, inp.position()


def _too_long(start: bytes) -> bytes:
    for ch in (b"\r", b"\n", b",", b'"'):
        start = start.replace(ch, b" ")
    return TOO_LONG + start + b"\n"


# -- which layout ------------------------------------------------------------------------------


def _csv_layout(fmt: str, first_line: str, path: Path, looks: Layout | None) -> tuple[list[str], bool]:
    """Column names and whether the first line is a header, for a CSV file in layout `fmt`."""
    lay = LAYOUTS[fmt]
    if fmt == "tardis":
        cells = split_line(first_line)
        if [c.lower() for c in cells[: lay.width]] != list(lay.columns):
            raise InputFormatError(
                f"{path} does not start with the Tardis trades header {','.join(lay.columns)}; {hint(looks, fmt)}"
            )
        return list(lay.columns) + cells[lay.width :], True
    if fmt == "rtml":
        cells = split_line(first_line)
        lowered = [c.lower() for c in cells]
        missing = [c for c in RTML_REQUIRED if c not in lowered]
        if missing:
            raise InputFormatError(
                f"{path} lacks the column(s) {', '.join(missing)} of an rtml ticks file (its first line is "
                f"{','.join(cells[:12])}); {hint(looks, fmt)}"
            )
        return lowered, True
    cells = split_line(first_line, lay.width)
    if lay.is_header(cells):
        return list(lay.columns), True
    header = by_header(first_line)
    if header is not None:  # another layout's header: its columns mean something else
        raise InputFormatError(f"{path} starts with the header of {header.title}, not of {lay.title}; {hint(header)}")
    if len(cells) != lay.width and not (looks is not None and looks.name == fmt):  # (else one odd first record)
        raise InputFormatError(
            f"{path} has {len(cells)} columns on its first line; {lay.shown()} has {lay.width}; {hint(looks, fmt)}"
        )
    return list(lay.columns), False


def symbol_from_filename(path: Path, fmt: str) -> str | None:
    """Kraken dumps are named after the pair (XBTUSD.csv), Binance ones SYMBOL-trades-DATE.csv
    or SYMBOL-aggTrades-DATE.csv (futures: BTCUSDT, or COIN-M's BTCUSD_PERP, BTCUSD_250627)."""
    stem = path.name.split(".")[0]
    if fmt.startswith("binance"):
        m = re.match(r"^([A-Z0-9_]+)-(?:trades|aggTrades)-", stem)
        return m.group(1) if m else None
    if fmt == "kraken" and re.fullmatch(r"[A-Z0-9]{4,16}", stem):
        return stem
    return None


# -- parsing, one vectorised function per format ---------------------------------------------


def _num(col: str) -> pl.Expr:
    import polars as pl

    # No stripping: CSV dumps carry no padding, and a padded value is then reported as
    # unparseable (with its text) rather than costing every clean row a string pass.
    return pl.col(col).cast(pl.String).cast(pl.Float64, strict=False)


def _ns_from_seconds_text(col: str) -> pl.Expr:
    """'1700000000.123456' -> exact integer nanoseconds (no float round-off)."""
    import polars as pl

    text = pl.col(col).str.strip_chars()
    parts = text.str.split_exact(".", 1)
    whole = parts.struct.field("field_0").cast(pl.Int64, strict=False)
    frac = parts.struct.field("field_1").fill_null("")
    frac_ok = frac.str.contains(r"^\d*$")
    frac_ns = frac.str.slice(0, 9).str.pad_end(9, "0").cast(pl.Int64, strict=False)
    in_range = whole <= MAX_NS // 1_000_000_000 - 1  # beyond it, whole * 1e9 would wrap around
    return pl.when(frac_ok & text.str.contains(r"^\d+(\.\d*)?$") & in_range).then(whole * 1_000_000_000 + frac_ns)


def _us_to_ns(us: pl.Expr) -> pl.Expr:
    """Integer microseconds -> nanoseconds; null (unparseable) when negative or past 2262,
    where the product would wrap around into a plausible but wrong instant."""
    import polars as pl

    return pl.when((us >= 0) & (us <= MAX_NS // 1_000)).then(us * 1_000)


def _utc(expr: pl.Expr) -> pl.Expr:
    from rtml_cli.schema import ns_to_utc

    return ns_to_utc(expr)


def _text_ts(col: str) -> pl.Expr:
    """ISO-8601-ish text or integer nanoseconds -> timestamp[ns, UTC]."""
    import polars as pl

    text = pl.col(col).cast(pl.String).str.strip_chars()
    zoned = [
        text.str.to_datetime(fmt, time_unit="ns", strict=False).dt.convert_time_zone("UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z")
    ]
    naive = [
        text.str.replace(r"Z$", "").str.to_datetime(fmt, time_unit="ns", strict=False).dt.replace_time_zone("UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
    ]
    as_int = _utc(pl.when(text.str.contains(r"^\d+$")).then(text.cast(pl.Int64, strict=False)))
    return pl.coalesce(*zoned, *naive, as_int)


def _occurrence_ids(frame: pl.DataFrame, key: list[str], carry: tuple | None) -> tuple[pl.Series, tuple]:
    """Stable ids for trades without one: the record's fields plus its occurrence number.

    A file position would collide between two files (Kraken's quarterly updates restart at
    line 1); the content plus the count of identical earlier records in the file does not,
    and stays the same when the file is replayed again. `carry` (opaque; None for the
    first chunk) holds the counts of the records at the timestamps of the last CARRY_ROWS
    records before this chunk, where a run of identical trades may span the chunk boundary,
    interleaved with other trades at that time or with a bad record; so ids do not depend
    on where chunks are cut, as long as the file is in time order within CARRY_ROWS records.
    """
    import polars as pl

    old_counts, old_recent = carry if carry is not None else (None, None)
    n = pl.int_range(pl.len()).over(key)
    f = frame.select(key).with_columns(_n=n)
    if old_counts is not None and old_counts.height:
        f = (
            f.join(old_counts, on=key, how="left", maintain_order="left")
            .with_columns(_n=pl.col("_n") + pl.col("_c").fill_null(0))
            .drop("_c")
        )
    ids = pl.concat_str([*[pl.col(k).fill_null("") for k in key], pl.col("_n").cast(pl.String)], separator="|")
    ids_s = f.select(ids.alias("trade_id")).to_series()
    # The timestamps of the last CARRY_ROWS records (this chunk's, and the previous ones' if
    # this chunk is shorter), and the counts at those times: this chunk's merged with the
    # carried ones (keys that did not recur in this chunk).
    recent = f[key[0]].tail(CARRY_ROWS)
    if old_recent is not None and recent.len() < CARRY_ROWS:
        recent = pl.concat([old_recent, recent]).tail(CARRY_ROWS)
    times = recent.drop_nulls().unique().to_list()
    counts = f.filter(pl.col(key[0]).is_in(times)).group_by(key).agg(_c=pl.col("_n").max() + 1)
    if old_counts is not None and old_counts.height:
        old = old_counts.filter(pl.col(key[0]).is_in(times))
        counts = pl.concat([old, counts.cast(old.schema)]).group_by(key).agg(pl.col("_c").max())
    return ids_s, (counts, recent)


@dataclass(frozen=True)
class _Plan:
    """How to read one file: its layout, columns (as the parser names them), header, symbol."""

    path: Path
    fmt: str
    header: list[str]
    has_header: bool
    symbol: str | None
    looks: Layout | None  # what the file looks like, for the error if its rows do not parse
    rename: dict[str, str]  # a Parquet file's column names -> the parser's


@dataclass
class _Parsed:
    frame: pl.DataFrame
    raw: pl.Expr


class ReplaySource:
    """`rtml ingest --source replay`: one or more trade files, in the order given."""

    name = "replay"

    def __init__(
        self,
        path: str,
        fmt: str = "auto",
        symbol: str | None = None,
        chunk_bytes: int | None = None,
        now_ns: int | None = None,
        stop: Event | None = None,
    ):
        if fmt not in FORMATS:
            raise InputFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.paths = expand_paths(path)
        self.fmt = fmt
        self.symbol = symbol
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES  # read at call time, so tests can patch it
        self.now_ns = now_ns
        self.total = sum(p.stat().st_size for p in self.paths)
        # Sniff every file up front, so a wrong file fails before anything is written;
        # Ctrl-C (`stop`) ends that between two files.
        self._plans: list[_Plan] = []
        for p in self.paths:
            if stop is not None and stop.is_set():
                raise RtmlError(
                    f"stopped by a signal while checking the files ({len(self._plans):,} of "
                    f"{len(self.paths):,} checked); nothing was written"
                )
            plan = self._plan(p)
            first = self._plans[0] if self._plans else plan
            if plan.fmt != first.fmt:
                raise InputFormatError(
                    f"{p.name} is {LAYOUTS[plan.fmt].title} (--format {plan.fmt}), but {first.path.name} is "
                    f"{LAYOUTS[first.fmt].title} (--format {first.fmt}); one --path takes files of one layout: "
                    "ingest each with its own command"
                )
            self._plans.append(plan)

    def _recv_ns(self) -> int:
        return self.now_ns if self.now_ns is not None else time.time_ns()

    def _plan(self, path: Path) -> _Plan:
        inp = _Input(path)
        rename: dict[str, str] = {}
        try:
            if inp.is_parquet:
                import pyarrow.parquet as pq

                try:
                    names = pq.ParquetFile(path).schema_arrow.names
                except Exception as exc:
                    raise InputFormatError(f"{path} is not a readable Parquet file: {exc}") from None
                looks = parquet_layout(names)
                fmt = self.fmt if self.fmt != "auto" else _parquet_format(names, path, looks)
                rename = _check_parquet_columns(names, fmt, path, looks)
                header, has_header = [rename.get(n, n) for n in names], False
            else:
                head = inp.read(64 * 1024)
                # a binary file is full of NULs; a text file with a stray NUL has a bad record
                # (quarantined, as it would be past these first 64 KiB)
                binary = InputFormatError(f"{path} is a binary file, not a CSV, gzip, zip or Parquet trade file")
                nuls = head.count(b"\x00")
                if nuls > max(8, len(head) // 1000):
                    raise binary
                try:
                    # final=False: the 64 KiB window may end inside a multi-byte character
                    text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
                except UnicodeDecodeError:
                    if nuls:
                        raise binary from None
                    raise InputFormatError(f"{path} is not UTF-8 text; rtml reads CSV trade files") from None
                lines = [ln for ln in text.splitlines()[:100] if ln.strip()]
                if not lines:
                    raise InputFormatError(f"{path} is empty")
                looks = resembles(lines[:50])
                if self.fmt != "auto":
                    fmt = self.fmt
                elif looks is not None:
                    fmt = looks.name
                else:
                    raise InputFormatError(
                        f"{path} does not look like a trade file rtml knows (first line: {lines[0][:80]!r}). "
                        "Expected one of: "
                        + "; ".join(lay.shown() for lay in LAYOUTS.values())
                        + ". Pass --format if the file is one of these"
                    )
                header, has_header = _csv_layout(fmt, lines[0], path, looks)
        finally:
            inp.close()
        symbol = self.symbol
        if LAYOUTS[fmt].fixed and symbol is None:
            symbol = symbol_from_filename(path, fmt)
            if symbol is None:
                raise InputFormatError(
                    f"{path.name} is {LAYOUTS[fmt].title}, which has no symbol column, and its name does "
                    "not say the pair; pass --symbol (e.g. --symbol BTC/USD)"
                )
        has_symbol_column = "symbol" in [h.lower() for h in header]
        if fmt in ("rtml", "tardis") and not has_symbol_column and symbol is None:
            raise InputFormatError(f"{path.name} has no symbol column; pass --symbol")
        if has_symbol_column and symbol is not None:
            # renaming every row would pour all the file's symbols into one partition
            raise InputFormatError(
                f"{path.name} has a symbol column, so --symbol does not apply; use --symbols to keep some symbols"
            )
        plan = _Plan(path, fmt, header, has_header, symbol, looks, rename)
        # Parse the first rows now too, so that a file that is mostly not trades of this
        # format fails before anything is written (and before a progress bar is drawn).
        probe = self._file_batches(plan, Event(), 64 * 1024, 1_000)
        try:
            next(probe, None)
        finally:
            probe.close()
        return plan

    def batches(self, stop: Event) -> Iterator[TickBatch]:
        for plan in self._plans:
            if stop.is_set():
                return
            yield from self._file_batches(plan, stop)

    def _file_batches(
        self, plan: _Plan, stop: Event, chunk_bytes: int | None = None, parquet_rows: int = 200_000
    ) -> Generator[TickBatch, None, None]:
        import polars as pl

        path, fmt, header, symbol = plan.path, plan.fmt, plan.header, plan.symbol
        inp = _Input(path)
        done = 0
        line = 1  # 1-based line number of the chunk's first record in the (decompressed) file
        carry = None
        checked = False
        try:
            if inp.is_parquet:
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(path)
                rows_total = max(pf.metadata.num_rows, 1)
                rows_done = 0
                for rb in _row_group_slices(pf, parquet_rows):
                    if stop.is_set():
                        return
                    chunk = pl.from_arrow(rb)
                    assert isinstance(chunk, pl.DataFrame)
                    chunk = chunk.rename(plan.rename)
                    chunk = chunk.with_columns(
                        [
                            pl.col(c).cast(pl.String)
                            for c, t in chunk.schema.items()
                            if not (t.is_temporal() and fmt == "rtml")  # only rtml parses typed times
                        ]
                    ).with_columns(_line=pl.int_range(rows_done + 1, rows_done + 1 + chunk.height))
                    parsed, carry = self._parse(chunk, fmt, symbol, carry)
                    rows_done += chunk.height
                    pos = inp.size * rows_done // rows_total
                    if not checked and parsed.frame.height:
                        _check_mostly_parses(parsed.frame, plan)
                        checked = True
                    yield TickBatch(parsed.frame, parsed.raw, pl.format(f"{path.name}:row {{}}", "_line"), pos - done)
                    done = pos
                return
            first = True
            header_pending = plan.has_header
            # A fixed width: polars would otherwise take the width of a chunk's first row,
            # and a short first row would cut fields off every row after it in that chunk.
            # Some columns more than the layout has: a row with a non-empty field past the
            # layout's shows in them (empty ones, a trailing comma, are no field).
            width = {f"_c{i}": pl.String for i in range(len(header) + EXTRA_FIELDS_SEEN)}
            for data, pos in _csv_chunks(inp, chunk_bytes or self.chunk_bytes):
                if stop.is_set():
                    return
                if first and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                first = False
                # The header is the first non-blank line; with small chunks (or a file with
                # no trades) it may be all there is in the chunk.
                while header_pending and data:
                    nl = data.find(b"\n")
                    head, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1 :])
                    line += 1
                    header_pending = not head.strip()
                try:
                    chunk = pl.read_csv(
                        io.BytesIO(data),
                        has_header=False,
                        schema=width,
                        missing_columns="insert",  # short rows get nulls
                        extra_columns="ignore",  # long ones are cut (past what is seen of them)
                        truncate_ragged_lines=True,
                        quote_char='"',
                        raise_if_empty=False,
                        encoding="utf8-lossy",  # a bad byte spoils one value (quarantined), not the run
                    )
                except pl.exceptions.ComputeError as exc:
                    raise InputFormatError(
                        f"{path.name} is not well-formed CSV in the lines from {line:,} on "
                        f"({str(exc).strip().splitlines()[0]}); an unbalanced quote? Fix the file and run again: "
                        "what was written before is kept, and the next run adds only what is new"
                    ) from None
                if chunk.height == 0:
                    continue
                extra = chunk.select(pl.coalesce(chunk.columns[len(header) :]).alias("_extra")).to_series()
                chunk = _name_columns(chunk, header).with_columns(extra, _line=pl.int_range(line, line + chunk.height))
                line += chunk.height
                # a blank line is no record: skipped, not quarantined
                chunk = chunk.filter(~pl.all_horizontal(pl.col([*header, "_extra"]).is_null()))
                parsed, carry = self._parse(chunk, fmt, symbol, carry)
                too_long = chunk[header[0]].str.starts_with(TOO_LONG.decode()).fill_null(False)
                if too_long.any():
                    parsed.frame = parsed.frame.with_columns(
                        _parse_problem=pl.when(too_long).then(pl.lit("line_too_long")).otherwise("_parse_problem")
                    )
                # dumps joined with `cat` (looked for only where a row failed to parse: headers do)
                failed = parsed.frame["_parse_problem"].is_not_null().any()
                again = _repeated_header(chunk, LAYOUTS[fmt]) if failed else None
                if again is not None and again.any():
                    parsed.frame = parsed.frame.with_columns(
                        _parse_problem=pl.when(again).then(pl.lit("repeated_header")).otherwise("_parse_problem")
                    )
                if chunk["_extra"].is_not_null().any():  # more fields than the layout: not this layout's row
                    parsed = _with_extra_fields(parsed, chunk["_extra"])
                if not checked and parsed.frame.height:  # (a chunk of blank lines says nothing)
                    _check_mostly_parses(parsed.frame, plan)
                    checked = True
                yield TickBatch(parsed.frame, parsed.raw, pl.format(f"{path.name}:{{}}", "_line"), pos - done)
                done = pos
        finally:
            inp.close()

    def _parse(self, chunk: pl.DataFrame, fmt: str, symbol: str | None, carry):
        """One format's columns -> the tick columns (+ `_parse_problem`, `_line`, `_raw_*`)."""
        import polars as pl

        raw_cols = [c for c in chunk.columns if c not in ("_line", "_extra")]
        recv = _utc(pl.lit(self._recv_ns(), dtype=pl.Int64))
        fixed_symbol = pl.lit(symbol, dtype=pl.String)
        if fmt == "kraken":
            ids, carry = _occurrence_ids(chunk, ["timestamp", "price", "volume"], carry)
            out = _ticks(
                chunk.with_columns(_id=ids),
                raw_cols,
                ts_col="timestamp",
                ts=_utc(_ns_from_seconds_text("timestamp")),
                recv=recv,
                symbol=fixed_symbol,
                price_col="price",
                qty_col="volume",
                side=pl.lit(None, dtype=pl.String),
                trade_id=pl.format("k{}", "_id"),
            )
        elif fmt.startswith("binance"):  # every Binance layout: its columns have the same names here
            # Binance switched spot dumps from milliseconds to microseconds in 2025.
            ts_ns = ms_or_us_to_ns(pl.col("time").cast(pl.Int64, strict=False))
            maker = pl.col("isBuyerMaker").str.to_lowercase()
            # anything else, a missing value too, is reported as bad_side
            side = (
                pl.when(maker == "true")
                .then(pl.lit("sell"))
                .when(maker == "false")
                .then(pl.lit("buy"))
                .otherwise(pl.col("isBuyerMaker").fill_null(""))
            )
            out = _ticks(
                chunk,
                raw_cols,
                ts_col="time",
                ts=_utc(ts_ns),
                recv=recv,
                symbol=fixed_symbol,
                price_col="price",
                qty_col="qty",
                side=side,
                trade_id=pl.col("id"),
                id_col="id",
            )
        elif fmt == "tardis":
            us = pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False)
            local_us = pl.col("local_timestamp").str.strip_chars().cast(pl.Int64, strict=False)
            side_txt = pl.col("side").str.strip_chars().str.to_lowercase()
            side = pl.when(side_txt.is_in(["unknown", ""]) | side_txt.is_null()).then(None).otherwise(side_txt)
            tid = pl.col("id").str.strip_chars()
            ids, carry = _occurrence_ids(chunk, ["timestamp", "price", "amount"], carry)
            out = _ticks(
                chunk.with_columns(_id=ids),
                raw_cols,
                ts_col="timestamp",
                ts=_utc(_us_to_ns(us)),
                recv=pl.coalesce(_utc(_us_to_ns(local_us)), recv),
                symbol=fixed_symbol if symbol else pl.col("symbol").str.strip_chars(),
                price_col="price",
                qty_col="amount",
                side=side,
                trade_id=pl.when(tid.is_null() | (tid == "")).then(pl.format("t{}", "_id")).otherwise(tid),
            )
        else:
            out, carry = self._parse_rtml(chunk, symbol, recv, raw_cols, carry)
        return _Parsed(out, _raw_expr(raw_cols)), carry

    def _parse_rtml(self, chunk: pl.DataFrame, symbol: str | None, recv: pl.Expr, raw_cols: list[str], carry):
        import polars as pl

        cols = {c.lower(): c for c in chunk.columns}

        def text(name: str) -> pl.Expr:
            return pl.col(cols[name]).cast(pl.String)

        def when_typed(name: str) -> pl.Expr:
            c = cols[name]
            return _temporal_utc(c, chunk.schema[c]) if chunk.schema[c].is_temporal() else _text_ts(c)

        if "recv_ts" in cols:
            recv = pl.coalesce(when_typed("recv_ts"), recv)
        side = text("side").str.strip_chars().str.to_lowercase() if "side" in cols else pl.lit(None, dtype=pl.String)
        has_id = "trade_id" in cols
        out = _ticks(
            chunk,
            raw_cols,
            ts_col=cols["ts"],
            ts=when_typed("ts"),
            recv=recv,
            symbol=pl.lit(symbol, dtype=pl.String) if symbol else text("symbol").str.strip_chars(),
            price_col=cols["price"],
            qty_col=cols["qty"],
            side=pl.when(side == "").then(None).otherwise(side),
            trade_id=text("trade_id").str.strip_chars() if has_id else pl.lit(None, dtype=pl.String),
            id_col=cols["trade_id"] if has_id else None,
        )
        if not has_id:  # an export without ids: derive them from the records, as for Kraken
            key = out.select(
                pl.col("ts").cast(pl.String),
                pl.col(f"_raw_{cols['price']}").alias("p"),
                pl.col(f"_raw_{cols['qty']}").alias("q"),
            )
            ids, carry = _occurrence_ids(key, ["ts", "p", "q"], carry)
            out = out.with_columns(trade_id=pl.lit("r") + pl.lit(ids))
        else:
            carry = None
        return out, carry


def _ticks(
    chunk: pl.DataFrame,
    raw_cols: list[str],
    *,
    ts_col: str,
    ts: pl.Expr,
    recv: pl.Expr,
    symbol: pl.Expr,
    price_col: str,
    qty_col: str,
    side: pl.Expr,
    trade_id: pl.Expr,
    id_col: str | None = None,
) -> pl.DataFrame:
    """The tick columns from one format's expressions, with parse problems and the raw text."""
    import polars as pl

    def text(col: str) -> pl.Expr:
        return pl.col(col).cast(pl.String)

    fields = [
        Field("ts", pl.col(ts_col), ts, "ts"),
        Field("price", text(price_col), _num(price_col), "price"),
        Field("qty", text(qty_col), _num(qty_col), "qty"),
    ]
    if id_col is not None:
        fields.append(Field("trade_id", text(id_col), text(id_col), "trade_id"))
    return chunk.select(
        ts.alias("ts"),
        recv.alias("recv_ts"),
        symbol.alias("symbol"),
        _num(price_col).alias("price"),
        _num(qty_col).alias("qty"),
        side.alias("side"),
        trade_id.alias("trade_id"),
        parse_problems(fields).alias("_parse_problem"),
        "_line",
        *[text(c).alias(f"_raw_{c}") for c in raw_cols],
    )


def _temporal_utc(col: str, dtype: pl.DataType) -> pl.Expr:
    """A typed date/time column -> timestamp[ns, UTC]; naive values are taken as UTC."""
    import polars as pl

    expr = pl.col(col)
    if isinstance(dtype, pl.Datetime):
        expr = expr.dt.cast_time_unit("ns")
        return expr.dt.convert_time_zone("UTC") if dtype.time_zone else expr.dt.replace_time_zone("UTC")
    return expr.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")


def _row_group_slices(pf: Any, rows: int) -> Iterator[Any]:
    """A Parquet file's rows, a row group at a time, in slices of at most `rows`. (pyarrow's
    iter_batches keeps what it has read, so its memory grows with the file.)"""
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g)
        for at in range(0, table.num_rows, rows):
            yield table.slice(at, rows)


def _repeated_header(chunk: pl.DataFrame, lay: Layout) -> pl.Series | None:
    """Which rows of a fixed layout's chunk are its header again (None for the other layouts)."""
    import polars as pl

    if not lay.fixed:
        return None
    headers = [",".join(normalise(h) for h in header) for header in lay.headers]
    row = pl.concat_str([pl.col(c).fill_null("") for c in lay.columns], separator=",")
    return chunk.select(row.str.to_lowercase().str.replace_all("_", "", literal=True).is_in(headers)).to_series()


def _with_extra_fields(parsed: _Parsed, extra: pl.Series) -> _Parsed:
    """Rows with more fields than the layout are quarantined as `extra_fields`, whatever else
    they hold (which field is the extra one cannot be known); their raw text shows the first
    non-empty extra field."""
    import polars as pl

    frame = parsed.frame.with_columns(
        _parse_problem=pl.when(extra.is_not_null()).then(pl.lit("extra_fields")).otherwise("_parse_problem"),
        _raw__extra=extra,
    )
    raw = pl.concat_str([parsed.raw, pl.format(",{}", "_raw__extra").fill_null("")])
    return _Parsed(frame, raw)


def _raw_expr(raw_cols: list[str]) -> pl.Expr:
    import polars as pl

    return pl.concat_str([pl.col(f"_raw_{c}").cast(pl.String).fill_null("") for c in raw_cols], separator=",")


def _name_columns(chunk: pl.DataFrame, header: list[str]) -> pl.DataFrame:
    import polars as pl

    n = len(header)
    if chunk.width < n:  # short rows everywhere in this chunk: pad so missing fields are null
        chunk = chunk.with_columns([pl.lit(None, dtype=pl.String).alias(f"_pad{i}") for i in range(n - chunk.width)])
    chunk = chunk.select(chunk.columns[:n])
    return chunk.rename(dict(zip(chunk.columns, header, strict=False)))


def _parquet_format(names: list[str], path: Path, looks: Layout | None) -> str:
    if looks is None:
        raise InputFormatError(
            f"{path} is a Parquet file without trade columns (it has {', '.join(names[:12])}); "
            "rtml reads Parquet exports with ts,price,qty columns, Binance dumps and Tardis trades"
        )
    return looks.name


_TARDIS_NEEDS = [c for c in LAYOUTS["tardis"].columns if c not in ("exchange", "symbol")]


def _check_parquet_columns(names: list[str], fmt: str, path: Path, looks: Layout | None) -> dict[str, str]:
    """The renaming of a Parquet file's columns to the parser's names; a clear error when the
    file lacks a column the format needs."""
    if fmt == "kraken":
        raise InputFormatError(f"{path} is a Parquet file; Kraken trades come as CSV (timestamp,price,volume)")
    rename: dict[str, str] = {}
    if fmt == "rtml":
        lowered = [n.lower() for n in names]
        missing = [c for c in RTML_REQUIRED if c not in lowered]
    elif fmt == "tardis":
        missing = [c for c in _TARDIS_NEEDS if c not in names]
    else:
        try:
            rename, missing = parquet_columns(names, LAYOUTS[fmt])
        except ValueError as exc:
            raise InputFormatError(f"{path}: {exc}; keep one of them") from None
    if missing:
        raise InputFormatError(
            f"{path} lacks the column(s) {', '.join(missing)} of {LAYOUTS[fmt].title} (it has "
            f"{', '.join(names[:12])}); {hint(looks, fmt)}"
        )
    return rename


def _check_mostly_parses(frame: pl.DataFrame, plan: _Plan, sample: int = 200) -> None:
    """A file whose first rows mostly fail (to parse, or the checks every tick must pass) is the
    wrong file or the wrong layout, not bad ticks; so is one whose every row fails, however
    few, when it looks like another layout."""
    head = frame.head(sample)
    head = head.with_columns(_problem=problems(head))
    failed = head.filter(head["_problem"].is_not_null())
    bad = failed.height
    other = plan.looks is not None and plan.looks.name != plan.fmt
    if (head.height >= 5 and bad > head.height // 2) or (bad and bad == head.height and other):
        example = failed["_problem"][0]
        raise InputFormatError(
            f"{bad} of the first {head.height} rows of {plan.path} do not parse as {LAYOUTS[plan.fmt].title} "
            f"(--format {plan.fmt}), or fail the checks every trade must pass (e.g. {example}); "
            + hint(plan.looks, plan.fmt)
        )
