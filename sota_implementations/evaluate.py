"""Evaluates a saved run again: its latest checkpoint's actor, deterministic episodes.

    python sota_implementations/evaluate.py runs/<run>                  # as the run's last eval
    python sota_implementations/evaluate.py runs/<run> --episodes 50    # more episodes
    python sota_implementations/evaluate.py runs/<run> --video          # and one episode to MP4

The env and the actor are rebuilt from ``<run>/config.yaml``; the actor's weights come from
the newest readable checkpoint in ``<run>/checkpoints``. Runs made with ``precision=bf16`` or
``compile=true`` load the same way: both change how the losses are computed, not the stored
(float32) weights. By default the episodes are those of the run's evaluation at the
checkpoint's frames (episodes seeded as the run seeded them there, ``eval.max_episode_steps``),
so ``--episodes`` equal to the run's ``eval.episodes`` reproduces that row of ``eval.csv``: the
last one for a finished run; a run stopped or still training may have evaluated past its newest
checkpoint. Prints one line: return mean/std and, for tasks that report success (Meta-World),
the success rate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from torchrl_crossq.checkpoint import CheckpointError, load_latest_checkpoint
from torchrl_crossq.config import env_label
from torchrl_crossq.envs import EvalResult, MissingExtraError, UnknownEnvError, env_dims, make_env
from torchrl_crossq.from_config import (
    eval_seed,
    make_actor_from_config,
    make_evaluator_from_config,
    record_video_from_config,
)
from torchrl_crossq.video import VideoUnavailable

ACTOR_PREFIX = "actor_network_params."  # CrossQLoss's state dict keys of the actor's weights


class RunError(RuntimeError):
    """A run directory that cannot be evaluated; the message says why in one line."""


def make_env_and_actor(cfg: DictConfig, *, seed: int):
    """An env of the run's task (its specs) and the (untrained) actor of a run's config, built
    by the training script's own config layer (``torchrl_crossq.from_config``)."""
    env = make_env(
        cfg.env.name,
        task=cfg.env.task,
        backend=cfg.env.backend,
        max_episode_steps=cfg.env.max_episode_steps,
        seed=seed,
    )
    return env, make_actor_from_config(cfg, env)


def load_actor_weights(actor, loss_state: dict) -> None:
    """Copies the actor's weights (and Batch Renormalization statistics) out of a loss state dict."""
    weights = {
        k[len(ACTOR_PREFIX) :]: v for k, v in loss_state.items() if k.startswith(ACTOR_PREFIX)
    }
    try:
        actor.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise RunError(
            f"the checkpoint's actor does not fit network.actor_hidden_sizes of config.yaml ({first})"
        ) from None


def evaluate_run(
    run_dir: str | Path,
    *,
    episodes: int | None = None,
    seed: int | None = None,
    video: bool = False,
) -> tuple[EvalResult, dict]:
    """Evaluates the latest checkpoint of ``run_dir``.

    Args:
        run_dir: a directory made by ``sota_implementations/crossq.py``.

    Keyword Args:
        episodes: deterministic episodes (``None``: the run's ``eval.episodes``).
        seed: the eval env's seed (``None``: that of the run's evaluation at the checkpoint's
            frames: ``torchrl_crossq.from_config.eval_seed``).
        video: also render one episode to ``<run_dir>/videos/evaluate_<frames>.mp4``.

    Returns:
        The result, and ``{"frames", "checkpoint", "seed", "episodes", "task", "video"}``
        (``video``: the file, or the one-line reason there is none; absent without ``video``).

    Raises:
        RunError: no config, no readable checkpoint, or a checkpoint made for another env.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a run directory: it has no config.yaml")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    try:
        state = load_latest_checkpoint(run_dir / "checkpoints")
    except CheckpointError as err:
        raise RunError(str(err)) from None
    if state is None:
        raise RunError(f"{run_dir} has no checkpoint yet (checkpoints/ is empty)")
    frames = state["frames"]
    seed = eval_seed(cfg, frames) if seed is None else seed
    episodes = cfg.eval.episodes if episodes is None else episodes
    env, actor = make_env_and_actor(cfg, seed=seed)
    dims = env_dims(env)
    saved_dims = tuple(state.get("env_dims", dims))
    if saved_dims != dims:
        raise RunError(
            f"{state['path']} was made for observation/action sizes {saved_dims} but "
            f"config.yaml's env {env_label(cfg)} has {dims}"
        )
    load_actor_weights(actor, state["loss"])
    env.close()
    evaluate_at = make_evaluator_from_config(cfg, actor, episodes=episodes)
    result = evaluate_at(frames, seed=seed)
    evaluate_at.close()
    info = {
        "frames": frames,
        "checkpoint": state["path"],
        "seed": seed,
        "episodes": episodes,
        "task": env_label(cfg),
    }
    if video:
        try:
            info["video"] = record_video_from_config(
                cfg, actor, run_dir / "videos" / f"evaluate_{frames}.mp4", seed=seed
            )
        except VideoUnavailable as err:
            info["video"] = str(err)
    return result, info


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory of crossq.py")
    parser.add_argument("--episodes", type=int, help="episodes (default: the run's eval.episodes)")
    parser.add_argument(
        "--seed", type=int, help="eval env seed (default: the run's eval's at the checkpoint)"
    )
    parser.add_argument("--video", action="store_true", help="render one episode to videos/")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes={args.episodes} must be >= 1")
    try:
        result, info = evaluate_run(
            args.run_dir, episodes=args.episodes, seed=args.seed, video=args.video
        )
    except (RunError, UnknownEnvError, MissingExtraError) as err:
        raise SystemExit(f"error: {err}") from None
    success = "" if result.success_rate is None else f", success rate {result.success_rate:.2f}"
    print(
        f"{info['task']} at {info['frames']} frames ({info['checkpoint']}): return "
        f"{result.return_mean:.1f} +- {result.return_std:.1f} over {info['episodes']} "
        f"episodes (seed {info['seed']}){success}"
    )
    if "video" in info:
        video = info["video"]
        print(f"video: {video}" if isinstance(video, Path) else f"warning: no video: {video}")


if __name__ == "__main__":
    main(sys.argv[1:])
