"""End to end: our training script against sb3-contrib's ``CrossQ.learn`` on HalfCheetah-v5.

Three measurements, one contestant at a time: training frames/s with evaluation off at critic
widths 256 and 2048 (``sota_implementations/crossq.py`` at fp32 eager, ``compile=true`` and
``precision=bf16 compile=true``, against ``CrossQ.learn``, both with the matched settings of
``bench/learning.py``); evaluation cost per env step (``BatchedEvaluation``, the old
``evaluate`` path, sb3's ``evaluate_policy``); collection cost per frame (the script's
``GymCollector``, TorchRL's ``Collector``, and plain gymnasium loops). bench/README.md has the
details.

Run: ``make bench`` or ``.venv/bin/python bench/e2e.py`` (``--quick``: smoke run). The last
lines are ``e2e_speedup_vs_sb3_w256``, ``e2e_speedup_vs_sb3_w2048`` (ours fp32 eager frames/s
over sb3's), ``e2e_speedup_best_vs_sb3_w256``, ``e2e_speedup_best_vs_sb3_w2048`` (our fastest
setting), ``eval_ms_per_step``, ``sb3_eval_ms_per_step`` and ``collect_ms_per_frame``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # bench/ is not a package
sys.path.insert(0, str(ROOT))  # this checkout's torchrl_crossq, not an installed one
import harness  # noqa: E402  (bench/ is on sys.path)
from learning import HYPERPARAMETERS, matched_overrides, sb3_model  # noqa: E402

SCRIPT = ROOT / "sota_implementations" / "crossq.py"
OUT_DIR = Path(__file__).with_name("out")
ENV_ID = "HalfCheetah-v5"
ENV_GROUP = "halfcheetah"  # configs/env/halfcheetah.yaml
SEED = 0
EVAL_SEED = 10_000  # the evaluation's seed here (it times an untrained actor: any seed does)

# Our settings: the script's overrides on top of the matched command line (table order).
OURS = {
    "ours": [],
    "ours_compiled": ["compile=true"],
    "ours_bf16_compiled": ["precision=bf16", "compile=true"],
    # CUDA only (on CPU the script warns that cudagraphs has no effect): the compiled losses
    # replayed as CUDA graphs.
    "ours_cudagraphs": ["compile=true", "cudagraphs=true"],
}
CUDA_ONLY = ("ours_cudagraphs",)
CONTESTANTS = ("sb3", *OURS)


# -- training frames/s -------------------------------------------------------------------------
def train_one(
    contestant: str, width: int, budget: Budget, args: argparse.Namespace, round_: int = 0
) -> dict:
    """One training run in a subprocess; its measured windows and their median frames/s."""
    run_dir = harness.fresh_dir(args.out / f"w{width}" / f"round{round_}" / contestant)
    frames = total_frames(budget, args.init_random_frames)
    if contestant in OURS:
        command = ours_command(width, budget, args, run_dir, OURS[contestant])
    else:
        spec = {
            "width": width,
            "frames": frames,
            "init_random_frames": args.init_random_frames,
            "threads": args.threads,
            "device": args.device,
            "run_dir": str(run_dir),
        }
        command = [sys.executable, __file__, "--sb3-run", json.dumps(spec)]
    wall_s = harness.run_logged(
        command, run_dir, subprocess_env(args.threads), f"{contestant} width {width}"
    )
    if contestant in OURS:
        windows = ours_windows(run_dir)
    else:
        times = json.loads((run_dir / "times.json").read_text())
        windows = sb3_windows(times, budget.log_interval)
    first = args.init_random_frames + budget.warmup_frames
    measured = [w for w in windows if w[0] >= first]
    if not measured:
        raise RuntimeError(
            f"{contestant} width {width}: no logged window starts at or after frame {first} "
            f"(windows {windows}); raise --measured-frames or lower --log-interval"
        )
    rates = [rate for _, _, rate in measured]
    seconds = sum((end - start) / rate for start, end, rate in measured)
    result = {
        "contestant": contestant,
        "width": width,
        "round": round_,
        "frames": frames,
        "timed_frames": measured[-1][1] - measured[0][0],
        "windows": windows,
        "measured_rates": rates,
        "frames_per_s": statistics.median(rates),
        "frames_per_s_overall": (measured[-1][1] - measured[0][0]) / seconds,
        "wall_s": wall_s,
    }
    print(
        f"  round {round_} width {width:<5} {contestant:<19} {result['frames_per_s']:8.2f} "
        f"frames/s (median of "
        f"{len(rates)} windows, {harness.span(rates)}; run {wall_s:.0f} s)",
        flush=True,
    )
    return result


# -- evaluation cost per env step --------------------------------------------------------------
def bench_eval(args: argparse.Namespace) -> dict:
    """Ms per env step of our batched evaluation, our old rollout path and sb3's evaluate_policy."""
    import warnings

    import gymnasium as gym
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from torchrl_crossq import make_actor
    from torchrl_crossq.envs import BatchedEvaluation, env_dims, evaluate, make_env

    warnings.filterwarnings("ignore")
    episodes, steps = args.eval_episodes, args.eval_max_steps
    actor_cells = [HYPERPARAMETERS["actor_width"]] * 2
    torchrl_env = make_env(ENV_ID, seed=EVAL_SEED, max_episode_steps=steps)
    obs_dim, _ = env_dims(torchrl_env)
    torch.manual_seed(SEED)
    actor = make_actor(obs_dim, torchrl_env.action_spec_unbatched, num_cells=actor_cells)
    calls = [0]  # the old path calls the actor once per env step
    actor.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    batched = BatchedEvaluation(ENV_ID, episodes=episodes, max_steps=steps, max_episode_steps=steps)
    sb3_env = Monitor(gym.make(ENV_ID, max_episode_steps=steps))
    model = sb3_model(
        gym.make(ENV_ID), HYPERPARAMETERS, critic_width=256, learning_starts=0,
        buffer_size=1_000, seed=SEED, device="cpu", threads=args.infer_threads or args.threads,
    )  # fmt: skip

    def ours() -> int:
        batched(actor, seed=EVAL_SEED)
        return batched.steps

    def ours_rollout() -> int:
        calls[0] = 0
        evaluate(torchrl_env, actor, episodes=episodes, max_steps=steps)
        return calls[0]

    def sb3() -> int:
        _, lengths = evaluate_policy(
            model,
            sb3_env,
            n_eval_episodes=episodes,
            deterministic=True,
            return_episode_rewards=True,
        )
        return int(sum(lengths))

    evaluators = {"ours": ours, "ours_rollout": ours_rollout, "sb3": sb3}
    ms: dict[str, list[float]] = {name: [] for name in evaluators}
    env_steps: dict[str, int] = {}
    for run in evaluators.values():  # warm-up
        run()
    for _ in range(args.eval_reps):  # interleaved: each meets the same load
        for name, run in evaluators.items():
            start = time.perf_counter()
            env_steps[name] = run()
            ms[name].append(1e3 * (time.perf_counter() - start) / env_steps[name])
    batched.close()
    torchrl_env.close()
    sb3_env.close()
    result = {
        "episodes": episodes,
        "max_steps": steps,
        "reps": args.eval_reps,
        "env_steps": env_steps,
        "ms_per_step_per_rep": ms,
        "ms_per_step": {name: statistics.median(v) for name, v in ms.items()},
    }
    for name, value in result["ms_per_step"].items():
        print(f"  eval {name:<14} {value:7.3f} ms per env step ({env_steps[name]} steps)")
    return result


# -- collection cost per frame -----------------------------------------------------------------
def bench_collect(args: argparse.Namespace) -> dict:
    """Ms per frame of our collection (GymCollector, TorchRL's Collector; one env) and of
    plain loops."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchrl_crossq import make_actor
    from torchrl_crossq.collectors import make_collector
    from torchrl_crossq.envs import env_dims, make_env, make_gym_env

    probe = make_env(ENV_ID, seed=SEED)
    obs_dim, _ = env_dims(probe)
    torch.manual_seed(SEED)
    actor = make_actor(
        obs_dim, probe.action_spec_unbatched, num_cells=[HYPERPARAMETERS["actor_width"]] * 2
    )  # eval mode, as the script's actor when it acts
    probe.close()
    warmup, chunk, chunks = args.collect_warmup, args.collect_chunk, args.collect_chunks

    def collector(policy, frames_per_batch: int, direct: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            # The collector closes its env before yielding its last batch: one batch to spare.
            needed = warmup + chunks * chunk + 2 * frames_per_batch
            c = make_collector(
                functools.partial(make_env, ENV_ID),
                policy,
                seed=SEED,
                frames_per_batch=frames_per_batch,
                total_frames=needed,
                policy_device="cpu",
                reuse_batch=True,  # as the script builds it
                direct=direct,  # the script's default: True
            )
            batches = iter(c)
            try:
                return time_chunks(lambda: next(batches).numel(), warmup, chunk, chunks)
            finally:
                c.shutdown()

        return run

    def plain(with_actor: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            env = make_gym_env(ENV_ID)
            obs = [env.reset(seed=SEED)[0]]

            def step() -> int:
                if with_actor:
                    observation = torch.as_tensor(obs[0], dtype=torch.float32)
                    action = actor(TensorDict({"observation": observation}, [])).get("action")
                    action = action.numpy()
                else:
                    action = env.action_space.sample()
                obs[0], _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    obs[0] = env.reset()[0]
                return 1

            try:
                with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                    return time_chunks(step, warmup, chunk, chunks)
            finally:
                env.close()

        return run

    batch = args.collect_batch
    setups = {
        COLLECT_HEADLINE: (
            "the script's collector (`GymCollector`), our actor, 1 frame per batch",
            collector(actor, 1, direct=True),
        ),
        "collector_actor_b1": (
            "TorchRL Collector (`collector.direct=false`), our actor, 1 frame per batch",
            collector(actor, 1, direct=False),
        ),
        f"collector_actor_b{batch}": (
            f"TorchRL Collector, our actor, {batch} frames per batch",
            collector(actor, batch, direct=False),
        ),
        "collector_random_b1": (
            "TorchRL Collector, random policy, 1 frame per batch",
            collector(None, 1, direct=False),
        ),
        "gym_loop_actor": ("plain gymnasium loop, our actor", plain(True)),
        "gym_loop_random": ("plain gymnasium loop, action_space.sample()", plain(False)),
    }
    result = {"warmup": warmup, "chunk": chunk, "chunks": chunks, "setups": {}}
    for name, (label, run) in setups.items():
        per_chunk = run()
        result["setups"][name] = {
            "label": label,
            "ms_per_frame_per_chunk": per_chunk,
            "ms_per_frame": statistics.median(per_chunk),
        }
        print(f"  collect {name:<22} {statistics.median(per_chunk):7.3f} ms per frame ({label})")
    return result


def time_chunks(step: Callable[[], int], warmup: int, chunk: int, chunks: int) -> list[float]:
    """Ms per frame of each of ``chunks`` chunks of ``chunk`` frames, after ``warmup`` frames."""
    done = 0
    while done < warmup:
        done += step()
    result = []
    for _ in range(chunks):
        frames, start = 0, time.perf_counter()
        while frames < chunk:
            frames += step()
        result.append(1e3 * (time.perf_counter() - start) / frames)
    return result


# -- a training run: budget, command lines, sb3's run, frames/s windows ------------------------
@dataclass(frozen=True)
class Budget:
    """Learning frames of one training run (after ``init_random_frames`` random ones)."""

    warmup_frames: int  # not timed: the first updates, torch.compile
    measured_frames: int  # timed, in windows of log_interval frames
    log_interval: int


# Width 256: ~15 ms per frame on 2 cores; 2048: ~200 ms (ours fp32) to ~250 ms (sb3). Per run
# of one round: about 7 minutes a round for the 8 runs.
BUDGETS = {"small": Budget(500, 1_500, 500), "large": Budget(100, 200, 50)}
QUICK_BUDGETS = {"small": Budget(20, 60, 20), "large": Budget(10, 20, 10)}
LARGE_WIDTH = 1024  # widths above this get the "large" budget


def budget_for(width: int, args: argparse.Namespace) -> Budget:
    size = "large" if width > LARGE_WIDTH else "small"
    base = (QUICK_BUDGETS if args.quick else BUDGETS)[size]
    return Budget(
        args.warmup_frames if args.warmup_frames is not None else base.warmup_frames,
        args.measured_frames or base.measured_frames,
        args.log_interval or base.log_interval,
    )


def total_frames(budget: Budget, init_random_frames: int) -> int:
    return init_random_frames + budget.warmup_frames + budget.measured_frames


def ours_command(
    width: int, budget: Budget, args: argparse.Namespace, run_dir: Path, overrides: list[str]
) -> list[str]:
    """The training script's command line: matched settings, evaluation and checkpoints off."""
    frames = total_frames(budget, args.init_random_frames)
    return [
        sys.executable,
        str(SCRIPT),
        f"env={ENV_GROUP}",
        f"seed={SEED}",
        f"device={args.device}",
        f"run_dir={run_dir}",
        f"threads={args.threads}",
        *matched_overrides(width, frames, args.init_random_frames),
        # 0: no evaluation during training; the one at the end (1 episode) comes after the
        # last timed window, as does the final checkpoint.
        "eval.interval=0",
        "eval.episodes=1",
        "checkpoint.interval=0",
        "logger.backend=csv",
        f"logger.log_interval={budget.log_interval}",
        "progress_bar=false",
        *overrides,
    ]


def sb3_run(spec: dict) -> None:
    """``--sb3-run``: ``CrossQ.learn`` with a clock at every env step; writes ``times.json``."""
    import warnings

    import gymnasium as gym
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    model = sb3_model(
        gym.make(ENV_ID),
        HYPERPARAMETERS,
        critic_width=spec["width"],
        learning_starts=spec["init_random_frames"],
        buffer_size=min(HYPERPARAMETERS["replay_size"], spec["frames"]),
        seed=SEED,
        device=spec["device"],
        threads=spec["threads"],
    )
    times: list[float] = []

    class Clock(BaseCallback):
        # Called after each env step, before that step's update: the time at num_timesteps.
        def _on_step(self) -> bool:
            times.append(time.perf_counter())
            return True

    model.learn(total_timesteps=spec["frames"], callback=Clock())
    Path(spec["run_dir"], "times.json").write_text(json.dumps(times))


def ours_windows(run_dir: Path) -> list[tuple[int, int, float]]:
    """``(first frame, last frame, frames/s)`` of each window the script logged."""
    paths = list((run_dir / "logs").rglob("frames_per_s.csv"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one perf/frames_per_s CSV log under {run_dir / 'logs'}")
    with paths[0].open() as f:
        rows = sorted((int(float(step)), float(rate)) for step, rate in csv.reader(f))
    starts = [0] + [step for step, _ in rows[:-1]]
    return [(start, step, rate) for start, (step, rate) in zip(starts, rows, strict=True)]


def sb3_windows(times: list[float], log_interval: int) -> list[tuple[int, int, float]]:
    """The same windows from sb3's clock (``times[i]``: after env step ``i + 1``)."""
    return [
        (end - log_interval, end, log_interval / (times[end - 1] - times[end - log_interval - 1]))
        for end in range(2 * log_interval, len(times) + 1, log_interval)
    ]


def subprocess_env(threads: int) -> dict[str, str]:
    """This process's environment (allocator settings too), the thread count, this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(
        os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=path
    )


def library_used(threads: int) -> str:
    """Where the script's subprocesses import torchrl_crossq from (a check of PYTHONPATH)."""
    done = subprocess.run(
        [sys.executable, "-c", "import torchrl_crossq; print(torchrl_crossq.__file__)"],
        cwd=SCRIPT.parent,  # sys.path[0] as when the script runs
        env=subprocess_env(threads),
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(done.stdout.strip()).parent)


# -- summary, targets, RESULTS.md --------------------------------------------------------------
# Issue #16's targets: (summary line, comparison, bound); a str bound names another line.
# The speedups' are for the 2-core CPU machine class; on CUDA the target is LeanRL's SAC rate.
TARGETS = (
    ("e2e_speedup_vs_sb3_w256", ">=", 1.3),
    ("e2e_speedup_vs_sb3_w2048", ">=", 1.2),
    ("e2e_speedup_best_vs_sb3_w256", ">=", 2.0),
    ("e2e_speedup_best_vs_sb3_w2048", ">=", 2.3),
    ("eval_ms_per_step", "<=", 0.3),
    ("eval_ms_per_step", "<=", "sb3_eval_ms_per_step"),
    ("collect_ms_per_frame", "<=", 1.0),
)
CUDA_TARGETS = (("e2e_best_frames_per_s_w2048", ">=", 725.0),)
COLLECT_HEADLINE = "direct_actor_b1"  # the script's collection: one frame per batch


def by_width(training: list[dict]) -> dict[int, dict[str, list[dict]]]:
    """``{width: {contestant: [run of round 0, round 1, ...]}}`` (a dump without rounds: one)."""
    runs: dict[int, dict[str, list[dict]]] = {}
    for r in sorted(training, key=lambda r: r.get("round", 0)):
        runs.setdefault(r["width"], {}).setdefault(r["contestant"], []).append(r)
    return runs


def ratios_vs_sb3(runs: dict[str, list[dict]], contestant: str) -> list[float]:
    """The contestant's frames/s over sb3's, round by round (rounds where both ran)."""
    sb3 = {r.get("round", 0): r["frames_per_s"] for r in runs.get("sb3", [])}
    return [
        r["frames_per_s"] / sb3[r.get("round", 0)]
        for r in runs.get(contestant, [])
        if r.get("round", 0) in sb3
    ]


def summarise(training: list[dict], evaluation: dict | None, collect: dict | None) -> dict:
    """The summary lines' values (a line is left out when its contestants were not run).

    A speedup is the median over rounds of the round's ratio: contestants of one round ran
    minutes apart, so a slow spell of the machine weighs on both sides of a ratio.
    """
    summary: dict[str, float] = {}
    for width, runs in sorted(by_width(training).items()):
        speedups = {c: ratios_vs_sb3(runs, c) for c in OURS}
        speedups = {c: statistics.median(v) for c, v in speedups.items() if v}
        if "ours" in speedups:
            summary[f"e2e_speedup_vs_sb3_w{width}"] = speedups["ours"]
        if speedups:
            summary[f"e2e_speedup_best_vs_sb3_w{width}"] = max(speedups.values())
        rates = [statistics.median(r["frames_per_s"] for r in runs[c]) for c in OURS if c in runs]
        if rates:
            summary[f"e2e_best_frames_per_s_w{width}"] = max(rates)
    if evaluation is not None:
        summary["eval_ms_per_step"] = evaluation["ms_per_step"]["ours"]
        summary["sb3_eval_ms_per_step"] = evaluation["ms_per_step"]["sb3"]
    if collect is not None:
        # (dumps made before GymCollector: the script collected through TorchRL's Collector)
        headline = (
            COLLECT_HEADLINE if COLLECT_HEADLINE in collect["setups"] else "collector_actor_b1"
        )
        summary["collect_ms_per_frame"] = collect["setups"][headline]["ms_per_frame"]
    return summary


def summary_lines(summary: dict) -> list[str]:
    order = [k for k in summary if k.startswith("e2e_speedup_vs")]
    order += [k for k in summary if k.startswith("e2e_speedup_best")]
    order += [k for k in summary if k.startswith("e2e_best_frames")]
    order += [k for k in summary if not k.startswith("e2e_")]
    return [f"{k}: {summary[k]:.3f}" for k in order]


def check_targets(summary: dict, device: str = "cpu") -> list[dict]:
    """Issue #16's targets next to the measured values (skipped when a value is missing)."""
    rows = []
    for name, comparison, bound in CUDA_TARGETS if device.startswith("cuda") else TARGETS:
        if name not in summary or (isinstance(bound, str) and bound not in summary):
            continue
        limit = summary[bound] if isinstance(bound, str) else bound
        met = summary[name] >= limit if comparison == ">=" else summary[name] <= limit
        target = (
            f"{comparison} {bound} ({limit:.3f})"
            if isinstance(bound, str)
            else f"{comparison} {bound}"
        )
        rows.append({"metric": name, "value": summary[name], "target": target, "met": met})
    return rows


def warning(info: dict, training: list[dict]) -> str | None:
    """The load warning; this script's own sign is a run whose windows' frames/s varied."""
    unsteady = [
        f"{r['contestant']} at width {r['width']}: frames/s varied "
        f"{harness.span(r['measured_rates'], '.1f')} across windows"
        for r in training
        if harness.varies(r["measured_rates"], by=1.5)
    ]
    return harness.busy_warning(info, unsteady)


LABELS = {
    "sb3": "sb3-contrib CrossQ.learn",
    "ours": "ours, fp32 eager",
    "ours_compiled": "ours, compile=true",
    "ours_bf16_compiled": "ours, precision=bf16 compile=true",
    "ours_cudagraphs": "ours, compile=true cudagraphs=true",
}


def training_rows(training: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for width, runs in by_width(training).items():
        for contestant, rounds in runs.items():
            rates = [r["frames_per_s"] for r in rounds]
            ratios = ratios_vs_sb3(runs, contestant) if contestant != "sb3" else []
            rows.append(
                (
                    str(width),
                    LABELS[contestant],
                    f"{len(rounds)} x {rounds[0]['timed_frames']:,}",
                    ", ".join(f"{rate:.2f}" for rate in rates),
                    f"{statistics.median(rates):.2f}",
                    f"{1e3 / statistics.median(rates):.1f}",
                    ", ".join(f"{ratio:.3f}" for ratio in ratios),
                    f"{statistics.median(ratios):.3f}" if ratios else "1.000",
                )
            )
    return rows


TRAINING_COLUMNS = (
    "width",
    "contestant",
    "rounds x timed frames",
    "frames/s per round",
    "frames/s (median)",
    "ms per frame",
    "vs sb3 per round",
    "vs sb3 (median)",
)


def eval_rows(evaluation: dict) -> list[tuple[str, ...]]:
    labels = {
        "ours": "ours, `BatchedEvaluation` (episodes stepped together)",
        "ours_rollout": "ours, old path `evaluate` (TorchRL rollouts)",
        "sb3": "sb3 `evaluate_policy(deterministic=True)`",
    }
    return [
        (labels[name], f"{evaluation['env_steps'][name]:,}", f"{value:.3f}")
        for name, value in evaluation["ms_per_step"].items()
    ]


def collect_rows(collect: dict) -> list[tuple[str, ...]]:
    return [(s["label"], f"{s['ms_per_frame']:.3f}") for s in collect["setups"].values()]


def target_rows(targets: list[dict]) -> list[tuple[str, ...]]:
    return [
        (t["metric"], f"{t['value']:.3f}", t["target"], "yes" if t["met"] else "no")
        for t in targets
    ]


def settings_line(settings: dict) -> str:
    hp = HYPERPARAMETERS
    budgets = "; ".join(
        f"width {w}: {b['warmup_frames']:,} learning frames of warm-up, then "
        f"{b['measured_frames']:,} timed in windows of {b['log_interval']:,}"
        for w, b in settings["budgets"].items()
    )
    return (
        f"- matched: {ENV_ID}, one env, UTD 1, seed {SEED}, Adam lr {hp['lr']}, betas "
        f"{hp['betas']} (actor, critic, temperature), batch {hp['batch_size']}, gamma "
        f"{hp['gamma']}, policy delay {hp['policy_delay']}, {hp['num_qvalue_nets']} critics of "
        f"width W x 2, actor {hp['actor_width']} x 2, BRN momentum {hp['batch_norm_momentum']}, "
        f"eps {hp['batch_norm_eps']}, warmup {hp['warmup_steps']:,}, initial temperature "
        f"{hp['initial_alpha']}, {settings['init_random_frames']:,} random frames "
        f"(`init_random_frames` = `learning_starts`), evaluation off during training; {budgets}"
        f"; {settings.get('rounds', 1)} round(s)"
    )


def write_results(saved: dict) -> None:
    """Replaces (or appends) this script's section of bench/RESULTS.md (one per device)."""
    info, settings, device = saved["info"], saved["settings"], saved["settings"]["device"]
    threads = settings.get("infer_threads", settings["threads"])
    lines = harness.header_lines(
        info,
        f"{settings['threads']} torch thread(s) (`OMP_NUM_THREADS` too) per contestant, one "
        f"contestant at a time, device {device}",
        allocator_in_process=settings.get("allocator_in_process", False),
        notes=[settings_line(settings)],
        warning=info.get("warning"),
    )
    if settings["quick"]:
        lines.append("- **--quick: a smoke run with tiny budgets, not a measurement**")
    if saved["training"]:
        lines += [
            "",
            "Training frames/s with evaluation off: ours is `sota_implementations/crossq.py` "
            "(`perf/frames_per_s` of its CSV log), sb3 is `CrossQ.learn` (a clock at every env "
            "step). A run's rate is the median over its timed windows; every contestant runs "
            "once per round, in an order that rotates from round to round, and a speedup is "
            "the median over rounds of that round's ratio to sb3:",
            "",
            *harness.markdown_table(TRAINING_COLUMNS, training_rows(saved["training"])),
        ]
    if saved["eval"]:
        e = saved["eval"]
        lines += [
            "",
            f"Evaluation cost: {e['episodes']} deterministic episodes of at most "
            f"{e['max_steps']:,} steps, actor {HYPERPARAMETERS['actor_width']} x 2; wall time "
            f"over env steps, median of {e['reps']} interleaved rep(s) after a warm-up, "
            f"{threads} torch thread(s):",
            "",
            *harness.markdown_table(("evaluator", "env steps", "ms per env step"), eval_rows(e)),
        ]
    if saved["collect"]:
        c = saved["collect"]
        lines += [
            "",
            f"Collection cost, {ENV_ID}, one env (the headline `collect_ms_per_frame` is the "
            f"first row, the script's one frame per batch); median of {c['chunks']} chunks of "
            f"{c['chunk']:,} frames after {c['warmup']:,}, {threads} torch thread(s):",
            "",
            *harness.markdown_table(("setup", "ms per frame"), collect_rows(c)),
        ]
    if saved["targets"]:
        lines += [
            "",
            "Targets of issue #16:",
            "",
            *harness.markdown_table(
                ("metric", "measured", "target", "met"), target_rows(saved["targets"])
            ),
        ]
    name, title = harness.section_of(
        "bench/e2e.py",
        "End to end: training frames/s, evaluation and collection cost",
        device,
        info,
    )
    harness.write_section(name, title, lines, summary_lines(saved["summary"]))


def combine_dumps(dumps: list[dict]) -> dict:
    """One dump from the dumps of runs made apart at one commit (one contestant or one width a
    run, say, so that one failing run loses only its own numbers), for one section.

    The dumps must agree on commit, device, threads, hyperparameters and the budget of a width
    they share, and hold no (width, contestant, round) twice; at most one may hold the
    evaluation part, and one the collection part. Summary and targets are computed anew.
    """
    if len(dumps) == 1:
        return dumps[0]

    def identity(dump: dict) -> dict:
        settings = dump["settings"]
        return {
            "commit": dump["info"].get("commit"),
            **{key: settings.get(key) for key in ("device", "threads", "hyperparameters")},
        }

    first = dumps[0]
    for dump in dumps[1:]:
        differ = [key for key, value in identity(dump).items() if value != identity(first)[key]]
        if differ:
            raise SystemExit(f"error: --results-from: the dumps' {', '.join(differ)} differ")
    settings = dict(first["settings"], budgets={}, rounds=0)
    training, seen = [], set()
    for dump in dumps:
        for width, budget in dump["settings"]["budgets"].items():
            if settings["budgets"].setdefault(width, budget) != budget:
                raise SystemExit(f"error: --results-from: width {width}'s budget differs")
        settings["rounds"] = max(settings["rounds"], dump["settings"].get("rounds", 1))
        for run in dump["training"]:
            key = (run["width"], run["contestant"], run.get("round", 0))
            if key in seen:
                raise SystemExit(f"error: --results-from: run {key} in more than one dump")
            seen.add(key)
            training.append(run)
    parts = {}
    for part in ("eval", "collect"):
        held = [dump[part] for dump in dumps if dump.get(part)]
        if len(held) > 1:
            raise SystemExit(f"error: --results-from: the {part} part is in more than one dump")
        parts[part] = held[0] if held else None
    info = dict(first["info"], loadavg_end=dumps[-1]["info"].get("loadavg_end"))
    info["warning"] = next((d["info"]["warning"] for d in dumps if d["info"].get("warning")), None)
    info["command"] = " ; ".join(d["info"].get("command", "") for d in dumps)
    summary = summarise(training, parts["eval"], parts["collect"])
    return {
        "info": info,
        "settings": settings,
        "training": training,
        **parts,
        "summary": summary,
        "targets": check_targets(summary, settings["device"]),
    }


# -- command line ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 2048], help="critic widths")
    parser.add_argument(
        "--contestants", nargs="+", choices=CONTESTANTS,
        help="training runs (sb3 is needed for the speedup lines; default: all that the "
        "device runs, ours_cudagraphs on CUDA only)",
    )  # fmt: skip
    parser.add_argument(
        "--parts", nargs="+", choices=("train", "eval", "collect"),
        default=["train", "eval", "collect"],
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="training runs per contestant, interleaved: a speedup is the median round's",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads per contestant")
    parser.add_argument(
        "--infer-threads", type=int,
        help="torch threads of the eval and collect parts (default: --threads, as in the script)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu | cuda (training, both)")
    parser.add_argument("--init-random-frames", type=int, default=1_000)
    parser.add_argument("--warmup-frames", type=int, help="learning frames not timed (per width)")
    parser.add_argument("--measured-frames", type=int, help="learning frames timed (per width)")
    parser.add_argument("--log-interval", type=int, help="frames per timed window (per width)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-max-steps", type=int, default=1_000, help="steps per episode")
    parser.add_argument("--eval-reps", type=int, default=3)
    parser.add_argument("--collect-warmup", type=int, default=1_000, help="frames not timed")
    parser.add_argument("--collect-chunk", type=int, default=1_000, help="frames per chunk")
    parser.add_argument("--collect-chunks", type=int, default=5)
    parser.add_argument("--collect-batch", type=int, default=1_000, help="the large batch")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "e2e", help="run directories")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    harness.add_output_args(parser, several_dumps=True)
    parser.add_argument("--sb3-run", help=argparse.SUPPRESS)  # internal: one sb3 run
    args = parser.parse_args(argv)
    if args.contestants is None:
        cuda = args.device.startswith("cuda")
        args.contestants = [c for c in CONTESTANTS if cuda or c not in CUDA_ONLY]
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.init_random_frames = min(args.init_random_frames, 200)
        args.eval_max_steps, args.eval_reps = min(args.eval_max_steps, 100), 1
        args.collect_warmup, args.collect_chunk, args.collect_chunks = 100, 100, 2
        args.collect_batch = min(args.collect_batch, 100)
    harness.require_at_least(
        parser, args, 1, "widths", "rounds", "threads", "infer_threads", "measured_frames",
        "log_interval", "eval_episodes", "eval_max_steps", "eval_reps", "collect_chunk",
        "collect_chunks", "collect_batch",
    )  # fmt: skip
    harness.require_at_least(
        parser, args, 0, "init_random_frames", "warmup_frames", "collect_warmup"
    )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.sb3_run:
        sb3_run(json.loads(args.sb3_run))
        return
    if args.results_from:
        write_results(combine_dumps([harness.load_dump(path) for path in args.results_from]))
        return
    import torch

    # This process runs the eval and collect parts; the script evaluates on its own threads.
    torch.set_num_threads(args.infer_threads or args.threads)
    info = harness.machine_info(library=library_used(args.threads))
    if Path(info["library"]) != ROOT / "torchrl_crossq":
        raise SystemExit(f"error: the script would import torchrl_crossq from {info['library']}")
    budgets = {w: budget_for(w, args) for w in args.widths}
    settings = {
        "env": ENV_ID,
        "threads": args.threads,
        "infer_threads": args.infer_threads or args.threads,
        "device": args.device,
        "init_random_frames": args.init_random_frames,
        "budgets": {w: asdict(b) for w, b in budgets.items()},
        "rounds": args.rounds,
        "hyperparameters": HYPERPARAMETERS,
        "quick": args.quick,
        "allocator_in_process": True,  # both contestants' processes call keep_freed_memory()
    }
    harness.console_header(info, f"{args.threads} torch thread(s) per contestant, one at a time")
    print(f"# torchrl_crossq: {info['library']}")
    print("# " + settings_line(settings)[2:])

    training: list[dict] = []
    if "train" in args.parts:
        print(f"# training frames/s, evaluation off, {args.rounds} round(s)")
        contestants = harness.without_emulated_bf16(args.contestants, args.device)
        for round_ in range(args.rounds):
            shift = round_ % len(contestants)
            order = contestants[shift:] + contestants[:shift]  # rotates from round to round
            for width in args.widths:
                for contestant in order:
                    training.append(train_one(contestant, width, budgets[width], args, round_))
    evaluation = collect = None
    if "eval" in args.parts:
        print(f"# evaluation cost: {args.eval_episodes} episodes of <= {args.eval_max_steps} steps")
        evaluation = bench_eval(args)
    if "collect" in args.parts:
        print(f"# collection cost, one env, {args.collect_chunks} chunks of {args.collect_chunk}")
        collect = bench_collect(args)
    harness.end_of_run(info)
    info["warning"] = warning(info, training)
    if info["warning"]:
        print(f"# {info['warning']}")
    summary = summarise(training, evaluation, collect)
    targets = check_targets(summary, args.device)
    if training:
        print("\n".join(harness.console_table(TRAINING_COLUMNS, training_rows(training))))
    for t in targets:
        print(f"# target {t['metric']} {t['target']}: {t['value']:.3f}, "
              f"{'met' if t['met'] else 'NOT met'}")  # fmt: skip
    saved = {
        "info": info,
        "settings": settings,
        "training": training,
        "eval": evaluation,
        "collect": collect,
        "summary": summary,
        "targets": targets,
    }
    harness.finish(args, saved, write_results, summary_lines(summary))


if __name__ == "__main__":
    main()
