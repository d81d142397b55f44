"""Where a training frame goes: the training script's own loop, phase by phase.

bench/e2e.py says how many frames/s the script trains at; this says what each frame is spent
on. It runs ``sota_implementations/crossq.py``'s ``train`` in a subprocess per setting, with
bench/e2e.py's command line (HalfCheetah-v5, matched settings, one env, one frame per batch,
UTD 1, evaluation and checkpoints off), and times around the script's own objects, not a copy
of its loop: the collector's ``next`` (collect), the replay buffer's ``extend`` (buffer write)
and ``sample`` (sample), the updater's call (update: critic every frame, actor and temperature
every third), and the rest of the iteration (other: the metrics window, weight sync, logging).
Only frames after the random ones and a warm-up (``torch.compile`` compiles there) are timed;
the budgets per width are bench/e2e.py's, so a run here is one of its runs, instrumented.

    python bench/phases.py                       # widths 256 and 2048, fp32 / compile / bf16
    python bench/phases.py --widths 256 --settings fp32
    python bench/phases.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is not a package
import harness  # bench/ is on sys.path
from e2e import ENV_ID, OURS, OUT_DIR, ROOT, SCRIPT, budget_for, ours_command, subprocess_env

SETTINGS = {
    "fp32": OURS["ours"],
    "compile": OURS["ours_compiled"],
    "bf16_compile": OURS["ours_bf16_compiled"],
}
# Each phase and its name in the tables, in table order.
PHASES = {
    "collect": "collect",
    "write": "buffer write",
    "sample": "sample",
    "update": "update",
    "other": "other",
}
SECTION = "bench/phases.py"


# -- one run, in its own process -----------------------------------------------------------------
class PhaseClock:
    """Per-iteration times of each phase, kept for the iterations after ``first_timed_frame``.

    An iteration starts when the loop asks the collector for its next batch and ends at the
    next such request (or the collector's end); ``other`` is what the timed phases miss.
    """

    def __init__(self, first_timed_frame: int) -> None:
        self.first_timed_frame = first_timed_frame
        self.frames = 0  # written to the buffer so far
        self.timing = False  # whether the current iteration is timed
        self.iteration_start = 0.0
        self.totals: list[float] = []
        self.times: dict[str, list[float]] = {phase: [] for phase in PHASES if phase != "other"}

    def record(self, phase: str, seconds: float) -> None:
        if self.timing:
            self.times[phase].append(seconds)

    def timed(self, phase: str, call: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = call(*args, **kwargs)
            self.record(phase, time.perf_counter() - start)
            return result

        return wrapper

    def iterate(self, batches: Iterator) -> Iterator:
        """``batches``, timing each ``next`` as collect and closing the iteration before."""
        while True:
            start = time.perf_counter()
            if self.timing:
                self.totals.append(start - self.iteration_start)
                for values in self.times.values():  # no update in that iteration: 0
                    values.extend([0.0] * (len(self.totals) - len(values)))
            self.timing = self.frames >= self.first_timed_frame
            self.iteration_start = start
            try:
                batch = next(batches)
            except StopIteration:
                self.timing = False
                return
            self.record("collect", time.perf_counter() - start)
            yield batch

    def result(self) -> dict:
        if not self.totals:
            raise RuntimeError("no timed iteration: raise --measured-frames")
        ms = {phase: 1e3 * statistics.fmean(values) for phase, values in self.times.items()}
        total = 1e3 * statistics.fmean(self.totals)
        ms["other"] = total - sum(ms.values())
        return {
            "timed_frames": len(self.totals),
            "ms_per_frame": ms,
            "update_median_ms": 1e3 * statistics.median(self.times["update"]),
            "total_ms": total,
            "frames_per_s": 1e3 / total,
        }


def _load_script():
    spec = importlib.util.spec_from_file_location("crossq_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subclass_with(obj: object, name: str, method: Callable) -> None:
    """Gives ``obj`` a subclass of its class that overrides the special method ``name``
    (Python looks special methods up on the type, not the instance)."""
    cls = type(obj)
    obj.__class__ = type(cls.__name__, (cls,), {name: method, "__module__": cls.__module__})


def run_one(spec: dict) -> dict:
    """One instrumented run of the script's ``train``; the timed phases, as a dict."""
    from hydra import compose, initialize_config_dir

    script = _load_script()
    clock = PhaseClock(spec["init_random_frames"] + spec["warmup_frames"])

    def make_replay_buffer(*args, **kwargs):
        buffer = build_buffer(*args, **kwargs)
        timed_extend = clock.timed("write", buffer.extend)

        def extend(data, *a, **k):
            index = timed_extend(data, *a, **k)
            clock.frames += data.numel()
            return index

        buffer.extend = extend
        buffer.sample = clock.timed("sample", buffer.sample)
        return buffer

    def make_collector(*args, **kwargs):
        collector, weight_sync = build_collector(*args, **kwargs)
        iterate = type(collector).__iter__
        _subclass_with(collector, "__iter__", lambda self: clock.iterate(iterate(self)))
        return collector, weight_sync

    def make_updater(*args, **kwargs):
        updater = build_updater(*args, **kwargs)
        timed_call = clock.timed("update", type(updater).__call__)
        _subclass_with(updater, "__call__", lambda self, batch: timed_call(self, batch))
        return updater

    build_buffer = script.make_replay_buffer_from_config
    build_collector = script.make_collector_from_config
    build_updater = script.make_updater_from_config
    script.make_replay_buffer_from_config = make_replay_buffer
    script.make_collector_from_config = make_collector
    script.make_updater_from_config = make_updater
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("crossq", overrides=spec["overrides"])
    script.train(cfg)
    return clock.result()


# -- the runs ------------------------------------------------------------------------------------
def measure(width: int, setting: str, args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(dir=args.out)) / "run"
    budget = budget_for(width, args)
    # bench/e2e.py's command line for this run, without the interpreter and the script.
    overrides = ours_command(width, budget, args, run_dir, SETTINGS[setting])[2:]
    spec = {
        "overrides": overrides,
        "init_random_frames": args.init_random_frames,
        "warmup_frames": budget.warmup_frames,
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one-run", json.dumps(spec)],
        env=subprocess_env(args.threads),
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"error: the width {width} {setting} run failed (exit {done.returncode}):\n"
            f"{done.stderr[-3000:]}"
        )
    result = {"width": width, "setting": setting, **json.loads(lines[-1])}
    print(f"  width {width:<5} {setting:<13} " + "  ".join(
        f"{name} {result['ms_per_frame'][p]:.3f}" for p, name in PHASES.items()
    ) + f"  total {result['total_ms']:.3f} ms ({result['frames_per_s']:.1f} frames/s)",
        flush=True)  # fmt: skip
    return result


# -- summary and RESULTS.md ----------------------------------------------------------------------
COLUMNS = (
    "critic width", "setting", *(f"{name} ms" for name in PHASES.values()), "update median ms",
    "total ms", "outside the update", "frames/s", "timed frames",
)  # fmt: skip


def rows(runs: list[dict]) -> list[list[str]]:
    return [
        [
            str(r["width"]),
            r["setting"],
            *(f"{r['ms_per_frame'][p]:.3f}" for p in PHASES),
            f"{r['update_median_ms']:.3f}",
            f"{r['total_ms']:.3f}",
            f"{outside_update(r):.0%}",
            f"{r['frames_per_s']:.1f}",
            f"{r['timed_frames']:,}",
        ]
        for r in runs
    ]


def outside_update(run: dict) -> float:
    """The share of a frame not spent in the update."""
    return 1.0 - run["ms_per_frame"]["update"] / run["total_ms"]


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for r in runs:
        key = f"w{r['width']}_{r['setting']}"
        summary[f"frame_ms_{key}"] = r["total_ms"]
        summary[f"outside_update_ms_{key}"] = r["total_ms"] - r["ms_per_frame"]["update"]
    return summary


def write_results(saved: dict) -> None:
    info, settings = saved["info"], saved["settings"]
    lines = harness.header_lines(
        info,
        f"{settings['threads']} torch thread(s), device {settings['device']}, one run at a time",
        notes=[
            f"- settings: {ENV_ID}, bench/e2e.py's command line (matched settings, one env, "
            f"UTD 1, batch 256, actor 256 x 2, evaluation and checkpoints off), "
            f"{settings['init_random_frames']:,} random frames, then per critic width: "
            + "; ".join(
                f"{width}: {b['warmup_frames']:,} learning frames not timed, "
                f"{b['measured_frames']:,} timed"
                for width, b in settings["budgets"].items()
            )
        ],
        warning=info.get("warning"),
    )
    if settings["quick"]:
        lines.append("- **--quick: a smoke run with tiny budgets, not a measurement**")
    lines += [
        "",
        "Milliseconds per frame of the training script's loop, each phase timed around the "
        "script's own objects (mean over the timed frames): collect is the collector's `next` "
        "(our actor included), buffer write the replay buffer's `extend`, sample its `sample`, "
        "update the updater's call (the critic every frame, actor and temperature every third: "
        "the median is a critic-only update), other the rest of the iteration (metrics window, "
        "weight sync, logging). Total is the mean wall time per iteration and frames/s its "
        "inverse (bench/e2e.py reports the median of its windows' rates instead):",
        "",
        *harness.markdown_table(COLUMNS, rows(saved["runs"])),
    ]
    name, title = harness.section_of(
        SECTION, "Where a training frame goes", settings["device"], info
    )
    harness.write_section(name, title, lines, summary_lines(saved["summary"]))


def summary_lines(summary: dict) -> list[str]:
    return [f"{k}: {v:.3f}" for k, v in summary.items()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (as bench/e2e.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init-random-frames", type=int, default=1_000)
    parser.add_argument("--warmup-frames", type=int, help="learning frames not timed (per width)")
    parser.add_argument("--measured-frames", type=int, help="learning frames timed (per width)")
    parser.add_argument("--log-interval", type=int, help="the script's log interval (per width)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "phases", help="run directories")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    harness.add_output_args(parser)
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: one instrumented run
    args = parser.parse_args(argv)
    if args.quick:  # and bench/e2e.py's quick budgets
        args.init_random_frames = min(args.init_random_frames, 100)
    harness.require_at_least(
        parser, args, 1, "widths", "threads", "measured_frames", "log_interval"
    )
    harness.require_at_least(parser, args, 0, "init_random_frames", "warmup_frames")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one_run:
        harness.quiet()
        print(json.dumps(run_one(json.loads(args.one_run))))
        return
    if args.results_from:
        write_results(harness.load_dump(args.results_from))
        return
    info = harness.machine_info()
    settings = {
        "env": ENV_ID,
        "threads": args.threads,
        "device": args.device,
        "init_random_frames": args.init_random_frames,
        "budgets": {w: asdict(budget_for(w, args)) for w in args.widths},
        "quick": args.quick,
    }
    harness.console_header(info, f"{args.threads} torch thread(s), one run at a time")
    measured = harness.without_emulated_bf16(args.settings, args.device)
    runs = [measure(w, s, args) for w in args.widths for s in measured]
    harness.end_of_run(info)
    info["warning"] = harness.busy_warning(info, [])
    if info["warning"]:
        print(f"# {info['warning']}")
    print("\n".join(harness.console_table(COLUMNS, rows(runs))))
    summary = summarise(runs)
    saved = {"info": info, "settings": settings, "runs": runs, "summary": summary}
    harness.finish(args, saved, write_results, summary_lines(summary))


if __name__ == "__main__":
    main()
