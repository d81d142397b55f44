"""CrossQ (Bhatt et al., ICLR 2024) training script, in TorchRL's SOTA style.

    python sota_implementations/crossq.py                      # HalfCheetah-v5, paper settings
    python sota_implementations/crossq.py experiment=quick     # Pendulum-v1, a few minutes on CPU
    python sota_implementations/crossq.py experiment=sac       # standard SAC, for comparison
    python sota_implementations/crossq.py resume=runs/<run>    # continue a run

The configuration and the meaning of every key: configs/crossq.yaml and torchrl_crossq/config.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from torchrl_crossq import NonFiniteLossError
from torchrl_crossq.checkpoint import (
    CheckpointError,
    RunCheckpoints,
    StopOnSignal,
    newest_checkpoint_frames,
)
from torchrl_crossq.config import (
    ConfigError,
    env_label,
    prepare_run,
    register_configs,
    resume_argument,
)
from torchrl_crossq.envs import MissingExtraError, UnknownEnvError, UnsupportedEnvError, env_dims
from torchrl_crossq.from_config import (
    make_actor_critic_from_config,
    make_collector_from_config,
    make_envs_from_config,
    make_evaluator_from_config,
    make_logger_from_config,
    make_loss_from_config,
    make_replay_buffer_from_config,
    make_updater_from_config,
    setup_process_from_config,
    start_from_config,
)
from torchrl_crossq.logging import (
    EvalHistory,
    ProgressBar,
    TrainingWindow,
    close_logger,
    log_evaluation,
    log_metrics,
    plot_learning_curve,
    remaining_time,
)

register_configs()


class Every:
    """Due at the first multiple of ``interval`` past the last time it was due (never for 0).

    Multiples of the interval, not counts since the start: a resumed run keeps the schedule.
    """

    def __init__(self, interval: int, frames: int) -> None:
        self.interval = interval
        self.next = self._after(frames)

    def _after(self, frames: int) -> int | None:
        return (frames // self.interval + 1) * self.interval if self.interval else None

    def due(self, frames: int) -> bool:
        if self.next is None or frames < self.next:
            return False
        self.next = self._after(frames)
        return True


@hydra.main(config_path="../configs", config_name="crossq", version_base=None)
def main(cfg: DictConfig) -> None:
    # What was typed, not the composed config: on resume only those keys may change.
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    sweeping = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if sweeping and cfg.run_dir is None and not cfg.resume:  # a sweep's jobs, in its directory
        cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        train(cfg, overrides=overrides)
    except (
        CheckpointError,
        ConfigError,
        UnknownEnvError,
        UnsupportedEnvError,
        MissingExtraError,
    ) as err:
        raise SystemExit(f"error: {err}") from None
    except NonFiniteLossError as err:
        raise SystemExit(f"error: {err} {after_nonfinite(cfg.resume or cfg.run_dir)}") from None


def after_nonfinite(run_dir: str | None) -> str:
    """Where a run stopped by a non-finite loss can go on from."""
    if run_dir is None:
        return ""
    frames = newest_checkpoint_frames(Path(run_dir) / "checkpoints")
    if frames:
        return (
            f"The last checkpoint ({frames} frames) was written before this update: continue "
            f"from it with {resume_argument(run_dir)} (with e.g. on_nonfinite=skip)."
        )
    return (
        f"No checkpoint was written yet: start the run over with {resume_argument(run_dir)} "
        "and the keys to change."
    )


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """One training run; ``overrides`` are the command line's keys (hydra override strings)."""
    cfg, run_dir, resuming = prepare_run(cfg, overrides=overrides)
    device = setup_process_from_config(cfg)
    make_train_env, eval_env = make_envs_from_config(cfg)
    actor, critic = make_actor_critic_from_config(cfg, eval_env, device)
    loss = make_loss_from_config(cfg, actor, critic)
    updater = make_updater_from_config(cfg, loss)
    replay_buffer = make_replay_buffer_from_config(cfg, run_dir, device, keys=loss.in_keys)
    checkpoints = RunCheckpoints(
        run_dir,
        loss=loss,
        updater=updater,
        replay_buffer=replay_buffer,
        env_dims=env_dims(eval_env),
        keep=cfg.checkpoint.keep,
    )
    frames = start_from_config(cfg, checkpoints, resuming=resuming)
    history = EvalHistory(run_dir / "eval.csv")
    # A run killed during its final evaluation holds all its frames but not that evaluation.
    finished = frames >= cfg.collector.total_frames
    if finished and history.rows and history.rows[-1]["frames"] == frames:
        print(f"{run_dir} already holds all {frames} frames: nothing to resume")
        return
    if not finished:
        collector, weight_sync = make_collector_from_config(
            cfg, make_train_env, actor, device, frames=frames
        )
        checkpoints.restore_collector(collector)
    logger = make_logger_from_config(cfg, run_dir, run_id=checkpoints.logger_id, frames=frames)
    evaluate_at = make_evaluator_from_config(
        cfg, actor, run_dir=run_dir, logger=logger, frames=frames
    )

    if finished:
        print(f"{run_dir} holds all {frames} frames but not their final evaluation: evaluating")
        log_evaluation(logger, history, frames, evaluate_at(frames))
    else:
        # Read once: an omegaconf lookup costs tens of microseconds, the loop runs once per frame.
        random_frames, update_epoch = cfg.collector.init_random_frames, cfg.algorithm.update_epoch
        log_interval, total_frames = cfg.logger.log_interval, cfg.collector.total_frames
        progress = ProgressBar(total_frames, initial=frames, enabled=cfg.progress_bar)
        window = TrainingWindow()
        log_due = Every(log_interval, frames)
        eval_due = Every(cfg.eval.interval, frames)
        checkpoint_due = Every(cfg.checkpoint.interval, frames)
        # The estimate comes from the first log window spent learning; with compile, the one after
        # (the first holds the compilation and would overstate the time left several times over).
        learning_from = max(frames, random_frames) + (log_interval if cfg.compile else 0)
        estimate_due = True
        with StopOnSignal() as stop:
            try:
                for data in collector:
                    frames += data.numel()
                    replay_buffer.extend(data)
                    window.add_batch(data)
                    if frames > random_frames and replay_buffer.ready():
                        for _ in range(update_epoch):
                            window.add_update(updater(replay_buffer.sample().to(device)))
                        weight_sync.after_updates()
                    progress.update(data.numel())

                    if log_due.due(frames):
                        scalars = window.scalars()
                        log_metrics(logger, scalars, frames)
                        progress.show(history, scalars)
                        if estimate_due and frames - log_interval >= learning_from:
                            estimate_due = False  # once, from the first window spent learning
                            progress.write(
                                remaining_time(frames, total_frames, scalars["perf/frames_per_s"])
                            )
                    if eval_due.due(frames):
                        log_evaluation(logger, history, frames, evaluate_at(frames))
                        progress.show(history)
                    if checkpoint_due.due(frames):
                        checkpoints.save(frames, collector=collector, logger=logger)
                    if (
                        stop.requested is not None
                    ):  # Ctrl-C or SIGTERM: save between rounds, then exit
                        print(f"\nstopped at {frames} frames: saving a checkpoint in {run_dir}")
                        checkpoints.save(frames, collector=collector, logger=logger)
                        raise SystemExit(130)
                progress.close()
                if not history.rows or history.rows[-1]["frames"] != frames:
                    log_evaluation(logger, history, frames, evaluate_at(frames))
                # Before the envs close: a run trained further (resume= with more total_frames)
                # continues their episodes, as from any other checkpoint.
                checkpoints.save(frames, collector=collector, logger=logger)
            finally:
                progress.close()
                collector.shutdown()

    curve = plot_learning_curve(history, run_dir / "curve.png", title=f"CrossQ {env_label(cfg)}")
    success = f", success rate {history.last_success_rate:.2f}" if history.has_success else ""
    print(
        f"final eval return {history.last_return:.1f}{success} after {frames} frames; "
        f"run dir {run_dir}"
    )
    if curve is not None:
        print(f"learning curve: {curve}")
    close_logger(logger)
    evaluate_at.close()
    eval_env.close()  # the collector's shutdown closed the training envs


if __name__ == "__main__":
    main()
