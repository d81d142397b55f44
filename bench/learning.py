"""Sample efficiency on short budgets: our training script against sb3-contrib's CrossQ.

Both train with the matched ``HYPERPARAMETERS`` (the paper's, except the critic width, 256
for the short runs, and the random steps before learning) from the same seeds, one subprocess
per run (ours: ``sota_implementations/crossq.py`` as a user runs it; sb3: ``--sb3-run`` of this
file), and are evaluated at the same frame points with the same deterministic episodes.
Default tasks: Pendulum-v1 and InvertedPendulum-v5 (5k frames, 3 seeds); ``--tasks hopper
walker2d``: MuJoCo locomotion at 30k frames; ``--tasks reach push``: Meta-World success rates.
bench/README.md has the details.

Run: ``.venv/bin/python bench/learning.py`` (``--quick``: smoke run). The last lines are
``final_<task>_<impl>: mean +- std`` across seeds, ``stats_<task>_<impl>`` (final and AUC:
mean, IQM, 95% CI), ``ours_vs_sb3_<task>`` (within one std, above or below) and
``ours_vs_sb3_ci_<task>`` (ours' mean not below sb3's 95% CI); each of our other settings in
``--impls`` (``ours_bf16``, ``ours_compile``, ``ours_bf16_compile``) adds its own
``<impl>_vs_sb3_<task>`` and ``<impl>_vs_sb3_ci_<task>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is not a package
import harness  # bench/ is on sys.path

from torchrl_crossq.analysis import bootstrap_ci, iqm

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "sota_implementations" / "crossq.py"
OUT_DIR = Path(__file__).with_name("out")
DEFAULT_IMPLS = ("ours", "sb3")
# Our script's settings: the same command plus these overrides (bf16: bfloat16 autocast of the
# losses; compile: torch.compile of the loss computations).
OURS = {
    "ours": [],
    "ours_bf16": ["precision=bf16"],
    "ours_compile": ["compile=true"],
    "ours_bf16_compile": ["precision=bf16", "compile=true"],
}
IMPLS = ("ours", "sb3", *(impl for impl in OURS if impl != "ours"))


# -- one run ---------------------------------------------------------------------------------
def run_one(name: str, impl: str, task: Task, seed: int, args: argparse.Namespace) -> dict:
    """Runs one training run in a subprocess; returns its eval rows and wall time."""
    run_dir = harness.fresh_dir(args.out / name / f"{impl}-seed{seed}")
    if impl in OURS:
        command = ours_command(task, seed, run_dir, args.device) + OURS[impl]
    else:
        spec = {
            "task": asdict(task),
            "seed": seed,
            "run_dir": str(run_dir),
            "threads": args.threads,
            "device": args.device,
        }
        command = [sys.executable, __file__, "--sb3-run", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    wall_s = harness.run_logged(command, run_dir, env, f"{impl} {name} seed {seed}")
    rows = read_eval_csv(run_dir / "eval.csv")
    print(
        f"  {name:<17} {impl:<17} seed {seed}: final {task.metric} {rows[-1][task.metric]:9.2f} "
        f"at {rows[-1]['frames']:.0f} frames ({wall_s:.0f} s)",
        flush=True,
    )
    return {"task": name, "impl": impl, "seed": seed, "rows": rows, "wall_s": wall_s}


def ours_command(task: Task, seed: int, run_dir: Path, device: str) -> list[str]:
    """The training script's command line for one run, every matched value spelled out."""
    if task.env_task:
        return meta_world_command(task, seed, run_dir, device)
    return [
        sys.executable,
        str(SCRIPT),
        f"env={task.env_group}",
        f"seed={seed}",
        f"device={device}",
        f"run_dir={run_dir}",
        *matched_overrides(task.critic_width, task.frames, task.init_random_frames),
        f"eval.interval={task.eval_interval}",
        f"eval.episodes={task.eval_episodes}",
        f"eval.max_episode_steps={MAX_EVAL_STEPS}",
        "checkpoint.interval=0",
        "logger.backend=none",
        "progress_bar=false",
    ]


def matched_overrides(critic_width: int, frames: int, init_random_frames: int) -> list[str]:
    """``HYPERPARAMETERS`` as the training script's overrides: one env, UTD 1, CrossQ head."""
    hp = HYPERPARAMETERS
    width, actor = critic_width, hp["actor_width"]
    return [
        "env.num_envs=1",
        f"collector.total_frames={frames}",
        f"collector.init_random_frames={init_random_frames}",
        "collector.frames_per_batch=1",
        f"optim.lr={hp['lr']}",
        f"optim.beta1={hp['betas'][0]}",
        f"optim.beta2={hp['betas'][1]}",
        f"optim.batch_size={hp['batch_size']}",
        f"optim.policy_update_delay={hp['policy_delay']}",
        f"algorithm.gamma={hp['gamma']}",
        "algorithm.q_head_type=crossq",
        f"algorithm.entropy_tuning.initial_alpha={hp['initial_alpha']}",
        f"algorithm.replay_buffer.size={min(hp['replay_size'], frames)}",
        f"network.critic_hidden_sizes=[{width},{width}]",
        f"network.actor_hidden_sizes=[{actor},{actor}]",
        f"network.num_qvalue_nets={hp['num_qvalue_nets']}",
        f"network.batch_norm_momentum={hp['batch_norm_momentum']}",
        f"network.batch_norm_eps={hp['batch_norm_eps']}",
        f"network.brn_warmup_steps={hp['warmup_steps']}",
    ]


def meta_world_command(task: Task, seed: int, run_dir: Path, device: str) -> list[str]:
    """``experiment=embodied`` as a user runs it, on the gymnasium backend, with the bench budget."""
    width = task.critic_width
    return [
        sys.executable,
        str(SCRIPT),
        "experiment=embodied",
        f"env.task={task.env_task}",
        "env.backend=gymnasium",
        "env.vectorization=serial",
        f"seed={seed}",
        f"device={device}",
        f"run_dir={run_dir}",
        f"collector.total_frames={task.frames}",
        f"collector.init_random_frames={task.init_random_frames}",
        f"network.critic_hidden_sizes=[{width},{width}]",
        f"eval.interval={task.eval_interval}",
        f"eval.episodes={task.eval_episodes}",
        "checkpoint.interval=0",
        "logger.backend=none",
        "progress_bar=false",
    ]


def sb3_run(spec: dict) -> None:
    """Trains and evaluates sb3-contrib's CrossQ (``--sb3-run``); writes ``eval.csv`` like ours."""
    import warnings

    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    warnings.filterwarnings("ignore")
    from torchrl_crossq.from_config import EVAL_EPISODES, EVAL_TASKS, TRAIN_TASKS, run_seed

    task, seed, run_dir = Task(**spec["task"]), spec["seed"], Path(spec["run_dir"])
    torch.set_num_threads(spec["threads"])
    hp = hyperparameters(task)

    def make(task_seed: int) -> gym.Env:
        if not task.env_task:
            return gym.make(task.env_id)
        import metaworld  # noqa: F401  (registers Meta-World/MT1)

        # MT1 draws its goals when built: seeded as the script seeds ours (run_seed's task
        # streams, for training and for evaluation), or no two runs of a seed would match.
        return gym.make(
            task.env_id, env_name=task.env_task, disable_env_checker=True, seed=task_seed
        )

    model = sb3_model(
        make(run_seed(seed, TRAIN_TASKS)),
        hp,
        critic_width=task.critic_width,
        learning_starts=task.init_random_frames,
        buffer_size=min(hp["replay_size"], task.frames),
        seed=seed,
        device=spec["device"],
        threads=spec["threads"],
    )

    eval_env = make(run_seed(seed, EVAL_TASKS))
    eval_env.reset(seed=run_seed(seed, EVAL_EPISODES))  # once: its episodes follow on
    rows: list[dict] = []

    def evaluate(frames: int) -> None:
        returns, successes = [], []
        for _ in range(task.eval_episodes):
            obs, _ = eval_env.reset()
            total, steps, done, success = 0.0, 0, False, False
            while not done and steps < MAX_EVAL_STEPS:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, info = eval_env.step(action)
                total, steps = total + float(reward), steps + 1
                success |= bool(info.get("success", 0.0) > 0)  # at any step, as ours
                done = terminated or truncated
            returns.append(total)
            successes.append(success)
        rows.append(
            {
                "frames": frames,
                "return_mean": float(np.mean(returns)),
                "return_std": float(np.std(returns)),
                "success_rate": float(np.mean(successes)) if task.env_task else math.nan,
            }
        )
        write_eval_csv(run_dir / "eval.csv", rows)

    class EvalEvery(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % task.eval_interval == 0:
                evaluate(self.num_timesteps)
            return True

    model.learn(total_timesteps=task.frames, callback=EvalEvery())
    if not rows or rows[-1]["frames"] != model.num_timesteps:
        evaluate(model.num_timesteps)


def sb3_model(
    env, hp: dict, *, critic_width: int, learning_starts: int, buffer_size: int, seed: int,
    device: str, threads: int,
):  # fmt: skip
    """sb3-contrib's CrossQ with the matched hyperparameters ``hp`` (also bench/e2e.py's).

    Torch runs on ``threads`` threads afterwards, whatever sb3 set while building.
    """
    import torch
    from sb3_contrib import CrossQ

    from torchrl_crossq.allocator import keep_freed_memory

    keep_freed_memory()  # what our script does for itself at start: the same allocator for both
    model = CrossQ(
        "MlpPolicy",
        env,
        learning_rate=hp["lr"],
        buffer_size=buffer_size,
        learning_starts=learning_starts,
        batch_size=hp["batch_size"],
        gamma=hp["gamma"],
        train_freq=1,
        gradient_steps=1,
        policy_delay=hp["policy_delay"],
        ent_coef=f"auto_{hp['initial_alpha']}",
        target_entropy=hp.get("target_entropy", "auto"),
        policy_kwargs={
            "net_arch": {"pi": [hp["actor_width"]] * 2, "qf": [critic_width] * 2},
            "n_critics": hp["num_qvalue_nets"],
            "batch_norm_momentum": hp["batch_norm_momentum"],
            "batch_norm_eps": hp["batch_norm_eps"],
            "renorm_warmup_steps": hp["warmup_steps"],
            "optimizer_kwargs": {"betas": hp["betas"]},
        },
        seed=seed,
        device=device,
    )
    # sb3 builds the temperature's Adam with torch's default betas and the policy's lr; ours
    # uses (0.5, 0.999) and alpha_lr where the config has one (the embodied preset: 3e-4).
    model.ent_coef_optimizer = torch.optim.Adam(
        [model.log_ent_coef], lr=hp.get("alpha_lr", hp["lr"]), betas=hp["betas"]
    )
    torch.set_num_threads(threads)
    return model


def _eval_seeding(info: dict) -> str:
    """How a dump's evaluation episodes were seeded."""
    if info.get("seed_streams"):
        return (
            "eval env seeded once per run from the run's seed (ours reseeds it at each "
            "evaluation, from the run's seed and the frame count: from_config.run_seed)"
        )
    return (
        "eval env seeded seed + 10000 (ours reseeds it at each evaluation: seed + 10000 + frames)"
    )


def write_eval_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_eval_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [
            {k: float(row.get(k) or math.nan) for k in EVAL_FIELDS} for row in csv.DictReader(f)
        ]


# -- tasks and matched hyperparameters -------------------------------------------------------
MAX_EVAL_STEPS = 1_000  # eval.max_episode_steps of the script
METAWORLD = "Meta-World/MT1"
EVAL_FIELDS = ("frames", "return_mean", "return_std", "success_rate")  # the script's eval.csv

# Matched hyperparameters (the paper's; torchrl_crossq/config.py has their origins).
HYPERPARAMETERS = {
    "lr": 1e-3,
    "betas": (0.5, 0.999),  # Adam, actor, critic and temperature
    "batch_size": 256,
    "gamma": 0.99,
    "policy_delay": 3,
    "num_qvalue_nets": 2,
    "actor_width": 256,  # actor hidden layers: 2 x this
    "batch_norm_momentum": 0.01,
    "batch_norm_eps": 1e-3,
    "warmup_steps": 100_000,
    "initial_alpha": 1.0,  # temperature learned, target entropy -action_dim
    "replay_size": 1_000_000,  # capped at the run's frames (same content: nothing is evicted)
}


LOCOMOTION = ("halfcheetah", "hopper", "walker2d")  # env groups of the locomotion section


@dataclass(frozen=True)
class Task:
    """One benchmark task and its budget."""

    env_group: str  # configs/env/<env_group>.yaml
    env_id: str  # gymnasium id
    frames: int
    init_random_frames: int  # ours: collector.init_random_frames; sb3: learning_starts
    eval_interval: int
    eval_episodes: int
    critic_width: int = 256
    env_task: str | None = None  # Meta-World task (env_id Meta-World/MT1): success rate compared

    @property
    def metric(self) -> str:
        """The eval.csv column compared across implementations."""
        return "success_rate" if self.env_task else "return_mean"

    @property
    def label(self) -> str:
        return self.env_task or self.env_id

    @property
    def section(self) -> str:
        """The key of this task's RESULTS.md section in ``SECTIONS``."""
        if self.env_task:
            return "metaworld"
        return "locomotion" if self.env_group in LOCOMOTION else "control"


TASKS = {
    "pendulum": Task("pendulum", "Pendulum-v1", 5_000, 1_000, 500, 5),
    "inverted_pendulum": Task("inverted_pendulum", "InvertedPendulum-v5", 5_000, 1_000, 500, 5),
    "halfcheetah": Task("halfcheetah", "HalfCheetah-v5", 20_000, 5_000, 5_000, 5),
    # eval every 2500 frames: 12 points, enough for the area under the curve
    "hopper": Task("hopper", "Hopper-v5", 30_000, 5_000, 2_500, 5),
    "walker2d": Task("walker2d", "Walker2d-v5", 30_000, 5_000, 2_500, 5),
    # Meta-World: ours is experiment=embodied (on the gymnasium backend, the simulator code sb3
    # steps); sb3 gets the preset's widths, gamma, temperature and learning start.
    "reach": Task("metaworld", METAWORLD, 12_000, 4_096, 4_000, 10, 512, "reach-v3"),
    "push": Task("metaworld", METAWORLD, 12_000, 4_096, 4_000, 10, 512, "push-v3"),
}
DEFAULT_TASKS = ("pendulum", "inverted_pendulum")


# The embodied preset's values (configs/experiment/embodied.yaml) where they differ from the above;
# sb3 gets them too. Not matchable: sb3 has no gradient clipping (ours: 10) and parametrises the
# temperature as exp(log alpha) (ours: softplus); ours steps 8 envs, 4 steps each per round.
META_WORLD_HYPERPARAMETERS = {
    "alpha_lr": 3e-4,  # algorithm.entropy_tuning.optim.lr
    "gamma": 0.8,
    "initial_alpha": 0.01,
    "target_entropy": -4.0,
    "actor_width": 256,
}


def hyperparameters(task: Task) -> dict:
    return {**HYPERPARAMETERS, **(META_WORLD_HYPERPARAMETERS if task.env_task else {})}


# -- aggregation -------------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so a rerun of --results-from reproduces the intervals


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation across seeds (0 for one seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def combine_dumps(dumps: list[dict]) -> dict:
    """One dump from the dumps of runs made apart, for one section.

    Runs made apart are other tasks (one task per session) or more seeds of a task: a task in
    several dumps must have the same settings there and no (implementation, seed) twice. The
    matched hyperparameters must agree. The section gives each dump's date, commit, command
    and load, named by its tasks and seeds.
    """
    if len(dumps) == 1:
        return dumps[0]
    tasks: dict = {}
    seen: set[tuple] = set()
    for dump in dumps:
        if dump["hyperparameters"] != dumps[0]["hyperparameters"]:
            raise SystemExit("error: --results-from: the dumps' hyperparameters differ")
        for flag in ("seed_streams", "allocator_in_process"):  # the section states one of each
            if dump["info"].get(flag) != dumps[0]["info"].get(flag):
                raise SystemExit(
                    f"error: --results-from: the dumps differ in {flag} (one was made before "
                    "it); rerun the older one"
                )
        for name, fields in dump["tasks"].items():
            if tasks.setdefault(name, fields) != fields:
                raise SystemExit(
                    f"error: --results-from: task {name!r} has other settings in another dump"
                )
        runs = {(r["task"], r["impl"], r["seed"]) for r in dump["runs"]}
        if runs & seen:
            raise SystemExit(
                f"error: --results-from: runs {sorted(runs & seen)} in more than one dump"
            )
        seen |= runs
    provenance = ("date", "commit", "command", "loadavg_start", "loadavg_end")
    info = dict(dumps[0]["info"])
    info["parts"] = [
        {
            "name": f"{', '.join(dump['tasks'])}, seeds {_seed_list(dump['runs'])}",
            **{key: dump["info"][key] for key in provenance},
        }
        for dump in dumps
    ]
    return {
        "info": info,
        "tasks": tasks,
        "hyperparameters": dumps[0]["hyperparameters"],
        "runs": [run for dump in dumps for run in dump["runs"]],
    }


def _seed_list(runs: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return " ".join(map(str, seeds))


def aggregate(runs: list[dict], tasks: list[str]) -> dict:
    """Per task and implementation, across seeds: final return and AUC (mean over eval points).

    Each of the two comes as ``(mean, std)`` (``final``, ``average``), its IQM (``final_iqm``,
    ``average_iqm``) and the 95% bootstrap CI of its mean (``final_ci``, ``average_ci``); the
    per-seed values are ``finals`` and ``averages``.
    """
    summary: dict = {}
    for name in tasks:
        summary[name] = {}
        for impl in IMPLS:
            mine = sorted(
                (r for r in runs if r["task"] == name and r["impl"] == impl),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            metric = TASKS[name].metric
            finals = [r["rows"][-1][metric] for r in mine]
            average = [statistics.fmean(row[metric] for row in r["rows"]) for r in mine]
            frames = sorted({row["frames"] for r in mine for row in r["rows"]})
            curve = []
            for f in frames:
                values = [row[metric] for r in mine for row in r["rows"] if row["frames"] == f]
                curve.append((f, *_mean_std(values), len(values)))
            summary[name][impl] = {
                "seeds": [r["seed"] for r in mine],
                "finals": finals,
                "final": _mean_std(finals),
                "final_iqm": iqm(finals),
                "final_ci": bootstrap_ci(finals, reps=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED),
                "averages": average,
                "average": _mean_std(average),
                "average_iqm": iqm(average),
                "average_ci": bootstrap_ci(average, reps=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED),
                "eval_frames": frames,
                "curve": curve,
                "wall_s": statistics.median(r["wall_s"] for r in mine),
            }
    return summary


def verdict(summary: dict, name: str, impl: str = "ours") -> str | None:
    """Ours' final return against sb3's, in units of the larger of the two across-seed stds.

    ``within one std`` when the means differ by at most that std, else ``above`` or ``below``
    by more than one std; the difference and the std follow in parentheses.
    """
    if impl not in summary[name] or "sb3" not in summary[name]:
        return None
    (ours, ours_std), (sb3, sb3_std) = summary[name][impl]["final"], summary[name]["sb3"]["final"]
    difference, std = ours - sb3, max(ours_std, sb3_std)
    if abs(difference) <= std:
        result = "within one std"
    else:
        result = f"{'above' if difference > 0 else 'below'} by more than one std"
    digits = _digits(name)
    return f"{result} ({impl} - sb3 = {difference:+.{digits}f}; larger std {std:.{digits}f})"


def ci_verdict(summary: dict, name: str, impl: str = "ours") -> str | None:
    """Ours must not fall below sb3-contrib's interval: ours' mean >= the low end of sb3's CI.

    Checked for the final return and the AUC (mean over eval points), each against sb3's 95%
    bootstrap CI of the mean across seeds. The AUCs are compared only when both implementations
    were evaluated at the same frame points.
    """
    if impl not in summary[name] or "sb3" not in summary[name]:
        return None
    mine, sb3, digits = summary[name][impl], summary[name]["sb3"], _digits(name)
    parts = []
    for key, what in (("final", "final"), ("average", "AUC")):
        mean, (low, high) = mine[key][0], sb3[f"{key}_ci"]
        if key == "average" and mine["eval_frames"] != sb3["eval_frames"]:
            parts.append(f"{what} not compared (the two were evaluated at different frames)")
            continue
        result = "not below" if mean >= low else "below"
        parts.append(
            f"{what} {result} sb3's 95% CI ({impl} mean {mean:.{digits}f}; "
            f"sb3 CI [{low:.{digits}f}, {high:.{digits}f}])"
        )
    return "; ".join(parts)


LABELS = {
    "ours": "ours (crossq.py)",
    "sb3": "sb3-contrib CrossQ",
    "ours_bf16": "ours, precision=bf16",
    "ours_compile": "ours, compile=true",
    "ours_bf16_compile": "ours, precision=bf16 compile=true",
}


COLORS = tuple(f"C{i}" for i in range(len(IMPLS)))  # one per implementation, none dropped


def plot(summary: dict, runs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4), squeeze=False)
    for ax, (name, by_impl) in zip(axes[0], summary.items(), strict=True):
        for color, (impl, s) in zip(COLORS, by_impl.items(), strict=False):
            frames = [c[0] for c in s["curve"]]
            mean = [c[1] for c in s["curve"]]
            std = [c[2] for c in s["curve"]]
            label = LABELS[impl]
            ax.plot(
                frames, mean, marker="o", color=color, label=f"{label}, {len(s['seeds'])} seeds"
            )
            ax.fill_between(
                frames,
                [m - d for m, d in zip(mean, std, strict=True)],
                [m + d for m, d in zip(mean, std, strict=True)],
                color=color,
                alpha=0.2,
            )
            for r in runs:
                if r["task"] == name and r["impl"] == impl:
                    ax.plot(
                        [row["frames"] for row in r["rows"]],
                        [row[TASKS[name].metric] for row in r["rows"]],
                        color=color,
                        alpha=0.3,
                        linewidth=0.8,
                    )
        ax.set_title(TASKS[name].label)
        ax.set_xlabel("frames")
        what = "success rate" if TASKS[name].env_task else "return"
        ax.set_ylabel(f"eval {what} (mean over seeds +- std)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- report ---------------------------------------------------------------------------------
def _digits(name: str) -> int:
    return 2 if TASKS[name].env_task else 1  # success rates in [0, 1]; returns


def _pm(pair: tuple[float, float], digits: int = 1) -> str:
    return f"{pair[0]:.{digits}f} +- {pair[1]:.{digits}f}"


def _ci(pair: tuple[float, float], digits: int = 1) -> str:
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _stats(s: dict, key: str, digits: int) -> str:
    """``mean M, IQM I, 95% CI [L, H]`` of ``final`` or ``average`` across seeds."""
    return (
        f"mean {s[key][0]:.{digits}f}, IQM {s[f'{key}_iqm']:.{digits}f}, "
        f"95% CI {_ci(s[f'{key}_ci'], digits)}"
    )


REPORT_COLUMNS = (
    "task", "impl", "seeds", "final", "IQM", "95% CI", "AUC", "IQM", "95% CI", "median wall s"
)  # fmt: skip


def report(summary: dict) -> list[str]:
    rows = []
    for name, by_impl in summary.items():
        d = _digits(name)
        for impl, s in by_impl.items():
            rows.append(
                (
                    name, impl, str(len(s["seeds"])), _pm(s["final"], d),
                    f"{s['final_iqm']:.{d}f}", _ci(s["final_ci"], d), _pm(s["average"], d),
                    f"{s['average_iqm']:.{d}f}", _ci(s["average_ci"], d), f"{s['wall_s']:.0f}",
                )
            )  # fmt: skip
    return harness.console_table(REPORT_COLUMNS, rows)


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for name, by_impl in summary.items():
        d = _digits(name)
        for impl, s in by_impl.items():
            lines.append(f"final_{name}_{impl}: {_pm(s['final'], d)}")
        for impl, s in by_impl.items():
            lines.append(
                f"stats_{name}_{impl}: final {_stats(s, 'final', d)}; AUC {_stats(s, 'average', d)}"
            )
        for impl in OURS:
            result = verdict(summary, name, impl)
            if result is not None:
                lines.append(f"{impl}_vs_sb3_{name}: {result}")
            result = ci_verdict(summary, name, impl)
            if result is not None:
                lines.append(f"{impl}_vs_sb3_ci_{name}: {result}")
    return lines


# Each group of tasks (Task.section) has its own section, so no group's run erases another's.
SECTIONS = {
    "control": "bench/learning.py",
    "locomotion": "bench/learning.py --tasks hopper walker2d",
    "metaworld": "bench/learning.py --tasks reach push",
}
SECTION_TITLES = {
    "control": "Sample efficiency",
    "locomotion": "MuJoCo locomotion sample efficiency",
    "metaworld": "Meta-World success",
}
TABLE_COLUMNS = (
    "task", "frames", "random frames", "critic width", "eval every / episodes", "impl", "seeds",
    "final return / success rate", "final IQM", "final 95% CI", "per seed",
    "AUC (mean over evals)", "AUC IQM", "AUC 95% CI", "median wall s",
)  # fmt: skip


def write_results(saved: dict) -> None:
    """Replaces (or appends) the section of the tasks' group in bench/RESULTS.md."""
    info = saved["info"]
    tasks = {name: Task(**fields) for name, fields in saved["tasks"].items()}
    summary = aggregate(saved["runs"], list(tasks))  # a dump from before IQM and CI has runs
    hp = HYPERPARAMETERS
    section = one_section(tasks)
    if section == "metaworld":
        mw = META_WORLD_HYPERPARAMETERS
        # Dumps from before sb3 got the preset's temperature lr record none: sb3 had lr.
        sb3_alpha_lr = info.get("sb3_alpha_lr", hp["lr"])
        temperature_lr = (
            f"temperature {sb3_alpha_lr}"
            if sb3_alpha_lr == mw["alpha_lr"]
            else f"temperature: ours {mw['alpha_lr']}, sb3 {sb3_alpha_lr}, not matched"
        )
        matched = (
            "- matched: ours is `experiment=embodied` (8 envs x 4 steps per round, 32 updates per "
            "round: UTD 1; gradient-norm clip 10; softplus temperature) on the gymnasium backend; "
            f"sb3 one env, UTD 1; both Adam lr {hp['lr']} ({temperature_lr}), betas "
            f"{hp['betas']}, batch "
            f"{hp['batch_size']}, policy delay {hp['policy_delay']}, {hp['num_qvalue_nets']} "
            f"critics, actor {mw['actor_width']} x 2, BRN momentum {hp['batch_norm_momentum']}, "
            f"eps {hp['batch_norm_eps']}, warmup {hp['warmup_steps']:,}, gamma {mw['gamma']}, "
            f"initial temperature {mw['initial_alpha']}, target entropy {mw['target_entropy']}, "
            "the same learning start; success = `success` true at any step of a deterministic "
            "episode"
        )
    else:
        matched = (
            f"- matched: Adam lr {hp['lr']}, betas {hp['betas']} (actor, critic, temperature), "
            f"batch {hp['batch_size']}, gamma {hp['gamma']}, policy delay {hp['policy_delay']}, "
            f"{hp['num_qvalue_nets']} critics (loss 0.5 x squared error summed over them), "
            f"actor {hp['actor_width']} x 2 with log-std clipped to [-20, 2], BRN momentum "
            f"{hp['batch_norm_momentum']}, eps {hp['batch_norm_eps']}, unbiased batch variance, "
            f"warmup {hp['warmup_steps']:,} (never left on these budgets), temperature exp(log "
            f"alpha) from {hp['initial_alpha']}, target entropy -action_dim on the "
            "log-probability of the squashed action in [-1, 1] for both (sb3 rescales outside "
            "the density, ours drops the rescaling's log-Jacobian), so matched in effect "
            "whatever the env's bounds; UTD 1, one env. Not matched, each as its reference: "
            "the temperature loss, ours -alpha (log pi + target) with the gradient through "
            "alpha (the original CrossQ code, sbx), sb3-contrib -log alpha (log pi + target) "
            "(through log alpha: Adam's steps on log alpha do not shrink with alpha, so sb3's "
            "temperature falls faster)"
        )
    rows = []
    for name, by_impl in summary.items():
        t, d = tasks[name], _digits(name)
        for impl, s in by_impl.items():
            rows.append(
                (
                    t.label, f"{t.frames:,}", f"{t.init_random_frames:,}", str(t.critic_width),
                    f"{t.eval_interval:,} / {t.eval_episodes}", impl, str(len(s["seeds"])),
                    _pm(s["final"], d), f"{s['final_iqm']:.{d}f}", _ci(s["final_ci"], d),
                    ", ".join(f"{v:.{d}f}" for v in s["finals"]), _pm(s["average"], d),
                    f"{s['average_iqm']:.{d}f}", _ci(s["average_ci"], d), f"{s['wall_s']:.0f}",
                )
            )  # fmt: skip
    lines = [
        *harness.header_lines(
            info,
            f"{info['threads']} torch thread(s) per run, {info['jobs']} run(s) at a time, "
            f"device {info['device']}",
            allocator_in_process=info.get("allocator_in_process", False),
            notes=[matched],
        ),
        f"- evaluation: deterministic actions (actor in eval mode), {_eval_seeding(info)}; "
        "final = the last evaluation's mean over its episodes (return, or success rate for Meta-World); AUC = a "
        "run's mean of those over its eval points; mean +- std across seeds (sample std); within "
        "one std: the means differ by at most the larger of the two stds",
        f"- IQM: rliable's interquartile mean across seeds (floor(n/4) dropped at each end: for 5 "
        f"seeds the middle three); 95% CI: percentile bootstrap of the mean over seeds "
        f"({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}); `_vs_sb3_ci_`: ours must "
        "not fall below sb3's interval (ours' mean >= the low end of sb3's CI)",
        "",
        *harness.markdown_table(TABLE_COLUMNS, rows),
    ]
    for name, by_impl in summary.items():
        impls = list(by_impl)
        curves = {impl: {c[0]: c for c in by_impl[impl]["curve"]} for impl in impls}
        lines += [
            "",
            f"Eval {'success rate' if tasks[name].env_task else 'return'} over frames, "
            f"{tasks[name].label} (mean +- std across seeds):",
            "",
            *harness.markdown_table(
                ("frames", *impls),
                [
                    (
                        f"{frames:,.0f}",
                        *(
                            _pm(curves[impl][frames][1:3], _digits(name))
                            if frames in curves[impl]
                            else ""
                            for impl in impls
                        ),
                    )
                    for frames in sorted({f for c in curves.values() for f in c})
                ],
            ),
        ]
    lines += [
        "",
        # dumps from before info["plot"] drew to the default path
        f"Curves: `{info.get('plot', 'bench/out/learning.png')}` (not committed; rerun to draw "
        "it).",
    ]
    harness.write_section(
        SECTIONS[section],
        f"{SECTION_TITLES[section]}, ours vs sb3-contrib CrossQ (`bench/learning.py`)",
        lines,
        summary_lines(summary),
    )


def one_section(tasks: dict[str, Task]) -> str:
    """The RESULTS.md section the tasks share; tasks of different sections are run apart."""
    sections = {t.section for t in tasks.values()}
    if len(sections) > 1:
        groups = {s: [n for n, t in tasks.items() if t.section == s] for s in sorted(sections)}
        raise SystemExit(
            f"error: --write-results: the tasks belong to different RESULTS.md sections "
            f"({groups}); run each group apart"
        )
    return sections.pop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(DEFAULT_TASKS))
    parser.add_argument(
        "--impls", nargs="+", choices=IMPLS, default=list(DEFAULT_IMPLS),
        help="our other settings (not run by default): ours_bf16 precision=bf16, ours_compile "
        "compile=true, ours_bf16_compile both",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, help="frames per run (default: per task)")
    parser.add_argument("--init-random-frames", type=int, help="random steps (default: per task)")
    parser.add_argument("--width", type=int, help="critic width (default: 256)")
    parser.add_argument("--eval-interval", type=int, help="frames between evals (per task)")
    parser.add_argument("--eval-episodes", type=int, help="episodes per eval (per task)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (both implementations)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "learning", help="run directories")
    parser.add_argument("--plot", type=Path, default=OUT_DIR / "learning.png")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1.5k frames")
    harness.add_output_args(parser, several_dumps=True)
    parser.add_argument("--sb3-run", help=argparse.SUPPRESS)  # internal: one sb3 run
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.frames = args.frames or 1_500
        args.init_random_frames = args.init_random_frames or 500
        args.eval_interval = args.eval_interval or 500
        args.eval_episodes = args.eval_episodes or 2
    harness.require_at_least(
        parser, args, 1, "frames", "width", "eval_interval", "eval_episodes", "threads", "jobs"
    )
    harness.require_at_least(parser, args, 0, "init_random_frames")
    return args


def task_settings(args: argparse.Namespace) -> dict[str, Task]:
    """The chosen tasks with the command line's overrides applied."""
    overrides = {
        "frames": args.frames,
        "init_random_frames": args.init_random_frames,
        "critic_width": args.width,
        "eval_interval": args.eval_interval,
        "eval_episodes": args.eval_episodes,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    tasks = {name: replace(TASKS[name], **overrides) for name in args.tasks}
    for name, t in tasks.items():
        if t.init_random_frames >= t.frames:
            raise SystemExit(
                f"error: {name}: init_random_frames={t.init_random_frames} >= frames={t.frames}: "
                "nothing would be learned; lower --init-random-frames or raise --frames"
            )
    return tasks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.sb3_run:
        sb3_run(json.loads(args.sb3_run))
        return
    if args.results_from:
        write_results(combine_dumps([harness.load_dump(path) for path in args.results_from]))
        return
    tasks = task_settings(args)
    if args.write_results:
        one_section(tasks)  # fail before training, not after
    plot_path = args.plot.resolve()
    info = harness.machine_info(
        allocator_in_process=True,  # both contestants' processes call keep_freed_memory()
        sb3_alpha_lr=META_WORLD_HYPERPARAMETERS["alpha_lr"],  # Meta-World tasks' (sb3_model)
        threads=args.threads,
        jobs=args.jobs,
        device=args.device,
        seeds=args.seeds,
        seed_streams=True,  # seeds hashed by run_seed (dumps before: seed + 10000 + frames)
        plot=str(plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path),
    )
    harness.console_header(
        info, f"{args.threads} torch thread(s) per run, {args.jobs} run(s) at a time"
    )
    for name, t in tasks.items():
        print(
            f"# {name}: {t.env_id}, {t.frames} frames ({t.init_random_frames} random), critic "
            f"{t.critic_width} x 2, eval every {t.eval_interval} frames x {t.eval_episodes} "
            f"episodes, seeds {args.seeds}"
        )
    # ours and sb3 of one seed side by side, so both meet the same machine load
    impls = harness.without_emulated_bf16(args.impls, args.device)
    jobs = [(name, impl, seed) for name in tasks for seed in args.seeds for impl in impls]
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [
            pool.submit(run_one, name, impl, tasks[name], seed, args) for name, impl, seed in jobs
        ]
        runs = [f.result() for f in futures]
    finally:
        pool.shutdown(cancel_futures=True)  # a failed run stops the benchmark
    harness.end_of_run(info)
    summary = aggregate(runs, list(tasks))
    print("\n".join(report(summary)))
    print(f"# curves: {plot(summary, runs, args.plot)}; runs: {args.out}")
    saved = {
        "info": info,
        "tasks": {k: asdict(v) for k, v in tasks.items()},
        "hyperparameters": HYPERPARAMETERS,
        "summary": summary,
        "runs": runs,
    }
    harness.finish(args, saved, write_results, summary_lines(summary))


if __name__ == "__main__":
    main()
