"""Training benchmark: rtml train against a bare River loop and the seed design; checkpoint stalls; memory.

Run: `.venv/bin/python bench/train.py [--examples 200000]` (also part of `make bench`).
The examples come from the real pipeline (synthetic ticks -> `rtml features --bar 2s`).
(a) and (b) are timed in this process, so neither pays for interpreter start or imports;
the whole `rtml train` command's wall time is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from threading import Event

from report import show  # bench/report.py, beside this script


def rtml(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtml_cli", *args]


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command.

    Measured by GNU time around the command: a child forked straight from this process
    would count this process's memory, copied at the fork, as its own peak.
    """
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, int(out.stderr.strip().splitlines()[-1]) / 1024


class IdleModel:
    """A model that does nothing (`train:idle_model`): the loop's own cost, measured."""

    def predict_one(self, x: dict) -> float:
        return 0.0

    def learn_one(self, x: dict, y: float) -> None:
        pass


def idle_model() -> IdleModel:
    return IdleModel()


def make_examples(data_dir: Path, n: int) -> None:
    # 2 s bars of 3 symbols: 1.5 bars per simulated second, ~16 trades a second (more when
    # stormy): ~11 trades per bar, with room to spare
    ticks = int(n * 16 / 1.5 * 1.6)
    subprocess.run(
        rtml("ingest", "--max-ticks", str(ticks), "--json", "--data-dir", str(data_dir)),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        rtml("features", "--bar", "2s", "--json", "--data-dir", str(data_dir)), check=True, capture_output=True
    )


def rows(data_dir: Path, n: int):
    """The first n examples as `rtml train` sees them: (x dict, target) in time order."""
    from rtml_cli.learner import feature_columns
    from rtml_cli.log import ParquetLog

    ex = ParquetLog(data_dir, "examples").read_all().sort("ts", "symbol", "offset").head(n)
    cols = feature_columns(ex.columns)
    out = []
    for row in ex.select(*cols, "target").iter_rows():
        x = {c: v for c, v in zip(cols, row[:-1], strict=True) if v is not None and v == v}
        out.append((x, row[-1]))
    assert len(out) == n, f"only {len(out)} examples"
    return out, len(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--seed-design-examples", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.examples

    from rtml_cli.checkpoint import Checkpointer, CheckpointStore
    from rtml_cli.learner import Learner
    from rtml_cli.models import SPECS, resolve
    from rtml_cli.train import Trainer, TrainOptions

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        d = Path(tmp) / "data"
        make_examples(d, n)
        # keep exactly n examples in the log, so (a) and (b) see the same rows
        from rtml_cli.log import ParquetLog

        ex = ParquetLog(d, "examples").read_all().sort("ts", "symbol", "offset")
        trimmed, small = Path(tmp) / "trimmed", Path(tmp) / "small"
        for target, rows_kept in ((trimmed, n), (small, n // 10)):
            with ParquetLog(target, "examples").writer() as w:
                for (sym,), part in ex.head(rows_kept).sort("symbol", "offset").group_by("symbol", maintain_order=True):
                    w.append(sym, part.drop("offset"))
            shutil.copytree(d / "state", target / "state")  # how the examples were built (train checks it)
        del ex

        def train_loop(every: int = TrainOptions.checkpoint_every, model: str = "linear") -> tuple[float, Trainer]:
            """(a) rtml train's own loop, in this process: read, predict, score, learn, checkpoint
            (every `every` examples; by default as the command does)."""
            shutil.rmtree(trimmed / "checkpoints", ignore_errors=True)  # from the first example again
            opts = TrainOptions(model=model, name=model.split(":")[-1], checkpoint_every=every)
            with Trainer(trimmed, opts) as trainer:
                t0 = time.perf_counter()
                trainer.run(Event(), follow=False)
                took = time.perf_counter() - t0
                assert trainer.summary()["examples_learned"] == n
            return took, trainer

        # checkpoints every 1,000 examples: what a checkpoint stalls the loop, and costs it
        often_s, trainer = train_loop(1000)
        stalls = sorted(trainer.checkpointer.stalls_ms)
        train_s, _ = train_loop()

        # the same rows as pre-built dicts (built after (a): a heap of 200k dicts slows
        # Python's garbage collector, which would burden (a) with the floor's own setup)
        data, _ = rows(d, n)

        # (b) the floor: a bare River loop over pre-built dicts, no I/O, no prediction
        model = SPECS["linear"].build()
        t0 = time.perf_counter()
        for x, y in data:
            model.learn_one(x, y)
        floor_s = time.perf_counter() - t0

        def step_alone(model: str = "linear") -> float:
            """The prequential step alone, over the same dicts: predict, score, drift check, learn."""
            spec = resolve(model)
            learner = Learner(spec.build(), spec.kind, spec.build)
            t0 = time.perf_counter()
            for x, y in data:
                learner.step(x, y)
            return time.perf_counter() - t0

        # (a) against the step, taking turns, best of three: this machine's timings vary by a third
        prequential_s = step_alone()
        for _ in range(2):
            train_s = min(train_s, train_loop()[0])
            prequential_s = min(prequential_s, step_alone())
        # the same with a model that does nothing: what the loop costs beside the model
        # (reading, inputs, bookkeeping, checkpoints), best of three
        idle_loop_s = min(train_loop(model="train:idle_model")[0] for _ in range(3))
        idle_step_s = min(step_alone("train:idle_model") for _ in range(3))

        # the whole command, as a user runs it (interpreter start and imports included), and
        # its peak memory on the full log and on one with a tenth of the examples
        cli_s, peak_all = peak_rss(rtml("train", "--name", "cli", "--json", "--data-dir", str(trimmed)))
        _, peak_small = peak_rss(rtml("train", "--name", "cli", "--json", "--data-dir", str(small)))

        # (c) the seed design: learn, then pickle the model and write a JSON file, every example
        seed_dir = Path(tmp) / "seed"
        seed_dir.mkdir()
        model = SPECS["linear"].build()
        m = args.seed_design_examples
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(data[:m]):
            model.learn_one(x, y)
            (seed_dir / "model.pkl").write_bytes(pickle.dumps(model))
            (seed_dir / "model.json").write_text(json.dumps({"examples": i + 1}))
        seed_rate = m / (time.perf_counter() - t0)

        # an adaptive random forest after 20k examples: what one checkpoint holds training up
        arf = SPECS["arf"].build()
        for x, y in data[:20_000]:
            arf.learn_one(x, y)
        t0 = time.perf_counter()
        size = len(pickle.dumps(arf))
        inline_ms = (time.perf_counter() - t0) * 1000
        store = CheckpointStore(Path(tmp), "arf")
        cp = Checkpointer(store)
        cp.use_fork = True  # what the trainer switches to after the first slow pickle
        fork_stalls = []
        for _ in range(5):
            cp.snapshot({"model": arf}, {"versions": {}})
            fork_stalls.append(cp.stalls_ms[-1])
            cp.wait()
        cp.close()
        assert len(cp.written) == 5, cp.failures

    results = {
        "examples": n,
        "floor_bare_learn_one_s": round(floor_s, 3),
        "rtml_train_loop_s": round(train_s, 3),
        "prequential_step_alone_s": round(prequential_s, 3),
        "floor_over_prequential_step": round(floor_s / prequential_s, 3),
        "prequential_step_over_train": round(prequential_s / train_s, 3),
        "loop_beside_the_model_us_per_example (idle model: loop - step)": round(
            (idle_loop_s - idle_step_s) / n * 1e6, 2
        ),
        "loop_minus_step_us_per_example (linear)": round((train_s - prequential_s) / n * 1e6, 2),
        "rtml_train_loop_checkpoint_every_1000_s": round(often_s, 3),
        "prequential_step_over_train_checkpoint_every_1000": round(prequential_s / often_s, 3),
        "floor_over_train (b/a)": round(floor_s / train_s, 3),
        "rtml_train_examples_per_s": round(n / train_s),
        "rtml_train_command_wall_s": round(cli_s, 3),
        "seed_design_examples_per_s": round(seed_rate),
        "train_over_seed_design_speed": round((n / train_s) / seed_rate, 1),
        "linear_checkpoints": len(stalls),
        "linear_stall_ms_median": round(statistics.median(stalls), 3),
        "linear_stall_ms_p99": round(stalls[int(len(stalls) * 0.99) - 1], 3),
        "linear_stall_ms_max": round(stalls[-1], 3),
        "arf_20k_pickle_mb": round(size / 1e6, 1),
        "arf_20k_inline_pickle_ms": round(inline_ms, 1),
        "arf_20k_fork_stall_ms_median": round(statistics.median(fork_stalls), 2),
        "arf_20k_fork_stall_ms_max": round(max(fork_stalls), 2),
        "train_peak_rss_mb_all_examples": round(peak_all, 1),
        "train_peak_rss_mb_a_tenth": round(peak_small, 1),
    }
    if not show(results, args.json):
        return
    print(f"target: catch-up >= 0.85 of the prequential step -> {results['prequential_step_over_train']}")
    print(
        f"target: (b)/(a) >= 0.7 -> {results['floor_over_train (b/a)']}; "
        f"(a) >= 10x the seed design -> {results['train_over_seed_design_speed']}x"
    )
    print(
        f"target: stall linear < 2 ms -> max {results['linear_stall_ms_max']} ms; "
        f"ARF after 20k < 50 ms -> max {results['arf_20k_fork_stall_ms_max']} ms (inline pickle would be "
        f"{results['arf_20k_inline_pickle_ms']} ms)"
    )


if __name__ == "__main__":
    main()
