"""A backtest's model inputs, in replay order, on disk: written once, then streamed a chunk at a time.

Holding every row as a Python dict costs about 1.2 kB a row (12 GB for a year of minute bars
of 20 symbols). Instead the feature columns are written, as float64 and in the order the
rows are replayed, to a Parquet file in a temporary directory, and each pass over them (the
replay, the frozen model's child, a parallel job) reads it a row group at a time. Reading
uses pyarrow and numpy only, never polars, so a forked process can do it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

CHUNK_ROWS = 65_536  # rows per row group of the file, and per read
DUCKDB_MEMORY = "1GB"  # what a reordering may hold before it spills to the temporary directory


@dataclass
class Rows:
    """The model inputs of `n` rows in replay order, from `path` (float64 feature columns)."""

    path: Path
    features: list[str]
    n: int

    def __iter__(self) -> Iterator[dict[str, float]]:
        return self.iter(0)

    def iter(self, start: int = 0, only: np.ndarray | None = None) -> Iterator[dict[str, float]]:
        """Each row from `start` on as the model's input: the finite feature values, as the
        trainer and the predictor build them (`learner.model_inputs`). `only` (booleans, one
        per row of the file) keeps just the rows it marks, and builds no input for the others."""
        import numpy as np
        import pyarrow.parquet as pq

        features = self.features
        at = 0
        with pq.ParquetFile(self.path) as pf:
            for g in range(pf.num_row_groups):
                size = pf.metadata.row_group(g).num_rows
                skip = max(0, start - at)
                keep = only[at + skip : at + size] if only is not None else None
                at += size
                if skip >= size or (keep is not None and not keep.any()):
                    continue
                batch = pf.read_row_group(g, columns=features, use_threads=False)
                columns = [batch.column(c).to_numpy() for c in features]  # nulls come as NaN
                mat = np.column_stack(columns) if columns else np.empty((size, 0))
                mat = mat[skip:] if keep is None else mat[skip:][keep]
                finite = np.isfinite(mat)
                whole = np.asarray(finite.all(axis=1)).tolist()
                for r, row in enumerate(mat.tolist()):
                    if whole[r]:
                        yield dict(zip(features, row, strict=True))
                    else:
                        ok = finite[r]
                        yield {c: v for c, v, keep in zip(features, row, ok, strict=True) if keep}


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary directory for one backtest's files: removed when the object that holds it
    is collected or the process ends (a forked child leaves it to its parent)."""
    return tempfile.TemporaryDirectory(prefix="rtml-backtest-", ignore_cleanup_errors=True)


def write_rows(sources: list[Path], order: np.ndarray, features: list[str], out: Path) -> Rows:
    """Rows `order` (numbers of the rows of the Parquet files `sources`, read one after the
    other, in replay order) of the feature columns, cast to float64 by polars as the trainer
    reads them, written to `out`. A file that lacks a feature has it missing (null).

    When there is one file and `order` increases (a table already in time order), one
    streaming pass does it; otherwise DuckDB puts the rows in order first, spilling to disk
    beyond DUCKDB_MEMORY.
    """
    import numpy as np

    order = np.asarray(order, dtype=np.int64)  # (a difference of unsigned row numbers would wrap around)
    if len(sources) == 1 and (len(order) < 2 or bool(np.all(np.diff(order) > 0))):
        _cast_copy(sources[0], order, features, out)
    else:
        ordered = out.with_name(out.stem + ".ordered.parquet")
        _reorder(sources, order, features, ordered)
        try:
            _cast_copy(ordered, None, features, out)
        finally:
            ordered.unlink(missing_ok=True)
    return Rows(out, features, len(order))


def _cast_copy(src: Path, rows: np.ndarray | None, features: list[str], out: Path) -> None:
    """The rows `rows` (increasing; None: all) of `src`'s feature columns, as float64."""
    import numpy as np
    import pyarrow.parquet as pq

    keep = None
    if rows is not None:
        keep = np.zeros(pq.ParquetFile(src).metadata.num_rows, dtype=bool)
        keep[rows] = True

    def frames() -> Iterator[pl.DataFrame]:
        import polars as pl

        at = 0
        have = set(pq.read_schema(src).names)
        with pq.ParquetFile(src) as pf:
            # a row group at a time (iter_batches keeps what it has read: memory would grow with the file)
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=[c for c in features if c in have])
                frame = pl.from_arrow(table)
                assert isinstance(frame, pl.DataFrame)
                if keep is not None:
                    frame = frame.filter(pl.Series(keep[at : at + table.num_rows]))
                at += table.num_rows
                del table
                for piece in range(0, frame.height, CHUNK_ROWS):
                    yield frame.slice(piece, CHUNK_ROWS)

    frame_to_parquet(frames(), features, out)


def _reorder(sources: list[Path], order: np.ndarray, features: list[str], out: Path) -> None:
    """The rows `order` of `sources` (read one after the other), in that order, to `out`,
    feature columns as they are (DuckDB: a sort that spills to disk, so memory stays bounded)."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    sizes = [pq.ParquetFile(p).metadata.num_rows for p in sources]
    base = pa.table({"file": [str(p) for p in sources], "base": np.concatenate([[0], np.cumsum(sizes)[:-1]])})
    perm = pa.table({"_row": pa.array(order, pa.int64()), "_i": pa.array(np.arange(len(order)), pa.int64())})
    spill = out.parent / "duckdb"
    con = duckdb.connect(
        config={"memory_limit": DUCKDB_MEMORY, "temp_directory": str(spill), "preserve_insertion_order": True}
    )
    try:
        con.register("perm", perm)
        con.register("base", base)
        files = "[" + ", ".join(literal(str(p)) for p in sources) + "]"
        have = {n for p in sources for n in pq.read_schema(p).names}
        cols = ", ".join(f"f.{quoted(c)}" for c in features if c in have) or "NULL AS _none"
        con.execute(
            f"COPY (SELECT {cols} FROM read_parquet({files}, file_row_number = true, filename = true, "
            f"union_by_name = true) f JOIN base b ON f.filename = b.file "
            f"JOIN perm p ON b.base + f.file_row_number = p._row ORDER BY p._i) "
            f"TO {literal(str(out))} (FORMAT parquet, ROW_GROUP_SIZE {CHUNK_ROWS})"
        ).fetchall()
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def frame_to_parquet(frames: Iterator[pl.DataFrame], features: list[str], out: Path) -> int:
    """Append frames' feature columns (missing ones as nulls, all float64) to one Parquet
    file, a frame at a time; returns the rows written."""
    import polars as pl
    import pyarrow.parquet as pq

    writer: Any = None
    n = 0
    try:
        for frame in frames:
            table = frame.select(
                pl.col(c).cast(pl.Float64) if c in frame.columns else pl.lit(None, dtype=pl.Float64).alias(c)
                for c in features
            ).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table, row_group_size=CHUNK_ROWS)
            n += table.num_rows
        if writer is None:  # no frames: an empty file with the columns
            pl.DataFrame(schema=dict.fromkeys(features, pl.Float64)).write_parquet(out)
    finally:
        if writer is not None:
            writer.close()
    return n
