"""CrossQ (Bhatt et al., ICLR 2024) training script, in TorchRL's SOTA style.

    python sota_implementations/crossq.py                      # HalfCheetah-v5, paper settings
    python sota_implementations/crossq.py experiment=quick     # Pendulum-v1, a few minutes on CPU
    python sota_implementations/crossq.py experiment=sac       # standard SAC, for comparison
    python sota_implementations/crossq.py resume=runs/<run>    # continue a run

The configuration and the meaning of every key: configs/crossq.yaml and torchrl_crossq/config.py.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import hydra
import numpy as np
import torch
import tqdm
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchrl_crossq import (
    CrossQLoss,
    CrossQUpdater,
    NonFiniteLossError,
    PeriodicSoftUpdate,
    make_actor,
    make_critic,
    make_optimizers,
)
from torchrl_crossq.allocator import keep_freed_memory
from torchrl_crossq.checkpoint import (
    CheckpointError,
    StopOnSignal,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from torchrl_crossq.collectors import collector_state, make_collector, restore_collector_state
from torchrl_crossq.config import (
    ConfigError,
    env_label,
    loss_kwargs,
    norm_kwargs,
    prepare_run,
    register_configs,
    replay_buffer_kwargs,
    resolve_device,
    resolve_norm,
)
from torchrl_crossq.data import make_replay_buffer
from torchrl_crossq.envs import (
    MissingExtraError,
    UnknownEnvError,
    env_dims,
    evaluate,
    make_env,
)
from torchrl_crossq.logging import (
    EvalHistory,
    log_metrics,
    logger_run_id,
    make_logger,
    plot_learning_curve,
    truncate_csv_logs,
)
from torchrl_crossq.objectives.update import make_lr_scheduler

register_configs()


def next_multiple(frames: int, interval: int) -> int:
    """The first multiple of ``interval`` after ``frames``: a resumed run keeps the same schedule."""
    return (frames // interval + 1) * interval


@hydra.main(config_path="../configs", config_name="crossq", version_base=None)
def main(cfg: DictConfig) -> None:
    # What was typed, not the composed config: on resume only those keys may change.
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    try:
        train(cfg, overrides=overrides)
    except (
        CheckpointError,
        ConfigError,
        UnknownEnvError,
        MissingExtraError,
        NonFiniteLossError,
    ) as err:
        raise SystemExit(f"error: {err}") from None


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """One training run; ``overrides`` are the command line's keys (hydra override strings)."""
    # -- config, run directory, seeding ---------------------------------------------
    cfg, run_dir, resuming = prepare_run(cfg, overrides=overrides)
    keep_freed_memory()  # no page faults on the update's re-allocated activations
    device = resolve_device(cfg.device)
    if cfg.threads is not None:  # e.g. 1 when other processes share the cores
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # -- environments ---------------------------------------------------------------------
    env_kwargs = {
        "task": cfg.env.task,
        "backend": cfg.env.backend,
        "max_episode_steps": cfg.env.max_episode_steps,
    }
    # Built where it runs (here, or in each collector worker); seeded through the collector.
    make_train_env = functools.partial(
        make_env,
        cfg.env.name,
        num_envs=cfg.env.num_envs,
        vectorization=cfg.env.vectorization,
        **env_kwargs,
    )
    eval_env = make_env(cfg.env.name, seed=cfg.seed + 10_000, **env_kwargs)
    obs_dim, action_dim = env_dims(eval_env)

    # -- networks and loss ----------------------------------------------------------------------
    norm = resolve_norm(cfg)
    actor = make_actor(
        obs_dim,
        eval_env.action_spec_unbatched,  # [1, A] for a batched (EnvPool) env
        num_cells=cfg.network.actor_hidden_sizes,
        norm=norm,
        norm_kwargs=norm_kwargs(cfg),
        device=device,
    )
    critic = make_critic(
        obs_dim,
        action_dim,
        num_cells=cfg.network.critic_hidden_sizes,
        num_qvalue_nets=cfg.network.num_qvalue_nets,
        norm=norm,
        norm_kwargs=norm_kwargs(cfg),
        device=device,
    )
    loss = CrossQLoss(actor, critic, **loss_kwargs(cfg))
    loss.make_value_estimator(gamma=cfg.algorithm.gamma)

    # -- optimisers: critic on loss_qvalue every update; actor and alpha every policy delay --
    entropy_optim = cfg.algorithm.entropy_tuning.optim
    optimizers = make_optimizers(
        loss,
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        alpha_lr=entropy_optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    target_updater = None
    if cfg.algorithm.q_head_type == "default":
        target_updater = PeriodicSoftUpdate(
            loss, tau=cfg.algorithm.tau, every=cfg.algorithm.target_update_freq
        )
    alpha_scheduler = None
    if "alpha" in optimizers:
        alpha_scheduler = make_lr_scheduler(
            optimizers["alpha"],
            entropy_optim.lr_scheduler,
            warmup_steps=entropy_optim.lr_warmup_steps,
            decay_steps=entropy_optim.lr_decay_steps
            or cfg.collector.total_frames
            // cfg.collector.frames_per_batch
            * cfg.algorithm.update_epoch
            // cfg.optim.policy_update_delay,
            min_lr=entropy_optim.min_lr,
        )
    updater = CrossQUpdater(
        loss,
        optimizers,
        policy_delay=cfg.optim.policy_update_delay,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        alpha_clip_grad_norm=entropy_optim.clip_grad,
        target_updater=target_updater,
        alpha_scheduler=alpha_scheduler,
        compile=cfg.compile,
        cudagraphs=cfg.cudagraphs,
        precision=cfg.precision,
        on_nonfinite=cfg.on_nonfinite,
    )

    # -- replay buffer ----------------------------------------------------------------------------
    replay_buffer = make_replay_buffer(**replay_buffer_kwargs(cfg, run_dir, device))

    # -- resume -------------------------------------------------------------------------------------
    frames, logger_id, state = 0, None, None
    history = EvalHistory(run_dir / "eval.csv")
    if resuming:
        state = load_latest_checkpoint(run_dir / "checkpoints", replay_buffer=replay_buffer)
        if state is not None:
            saved_dims = tuple(state.get("env_dims", (obs_dim, action_dim)))
            if saved_dims != (obs_dim, action_dim):
                raise ConfigError(
                    f"resume={cfg.resume!r}: the checkpoint was made for observation/action sizes "
                    f"{saved_dims} but env.name={cfg.env.name!r} has {(obs_dim, action_dim)}"
                )
            loss.load_state_dict(state["loss"])
            updater.load_state_dict(state["updater"])
            frames, logger_id = state["frames"], state.get("logger_id")
            print(f"resumed from {state['path']} at {frames} frames")
    history.truncate(frames)
    truncate_csv_logs(run_dir / "logs", frames)
    if frames >= cfg.collector.total_frames:
        print(f"{run_dir} already holds all {frames} frames: nothing to resume")
        return

    # -- collector ---------------------------------------------------------------------------------
    collector = make_collector(
        make_train_env,
        actor,
        backend=cfg.collector.backend,
        num_workers=cfg.collector.num_workers,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames - frames,
        init_random_frames=max(0, cfg.collector.init_random_frames - frames),
        policy_device=device,
        ray_address=cfg.ray.address,
        ray_num_cpus=cfg.ray.num_cpus,
        seed=cfg.seed + frames,  # a resumed run gets fresh, reproducible env seeds
    )
    if state is not None:
        # In-process envs continue their episodes exactly (and then the losses equal an
        # uninterrupted run's); worker-process and EnvPool envs start new episodes.
        if not restore_collector_state(collector, state.get("collector")):
            print("resume: the envs start new episodes (their state was not checkpointed)")
        set_rng_state(state["rng"])  # last: building the collector may draw random numbers
    rounds = 0

    # -- logger ----------------------------------------------------------------------------------
    logger = make_logger(
        cfg.logger.backend,
        run_dir,
        exp_name=cfg.logger.exp_name or run_dir.name,
        project_name=cfg.logger.project_name,
        wandb_mode=cfg.logger.mode,
        run_id=logger_id,
    )
    logger_id = logger_run_id(logger) or logger_id

    def checkpoint_now() -> None:
        state = {
            "loss": loss.state_dict(),
            "updater": updater.state_dict(),
            "rng": rng_state(),
            "frames": frames,
            "env_dims": (obs_dim, action_dim),
            "logger_id": logger_id,
            "collector": collector_state(collector),
        }
        save_checkpoint(
            run_dir / "checkpoints",
            frames,
            state,
            replay_buffer=replay_buffer,
            keep=cfg.checkpoint.keep,
        )

    def evaluate_now() -> None:
        eval_env.set_seed(cfg.seed + 10_000 + frames)  # the same episodes however we got here
        result = evaluate(
            eval_env, actor, episodes=cfg.eval.episodes, max_steps=cfg.eval.max_episode_steps
        )
        history.append(frames, *result)
        scalars = {"eval/return": result.return_mean, "eval/return_std": result.return_std}
        if result.success_rate is not None:
            scalars["eval/success_rate"] = result.success_rate
        log_metrics(logger, scalars, frames)

    def progress(**values) -> None:
        values["eval_return"] = f"{history.last_return:.1f}"
        if history.has_success:
            values["eval_success"] = f"{history.last_success_rate:.2f}"
        pbar.set_postfix(**values)

    # -- training loop -----------------------------------------------------------------------------
    pbar = tqdm.tqdm(
        total=cfg.collector.total_frames,
        initial=frames,
        disable=not cfg.progress_bar,
        unit="frames",
    )
    next_log = next_multiple(frames, cfg.logger.log_interval)
    next_eval = next_multiple(frames, cfg.eval.interval) if cfg.eval.interval else None
    next_checkpoint = (
        next_multiple(frames, cfg.checkpoint.interval) if cfg.checkpoint.interval else None
    )
    metrics, episode_returns, episode_successes = {}, [], []
    window_start, window_frames, window_updates = time.perf_counter(), 0, 0
    with StopOnSignal() as stop:
        try:
            for data in collector:
                frames += data.numel()
                replay_buffer.extend(data)
                done = data["next", "done"].squeeze(-1)
                episode_returns += data["next", "episode_reward"].squeeze(-1)[done].tolist()
                if ("next", "episode_success") in data.keys(True):
                    episode_successes += data["next", "episode_success"].squeeze(-1)[done].tolist()

                if frames > cfg.collector.init_random_frames and replay_buffer.ready():
                    for _ in range(cfg.algorithm.update_epoch):
                        # Keep the latest value of each metric (actor terms come every policy delay).
                        metrics.update(updater(replay_buffer.sample().to(device)).items())
                    window_updates += cfg.algorithm.update_epoch
                    rounds += 1
                    if cfg.collector.backend != "sync" and rounds % cfg.collector.sync_every == 0:
                        collector.update_policy_weights_()  # worker copies of the actor catch up
                window_frames += data.numel()
                pbar.update(data.numel())

                if frames >= next_log:
                    elapsed = time.perf_counter() - window_start
                    scalars = {
                        "perf/frames_per_s": window_frames / elapsed,
                        "perf/updates_per_s": window_updates / elapsed,
                    }
                    if metrics:
                        scalars.update({f"train/{k}": v.item() for k, v in metrics.items()})
                    if episode_returns:
                        scalars["train/return"] = float(np.mean(episode_returns))
                        episode_returns = []
                    if episode_successes:
                        scalars["train/success_rate"] = float(np.mean(episode_successes))
                        episode_successes = []
                    log_metrics(logger, scalars, frames)
                    progress(
                        fps=f"{scalars['perf/frames_per_s']:.0f}",
                        ups=f"{scalars['perf/updates_per_s']:.1f}",
                    )
                    window_start, window_frames, window_updates = time.perf_counter(), 0, 0
                    next_log = next_multiple(frames, cfg.logger.log_interval)
                if next_eval is not None and frames >= next_eval:
                    evaluate_now()
                    progress()
                    next_eval = next_multiple(frames, cfg.eval.interval)
                if next_checkpoint is not None and frames >= next_checkpoint:
                    checkpoint_now()
                    next_checkpoint = next_multiple(frames, cfg.checkpoint.interval)
                if stop.requested is not None:  # Ctrl-C or SIGTERM: save between rounds, then exit
                    print(f"\nstopped at {frames} frames: saving a checkpoint in {run_dir}")
                    checkpoint_now()
                    raise SystemExit(130)
        finally:
            pbar.close()
            collector.shutdown()

    if not history.rows or history.rows[-1]["frames"] != frames:
        evaluate_now()
    checkpoint_now()
    curve = plot_learning_curve(history, run_dir / "curve.png", title=f"CrossQ {env_label(cfg)}")
    success = f", success rate {history.last_success_rate:.2f}" if history.has_success else ""
    print(
        f"final eval return {history.last_return:.1f}{success} after {frames} frames; "
        f"run dir {run_dir}"
    )
    if curve is not None:
        print(f"learning curve: {curve}")
    if (
        logger is not None
        and hasattr(logger, "experiment")
        and hasattr(logger.experiment, "finish")
    ):
        logger.experiment.finish()
    eval_env.close()  # the collector's shutdown closed the training envs


if __name__ == "__main__":
    main()
