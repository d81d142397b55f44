"""Collection frames/s: env backends against a plain gymnasium loop, then collector backends.

Part ``envs``: ``torchrl_crossq.envs.make_env`` as ``serial``, ``parallel`` and ``envpool`` (one
env: ``single``) at 1, 2, 4, 8 envs on HalfCheetah-v5 and Meta-World ``reach-v3``, driven by a
TorchRL ``Collector`` under random actions, then under our actor, against a plain gymnasium loop
(``gymnasium.make`` + ``action_space.sample()``). Part ``collectors``:
``torchrl_crossq.collectors.make_collector`` for each backend (``sync``, ``multi_sync``,
``multi_async``, ``ray``) at 1, 2, 4 workers of one HalfCheetah-v5 env each.
bench/README.md has the details.

Run: ``.venv/bin/python bench/collect.py`` (``--part envs|collectors``; ``--quick``: smoke run).
The last lines are ``frames_per_s_<backend>_<W>workers`` (collectors), then
``ratio_<policy>_<setup>_<N>envs_<task>`` (ours / plain loop) and
``envpool_vs_<serial|parallel>_<N>envs[_<S>steps]_<task>`` (EnvPool's frames/s over
gymnasium's), ending with ``envpool_vs_parallel_8envs_HalfCheetah-v5`` and
``envpool_vs_parallel_8envs_reach-v3``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is not a package
import harness  # bench/ is on sys.path

ENV_TASKS = ("HalfCheetah-v5", "reach-v3")
ENV_SETUPS = ("serial", "parallel", "envpool")
GYMNASIUM_SETUPS = ("serial", "parallel")
POLICIES = ("random", "actor")
COLLECTOR_BACKENDS = ("sync", "multi_sync", "multi_async", "ray")
EXTRA_PACKAGES = ("gymnasium", "mujoco", "envpool", "metaworld", "ray")
BUSY_SPREAD = 1.3  # plain-loop chunks varying more than this: the machine is busy


# -- part envs -------------------------------------------------------------------------------------
def bench_env_setup(
    label: str, setup: str, num_envs: int, steps_per_batch: int, args: argparse.Namespace
) -> dict:
    """Frames/s of one env setup under the random policy, then under our actor."""
    from torchrl.collectors import Collector

    from torchrl_crossq import make_actor
    from torchrl_crossq.envs import env_dims, make_env

    frames_per_batch = num_envs * steps_per_batch
    warmup = _round_up(args.warmup_frames, frames_per_batch)
    chunk = _round_up(args.frames // args.chunks, frames_per_batch)
    phase = warmup + args.chunks * chunk

    name, task = env_id(label)
    backend = {"backend": "envpool"} if setup == "envpool" else {"vectorization": setup}
    start = time.perf_counter()
    env = make_env(name, task=task, num_envs=num_envs, seed=0, **backend)
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
    try:
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
    finally:
        collector.shutdown()
    return {
        "task": label,
        "setup": setup_label(setup, num_envs),
        "num_envs": num_envs,
        "steps_per_batch": steps_per_batch,
        "frames_per_batch": frames_per_batch,
        "chunk_frames": chunk,
        "setup_s": setup_s,
        "torch_threads_during": threads_during,
        "rates": rates,
        "median": {policy: statistics.median(r) for policy, r in rates.items()},
    }


# -- part collectors -------------------------------------------------------------------------------
def bench_collector(backend: str, num_workers: int, args: argparse.Namespace) -> dict:
    """Frames/s of ``make_collector(backend=...)`` with ``num_workers`` workers of one env each."""
    from torchrl_crossq import make_actor
    from torchrl_crossq.collectors import make_collector
    from torchrl_crossq.envs import env_dims, make_env

    name, task = env_id(args.collector_task)
    create_env = functools.partial(make_env, name, task=task)
    policy = None  # make_collector's workers then act with TorchRL's RandomPolicy
    if args.collector_policy == "actor":
        probe = create_env(seed=0)
        obs_dim, _ = env_dims(probe)
        torch.manual_seed(0)
        policy = make_actor(obs_dim, probe.action_spec_unbatched).eval()
        probe.close()
    frames_per_batch = _round_up(args.collector_frames_per_batch, num_workers)
    untimed = 1 + args.collector_warmup_batches  # the first batch starts the workers
    start = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        if backend == "ray":  # started here to keep the workers' prints out of the report
            import ray

            ray.init(num_cpus=num_workers, log_to_driver=False)  # a CPU per worker, even on 2 cores
            cleanup.callback(ray.shutdown)
        collector = make_collector(
            create_env,
            policy,
            seed=0,
            backend=backend,
            num_workers=num_workers,
            frames_per_batch=frames_per_batch,
            # Finite (Ray stops at once on -1), never reached: a batch may hold one per worker.
            total_frames=frames_per_batch * num_workers * (untimed + args.collector_batches + 1),
            policy_device="cpu",
            reuse_batch=True,  # the script's setting (sync only; the batch is read at once)
        )
        cleanup.callback(collector.shutdown)
        batches = iter(collector)
        next(batches)
        setup_s = time.perf_counter() - start
        for _ in range(args.collector_warmup_batches):
            next(batches)
        frames, start = 0, time.perf_counter()
        batch_rates = []
        for _ in range(args.collector_batches):
            batch_start = time.perf_counter()
            batch_frames = next(batches).numel()
            batch_rates.append(batch_frames / (time.perf_counter() - batch_start))
            frames += batch_frames
        elapsed = time.perf_counter() - start
    return {
        "backend": backend,
        "num_workers": num_workers,
        "frames_per_batch": frames // args.collector_batches,
        "timed_frames": frames,
        "setup_s": setup_s,
        "frames_per_s": frames / elapsed,
        "batch_rates": batch_rates,
    }


# -- the runs: every setup of a part, a plain-loop chunk before each -------------------------------
def run_envs(args: argparse.Namespace, threads: int) -> dict:
    """All env setups of all tasks; returns the rows, the plain-loop rates and the skips."""
    results, plain_rates, skipped = [], {}, []
    for label in args.tasks:
        reason = missing_backend(label, "gymnasium")
        if reason is not None:  # no plain loop without gymnasium's env either
            skipped.append(f"{label}: skipped ({reason})")
            print(f"# {skipped[-1]}", flush=True)
            continue
        setups = []
        for setup in args.setups:
            reason = missing_backend(label, setup)
            if reason is None:
                setups.append(setup)
            else:
                skipped.append(f"{label} {setup}: skipped ({reason})")
                print(f"# {skipped[-1]}", flush=True)
        plain_loop = PlainLoop(label)
        plain_loop.rate(args.plain_steps)  # warm-up
        rates = plain_rates[label] = []
        for steps, num_envs, setup in env_setups(setups, args):
            rates.append(plain_loop.rate(args.plain_steps))
            result = bench_env_setup(label, setup, num_envs, steps, args)
            torch.set_num_threads(threads)  # ParallelEnv's shutdown may change it
            results.append(result)
            m = result["median"]
            print(
                f"  {label} {result['setup']:<8} envs {num_envs} steps/batch {steps}: "
                f"random {m['random']:,.0f} f/s, actor {m['actor']:,.0f} f/s "
                f"(start {result['setup_s']:.1f} s; plain chunk {rates[-1]:,.0f} f/s)",
                flush=True,
            )
        rates.append(plain_loop.rate(args.plain_steps))
        plain_loop.close()
    plain = {label: statistics.median(r) for label, r in plain_rates.items()}
    return {
        "results": results,
        "plain_rates": plain_rates,
        "plain": plain,
        "envpool": envpool_ratios(results, args.setups),
        "skipped": skipped,
    }


def run_collectors(args: argparse.Namespace, threads: int) -> dict:
    results, plain_rates, skipped = [], {args.collector_task: []}, []
    rates = plain_rates[args.collector_task]
    reason = missing_backend(args.collector_task, "gymnasium")
    if reason is not None:
        skipped.append(f"all backends: skipped ({reason})")
        print(f"# {skipped[-1]}", flush=True)
        return {"results": results, "plain_rates": plain_rates, "skipped": skipped}
    backends = list(args.backends)
    if "ray" in backends:
        try:
            import ray  # noqa: F401
        except ImportError as err:
            backends.remove("ray")
            skipped.append(f"ray: skipped ({err}; pip install -e '.[distributed]')")
            print(f"# {skipped[-1]}", flush=True)
    plain_loop = PlainLoop(args.collector_task)
    plain_loop.rate(args.plain_steps)  # warm-up
    for backend, num_workers in collector_setups(backends, args.workers):
        rates.append(plain_loop.rate(args.plain_steps))
        result = bench_collector(backend, num_workers, args)
        torch.set_num_threads(threads)  # the multi-process collectors lower it while they run
        results.append(result)
        print(
            f"  {backend:<11} workers {num_workers}: {result['frames_per_s']:,.0f} f/s "
            f"(start {result['setup_s']:.1f} s; plain chunk {rates[-1]:,.0f} f/s)",
            flush=True,
        )
    rates.append(plain_loop.rate(args.plain_steps))
    plain_loop.close()
    return {"results": results, "plain_rates": plain_rates, "skipped": skipped}


def env_setups(setups: list[str], args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """``(steps per batch, envs, setup)``, the setups of one size back to back."""
    result = []
    for steps in args.steps_per_batch:
        for num_envs in args.envs:
            labels = set()
            for setup in setups:
                if setup_label(setup, num_envs) not in labels:  # one bare env, measured once
                    labels.add(setup_label(setup, num_envs))
                    result.append((steps, num_envs, setup))
    return result


def collector_setups(backends: list[str], workers: list[int]) -> list[tuple[str, int]]:
    """``(backend, workers)``: ``sync`` once (one process), the others at each worker count."""
    result = [("sync", 1)] if "sync" in backends else []
    for num_workers in workers:
        result += [(backend, num_workers) for backend in backends if backend != "sync"]
    return result


def env_id(label: str) -> tuple[str, str | None]:
    """``(name, task)`` for ``make_env``: a gymnasium id, or a Meta-World task (``reach-v3``)."""
    import gymnasium as gym

    from torchrl_crossq.envs import METAWORLD

    return (label, None) if label in gym.envs.registry else (METAWORLD, label)


class PlainLoop:
    """The baseline: one gymnasium env stepped with random actions in this process."""

    def __init__(self, label: str, seed: int = 0) -> None:
        import gymnasium as gym

        name, task = env_id(label)
        if task is None:
            self.env = gym.make(name)
        else:  # Meta-World's MT1 id (registered by check_env's import), as make_env builds it
            self.env = gym.make(name, env_name=task, disable_env_checker=True)
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


def setup_label(setup: str, num_envs: int) -> str:
    """One gymnasium env is neither serial nor parallel: ``make_env`` builds it bare."""
    return "single" if setup in GYMNASIUM_SETUPS and num_envs == 1 else setup


def missing_backend(label: str, setup: str) -> str | None:
    """Why ``setup`` cannot build task ``label`` here (an extra not installed), else ``None``."""
    from torchrl_crossq.envs import MissingExtraError, check_env

    name, task = env_id(label)
    try:  # an unknown task is the user's typo: check_env's UnknownEnvError stops the run
        check_env(name, task, "envpool" if setup == "envpool" else "gymnasium")
    except MissingExtraError as err:
        return str(err)
    return None


def envpool_ratios(results: list[dict], setups: list[str]) -> list[dict]:
    """EnvPool's frames/s over each gymnasium setup's at the same task, envs and steps."""
    rows = {(r["task"], r["steps_per_batch"], r["num_envs"], r["setup"]): r for r in results}
    ratios = []
    for r in results:
        if r["setup"] != "envpool":
            continue
        for versus in (s for s in GYMNASIUM_SETUPS if s in setups):
            key = (
                r["task"],
                r["steps_per_batch"],
                r["num_envs"],
                setup_label(versus, r["num_envs"]),
            )
            if key not in rows:
                continue
            other = rows[key]["median"]
            ratios.append(
                {
                    "task": r["task"],
                    "steps_per_batch": r["steps_per_batch"],
                    "num_envs": r["num_envs"],
                    "versus": versus,
                    "ratio": {policy: r["median"][policy] / other[policy] for policy in POLICIES},
                }
            )
    return ratios


# The env tables' cells, shared by the console report and RESULTS.md: (console header, console


# -- reports, summary lines, RESULTS.md ------------------------------------------------------------
# The tables' column headers in RESULTS.md and, shorter, on the console.
SETUP_COLUMNS = (
    "task", "setup", "envs", "steps per env per batch", "random policy frames/s", "ratio",
    "our actor frames/s", "ratio", "worker start s",
)  # fmt: skip
SETUP_CONSOLE = (
    "task", "setup", "envs", "steps/batch", "random f/s", "ratio", "actor f/s", "ratio", "start s"
)  # fmt: skip
ENVPOOL_COLUMNS = (
    "task",
    "steps per env per batch",
    "envs",
    "versus",
    "random policy",
    "our actor",
)
ENVPOOL_CONSOLE = ("task", "steps/batch", "envs", "versus", "random", "actor")
COLLECTOR_COLUMNS = ("backend", "workers", "frames per batch", "frames/s", "vs sync", "start s")


def setup_rows(envs: dict) -> list[tuple[str, ...]]:
    """One row per measured setup: rates and their ratio to the plain loop, worker start-up."""
    rows = []
    for r in envs["results"]:
        m, base = r["median"], envs["plain"][r["task"]]
        rows.append(
            (
                r["task"], r["setup"], str(r["num_envs"]), str(r["steps_per_batch"]),
                f"{m['random']:,.0f}", f"{m['random'] / base:.3f}",
                f"{m['actor']:,.0f}", f"{m['actor'] / base:.3f}", f"{r['setup_s']:.1f}",
            )
        )  # fmt: skip
    return rows


def envpool_rows(envs: dict) -> list[tuple[str, ...]]:
    """One row per EnvPool-versus-gymnasium comparison."""
    return [
        (
            c["task"], str(c["steps_per_batch"]), str(c["num_envs"]), c["versus"],
            f"{c['ratio']['random']:.2f}", f"{c['ratio']['actor']:.2f}",
        )
        for c in envs["envpool"]
    ]  # fmt: skip


def collector_rows(collectors: dict) -> list[tuple[str, ...]]:
    """One row per backend and worker count; ``vs sync``: frames/s over the sync collector's."""
    sync = next((r for r in collectors["results"] if r["backend"] == "sync"), None)
    return [
        (
            r["backend"], str(r["num_workers"]), str(r["frames_per_batch"]),
            f"{r['frames_per_s']:,.0f}",
            f"{r['frames_per_s'] / sync['frames_per_s']:.2f}" if sync else "n/a",
            f"{r['setup_s']:.1f}",
        )
        for r in collectors["results"]
    ]  # fmt: skip


def envs_report(envs: dict) -> list[str]:
    lines = [
        "plain gymnasium loop (median over the run): "
        + ", ".join(f"{label} {rate:,.0f} frames/s" for label, rate in envs["plain"].items()),
        *harness.console_table(SETUP_CONSOLE, setup_rows(envs)),
    ]
    if envs["envpool"]:
        lines += [
            "envpool frames/s over gymnasium's (> 1: envpool is faster; 1 env: over single)",
            *harness.console_table(ENVPOOL_CONSOLE, envpool_rows(envs)),
        ]
    return lines


def envs_summary(envs: dict) -> list[str]:
    """Ratios to the plain loop at one step per env, then EnvPool's, parallel 8 envs last."""
    lines = []
    for r in envs["results"]:
        if r["steps_per_batch"] == 1:
            base = envs["plain"][r["task"]]
            for policy in POLICIES:
                lines.append(
                    f"ratio_{policy}_{r['setup']}_{r['num_envs']}envs_{r['task']}: "
                    f"{r['median'][policy] / base:.3f}"
                )

    def order(c: dict) -> tuple:
        return (
            c["steps_per_batch"] == 1,
            c["steps_per_batch"],
            c["versus"] == "parallel",
            c["num_envs"],
        )

    for c in sorted(envs["envpool"], key=order):  # stable: tasks keep their order
        steps = "" if c["steps_per_batch"] == 1 else f"_{c['steps_per_batch']}steps"
        lines.append(
            f"envpool_vs_{c['versus']}_{c['num_envs']}envs{steps}_{c['task']}: "
            f"{c['ratio']['random']:.3f}"
        )
    return lines


def collectors_summary(collectors: dict) -> list[str]:
    return [
        f"frames_per_s_{r['backend']}_{r['num_workers']}workers: {r['frames_per_s']:.0f}"
        for r in collectors["results"]
    ]


def warning(info: dict, plain_rates: dict[str, list[float]]) -> str | None:
    """The load warning; this script's own sign is a plain loop unsteady across the run."""
    unsteady = [
        f"the {label} plain loop's rate varied {harness.span(rates, ',.0f')} frames/s across the run"
        for label, rates in plain_rates.items()
        if harness.varies(rates, by=BUSY_SPREAD)
    ]
    return harness.busy_warning(info, unsteady)


def write_results(saved: dict) -> None:
    """Replaces (or appends) the section of each part that ran (a part's run leaves the other's)."""
    if saved["envs"] is not None:
        write_envs_results(saved["info"], saved["settings"], saved["envs"])
    if saved["collectors"] is not None:
        write_collectors_results(saved["info"], saved["settings"], saved["collectors"])


def header_lines(info: dict, settings: dict, part: dict) -> list[str]:
    """The header of a part's section; its warning reads that part's plain-loop chunks."""
    return harness.header_lines(
        info,
        f"torch threads {settings['threads'] or 'default'}",
        warning=warning(info, part["plain_rates"]),
    )


def write_envs_results(info: dict, settings: dict, envs: dict) -> None:
    plain = envs["plain"]
    lines = [
        *header_lines(info, settings, envs),
        f"- {', '.join(plain)}; frames/s are medians of {settings['chunks']} chunks of about "
        f"{settings['frames'] // settings['chunks']} frames after {settings['warmup_frames']} "
        "warm-up frames; ratio = ours / the plain gymnasium loop (random actions, one process)",
        *[f"- {line}" for line in envs["skipped"]],
        "",
        "Plain gymnasium loop: "
        + ", ".join(f"{label} **{rate:,.0f} frames/s**" for label, rate in plain.items())
        + ".",
        "",
        *harness.markdown_table(SETUP_COLUMNS, setup_rows(envs)),
    ]
    if envs["envpool"]:
        lines += [
            "",
            "EnvPool's frames/s over gymnasium's (> 1: EnvPool is faster; one env: over `single`):",
            "",
            *harness.markdown_table(ENVPOOL_COLUMNS, envpool_rows(envs)),
        ]
    harness.write_section(
        "bench/collect.py",
        "Collection throughput: env backends (`bench/collect.py`)",
        lines,
        envs_summary(envs),
    )


def write_collectors_results(info: dict, settings: dict, collectors: dict) -> None:
    lines = [
        *header_lines(info, settings, collectors),
        f"- {settings['collector_task']}, one env per worker, {settings['collector_policy']} "
        f"policy; frames/s over {settings['collector_batches']} timed batches after the "
        f"start-up batch and {settings['collector_warmup_batches']} warm-up batch(es); "
        "`vs sync` = frames/s over the one-process `sync` collector's",
        *[f"- {line}" for line in collectors["skipped"]],
        "",
        *harness.markdown_table(COLLECTOR_COLUMNS, collector_rows(collectors)),
    ]
    harness.write_section(
        "bench/collect.py (collectors)",
        "Collection throughput: collector backends (`bench/collect.py --part collectors`)",
        lines,
        collectors_summary(collectors),
    )


# -- command line ----------------------------------------------------------------------------------
# Full run and --quick smoke run; a flag given on the command line wins over both.
FULL = {
    "envs": [1, 2, 4, 8],
    "steps_per_batch": [1, 4],
    "frames": 2000,
    "chunks": 4,
    "warmup_frames": 200,
    "plain_steps": 3000,
    "workers": [1, 2, 4],
    "collector_frames_per_batch": 1000,
    "collector_batches": 8,
}
QUICK = {
    "envs": [1, 2],
    "steps_per_batch": [1],
    "frames": 200,
    "chunks": 2,
    "warmup_frames": 40,
    "plain_steps": 500,
    "workers": [1, 2],
    "collector_frames_per_batch": 100,
    "collector_batches": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["envs", "collectors", "all"], default="all")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 and 2 envs/workers, few frames"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    harness.add_output_args(parser)
    envs = parser.add_argument_group("part envs")
    envs.add_argument(
        "--tasks",
        nargs="+",
        default=list(ENV_TASKS),
        help="gymnasium ids or Meta-World tasks (reach-v3, push-v3, ...)",
    )
    envs.add_argument("--setups", nargs="+", choices=ENV_SETUPS, default=list(ENV_SETUPS))
    envs.add_argument("--envs", type=int, nargs="+", help=f"env counts (default {FULL['envs']})")
    envs.add_argument(
        "--steps-per-batch",
        type=int,
        nargs="+",
        help="env steps per env per collector batch (default 1 4; 1: the script's UTD-1 "
        "setting; 4: the embodied preset's, 32 frames over 8 envs)",
    )
    envs.add_argument("--frames", type=int, help="timed frames per policy (default 2000)")
    envs.add_argument("--chunks", type=int, help="timed chunks per policy (default 4)")
    envs.add_argument("--warmup-frames", type=int, help="untimed, per policy (default 200)")
    envs.add_argument("--plain-steps", type=int, help="plain-loop steps per chunk (default 3000)")
    collectors = parser.add_argument_group("part collectors")
    collectors.add_argument(
        "--backends", nargs="+", choices=COLLECTOR_BACKENDS, default=list(COLLECTOR_BACKENDS)
    )
    collectors.add_argument("--workers", type=int, nargs="+", help="default 1 2 4")
    collectors.add_argument("--collector-task", default="HalfCheetah-v5")
    collectors.add_argument("--collector-policy", choices=["actor", "random"], default="actor")
    collectors.add_argument(
        "--collector-frames-per-batch", type=int, help="rounded up to the workers (default 1000)"
    )
    collectors.add_argument("--collector-batches", type=int, help="timed batches (default 8)")
    collectors.add_argument("--collector-warmup-batches", type=int, default=1)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    harness.require_at_least(
        parser, args, 1, "envs", "steps_per_batch", "workers", "chunks", "collector_batches",
        "collector_frames_per_batch", "plain_steps",
    )  # fmt: skip
    harness.require_at_least(parser, args, 0, "collector_warmup_batches")
    if args.frames < args.chunks:
        parser.error(f"--frames={args.frames} must be >= --chunks={args.chunks}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.results_from:
        write_results(harness.load_dump(args.results_from))
        return
    harness.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = harness.machine_info(EXTRA_PACKAGES)
    harness.console_header(info, f"torch threads {threads}")
    envs = collectors = None
    if args.part in ("envs", "all"):
        print(
            f"# envs: {', '.join(args.tasks)}: plain gymnasium loop vs make_env + Collector "
            f"({', '.join(args.setups)}); {args.frames} timed frames per policy in "
            f"{args.chunks} chunks",
            flush=True,
        )
        envs = run_envs(args, threads)
    if args.part in ("collectors", "all"):
        print(
            f"# collectors: {args.collector_task}, {args.collector_policy} policy, "
            f"{args.collector_batches} timed batches of about {args.collector_frames_per_batch} "
            "frames",
            flush=True,
        )
        collectors = run_collectors(args, threads)
    harness.end_of_run(info)

    summary = []
    if collectors is not None:
        print("\n".join(harness.console_table(COLLECTOR_COLUMNS, collector_rows(collectors))))
        summary += collectors_summary(collectors)
    if envs is not None:
        print("\n".join(envs_report(envs)))
        summary += envs_summary(envs)
    for part, result in (("collectors", collectors), ("envs", envs)):
        busy = warning(info, result["plain_rates"]) if result else None
        if busy:
            print(f"# {part}: {busy}")
    # The command line after --quick's defaults: the sections describe the run with it.
    output = ("json", "write_results", "results_from")
    settings = {k: v for k, v in vars(args).items() if k not in output}
    saved = {"info": info, "settings": settings, "envs": envs, "collectors": collectors}
    harness.finish(args, saved, write_results, summary)


if __name__ == "__main__":
    main()
