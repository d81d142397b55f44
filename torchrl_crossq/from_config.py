"""From the config to the components: every ``cfg -> make_*(...)`` translation, in one place.

The training script builds each stage with one call here; the library functions these
call take plain keyword arguments and never see the config (STYLE.md). Errors raised by the
library name its arguments; where a check can only run here, the error names the config key.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tensordict import NestedKey
from torchrl.collectors import BaseCollector
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger

from torchrl_crossq.allocator import keep_freed_memory
from torchrl_crossq.checkpoint import EnvMismatchError, RunCheckpoints
from torchrl_crossq.collectors import PolicyWeightSync, make_collector
from torchrl_crossq.config import LOSS_AGG_FUNCS, ConfigError, resolve_norm
from torchrl_crossq.data import WindowReplayBuffer, make_replay_buffer
from torchrl_crossq.envs import BatchedEvaluation, EvalResult, env_dims, make_env
from torchrl_crossq.logging import make_logger
from torchrl_crossq.modules import make_actor, make_critic
from torchrl_crossq.objectives import (
    CrossQLoss,
    CrossQUpdater,
    PeriodicSoftUpdate,
    make_optimizers,
)
from torchrl_crossq.objectives.update import make_lr_scheduler
from torchrl_crossq.video import VideoUnavailable, log_video, record_episode

# The run's random streams besides torch's and numpy's global generators (seeded with the
# run's seed): each draws its seeds from (run seed, stream, frames), see run_seed.
TRAIN_ENVS, EVAL_EPISODES, TRAIN_TASKS, EVAL_TASKS = range(4)


def run_seed(seed: int, stream: int, frames: int = 0) -> int:
    """The first seed of one of a run's streams: ``stream`` (``TRAIN_ENVS``, ``EVAL_EPISODES``,
    ``TRAIN_TASKS`` or ``EVAL_TASKS``) of the run seeded ``seed``, from ``frames`` on.

    Hashed by numpy's ``SeedSequence``, not offset: the streams of runs of consecutive seeds
    share no seed (with ``seed + frames + i``, seeds s and s + 1 shared 9 of 10 evaluation
    episodes and all but one env copy), and a stream depends only on the run's seed and the
    frame count, so a resumed run draws what the uninterrupted one does. The result is below
    2**30: the copies and workers of a stream count up from it, and EnvPool takes 32-bit seeds.

    Examples:
        >>> run_seed(0, EVAL_EPISODES, 5000) == run_seed(0, EVAL_EPISODES, 5000)
        True
        >>> run_seed(1, EVAL_EPISODES) == run_seed(0, EVAL_EPISODES) + 1
        False
    """
    return int(np.random.SeedSequence([seed, stream, frames]).generate_state(1)[0] >> 2)


def setup_process_from_config(cfg: DictConfig) -> torch.device:
    """Seeds the global generators, sets the threads and the allocator; returns the device."""
    keep_freed_memory()  # no page faults on the update's re-allocated activations
    device = resolve_device(cfg.device)
    if cfg.threads is not None:  # e.g. 1 when other processes share the cores
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    return device


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use one of: auto, cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s); use "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}, cuda, auto or cpu"
        )
    return resolved


def make_envs_from_config(cfg: DictConfig) -> tuple[Callable[..., EnvBase], EnvBase]:
    """The training envs' factory (built where they run, seeded by the collector) and one env
    of the task, for its specs (evaluation steps plain gymnasium envs: see
    :func:`make_evaluator_from_config`)."""
    env = cfg.env
    env_kwargs = {
        "task": env.task,
        "backend": env.backend,
        "max_episode_steps": env.max_episode_steps,
    }
    make_train_env = functools.partial(
        make_env,
        env.name,
        num_envs=env.num_envs,
        vectorization=env.vectorization,
        # Not the collector's seed (which moves on at a resume): a resumed Meta-World run
        # keeps its goals.
        task_seed=stream_seed(cfg, TRAIN_TASKS),
        **env_kwargs,
    )
    eval_env = make_env(env.name, seed=stream_seed(cfg, EVAL_EPISODES), **env_kwargs)
    return make_train_env, eval_env


def brn_warmup_steps(cfg: DictConfig) -> int:
    """``network.brn_warmup_steps``, or its deprecated alias ``network.warmup_steps`` when set."""
    alias = cfg.network.warmup_steps
    if alias is None:
        return cfg.network.brn_warmup_steps
    warnings.warn(
        f"network.warmup_steps is deprecated: it is BatchRenorm's warmup, now named "
        f"network.brn_warmup_steps; using network.warmup_steps={alias}",
        FutureWarning,
        stacklevel=2,
    )
    return alias


def _norm_kwargs(cfg: DictConfig) -> dict:
    net = cfg.network
    return {
        "momentum": net.batch_norm_momentum,
        "eps": net.batch_norm_eps,
        "rmax": net.rmax,
        "dmax": net.dmax,
        "warmup_steps": brn_warmup_steps(cfg),
    }


def make_actor_from_config(cfg: DictConfig, env: EnvBase, device: torch.device | None = None):
    """The actor for ``env``'s observations and actions (in eval mode, as make_actor returns it)."""
    return make_actor(
        env_dims(env)[0],
        env.action_spec_unbatched,  # [1, A] for a batched (EnvPool) env
        num_cells=cfg.network.actor_hidden_sizes,
        norm=resolve_norm(cfg),
        norm_kwargs=_norm_kwargs(cfg),
        device=device,
    )


def make_actor_critic_from_config(
    cfg: DictConfig, env: EnvBase, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The actor and the critic ensemble for ``env``'s observations and actions."""
    net = cfg.network
    norm, norm_kwargs = resolve_norm(cfg), _norm_kwargs(cfg)
    obs_dim, action_dim = env_dims(env)
    actor = make_actor_from_config(cfg, env, device)
    critic = make_critic(
        obs_dim,
        action_dim,
        num_cells=net.critic_hidden_sizes,
        num_qvalue_nets=net.num_qvalue_nets,
        norm=norm,
        norm_kwargs=norm_kwargs,
        device=device,
    )
    return actor, critic


def make_loss_from_config(
    cfg: DictConfig, actor: torch.nn.Module, critic: torch.nn.Module
) -> CrossQLoss:
    """The :class:`~torchrl_crossq.CrossQLoss` of the ``algorithm`` block."""
    algo = cfg.algorithm
    target_entropy = algo.entropy_tuning.target_entropy
    loss = CrossQLoss(
        actor,
        critic,
        q_head_type=algo.q_head_type,
        agg_q=algo.agg_q,
        bootstrap_type=algo.bootstrap_type,
        alpha_type=algo.entropy_tuning.alpha_type,
        initial_alpha=algo.entropy_tuning.initial_alpha,
        target_entropy=target_entropy if target_entropy == "auto" else float(target_entropy),
        reduction=LOSS_AGG_FUNCS[algo.loss_agg_func],
    )
    loss.make_value_estimator(gamma=algo.gamma)
    return loss


def make_updater_from_config(cfg: DictConfig, loss: CrossQLoss) -> CrossQUpdater:
    """Optimisers, target updater, temperature schedule and the update that steps them.

    The critic is stepped on ``loss_qvalue`` every update; the actor on ``loss_actor`` and the
    temperature on ``loss_alpha`` every ``optim.policy_update_delay`` updates.
    """
    algo, entropy_optim = cfg.algorithm, cfg.algorithm.entropy_tuning.optim
    optimizers = make_optimizers(
        loss,
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        alpha_lr=entropy_optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    target_updater = None
    if algo.q_head_type == "default":  # SAC's target critic
        target_updater = PeriodicSoftUpdate(loss, tau=algo.tau, every=algo.target_update_freq)
    alpha_scheduler = None
    if "alpha" in optimizers:
        # The temperature steps once per policy delay: the whole run's steps by default. The
        # script updates after each batch that ends past the random frames (the last batch
        # may end past total_frames).
        col = cfg.collector
        rounds = max(0, -(-col.total_frames // col.frames_per_batch))
        rounds -= col.init_random_frames // col.frames_per_batch
        run_steps = max(0, rounds) * algo.update_epoch // cfg.optim.policy_update_delay
        alpha_scheduler = make_lr_scheduler(
            optimizers["alpha"],
            entropy_optim.lr_scheduler,
            warmup_steps=entropy_optim.lr_warmup_steps,
            decay_steps=entropy_optim.lr_decay_steps or run_steps,
            min_lr=entropy_optim.min_lr,
        )
    try:
        return CrossQUpdater(
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
    except ValueError as err:  # compile and cudagraphs: the updater's arguments are the keys
        raise ConfigError(str(err)) from None


def make_replay_buffer_from_config(
    cfg: DictConfig, run_dir: Path, device: torch.device, *, keys: Sequence[NestedKey] | None = None
) -> WindowReplayBuffer:
    """The replay buffer of ``algorithm.replay_buffer``; a disk one lives in the run directory.

    With ``scratch_dir`` set, in a folder of this run's inside it (named after the run
    directory), so runs given the same ``scratch_dir`` (seeds, a sweep) do not share one
    memmap; a resumed run finds its own again. ``keys``: the entries stored (the loss's
    ``in_keys``); ``None`` stores whole batches.
    """
    rb = cfg.algorithm.replay_buffer
    scratch_dir = rb.scratch_dir  # validate() allows one only with storage=disk
    if scratch_dir is not None:
        run_path = str(Path(run_dir).resolve())
        digest = hashlib.sha1(run_path.encode()).hexdigest()[:10]
        scratch_dir = str(Path(scratch_dir) / f"{Path(run_path).name}-{digest}")
    elif rb.storage == "disk":
        scratch_dir = str(run_dir / "replay")
    if rb.pin_memory and not (rb.storage == "disk" and device.type == "cuda"):
        raise ConfigError(
            f"algorithm.replay_buffer.pin_memory=True needs storage=disk and a CUDA device "
            f"(batches copied from host memory); got storage={rb.storage!r}, device={device}: "
            "use pin_memory=false"
        )
    return make_replay_buffer(
        rb.size,
        batch_size=cfg.optim.batch_size,
        storage=rb.storage,
        scratch_dir=scratch_dir,
        sample_window_size=rb.sample_window_size,
        window_unit=rb.window_unit,
        enable_cache=rb.enable_cache,
        cache_size=rb.cache_size,
        min_buffer_size=rb.min_buffer_size,
        prefetch=rb.prefetch,
        pin_memory=rb.pin_memory,
        device=device if device.type == "cuda" else None,
        seed=cfg.seed,
        keys=keys,
    )


def start_from_config(cfg: DictConfig, checkpoints: RunCheckpoints, *, resuming: bool) -> int:
    """The frame count the run starts from (see :meth:`RunCheckpoints.start`)."""
    try:
        return checkpoints.start(resume=resuming)
    except EnvMismatchError as err:
        raise ConfigError(
            f"resume={cfg.resume!r}: the checkpoint was made for observation/action sizes "
            f"{err.saved} but env.name={cfg.env.name!r} has {err.current}"
        ) from None


def make_collector_from_config(
    cfg: DictConfig,
    make_train_env: Callable[..., EnvBase],
    actor: torch.nn.Module,
    device: torch.device,
    *,
    frames: int,
) -> tuple[BaseCollector, PolicyWeightSync]:
    """The collector of the frames left after ``frames``, and its policy-weight sync."""
    col = cfg.collector
    collector = make_collector(
        make_train_env,
        actor,
        backend=col.backend,
        num_workers=col.num_workers,
        frames_per_batch=col.frames_per_batch,
        total_frames=col.total_frames - frames,
        init_random_frames=max(0, col.init_random_frames - frames),
        policy_device=device,
        ray_address=cfg.ray.address,
        ray_num_cpus=cfg.ray.num_cpus,
        seed=stream_seed(cfg, TRAIN_ENVS, frames),  # a resumed run's envs draw new seeds
        reuse_batch=True,  # the loop stores each batch before it collects the next
        direct=col.direct,
    )
    return collector, PolicyWeightSync(collector, backend=col.backend, every=col.sync_every)


def make_logger_from_config(
    cfg: DictConfig, run_dir: Path, *, run_id: str | None = None, frames: int = 0
) -> Logger | None:
    """The logger of the ``logger`` block; ``run_id`` continues a wandb run, ``frames`` are
    those a resumed run starts from."""
    return make_logger(
        cfg.logger.backend,
        run_dir,
        exp_name=cfg.logger.exp_name or run_dir.name,
        project_name=cfg.logger.project_name,
        wandb_mode=cfg.logger.mode,
        run_id=run_id,
        resumed_at=frames,
    )


# seed_scheme=offset, the seeds of runs made before run_seed (config.yaml without the key).
_OFFSET_SEEDS = {
    TRAIN_ENVS: lambda seed, frames: seed + frames,
    EVAL_EPISODES: lambda seed, frames: seed + 10_000 + frames,
    TRAIN_TASKS: lambda seed, frames: seed,
    EVAL_TASKS: lambda seed, frames: seed + 10_000,
}


def stream_seed(cfg: DictConfig, stream: int, frames: int = 0) -> int:
    """:func:`run_seed` of the run's ``seed``, or the offset seed of a run made before it
    (``seed_scheme: offset``; a config.yaml without the key), so that such a run resumes and
    re-evaluates with its own seeds."""
    if cfg.get("seed_scheme", "offset") == "offset":
        return _OFFSET_SEEDS[stream](cfg.seed, frames)
    return run_seed(cfg.seed, stream, frames)


def eval_seed(cfg: DictConfig, frames: int) -> int:
    """The first episode's seed of the run's evaluation at ``frames`` (episode i: that + i)."""
    return stream_seed(cfg, EVAL_EPISODES, frames)


class RunEvaluator:
    """``evaluator(frames, seed=None)``: the ``eval`` block's deterministic evaluation.

    The ``eval.episodes`` episodes are stepped together (:class:`BatchedEvaluation`) and
    seeded by the frame count (:func:`eval_seed`), so a frame count gets the same episodes
    however the run got there. With ``eval.video`` (and a ``run_dir``), the first
    evaluation past each multiple of ``eval.video_interval`` after ``frames`` also renders one
    episode to ``run_dir/videos/eval_<frames>.mp4`` and hands it to ``logger``; when videos
    cannot be made here, one warning line says why and training goes on without them.
    Built by :func:`make_evaluator_from_config`.
    """

    def __init__(
        self,
        cfg: DictConfig,
        actor: torch.nn.Module,
        *,
        run_dir: Path | None,
        logger: Logger | None,
        frames: int,
        episodes: int | None,
    ) -> None:
        self.cfg, self.actor, self.run_dir, self.logger = cfg, actor, run_dir, logger
        self.evaluation = BatchedEvaluation(
            cfg.env.name,
            task=cfg.env.task,
            episodes=cfg.eval.episodes if episodes is None else episodes,
            max_steps=cfg.eval.max_episode_steps,
            max_episode_steps=cfg.env.max_episode_steps,
            task_seed=stream_seed(cfg, EVAL_TASKS),
        )
        self.video_interval = cfg.eval.video_interval  # read with videos off too: every key is read
        if not (cfg.eval.video and run_dir is not None):
            self.video_interval = 0
        # The video_interval period of the last video; None: no (more) videos.
        self.last_video = frames // self.video_interval if self.video_interval else None

    def __call__(self, frames: int, seed: int | None = None) -> EvalResult:
        seed = eval_seed(self.cfg, frames) if seed is None else seed
        result = self.evaluation(self.actor, seed=seed)
        if self.last_video is not None and frames // self.video_interval != self.last_video:
            self.last_video = frames // self.video_interval
            try:
                path = record_video_from_config(
                    self.cfg, self.actor, self.run_dir / "videos" / f"eval_{frames}.mp4", seed=seed
                )
                log_video(self.logger, path, step=frames)
            except VideoUnavailable as err:
                print(f"warning: eval.video: {err}; training goes on without videos")
                self.last_video = None
        return result

    def close(self) -> None:
        self.evaluation.close()


def make_evaluator_from_config(
    cfg: DictConfig,
    actor: torch.nn.Module,
    *,
    run_dir: Path | None = None,
    logger: Logger | None = None,
    frames: int = 0,
    episodes: int | None = None,
) -> RunEvaluator:
    """The run's :class:`RunEvaluator`; ``frames`` is where the run starts (videos count from it)."""
    return RunEvaluator(
        cfg, actor, run_dir=run_dir, logger=logger, frames=frames, episodes=episodes
    )


def record_video_from_config(
    cfg: DictConfig, actor: torch.nn.Module, path: Path, *, seed: int
) -> Path:
    """One deterministic episode of the run's task to ``path`` (MP4), as evaluation plays it.

    Raises :class:`~torchrl_crossq.video.VideoUnavailable` when no video can be made here.
    """
    return record_episode(
        actor,
        path,
        env_name=cfg.env.name,
        task=cfg.env.task,
        max_episode_steps=cfg.env.max_episode_steps,
        max_steps=cfg.eval.max_episode_steps,
        seed=seed,
        task_seed=stream_seed(cfg, EVAL_TASKS),  # the first evaluation episode's
    )
