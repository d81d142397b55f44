"""Sample throughput of the sliding-window replay buffer against TorchRL's plain uniform buffer.

One storage per buffer size (default 1e5 and 1e6 transitions), filled past its capacity with
HalfCheetah-v5-shaped transitions of mixed episode lengths; on it, ``sample()`` at batch 256 of
the plain ``TensorDictReplayBuffer`` (``RandomSampler``) and of ``WindowReplayBuffer`` over the
newest half of the trajectories or of the episodes, interleaved rep by rep, medians reported;
with ``--disk``, the same on a ``LazyMemmapStorage`` plus a ``CachedStorage`` window. Then the
training script's buffer work per frame (one transition written, one batch sampled) on the memory
storage ``make_replay_buffer`` builds (``TransitionStorage``) against the same buffer over
TorchRL's ``LazyTensorStorage``. bench/README.md has the details.

Run: ``.venv/bin/python bench/replay.py`` (``--quick``: smoke run). The last lines are
``frame_ms_lazy_tensor_storage``, ``frame_ms_transition_storage`` and
``frame_speedup_vs_lazy_tensor_storage`` (the per-frame work), ``slowdown_<size>: X`` for the
memory storage, X = window sample time / plain sample time, the median over reps of the two
timed in the same rep (the worse of the two window units; paired, so it can differ from the
ratio of the table's median throughputs), then ``within_1.5x: yes|NO``: the requirement is X <= 1.5 (``--check`` exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness  # bench/ is on sys.path
import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_crossq.data import (
    CachedStorage,
    SlidingWindowSampler,
    WindowReplayBuffer,
    make_replay_buffer,
)

OBS_DIM = 17  # HalfCheetah-v5
ACTION_DIM = 6
BATCH_SIZE = 256
NUM_ENVS = 8
STEPS = 125  # per env and batch: 1000 frames per collector batch
TERMINATION_PROBABILITY = 1 / 300  # mixed episode lengths, as in Hopper or Walker2d
MAX_SLOWDOWN = 1.5
# The per-frame measurement: the script's buffer (1M transitions, the loss's keys) holding
# FRAME_FILL transitions, then per frame one transition written and one batch sampled.
FRAME_CAPACITY = 1_000_000
FRAME_FILL = 100_000
FRAME_CONTESTANTS = ("lazy_tensor_storage", "transition_storage")


# -- the measurement ----------------------------------------------------------------------------
def bench(buffers: dict[str, TensorDictReplayBuffer], args: argparse.Namespace) -> dict:
    """Times each contestant in short interleaved reps; slowdowns are paired per rep."""
    names = list(buffers)
    for name in names:  # warm-up: first touches of the data, lazy allocations
        time_samples(buffers[name], args.samples)
    sample_s = {name: [] for name in names}
    index_s = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            sample_s[name].append(time_samples(buffers[name], args.samples))
            index_s[name].append(time_indices(buffers[name], args.samples))
    result = {}
    for name in names:
        # Per-rep ratio to the plain buffer's time in the same rep: load from other processes
        # on a shared machine hits both sides of a pair alike.
        ratios = [ours / plain for ours, plain in zip(sample_s[name], sample_s["plain"])]
        buffer = buffers[name]
        result[name] = {
            "samples_per_s": 1 / statistics.median(sample_s[name]),
            "index_us": 1e6 * statistics.median(index_s[name]),
            "slowdown": statistics.median(ratios),
            "window_transitions": (
                buffer.window_size() if isinstance(buffer, WindowReplayBuffer) else len(buffer)
            ),
        }
    return result


def time_samples(rb: TensorDictReplayBuffer, num_samples: int) -> float:
    start = time.perf_counter()
    for _ in range(num_samples):
        rb.sample()
    return (time.perf_counter() - start) / num_samples


def time_indices(rb: TensorDictReplayBuffer, num_samples: int) -> float:
    sampler, storage = rb.sampler, rb.storage
    start = time.perf_counter()
    for _ in range(num_samples):
        sampler.sample(storage, BATCH_SIZE)
    return (time.perf_counter() - start) / num_samples


# -- the storage and the contestants ------------------------------------------------------------
def collector_batch(generator: torch.Generator) -> TensorDict:
    shape = (NUM_ENVS, STEPS)
    observation = torch.randn(*shape, OBS_DIM, generator=generator)
    terminated = torch.rand(*shape, 1, generator=generator) < TERMINATION_PROBABILITY
    truncated = torch.zeros(*shape, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": observation,
            "action": torch.rand(*shape, ACTION_DIM, generator=generator) * 2 - 1,
            "next": {
                "observation": torch.randn(*shape, OBS_DIM, generator=generator),
                "reward": torch.randn(*shape, 1, generator=generator),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
        },
        list(shape),
    )


def build(size: int, storage_kind: str, scratch_dir: Path) -> dict[str, TensorDictReplayBuffer]:
    """Fills one storage (wrapping it once) and returns the contestants reading from it."""
    trajectories_stored = size // STEPS
    window_trajectories = max(1, trajectories_stored // 2)
    # Episodes of about 1 / TERMINATION_PROBABILITY steps; aim for half the stored transitions.
    window_episodes = max(1, int(size / 2 * TERMINATION_PROBABILITY))

    def window_buffer(storage, unit: str) -> WindowReplayBuffer:
        window = window_trajectories if unit == "trajectory" else window_episodes
        return WindowReplayBuffer(
            storage=storage,
            sampler=SlidingWindowSampler(window, window_unit=unit, seed=0),
            batch_size=BATCH_SIZE,
        )

    def disk_storage(name: str) -> LazyMemmapStorage:
        return LazyMemmapStorage(size, scratch_dir=scratch_dir / name)

    if storage_kind == "memory":
        writer = window_buffer(LazyTensorStorage(size), "trajectory")
        followers = {"window-episode": window_buffer(writer.storage, "episode")}
    else:
        writer = window_buffer(disk_storage("plain"), "trajectory")
        cached = CachedStorage(disk_storage("cached"), window_trajectories)
        followers = {
            "window-episode": window_buffer(writer.storage, "episode"),
            "window-cached": window_buffer(cached, "trajectory"),
        }
    generator = torch.Generator().manual_seed(0)
    for _ in range(-(-size * 11 // 10) // (NUM_ENVS * STEPS)):  # 110% of the capacity
        batch = collector_batch(generator)
        writer.extend(batch)
        # Followers share the writer's storage: register the same trajectories, no second write.
        done = batch["next", "done"].reshape(-1)
        lengths = torch.full((NUM_ENVS,), STEPS)
        for name, rb in followers.items():
            if name == "window-cached":
                rb.extend(batch)
            else:
                rb.sampler.add_trajectories(
                    lengths, done=done, stream_ids=torch.arange(NUM_ENVS), capacity=size
                )
    plain = TensorDictReplayBuffer(
        storage=writer.storage, sampler=RandomSampler(), batch_size=BATCH_SIZE
    )
    return {"plain": plain, "window-trajectory": writer, **followers}


# -- the training script's buffer work per frame ------------------------------------------------
def collector_frames(count: int, first_step: int, generator: torch.Generator) -> TensorDict:
    """``count`` one-env frames as the script's collector yields them, stacked: ``[count, 1]``.

    Every entry of a HalfCheetah-v5 frame (policy outputs, step counts, episode returns, root
    done flags) with a new episode every 1,000 steps, as ``("collector", "traj_ids")`` says.
    """
    shape = (count, 1)
    step = torch.arange(first_step, first_step + count).reshape(shape)
    flags = {
        "done": torch.zeros(*shape, 1, dtype=torch.bool),
        "terminated": torch.zeros(*shape, 1, dtype=torch.bool),
        "truncated": torch.zeros(*shape, 1, dtype=torch.bool),
    }
    return TensorDict(
        {
            "observation": torch.randn(*shape, OBS_DIM, generator=generator),
            "action": torch.rand(*shape, ACTION_DIM, generator=generator) * 2 - 1,
            "loc": torch.randn(*shape, ACTION_DIM, generator=generator),
            "scale": torch.rand(*shape, ACTION_DIM, generator=generator),
            "step_count": (step % 1000).unsqueeze(-1),
            "episode_reward": torch.randn(*shape, 1, generator=generator),
            "collector": {"traj_ids": step // 1000},
            **flags,
            "next": {
                "observation": torch.randn(*shape, OBS_DIM, generator=generator),
                "reward": torch.randn(*shape, 1, generator=generator),
                "step_count": (step % 1000 + 1).unsqueeze(-1),
                "episode_reward": torch.randn(*shape, 1, generator=generator),
                **{key: flag.clone() for key, flag in flags.items()},
            },
        },
        list(shape),
    )


def loss_keys() -> list:
    """What the script's buffer stores: its loss's ``in_keys`` (``keys=loss.in_keys``)."""
    from torchrl.data import Bounded

    from torchrl_crossq import CrossQLoss, make_actor, make_critic

    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))
    return CrossQLoss(actor, make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,))).in_keys


def frame_buffers() -> dict[str, WindowReplayBuffer]:
    """The script's buffer and the same buffer over TorchRL's storage, each holding FRAME_FILL."""
    keys = loss_keys()
    buffers = {
        "lazy_tensor_storage": WindowReplayBuffer(
            storage=LazyTensorStorage(FRAME_CAPACITY),
            sampler=SlidingWindowSampler(0, seed=0),
            batch_size=BATCH_SIZE,
            keys=keys,
        ),
        "transition_storage": make_replay_buffer(
            FRAME_CAPACITY, batch_size=BATCH_SIZE, seed=0, keys=keys
        ),
    }
    fill = collector_frames(FRAME_FILL, 0, torch.Generator().manual_seed(0)).reshape(-1)
    for buffer in buffers.values():
        buffer.extend(fill.clone())
    return buffers


def bench_frames(args: argparse.Namespace) -> dict:
    """Milliseconds per frame (``extend`` of one frame, then ``sample``), interleaved reps."""
    buffers = frame_buffers()
    generator = torch.Generator().manual_seed(1)
    frames = collector_frames(args.samples * (args.reps + 1), FRAME_FILL, generator)
    per_frame = {name: [] for name in buffers}
    for rep in range(args.reps + 1):  # rep 0: warm-up
        chunk = frames[rep * args.samples : (rep + 1) * args.samples]
        names = FRAME_CONTESTANTS[rep % 2 :] + FRAME_CONTESTANTS[: rep % 2]
        for name in names:
            buffer, batches = buffers[name], chunk.clone().unbind(0)
            start = time.perf_counter()
            for batch in batches:
                buffer.extend(batch)
                buffer.sample()
            if rep:
                per_frame[name].append((time.perf_counter() - start) / args.samples)
    ratios = [
        theirs / ours
        for theirs, ours in zip(per_frame["lazy_tensor_storage"], per_frame["transition_storage"])
    ]
    return {
        "ms_per_frame": {name: 1e3 * statistics.median(t) for name, t in per_frame.items()},
        "speedup": statistics.median(ratios),
    }


# -- report, summary lines, RESULTS.md ----------------------------------------------------------
def size_label(size: int) -> str:
    exponent = len(str(size)) - 1
    return f"1e{exponent}" if size == 10**exponent else str(size)


# slowdown: the median of per-rep window/plain time ratios (paired), not a ratio of the medians
COLUMNS = ("contestant", "batches/s", "transitions/s", "slowdown (paired)", "index us", "window")


def report(result: dict) -> list[str]:
    """One storage's table: a line per contestant."""
    rows = [
        (
            name, f"{r['samples_per_s']:.0f}", f"{r['samples_per_s'] * BATCH_SIZE:.3g}",
            f"{r['slowdown']:.3f}", f"{r['index_us']:.1f}", str(r["window_transitions"]),
        )
        for name, r in result["contestants"].items()
    ]  # fmt: skip
    return [
        f"# {result['storage']} storage, {result['size']} transitions, batch {BATCH_SIZE}",
        *("  " + line for line in harness.console_table(COLUMNS, rows)),
    ]


def worst_slowdowns(results: list[dict]) -> dict[str, float]:
    """Per size, the worse window unit's slowdown on the memory storage."""
    return {
        size_label(r["size"]): max(
            c["slowdown"] for name, c in r["contestants"].items() if name != "plain"
        )
        for r in results
        if r["storage"] == "memory"
    }


def within_limit(results: list[dict]) -> bool:
    return all(round(x, 3) <= MAX_SLOWDOWN for x in worst_slowdowns(results).values())


def frame_report(frame: dict) -> list[str]:
    ms = frame["ms_per_frame"]
    return [
        f"# per frame of the training script: one transition written, one batch of {BATCH_SIZE} "
        f"sampled ({FRAME_CAPACITY:,} capacity, {FRAME_FILL:,} stored, the loss's keys)",
        f"  WindowReplayBuffer over LazyTensorStorage  {ms['lazy_tensor_storage']:.3f} ms",
        f"  make_replay_buffer (TransitionStorage)     {ms['transition_storage']:.3f} ms "
        f"({frame['speedup']:.2f}x)",
    ]


def summary_lines(results: list[dict], frame: dict | None = None) -> list[str]:
    frame_lines = []
    if frame is not None:  # dumps from before the per-frame measurement have none
        ms = frame["ms_per_frame"]
        frame_lines = [
            f"frame_ms_lazy_tensor_storage: {ms['lazy_tensor_storage']:.3f}",
            f"frame_ms_transition_storage: {ms['transition_storage']:.3f}",
            f"frame_speedup_vs_lazy_tensor_storage: {frame['speedup']:.2f}",
        ]
    return [
        *frame_lines,
        *(f"slowdown_{label}: {x:.3f}" for label, x in worst_slowdowns(results).items()),
        f"within_{MAX_SLOWDOWN}x: {'yes' if within_limit(results) else 'NO'}",
    ]


def write_results(saved: dict) -> None:
    """Replaces (or appends) this script's section of bench/RESULTS.md."""
    info, results, frame = saved["info"], saved["results"], saved.get("frame")
    harness.write_section(
        "bench/replay.py",
        "Replay sample throughput (`bench/replay.py`)",
        harness.header_lines(info, f"torch threads {info['torch_threads']}"),
        [
            *(line for r in results for line in report(r)),
            *(frame_report(frame) if frame is not None else []),
            *summary_lines(results, frame),
        ],
    )


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=11, help="timed reps per contestant")
    parser.add_argument("--samples", type=int, default=100, help="sample() calls per rep")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--no-disk", dest="disk", action="store_false", help="skip memmap runs")
    parser.add_argument("--scratch-dir", type=Path, help="memmap directory (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1e4 only, 2 short reps")
    parser.add_argument("--check", action="store_true", help="exit 1 if a slowdown exceeds 1.5")
    harness.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.samples = [10_000], 3, 20
    harness.require_at_least(parser, args, 1, "reps", "samples")
    harness.require_at_least(parser, args, 0, "threads")
    harness.require_at_least(parser, args, NUM_ENVS * STEPS, "sizes")  # one collector batch
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.results_from:
        write_results(harness.load_dump(args.results_from))
        return 0
    harness.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = harness.machine_info()
    harness.console_header(info, f"torch threads {info['torch_threads']}")
    print(
        f"# obs {OBS_DIM}, action {ACTION_DIM}, batches of {NUM_ENVS} envs x {STEPS} steps, "
        f"storage filled to 110% (wrapped); {args.reps} reps x {args.samples} samples, medians"
    )
    results = []
    kinds = ["memory", "disk"] if args.disk else ["memory"]
    with tempfile.TemporaryDirectory(dir=args.scratch_dir) as scratch:
        for size in args.sizes:
            for kind in kinds:
                buffers = build(size, kind, Path(scratch) / f"{kind}-{size}")
                results.append({"size": size, "storage": kind, "contestants": bench(buffers, args)})
                del buffers
                print("\n".join(report(results[-1])), flush=True)
    frame = bench_frames(args)
    print("\n".join(frame_report(frame)), flush=True)
    harness.end_of_run(info)
    saved = {"info": info, "results": results, "frame": frame}
    harness.finish(args, saved, write_results, summary_lines(results, frame))
    return 1 if args.check and not within_limit(results) else 0


if __name__ == "__main__":
    sys.exit(main())
