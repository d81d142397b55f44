"""Env frames/s of our collection setup against a plain gymnasium loop, HalfCheetah-v5.

The baseline is the loop everyone writes first: ``gymnasium.make("HalfCheetah-v5")`` stepped
with ``action_space.sample()`` in one process, reset when an episode ends. Ours is what the
training script runs: ``torchrl_crossq.envs.make_env(name, num_envs=N, vectorization=...)``
(``GymEnv`` + ``DoubleToFloat``, ``StepCounter``, ``RewardSum``; ``SerialEnv`` in process or
``ParallelEnv`` with one worker process per env) driven by a TorchRL ``Collector`` with
``frames_per_batch = N x steps per batch`` (the script's UTD-1 setting is one step per env).

Each setup is measured under two policies, in one collector, in this order:

- ``random``: uniform random actions through the collector's ``init_random_frames`` path
  (``env.rand_action``), as during the script's first random steps;
- ``actor``: our actor (``torchrl_crossq.make_actor``, 256 x 2 with Batch Renormalization,
  eval mode, sampling a TanhNormal action), as the script acts after the random steps.

Every phase starts with a warm-up; then its frames are timed in chunks and the median chunk
rate is reported. A chunk of the plain loop runs before every setup, so the baseline is sampled
through the whole run; ratios are ours / the median plain rate (1.0: as fast as raw stepping).
Worker start-up (``ParallelEnv`` spawns its processes) is reported, not timed in the rates.

Torch runs on one thread by default (``--threads``): on a shared 2-core machine ATen's worker
threads stall for milliseconds whenever other processes hold the cores (``--threads 0`` keeps
torch's default). ``ParallelEnv`` itself lowers the main process to
``max(1, threads - workers)`` threads while its workers live.

Run: ``.venv/bin/python bench/collect.py`` (``--quick`` for a smoke run). The last lines are
``ratio_<policy>_<vectorization>_<envs>: X`` for one step per env per batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is not a package
from results_file import section_markers, write_section  # bench/ is on sys.path
from update import _loadavg, machine_info

ENV_NAME = "HalfCheetah-v5"
POLICIES = ("random", "actor")
SECTION_START, SECTION_END = section_markers("bench/collect.py")


class PlainLoop:
    """The baseline: one gymnasium env stepped with random actions in this process."""

    def __init__(self, seed: int = 0) -> None:
        import gymnasium as gym

        self.env = gym.make(ENV_NAME)
        self.env.action_space.seed(seed)
        self.env.reset(seed=seed)

    def rate(self, steps: int) -> float:
        """Frames/s over ``steps`` steps, resets included."""
        env = self.env
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        return steps / (time.perf_counter() - start)

    def close(self) -> None:
        self.env.close()


def _round_up(frames: int, multiple: int) -> int:
    return max(multiple, math.ceil(frames / multiple) * multiple)


def bench_setup(
    vectorization: str, num_envs: int, steps_per_batch: int, args: argparse.Namespace
) -> dict:
    """Frames/s of one env setup under the random policy, then under our actor."""
    from torchrl.collectors import Collector

    from torchrl_crossq import make_actor
    from torchrl_crossq.envs import env_dims, make_env

    frames_per_batch = num_envs * steps_per_batch
    warmup = _round_up(args.warmup_frames, frames_per_batch)
    chunk = _round_up(args.frames // args.chunks, frames_per_batch)
    phase = warmup + args.chunks * chunk

    start = time.perf_counter()
    env = make_env(ENV_NAME, num_envs=num_envs, vectorization=vectorization, seed=0)
    obs_dim, _ = env_dims(env)
    torch.manual_seed(0)
    actor = make_actor(obs_dim, env.action_spec_unbatched)
    actor.eval()  # acting: BRN on running statistics, as in the training script
    collector = Collector(
        env,
        actor,
        frames_per_batch=frames_per_batch,
        total_frames=-1,  # endless: a collector closes its env before yielding its last batch
        init_random_frames=phase,
        policy_device="cpu",
        env_device="cpu",
        storing_device="cpu",
        backend="direct",
        auto_register_policy_transforms=False,
    )
    batches = iter(collector)
    first = next(batches)  # the first batch starts ParallelEnv's workers
    setup_s = time.perf_counter() - start

    threads_during = torch.get_num_threads()
    rates: dict[str, list[float]] = {}
    collected = first.numel()
    for policy in POLICIES:
        while collected < warmup + (phase if policy == "actor" else 0):
            collected += next(batches).numel()
        rates[policy] = []
        for _ in range(args.chunks):
            frames, start = 0, time.perf_counter()
            while frames < chunk:
                frames += next(batches).numel()
            rates[policy].append(frames / (time.perf_counter() - start))
            collected += frames
    collector.shutdown()
    return {
        "vectorization": vectorization if num_envs > 1 else "single",
        "num_envs": num_envs,
        "steps_per_batch": steps_per_batch,
        "frames_per_batch": frames_per_batch,
        "chunk_frames": chunk,
        "setup_s": setup_s,
        "torch_threads_during": threads_during,
        "rates": rates,
        "median": {policy: statistics.median(r) for policy, r in rates.items()},
    }


def setups(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """``(vectorization, envs, steps per batch)``; one env is the same in both vectorizations."""
    result = []
    for steps in args.steps_per_batch:
        for vectorization in args.vectorizations:
            for num_envs in args.envs:
                if num_envs == 1 and vectorization != args.vectorizations[0]:
                    continue
                result.append((vectorization, num_envs, steps))
    return result


def report(results: list[dict], plain: float) -> list[str]:
    lines = [
        f"plain gymnasium loop: {plain:,.0f} frames/s (median over the run)",
        f"{'setup':<10} {'envs':>4} {'steps/batch':>11} {'random f/s':>10} {'ratio':>6} "
        f"{'actor f/s':>10} {'ratio':>6} {'start s':>7}",
    ]
    for r in results:
        m = r["median"]
        lines.append(
            f"{r['vectorization']:<10} {r['num_envs']:>4} {r['steps_per_batch']:>11} "
            f"{m['random']:>10,.0f} {m['random'] / plain:>6.3f} "
            f"{m['actor']:>10,.0f} {m['actor'] / plain:>6.3f} {r['setup_s']:>7.1f}"
        )
    return lines


def summary_lines(results: list[dict], plain: float) -> list[str]:
    lines = []
    for r in results:
        if r["steps_per_batch"] != 1:
            continue
        for policy in POLICIES:
            lines.append(
                f"ratio_{policy}_{r['vectorization']}_{r['num_envs']}: "
                f"{r['median'][policy] / plain:.3f}"
            )
    return lines


def write_results(info: dict, args, results: list[dict], plain: float, summary: list[str]) -> None:
    """Replaces (or appends) this script's section of bench/RESULTS.md."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    allocator = ", ".join(f"{k}={v}" for k, v in info["allocator"].items() if v) or "glibc defaults"
    lines = [
        SECTION_START,
        "## Collection throughput (`bench/collect.py`)",
        "",
        f"- date: {info['date']}; commit {info['commit']}",
        f"- command: `{info['command']}`",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch threads {args.threads or 'default'}"
        f"; load average {info['loadavg_start']} at start, {info['loadavg_end']} at end",
        f"- versions: Python {info['python']}, {versions}",
        f"- allocator: {allocator}",
        *([f"- **{info['warning']}**"] if info["warning"] else []),
        f"- {ENV_NAME}; frames/s are medians of {args.chunks} chunks of about "
        f"{args.frames // args.chunks} frames after {args.warmup_frames} warm-up frames; "
        "ratio = ours / the plain gymnasium loop (random actions, one process)",
        "",
        f"Plain gymnasium loop: **{plain:,.0f} frames/s**.",
        "",
        "| setup | envs | steps per env per batch | random policy frames/s | ratio "
        "| our actor frames/s | ratio | worker start s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["median"]
        lines.append(
            f"| {r['vectorization']} | {r['num_envs']} | {r['steps_per_batch']} "
            f"| {m['random']:,.0f} | {m['random'] / plain:.3f} "
            f"| {m['actor']:,.0f} | {m['actor'] / plain:.3f} | {r['setup_s']:.1f} |"
        )
    lines += ["", "```", *summary, "```", SECTION_END]
    section = "\n".join(lines)
    write_section(section, SECTION_START, SECTION_END)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--vectorizations",
        nargs="+",
        choices=["serial", "parallel"],
        default=["serial", "parallel"],
    )
    parser.add_argument(
        "--steps-per-batch",
        type=int,
        nargs="+",
        default=[1, 32],
        help="env steps per env per collector batch (1: the script's UTD-1 setting; 32: the "
        "embodied preset's)",
    )
    parser.add_argument("--frames", type=int, default=2000, help="timed frames per policy")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks per policy")
    parser.add_argument("--warmup-frames", type=int, default=200, help="untimed, per policy")
    parser.add_argument("--plain-steps", type=int, default=3000, help="plain-loop steps per chunk")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 2 envs, few frames")
    parser.add_argument("--json", type=Path, help="dump all results to this file")
    parser.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.frames, args.chunks, args.warmup_frames = [1, 2], 400, 2, 40
        args.plain_steps = 1000
    if min(args.envs) < 1 or min(args.steps_per_batch) < 1 or args.chunks < 1:
        parser.error("--envs, --steps-per-batch and --chunks must be >= 1")
    if args.frames < args.chunks:
        parser.error(f"--frames={args.frames} must be >= --chunks={args.chunks}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import torchrl  # noqa: F401  (its logger exists once imported)

    logging.getLogger("torchrl").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = machine_info()
    info["loadavg_start"] = _loadavg()
    print(f"# {info['cpu']}, {info['cores']} cores, torch threads {threads}")
    print("# " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"# {ENV_NAME}: plain gymnasium loop vs make_env + Collector; "
        f"{args.frames} timed frames per policy in {args.chunks} chunks"
    )
    plain_loop = PlainLoop()
    plain_loop.rate(args.plain_steps)  # warm-up
    plain_rates, results = [], []
    for vectorization, num_envs, steps in setups(args):
        plain_rates.append(plain_loop.rate(args.plain_steps))
        result = bench_setup(vectorization, num_envs, steps, args)
        torch.set_num_threads(threads)  # ParallelEnv's shutdown may change it
        results.append(result)
        m = result["median"]
        print(
            f"  {result['vectorization']:<8} envs {num_envs} steps/batch {steps}: "
            f"random {m['random']:,.0f} f/s, actor {m['actor']:,.0f} f/s "
            f"(start {result['setup_s']:.1f} s; plain chunk {plain_rates[-1]:,.0f} f/s)",
            flush=True,
        )
    plain_rates.append(plain_loop.rate(args.plain_steps))
    plain_loop.close()
    plain = statistics.median(plain_rates)
    info["loadavg_end"] = _loadavg()
    table = report(results, plain)
    for line in table:
        print(line)
    print(
        f"# plain loop chunks {min(plain_rates):,.0f}..{max(plain_rates):,.0f} f/s; "
        f"load average {info['loadavg_start']} at start, {info['loadavg_end']} at end"
    )
    info["warning"] = None
    if max(plain_rates) > 1.3 * min(plain_rates):
        info["warning"] = (
            f"WARNING: the plain loop's rate varied {min(plain_rates):,.0f}..{max(plain_rates):,.0f}"
            " frames/s across the run: the machine looks busy, rates are unreliable"
        )
        print(f"# {info['warning']}")
    summary = summary_lines(results, plain)
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "plain_rates": plain_rates, "results": results}, indent=2)
        )
    if args.write_results:
        write_results(info, args, results, plain, summary)
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
