"""The training configuration: a hydra structured config, validated once at start.

Groups follow TorchRL's SOTA CrossQ config (``env``, ``collector``, ``optim``,
``network``, ``logger``), and the ``algorithm`` block is the embodied-RL block
accepted verbatim. Where they could overlap, ``algorithm`` wins and the key
exists only there: the discount is ``algorithm.gamma``, the initial temperature
``algorithm.entropy_tuning.initial_alpha`` and the replay buffer
``algorithm.replay_buffer`` (TorchRL's ``optim.gamma``, ``optim.alpha_init`` and
``replay_buffer`` do not exist here, so a stale key is an error, not a silent no-op; nor do
its ``env.library`` and ``env.categorical_action_encoding``: ``env.backend`` picks the simulator
and CrossQ's actions are continuous). Every key is read by the script or pinned to the one value
the code implements (``algorithm.group_size``, ``adv_type``, ``loss_type``); test/test_config.py
checks it by recording what the script reads.
"""

from __future__ import annotations

import datetime
import difflib
import importlib.util
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from torchrl_crossq.checkpoint import newest_checkpoint_frames
from torchrl_crossq.collectors import COLLECTOR_BACKENDS
from torchrl_crossq.data.replay import STORAGE_KINDS
from torchrl_crossq.data.sampler import WINDOW_UNITS
from torchrl_crossq.envs import ENV_BACKENDS, VECTORIZATIONS
from torchrl_crossq.logging import LOGGER_BACKENDS, write_text_atomically
from torchrl_crossq.modules.networks import NORMS
from torchrl_crossq.objectives.crossq import AGG_Q, BOOTSTRAP_TYPES, Q_HEAD_TYPES
from torchrl_crossq.objectives.entropy import ALPHA_TYPES
from torchrl_crossq.objectives.update import LR_SCHEDULERS, NONFINITE_POLICIES, PRECISIONS


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class EnvConfig:
    name: str = "HalfCheetah-v5"  # a gymnasium id, or Meta-World/MT1 (with env.task)
    task: str | None = None  # Meta-World task (reach-v3, push-v3, ...); only for Meta-World/MT1
    backend: str = "gymnasium"  # gymnasium (GymEnv + Parallel/SerialEnv) | envpool (C++ threads)
    num_envs: int = 1  # paper: 1
    vectorization: str = "parallel"  # parallel (ParallelEnv, worker processes) | serial (SerialEnv)
    max_episode_steps: int | None = None  # None: the env's own limit


@dataclass
class CollectorConfig:
    total_frames: int = 1_000_000
    init_random_frames: int = 5_000  # paper: 5000 uniform random steps before learning
    frames_per_batch: int = 1  # paper: one env step per update (UTD 1)
    backend: str = "sync"  # sync (one process) | multi_sync | multi_async (worker processes) | ray
    num_workers: int = 2  # worker processes / Ray collectors (multi_* and ray backends)
    sync_every: int = 1  # collection rounds between policy-weight syncs to the workers
    # sync backend, one gymnasium env: step it directly (GymCollector: TorchRL's Collector's
    # batches and random draws, without its env machinery); false: TorchRL's Collector
    direct: bool = True


@dataclass
class RayConfig:
    address: str | None = (
        None  # join this Ray cluster (e.g. "auto" or "ray://host:10001"); None: local
    )
    num_cpus: int | None = None  # CPUs of a local Ray instance (None: all)


@dataclass
class OptimConfig:
    lr: float = 1.0e-3  # paper: 1e-3 for actor and critic
    beta1: float = 0.5  # paper: Adam betas (0.5, 0.999)
    beta2: float = 0.999
    batch_size: int = 256  # paper: 256
    policy_update_delay: int = 3  # paper: actor and alpha every 3rd critic update
    clip_grad_norm: float | None = None
    weight_decay: float = 0.0


@dataclass
class NetworkConfig:
    norm: str = "auto"  # auto (brn for q_head_type crossq, none for default) | brn | none
    critic_hidden_sizes: list[int] | None = None  # None: 2048x2 with brn (paper), 256x2 without
    actor_hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    num_qvalue_nets: int = 2
    batch_norm_momentum: float = 0.01  # paper: 0.01 (0.99 in Flax's convention)
    batch_norm_eps: float = 1.0e-3
    rmax: float = 3.0
    dmax: float = 5.0
    brn_warmup_steps: int = 100_000  # paper: 100k training forwards of plain batch norm
    warmup_steps: int | None = None  # deprecated alias of brn_warmup_steps (a warning says so)


@dataclass
class EntropyOptimConfig:
    lr: float | None = None  # None: optim.lr
    lr_scheduler: str = "torch_constant"  # torch_constant | cosine | linear_warmup
    lr_warmup_steps: int = 0  # linear_warmup: alpha-optimiser steps to reach lr
    lr_decay_steps: int = 0  # cosine: alpha-optimiser steps of the decay (0: whole run)
    min_lr: float = 0.0  # cosine: final lr, kept after the decay
    clip_grad: float | None = None


@dataclass
class EntropyTuningConfig:
    alpha_type: str = "exp"  # exp | softplus | fixed_alpha
    initial_alpha: float = 1.0  # paper: 1.0
    target_entropy: Any = "auto"  # a number, or auto (-action_dim, paper)
    optim: EntropyOptimConfig = field(default_factory=EntropyOptimConfig)


@dataclass
class ReplayBufferConfig:
    size: int = 1_000_000  # capacity in transitions (paper: 1M)
    storage: str = "memory"  # memory | disk (a memmap in scratch_dir)
    scratch_dir: str | None = None  # disk only: a folder per run in it (None: <run_dir>/replay)
    enable_cache: bool = False  # disk storage only: the newest cache_size trajectories in RAM
    cache_size: int = 0  # trajectories kept in RAM (with enable_cache only)
    sample_window_size: int = 0  # sample from the newest N units only (<= 0: all)
    window_unit: str = "trajectory"  # trajectory | episode | transition
    min_buffer_size: int = 0  # trajectories needed before updates start
    prefetch: int = 0  # batches prefetched by a thread (0 is fastest on 2 cores)
    pin_memory: bool = False  # disk storage on CUDA only: asynchronous copies of the batches


@dataclass
class AlgorithmConfig:
    update_epoch: int = 1  # gradient updates per collected batch
    group_size: int = 1
    agg_q: str = "min"  # min | mean
    adv_type: str = "embodied_sac"
    loss_type: str = "embodied_sac"
    loss_agg_func: str = "token-mean"  # token-mean (mean reduction) | sum
    q_head_type: str = "crossq"  # crossq | default (SAC with target networks)
    bootstrap_type: str = "standard"  # standard | always
    gamma: float = 0.99
    tau: float = 0.005  # polyak coefficient of the SAC head's target critic
    target_update_freq: int = 1  # updates between target updates (SAC head)
    entropy_tuning: EntropyTuningConfig = field(default_factory=EntropyTuningConfig)
    replay_buffer: ReplayBufferConfig = field(default_factory=ReplayBufferConfig)


@dataclass
class EvalConfig:
    interval: int = 10_000  # frames between evaluations (0: only at the end)
    episodes: int = 10  # stepped together, one actor call per step for all
    max_episode_steps: int = 1_000
    video: bool = False  # render one deterministic eval episode to run_dir/videos/ (MP4)
    video_interval: int = 100_000  # frames between videos (at the first eval past each multiple)


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb (offline) | csv | tensorboard | none
    project_name: str = "torchrl_crossq"
    exp_name: str | None = None  # None: the run directory's name
    mode: str = "offline"  # wandb mode: offline | online | disabled
    log_interval: int = 1_000  # frames between training-metric logs


@dataclass
class CheckpointConfig:
    interval: int = 50_000  # frames between checkpoints (0: only at the end)
    keep: int = 2  # checkpoints kept on disk


@dataclass
class Config:
    seed: int = 0
    # How the env, evaluation and Meta-World seeds derive from seed: streams (hashed per
    # stream, from_config.run_seed) | offset (seed + frames, seed + 10000 + frames: runs made
    # before streams, which keep it on resume)
    seed_scheme: str = "streams"
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (fast with AVX512-BF16 / AMX or CUDA sm80+ only)
    compile: bool = False
    cudagraphs: bool = False
    run_dir: str | None = None  # None: runs/<date>-<time>-<env>-seed<seed>
    resume: str | None = None  # a run directory to continue
    progress_bar: bool = True
    threads: int | None = None  # torch intra-op threads of the learner (None: torch's default)
    on_nonfinite: str = (
        "raise"  # raise (stop, keep the last good checkpoint) | skip (skip the step)
    )
    env: EnvConfig = field(default_factory=EnvConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def register_configs() -> None:
    """Registers the schema as ``crossq_schema`` in hydra's ConfigStore, and the
    ``crossq_sweep_subdir`` resolver of ``configs/crossq.yaml``'s multirun directories."""
    ConfigStore.instance().store(name="crossq_schema", node=Config)
    OmegaConf.register_new_resolver("crossq_sweep_subdir", sweep_subdir, replace=True)


def resume_argument(run_dir: str | Path) -> str:
    """The command-line argument that resumes ``run_dir``, quoted for hydra and the shell when
    the path holds characters hydra's grammar reads (a sweep job's ``key=value,...`` name)."""
    path = str(run_dir)
    if re.fullmatch(r"[\w./~+:@%-]+", path):
        return f"resume={path}"
    return f"\"resume='{path}'\""


def sweep_subdir(job_num: int, override_dirname: str) -> str:
    """A multirun job's directory name: its overrides joined (hydra's ``override_dirname``),
    or ``job<num>`` when they would pass a file name's 255 bytes (each job's config.yaml holds
    its whole config either way) or would hold a ``/`` (a path or an env id as a value: the
    job would land folders deep)."""
    name = str(override_dirname)
    if 0 < len(name.encode()) <= 200 and "/" not in name:
        return name
    return f"job{job_num}"


# The loss's reduction for each algorithm.loss_agg_func (the embodied block's names).
LOSS_AGG_FUNCS = {"token-mean": "mean", "sum": "sum"}

# Enumerated keys and the values each accepts: the library's lists, plus the config's own.
CHOICES: dict[str, tuple] = {
    "device": ("auto", "cpu", "cuda"),
    "seed_scheme": ("streams", "offset"),
    "precision": PRECISIONS,
    "on_nonfinite": tuple(p for p in NONFINITE_POLICIES if p is not None),
    "env.backend": ENV_BACKENDS,
    "env.vectorization": VECTORIZATIONS,
    "collector.backend": COLLECTOR_BACKENDS,
    "network.norm": ("auto", *(norm or "none" for norm in NORMS)),
    "algorithm.group_size": (1,),
    "algorithm.agg_q": AGG_Q,
    "algorithm.adv_type": ("embodied_sac",),
    "algorithm.loss_type": ("embodied_sac",),
    "algorithm.loss_agg_func": tuple(LOSS_AGG_FUNCS),
    "algorithm.q_head_type": Q_HEAD_TYPES,
    "algorithm.bootstrap_type": BOOTSTRAP_TYPES,
    "algorithm.entropy_tuning.alpha_type": ALPHA_TYPES,
    "algorithm.entropy_tuning.optim.lr_scheduler": LR_SCHEDULERS,
    "algorithm.replay_buffer.storage": STORAGE_KINDS,
    "algorithm.replay_buffer.window_unit": WINDOW_UNITS,
    "logger.backend": LOGGER_BACKENDS,
    "logger.mode": ("offline", "online", "disabled"),
}

POSITIVE = (
    "collector.total_frames",
    "collector.frames_per_batch",
    "collector.num_workers",
    "collector.sync_every",
    "env.num_envs",
    "optim.lr",
    "optim.batch_size",
    "optim.policy_update_delay",
    "network.num_qvalue_nets",
    "network.batch_norm_momentum",
    "network.batch_norm_eps",
    "algorithm.update_epoch",
    "algorithm.target_update_freq",
    "algorithm.entropy_tuning.initial_alpha",
    "algorithm.replay_buffer.size",
    "eval.episodes",
    "eval.max_episode_steps",
    "logger.log_interval",
    "checkpoint.keep",
)
NON_NEGATIVE = (
    "collector.init_random_frames",
    "optim.weight_decay",
    "network.brn_warmup_steps",
    "network.dmax",
    "algorithm.replay_buffer.cache_size",
    "algorithm.replay_buffer.min_buffer_size",
    "algorithm.replay_buffer.prefetch",
    "algorithm.entropy_tuning.optim.lr_warmup_steps",
    "algorithm.entropy_tuning.optim.lr_decay_steps",
    "algorithm.entropy_tuning.optim.min_lr",
    "eval.interval",
    "eval.video_interval",
    "checkpoint.interval",
)
UNIT_INTERVAL = ("algorithm.gamma",)
# Adam refuses a beta of 1 (the moment estimate would never move).
HALF_OPEN_UNIT_INTERVAL = ("optim.beta1", "optim.beta2")


# numpy and gymnasium take seeds below 2**32, torch's and the replay sampler's are the run's
# (the env and evaluation streams hash it, see from_config.run_seed); seed_scheme=offset adds
# 10,000 + frames to it.
MAX_SEED = 2**32
MAX_OFFSET_SEED = 2**32 - 2**20


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def resolve_norm(cfg: DictConfig) -> str | None:
    """``network.norm`` with ``auto`` resolved: BRN for the CrossQ head, none for the SAC head."""
    norm = cfg.network.norm
    if norm == "auto":
        norm = "brn" if cfg.algorithm.q_head_type == "crossq" else "none"
    return None if norm == "none" else norm


def validate(cfg: DictConfig) -> DictConfig:
    """Checks every value once, before any work; raises :class:`ConfigError` naming the key.

    Examples:
        >>> cfg = OmegaConf.structured(Config)
        >>> _ = validate(cfg)
        >>> cfg.algorithm.agg_q = "max"
        >>> validate(cfg)
        Traceback (most recent call last):
        ...
        torchrl_crossq.config.ConfigError: algorithm.agg_q='max' is not supported; use one of: min, mean
    """
    _check_known_keys(cfg)
    for key, accepted in CHOICES.items():
        value = _get(cfg, key)
        if key == "device" and isinstance(value, str) and value.startswith("cuda:"):
            if not re.fullmatch(r"cuda:\d+", value):
                raise ConfigError(
                    f"device={value!r} is not a device; use one of: {', '.join(accepted)}, or "
                    "cuda:N (N a GPU's index)"
                )
            continue
        if value not in accepted:
            raise ConfigError(
                f"{key}={value!r} is not supported; use one of: {', '.join(map(str, accepted))}"
            )
    for key in POSITIVE:
        value = _get(cfg, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={value!r} must be a positive number")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={value!r} must be >= 0")
    for key in UNIT_INTERVAL:
        value = _get(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value!r} must be in [0, 1]")
    for key in HALF_OPEN_UNIT_INTERVAL:
        value = _get(cfg, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}={value!r} must be in [0, 1)")
    momentum = cfg.network.batch_norm_momentum
    if not momentum <= 1.0:  # > 0 checked above
        raise ConfigError(f"network.batch_norm_momentum={momentum!r} must be in (0, 1]")
    max_seed = MAX_SEED if cfg.seed_scheme == "streams" else MAX_OFFSET_SEED
    if not 0 <= cfg.seed < max_seed:
        raise ConfigError(
            f"seed={cfg.seed!r} must be in [0, {max_seed}) (numpy's seeds are 32-bit"
            + (")" if cfg.seed_scheme == "streams" else "; seed_scheme=offset adds 10000 + frames)")
        )
    last_env_seed = cfg.seed + cfg.collector.total_frames + cfg.env.num_envs - 1
    if cfg.seed_scheme == "offset" and cfg.env.backend == "envpool" and last_env_seed >= 2**31:
        # (the streams scheme's seeds stay below 2**30)
        raise ConfigError(
            f"seed={cfg.seed} with seed_scheme=offset and env.backend=envpool: EnvPool takes "
            "32-bit signed seeds, and the env copies get up to seed + collector.total_frames + "
            f"env.num_envs - 1 = {last_env_seed}; use a seed below "
            f"{2**31 - cfg.collector.total_frames - cfg.env.num_envs + 1}, or seed_scheme=streams"
        )
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads={cfg.threads!r} must be >= 1 (or null: torch's default)")
    tau = cfg.algorithm.tau
    if not 0.0 < tau <= 1.0:
        raise ConfigError(f"algorithm.tau={tau!r} must be in (0, 1]")
    if not (cfg.network.rmax >= 1.0 and math.isfinite(cfg.network.rmax)):
        raise ConfigError(f"network.rmax={cfg.network.rmax!r} must be a finite number >= 1")
    target_entropy = cfg.algorithm.entropy_tuning.target_entropy
    if target_entropy != "auto" and (
        isinstance(target_entropy, bool)
        or not isinstance(target_entropy, (int, float))
        or not math.isfinite(target_entropy)
    ):
        raise ConfigError(
            f"algorithm.entropy_tuning.target_entropy={target_entropy!r} is not supported; "
            "use one of: a finite number, auto"
        )
    entropy_lr = cfg.algorithm.entropy_tuning.optim.lr
    if entropy_lr is not None and not (entropy_lr > 0 and math.isfinite(entropy_lr)):
        raise ConfigError(
            f"algorithm.entropy_tuning.optim.lr={entropy_lr!r} must be a positive number (or "
            "null: optim.lr)"
        )
    if resolve_norm(cfg) == "brn" and cfg.optim.batch_size < 2:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} must be >= 2 with Batch Renormalization "
            "(network.norm resolves to brn): it estimates statistics over the batch"
        )
    for key in ("run_dir", "resume"):
        value = _get(cfg, key)
        if value is not None and not str(value).strip():
            raise ConfigError(
                f"{key}={value!r} is empty; give a directory, or null ({key}=null)"
                + (": a new folder under runs/" if key == "run_dir" else ": a new run")
            )
    if cfg.cudagraphs and not cfg.compile:
        raise ConfigError(
            "cudagraphs=true needs compile=true (the CUDA graphs are captured by torch.compile); "
            "add compile=true or drop cudagraphs"
        )
    if cfg.ray.num_cpus is not None and not cfg.ray.num_cpus >= 1:
        raise ConfigError(f"ray.num_cpus={cfg.ray.num_cpus!r} must be >= 1 (or null: all CPUs)")
    if cfg.collector.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "collector.backend=ray needs Ray, which is not installed: pip install -e "
            "'.[distributed]', or use one of: "
            + ", ".join(b for b in COLLECTOR_BACKENDS if b != "ray")
        )
    max_episode_steps = cfg.env.max_episode_steps
    if max_episode_steps is not None and not max_episode_steps > 0:
        raise ConfigError(
            f"env.max_episode_steps={max_episode_steps!r} must be positive (or null for the "
            "env's own limit)"
        )
    for key in ("optim.clip_grad_norm", "algorithm.entropy_tuning.optim.clip_grad"):
        value = _get(cfg, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={value!r} must be positive (or null for no clipping)")
    for key in ("network.critic_hidden_sizes", "network.actor_hidden_sizes"):
        sizes = _get(cfg, key)
        if sizes is not None and (len(sizes) == 0 or any(s <= 0 for s in sizes)):
            raise ConfigError(f"{key}={list(sizes)!r} must be a non-empty list of positive widths")
    num_envs, frames_per_batch = cfg.env.num_envs, cfg.collector.frames_per_batch
    if frames_per_batch % num_envs:
        raise ConfigError(
            f"collector.frames_per_batch={frames_per_batch} must be a multiple of "
            f"env.num_envs={num_envs} (each env steps the same number of times per batch)"
        )
    workers = cfg.collector.num_workers
    if cfg.collector.backend in ("multi_sync", "ray") and frames_per_batch % (workers * num_envs):
        raise ConfigError(
            f"collector.frames_per_batch={frames_per_batch} must be a multiple of "
            f"collector.num_workers * env.num_envs = {workers * num_envs} with "
            f"collector.backend={cfg.collector.backend} (each worker fills an equal share)"
        )
    _validate_replay_buffer(cfg.algorithm.replay_buffer)
    capacity = cfg.algorithm.replay_buffer.size
    min_buffer_size, total_frames = (
        cfg.algorithm.replay_buffer.min_buffer_size,
        cfg.collector.total_frames,
    )
    if min_buffer_size > total_frames:  # a trajectory holds at least one transition
        raise ConfigError(
            f"algorithm.replay_buffer.min_buffer_size={min_buffer_size} trajectories can never "
            f"be written by collector.total_frames={total_frames} frames: no update would run; "
            "use at most the frames"
        )
    if frames_per_batch > capacity:
        raise ConfigError(
            f"collector.frames_per_batch={frames_per_batch} exceeds "
            f"algorithm.replay_buffer.size={capacity}: each batch is stored at once; use a "
            "smaller batch or a larger buffer"
        )
    warmup_alias = cfg.network.warmup_steps
    if warmup_alias is not None and not warmup_alias >= 0:
        raise ConfigError(f"network.warmup_steps={warmup_alias!r} must be >= 0")
    return cfg


def _check_known_keys(cfg: DictConfig) -> None:
    """Every key is the schema's: hydra's ``+key=value`` adds one the schema lacks, unchecked."""
    schema = OmegaConf.get_type(cfg)  # Config, or a subclass of it
    schema = schema if is_dataclass(schema) else Config
    known = _flat_keys(OmegaConf.to_container(OmegaConf.structured(schema)))
    known_set = set(known)
    unknown = [k for k in _flat_keys(OmegaConf.to_container(cfg)) if k not in known_set]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        section = key.rpartition(".")[0]
        siblings = [k for k in known if k.rpartition(".")[0] == section]
        if close:
            hint = f"did you mean: {', '.join(close)}"
        elif siblings:
            hint = f"the keys of {section or 'the top level'}: {', '.join(siblings)}"
        else:
            hint = "see configs/crossq.yaml for the keys"
        raise ConfigError(
            f"{key} is not a key of the config (added with '+'? no code reads it, so it would "
            f"do nothing); {hint}"
        )


def _validate_replay_buffer(rb: DictConfig) -> None:
    """The storage keys act only together: a key that could not act is an error, not a no-op."""
    prefix = "algorithm.replay_buffer"
    if rb.storage != "disk":
        if rb.enable_cache:
            raise ConfigError(
                f"{prefix}.enable_cache=True needs {prefix}.storage=disk (a memory storage holds "
                f"every transition in RAM already); got storage={rb.storage!r}: use storage=disk "
                "or enable_cache=false"
            )
        if rb.scratch_dir is not None:
            raise ConfigError(
                f"{prefix}.scratch_dir={rb.scratch_dir!r} needs {prefix}.storage=disk; got "
                f"storage={rb.storage!r}: use storage=disk or scratch_dir=null"
            )
    if rb.enable_cache and rb.cache_size == 0:
        raise ConfigError(
            f"{prefix}.cache_size=0 with enable_cache=True caches nothing; use a cache_size of "
            "at least 1 trajectory"
        )
    if not rb.enable_cache and rb.cache_size != 0:
        raise ConfigError(
            f"{prefix}.cache_size={rb.cache_size} needs {prefix}.enable_cache=true (with "
            "storage=disk); use enable_cache=true or cache_size=0"
        )
    # Every window unit holds at least one transition, so a window above the capacity is impossible.
    for key in ("sample_window_size", "cache_size", "min_buffer_size"):
        if rb[key] > rb.size:
            raise ConfigError(
                f"{prefix}.{key}={rb[key]} exceeds {prefix}.size={rb.size} transitions; use at "
                "most the capacity"
            )


# Keys that a resumed run takes from the command line: how far the run goes, what it records
# and what it runs on, not what it learns. A key under one of these prefixes counts too.
RESUMABLE_KEYS = (
    "collector.total_frames",  # to train a finished run further
    "collector.direct",  # the same batches either way
    "eval",
    "logger.mode",
    "logger.log_interval",
    "checkpoint",
    "progress_bar",
    "threads",
    "device",
    "compile",
    "cudagraphs",
    "on_nonfinite",  # e.g. skip the step that stopped the run
    "algorithm.replay_buffer.pin_memory",  # follows the device
)


def _new_dir(name: str) -> Path:
    """Creates ``name`` (or ``name-2``, ``name-3``... if taken) and returns it.

    Claimed with an exclusive ``mkdir``: runs started in the same second (multirun jobs,
    several shells) each get their own directory.
    """
    for attempt in range(1, 1000):
        path = Path(name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"run_dir: {name} and its 998 numbered variants exist; set run_dir")


def prepare_run(cfg: DictConfig, *, overrides: Sequence[str] = ()) -> tuple[DictConfig, Path, bool]:
    """Validates the config and sets up the run directory.

    A new run writes its resolved config to ``<run_dir>/config.yaml``. With
    ``resume=<run_dir>`` the run continues with its saved config, and the third value is
    ``True``. Of the keys given on the command line (``overrides``, hydra's override
    strings), those of :data:`RESUMABLE_KEYS` replace the saved values, which are saved again
    (``collector.total_frames=...`` trains a finished run further); any other key, and any
    group (``env=...``, ``experiment=...``), must agree with the saved config, or a
    :class:`ConfigError` names the key.

    Args:
        cfg: the composed config.

    Keyword Args:
        overrides: the command line's overrides, e.g. ``HydraConfig.get().overrides.task``;
            only read with ``resume``.

    Returns:
        ``(config, run directory, resuming)``.
    """
    if cfg.resume:
        return _resume(cfg, overrides), Path(cfg.resume), True
    validate(cfg)
    if cfg.run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.run_dir = str(_new_dir(f"runs/{stamp}-{env_label(cfg)}-seed{cfg.seed}"))
    run_dir = Path(cfg.run_dir)
    # A config.yaml alone is a start that failed before any work (an env that does not
    # exist...): the corrected command may start over there.
    if (run_dir / "config.yaml").exists() and any(
        p.name != "config.yaml" for p in run_dir.iterdir()
    ):
        if not newest_checkpoint_frames(run_dir / "checkpoints"):
            raise ConfigError(
                f"run_dir={cfg.run_dir!r} holds a run that stopped before its first checkpoint; "
                f"start it over with {resume_argument(cfg.run_dir)} (any key may change then) "
                "or choose another run_dir"
            )
        raise ConfigError(
            f"run_dir={cfg.run_dir!r} already holds a run; continue it with "
            f"{resume_argument(cfg.run_dir)} or choose another run_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    random_frames, total_frames = cfg.collector.init_random_frames, cfg.collector.total_frames
    if random_frames >= total_frames:
        warnings.warn(
            f"collector.init_random_frames={random_frames} >= collector.total_frames="
            f"{total_frames}: the run only collects random actions, no update runs",
            stacklevel=2,
        )
    return cfg, run_dir, False


def is_resumable(key: str) -> bool:
    """Whether a resumed run takes ``key`` from the command line (see :data:`RESUMABLE_KEYS`)."""
    return any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_KEYS)


def _resume(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    run_dir = Path(cfg.resume)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(
            f"resume={cfg.resume!r} is not a run directory: it has no config.yaml "
            "(give the run_dir of an earlier run)"
        )
    if cfg.run_dir is not None and Path(cfg.run_dir) != run_dir:
        raise ConfigError(
            f"run_dir={cfg.run_dir!r} with resume={cfg.resume!r}: a resumed run continues in "
            "its own directory; drop run_dir"
        )
    stored = OmegaConf.load(saved_path)
    _drop_what_never_acted(stored)
    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config), stored)
    except Exception as err:
        raise ConfigError(
            f"resume={cfg.resume!r}: its config.yaml does not match this version's schema ({err})"
        ) from None
    given = OmegaConf.to_container(cfg, resolve=True)
    kept = OmegaConf.to_container(saved, resolve=True)
    keys, groups = _command_line_keys(given, overrides)
    allowed = ", ".join(
        f"{k}.*" if isinstance(_select(kept, k), dict) else k for k in RESUMABLE_KEYS
    )
    keys = [k for k in keys if k not in ("resume", "run_dir")]  # checked above
    # A run without a checkpoint has learned nothing: it starts over, and any key may change.
    started = newest_checkpoint_frames(run_dir / "checkpoints") > 0
    changes = {}
    for key in keys:
        if _select(given, key) == _select(kept, key):
            continue
        if started and not is_resumable(key):
            raise ConfigError(
                f"{key}={_select(given, key)!r} cannot change on resume: the run in "
                f"{cfg.resume} has {key}={_select(kept, key)!r} (a resumed run keeps its "
                f"experiment; keys that may change: {allowed})"
            )
        changes[key] = _select(given, key)
    for group, scope in groups:
        for key in _flat_keys(given):
            inside = not scope or key.startswith(f"{scope}.")
            typed = key in keys or key in ("resume", "run_dir")
            # seed_scheme is the run's record of how it was seeded, not a group's to give
            recorded = key == "seed_scheme"
            checked = inside and not typed and not is_resumable(key) and not recorded
            if checked and _select(given, key) != _select(kept, key):
                if not started:
                    changes[key] = _select(given, key)
                    continue
                raise ConfigError(
                    f"{group} cannot change on resume: it gives {key}="
                    f"{_select(given, key)!r} but the run in {cfg.resume} has {key}="
                    f"{_select(kept, key)!r} (a resumed run keeps its experiment; give only "
                    f"keys that may change: {allowed})"
                )
    if changes and not started:
        print(f"resume: {cfg.resume} has no checkpoint yet: the run starts over")
    for key, value in changes.items():
        print(f"resume: {key}={value!r} (was {_select(kept, key)!r})")
        OmegaConf.update(saved, key, value)
    _check_schedule_horizon(saved, kept)
    _check_frames_held(run_dir, saved.collector.total_frames)
    saved.run_dir = str(run_dir)
    validate(saved)
    if changes:  # saved again, so that a plain resume= after a kill keeps them
        write_text_atomically(saved_path, OmegaConf.to_yaml(saved, resolve=True))
    saved.resume = cfg.resume
    return saved


def _check_frames_held(run_dir: Path, total_frames: int) -> None:
    """``collector.total_frames`` is not below the frames of the run's newest checkpoint."""
    held = newest_checkpoint_frames(run_dir / "checkpoints")
    if total_frames < held:
        raise ConfigError(
            f"collector.total_frames={total_frames} is below the {held} frames the run in "
            f"{run_dir} already holds (its newest checkpoint); give at least {held}"
        )


def _drop_what_never_acted(stored: DictConfig) -> None:
    """Reads a config.yaml of an earlier version as the schema has it, so the run resumes as it ran.

    Keys that had no effect go: ``env.library`` and ``env.categorical_action_encoding`` left the
    schema; the replay buffer's cache and scratch directory act only with ``storage: disk`` (and
    ``cache_size`` only with ``enable_cache``), and are errors elsewhere. ``network.warmup_steps``
    is read as ``network.brn_warmup_steps``.
    """
    if "seed_scheme" not in stored:  # made before the seeds were hashed per stream
        stored.seed_scheme = "offset"
    network = stored.get("network") or {}
    if network.get("warmup_steps") is not None:
        network["brn_warmup_steps"] = network.pop("warmup_steps")
    env = stored.get("env") or {}
    for key in ("library", "categorical_action_encoding"):
        env.pop(key, None)
    rb = OmegaConf.select(stored, "algorithm.replay_buffer") or {}
    if rb.get("storage", "memory") != "disk":
        for key in ("enable_cache", "scratch_dir"):
            rb.pop(key, None)
    if not rb.get("enable_cache", False):
        rb.pop("cache_size", None)


def _command_line_keys(
    given: dict, overrides: Sequence[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """The config leaves set by ``overrides``, and the groups they select with their scope.

    A group's scope is the subtree it fills (``env`` for ``env=hopper``), or ``""`` for the
    whole config (``experiment=quick``, whose files are ``@package _global_``).
    """
    leaves = _flat_keys(given)
    keys, groups = [], []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        name = override.key_or_group
        if name.split("/")[0].split(".")[0] == "hydra":
            continue  # hydra's own settings: not part of the experiment
        if name in leaves:
            keys.append(name)
            continue
        below = [k for k in leaves if k.startswith(f"{name}.")]
        if below and isinstance(override.value(), dict):
            keys += below  # a whole node given as a dict
        else:
            groups.append((f"{name}={override.value()}", name if below else ""))
    return keys, groups


def _check_schedule_horizon(saved: DictConfig, kept: dict) -> None:
    """A cosine decay fitted to the saved run length cannot follow a longer run."""
    entropy_optim = saved.algorithm.entropy_tuning.optim
    total, before = saved.collector.total_frames, kept["collector"]["total_frames"]
    decays_over_run = entropy_optim.lr_scheduler == "cosine" and entropy_optim.lr_decay_steps == 0
    if (
        total > before
        and decays_over_run
        and saved.algorithm.entropy_tuning.alpha_type != "fixed_alpha"
    ):
        raise ConfigError(
            f"collector.total_frames={total} cannot extend a run whose temperature lr decays "
            f"over its {before} frames (algorithm.entropy_tuning.optim.lr_scheduler=cosine, "
            "lr_decay_steps=0): its decay was fitted to those frames and would stay at min_lr "
            "past them, unlike a run that long from the start; start a new run"
        )


def env_label(cfg: DictConfig) -> str:
    """A short, path-safe name of the task: ``HalfCheetah-v5``, ``reach-v3``."""
    return cfg.env.task or cfg.env.name.replace("/", "-")


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys += _flat_keys(value, path + ".") if isinstance(value, dict) else [path]
    return keys


def _select(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree
