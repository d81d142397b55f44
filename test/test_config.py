"""The config: every key acts or is rejected; a resumed run takes only the keys typed with it."""

import contextlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from test_train_script import CONFIGS, TINY, compose_config, load_script

from torchrl_crossq import config, from_config
from torchrl_crossq.config import CHOICES, ConfigError, prepare_run, validate
from torchrl_crossq.data import CachedStorage
from torchrl_crossq.from_config import make_replay_buffer_from_config, resolve_device

PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# TINY without its env: each preset runs on its own env (embodied: Meta-World in EnvPool).
TINY_RUN = [
    *(o for o in TINY if not o.startswith(("env=", "algorithm.replay_buffer.size"))),
    "algorithm.replay_buffer.size=10000",  # the embodied window of 6000 trajectories fits
    "logger.backend=none",
]
# Keys that validate() pins to the one value the code implements: any other is an error.
PINNED = {key for key, accepted in CHOICES.items() if len(accepted) == 1}


def leaves(tree: DictConfig) -> set[str]:
    return set(config._flat_keys(OmegaConf.to_container(tree)))


@contextlib.contextmanager
def recording_reads():
    """Records the config keys the code reads, outside validate(): those that act.

    Attribute, item and ``get`` reads of any DictConfig and ``OmegaConf.select`` are
    recorded by full key; saving or copying a whole config reads no key this way.
    """
    reads: set[str] = set()
    paused: list[bool] = []

    def recorded(method):
        def read(self, key, *args, **kwargs):
            value = method(self, key, *args, **kwargs)
            if not paused and isinstance(key, str):
                reads.add(self._get_full_key(key))
            return value

        return read

    def recorded_select(cfg, key, *args, **kwargs):
        if not paused:
            prefix = cfg._get_full_key("")
            reads.add(f"{prefix}.{key}" if prefix else key)
        return select(cfg, key, *args, **kwargs)

    def unrecorded_validate(cfg):
        paused.append(True)
        try:
            return validate(cfg)
        finally:
            paused.pop()

    select = OmegaConf.select
    with pytest.MonkeyPatch.context() as patch:
        for name in ("__getattr__", "__getitem__", "get"):
            patch.setattr(DictConfig, name, recorded(getattr(DictConfig, name)))
        patch.setattr(OmegaConf, "select", staticmethod(recorded_select))
        patch.setattr(config, "validate", unrecorded_validate)
        yield reads


def tiny_run_reads(cfg: DictConfig) -> set[str]:
    """Trains a tiny run of ``cfg``; returns the keys it read."""
    script = load_script()
    with recording_reads() as reads:
        script.train(cfg)
    return reads


def tiny_config(overrides, run_dir) -> DictConfig:
    return compose_config([*TINY_RUN, f"run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def reads_of_the_presets(tmp_path_factory) -> dict[str, tuple[set[str], set[str]]]:
    """Per preset, the leaves of its config and the keys a tiny run of it read.

    The quick preset runs a second time on worker processes: only they read the weight sync.
    """
    runs = {name: [f"experiment={name}"] for name in PRESETS}
    runs["quick, multi_sync"] = ["experiment=quick", "collector.backend=multi_sync"]
    root = tmp_path_factory.mktemp("presets")
    found = {}
    for i, (name, overrides) in enumerate(runs.items()):
        cfg = tiny_config(overrides, root / str(i))
        found[name] = leaves(cfg), tiny_run_reads(cfg)
    return found


def unread(keys: set[str], reads: set[str]) -> list[str]:
    return sorted(keys - reads - PINNED)


def test_every_key_of_every_preset_is_read_by_a_run_or_pinned(reads_of_the_presets):
    assert set(PRESETS) == {"embodied", "paper", "quick", "sac"}
    read = set().union(*(reads for _, reads in reads_of_the_presets.values()))
    for name, (keys, _) in reads_of_the_presets.items():
        assert unread(keys, read) == [], f"keys of experiment={name} that nothing reads"


@dataclass
class AlgorithmWithANewKey(config.AlgorithmConfig):
    new_key: int = 3  # added to the schema, read nowhere


@dataclass
class ConfigWithANewKey(config.Config):
    algorithm: AlgorithmWithANewKey = field(default_factory=AlgorithmWithANewKey)


def test_a_new_key_that_nothing_reads_is_reported(reads_of_the_presets, tmp_path):
    composed = tiny_config(["experiment=quick"], tmp_path)
    cfg = OmegaConf.merge(OmegaConf.structured(ConfigWithANewKey), OmegaConf.to_container(composed))
    read = set().union(*(reads for _, reads in reads_of_the_presets.values()))
    assert unread(leaves(cfg), read | tiny_run_reads(cfg)) == ["algorithm.new_key"]


@pytest.mark.parametrize("device", ["cuda:x", "cuda:-1", "cuda:0,1", "cuda:"])
def test_a_malformed_cuda_device_names_the_key(device):
    # It passed validation, then torch.device raised a traceback on a CUDA machine.
    with pytest.raises(ConfigError, match=r"^device='cuda:.*' is not a device; use one of"):
        validate(compose_config([f"device='{device}'"]))


def test_a_gpu_index_the_machine_lacks_names_the_key(monkeypatch):
    validate(compose_config(["device=cuda:5"]))  # well formed: checked against the machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device='cuda:5' but this machine has 1 GPU\(s\)"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("steps", [0, -5])
def test_a_non_positive_episode_length_names_the_key(steps):
    with pytest.raises(ConfigError, match=rf"^env.max_episode_steps={steps} must be positive"):
        validate(compose_config([f"env.max_episode_steps={steps}"]))


# -- replay buffer keys act only together -------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["enable_cache=true", "cache_size=8"], r"enable_cache=True needs .*storage=disk"),
        (["scratch_dir=/tmp/x"], r"scratch_dir='/tmp/x' needs .*storage=disk"),
        (["cache_size=8"], r"cache_size=8 needs .*enable_cache=true"),
        (["storage=disk", "cache_size=8"], r"cache_size=8 needs .*enable_cache=true"),
        (["storage=disk", "enable_cache=true"], r"cache_size=0 with enable_cache=True"),
    ],
)
def test_a_replay_buffer_key_that_could_not_act_names_itself(overrides, message):
    cfg = compose_config([f"algorithm.replay_buffer.{o}" for o in overrides])
    with pytest.raises(ConfigError, match=rf"^algorithm\.replay_buffer\.{message}"):
        validate(cfg)


def test_pin_memory_without_a_cuda_disk_storage_names_the_key(tmp_path):
    cfg = validate(compose_config(["algorithm.replay_buffer.pin_memory=true", "device=cpu"]))
    with pytest.raises(ConfigError, match=r"^algorithm.replay_buffer.pin_memory=True needs"):
        make_replay_buffer_from_config(cfg, tmp_path, torch.device("cpu"))


def test_embodied_preset_caches_the_window_of_a_disk_buffer_in_the_run_dir(tmp_path):
    cfg = validate(compose_config(["experiment=embodied"]))
    buffer = make_replay_buffer_from_config(cfg, tmp_path, torch.device("cpu"))
    assert isinstance(buffer._storage, CachedStorage)
    assert buffer._storage.cache_size == cfg.algorithm.replay_buffer.sample_window_size
    assert Path(buffer._storage.disk.scratch_dir) == tmp_path / "replay"


def test_runs_given_one_scratch_dir_keep_their_transitions_apart(tmp_path):
    # Two seeds (or a sweep) with one fast scratch disk shared one memmap, each run training
    # on the other's transitions; a resumed run must still find its own folder.
    cfg = validate(
        compose_config(
            [
                "algorithm.replay_buffer.storage=disk",
                f"algorithm.replay_buffer.scratch_dir={tmp_path}",
            ]
        )
    )
    runs = [tmp_path / "runs" / "seed0", tmp_path / "other" / "seed0"]
    buffers = [make_replay_buffer_from_config(cfg, run, torch.device("cpu")) for run in runs]
    for value, buffer in enumerate(buffers):
        buffer.extend(TensorDict({"x": torch.full((4, 1), float(value))}, [4]))
    for value, buffer in enumerate(buffers):
        assert buffer.sample(8)["x"].eq(value).all()
    again = make_replay_buffer_from_config(cfg, runs[0], torch.device("cpu"))
    assert again._storage.scratch_dir == buffers[0]._storage.scratch_dir
    assert Path(again._storage.scratch_dir).parent == tmp_path


def test_runs_of_consecutive_seeds_share_no_env_or_evaluation_seed(monkeypatch):
    # Env copies were seeded seed + frames + i and evaluation episodes seed + 10000 + frames
    # + i: seeds s and s + 1 shared 9 of 10 evaluation episodes and all env copies but one,
    # so the spread across seeds understated the variance.
    drawn = {}

    def seeds_of(seed, frames=5000, copies=4, episodes=10):
        overrides = [f"seed={seed}", f"env.num_envs={copies}", "collector.frames_per_batch=16"]
        cfg = validate(compose_config(overrides))
        monkeypatch.setattr(
            from_config, "make_collector", lambda *a, seed, **k: drawn.update(seed=seed)
        )
        from_config.make_collector_from_config(cfg, None, None, torch.device("cpu"), frames=frames)
        make_train_env, _ = from_config.make_envs_from_config(cfg)
        evaluator = from_config.make_evaluator_from_config(cfg, None, episodes=episodes)
        evaluator.evaluation.close()
        evaluator.evaluation = lambda actor, seed: drawn.update(eval=seed)
        evaluator(frames)
        return {
            "env copies": {drawn["seed"] + i for i in range(copies)},
            "evaluation episodes": {drawn["eval"] + i for i in range(episodes)},
            "task seeds": {make_train_env.keywords["task_seed"]},
        }

    runs = [seeds_of(seed) for seed in range(5)]
    for stream in runs[0]:
        for a in range(5):
            for b in range(a + 1, 5):
                assert not runs[a][stream] & runs[b][stream], (stream, a, b)
    assert seeds_of(2) == runs[2]  # a function of the seed alone
    assert seeds_of(2, frames=6000)["evaluation episodes"] != runs[2]["evaluation episodes"]
    assert from_config.run_seed(2**32 - 1, from_config.TRAIN_ENVS, 10**9) < 2**30


def test_a_run_made_before_the_hashed_seeds_resumes_and_evaluates_with_its_own(tmp_path):
    # Its config.yaml has no seed_scheme: its Meta-World goals (seed), env seeds (seed +
    # frames) and evaluation episodes (seed + 10000 + frames) must stay what they were.
    run_dir = saved_run(tmp_path, "experiment=quick", "seed=3")
    old = OmegaConf.load(run_dir / "config.yaml")
    del old["seed_scheme"]
    OmegaConf.save(old, run_dir / "config.yaml")
    cfg = resume(run_dir, "experiment=quick", "seed=3", *TINY)  # the groups as the run has them
    assert cfg.seed_scheme == "offset"
    assert from_config.eval_seed(cfg, 96) == 3 + 10_000 + 96
    assert from_config.eval_seed(old, 96) == 3 + 10_000 + 96  # evaluate.py reads config.yaml
    assert from_config.stream_seed(cfg, from_config.TRAIN_ENVS, 48) == 3 + 48
    assert from_config.stream_seed(cfg, from_config.TRAIN_TASKS) == 3
    new = resume(saved_run(tmp_path / "new", "seed=3"))
    assert from_config.eval_seed(new, 96) == from_config.run_seed(3, from_config.EVAL_EPISODES, 96)
    with pytest.raises(ConfigError, match="seed_scheme='streams' cannot change on resume"):
        resume(run_dir, "seed_scheme=streams")


def test_a_cosine_temperature_decay_over_the_run_spans_its_learning_updates():
    # The horizon counted the random frames, during which no update runs: the quick preset's
    # decay ended at about 7% of its lr, not at min_lr.
    from torchrl.data import Bounded

    from torchrl_crossq import CrossQLoss, make_actor, make_critic

    overrides = ["experiment=quick", "algorithm.entropy_tuning.optim.lr_scheduler=cosine"]
    cfg = validate(compose_config(overrides))
    actor = make_actor(3, Bounded(-1.0, 1.0, shape=(1,)), num_cells=(8,))
    loss = CrossQLoss(actor, make_critic(3, 1, num_cells=(8,)))
    updater = from_config.make_updater_from_config(cfg, loss)
    assert updater.alpha_scheduler.T_max == (6_000 - 1_000) // 3
    # batches of 32: the last one ends past total_frames, and it updates too
    embodied = validate(
        compose_config(
            ["experiment=embodied", "algorithm.entropy_tuning.optim.lr_scheduler=cosine"]
        )
    )
    rounds = -(-50_000 // 32) - 4_096 // 32  # 1563 batches, the first 128 random
    updater = from_config.make_updater_from_config(embodied, loss)
    expected = rounds * embodied.algorithm.update_epoch // embodied.optim.policy_update_delay
    assert updater.alpha_scheduler.T_max == expected


def test_a_checkpoint_moved_aside_by_a_kill_still_counts_as_learned(tmp_path):
    # A kill between the two renames of a checkpoint written again at the same frame count
    # leaves it in .old_ckpt_*: resume= took the run for one without a checkpoint and let any
    # key change, then recover_checkpoints put the checkpoint back under the changed config.
    run_dir = saved_run(tmp_path)
    (run_dir / "checkpoints" / "ckpt_000000000048").rename(
        run_dir / "checkpoints" / ".old_ckpt_000000000048_123"
    )
    with pytest.raises(ConfigError, match="cannot change on resume"):
        resume(run_dir, "algorithm.gamma=0.5")
    assert load_script().after_nonfinite(str(run_dir)).startswith("The last checkpoint (48")


# -- keys no code reads, values no run can take ---------------------------------------------------
def test_a_key_added_with_plus_is_refused_naming_it_and_the_close_keys():
    # hydra's own error for a typo suggests +key=value, which adds it past the schema.
    cfg = compose_config(["+collector.total_frame=300"])
    with pytest.raises(
        ConfigError, match=r"^collector\.total_frame is not a key.*collector\.total_frames"
    ):
        validate(cfg)
    cfg = compose_config(["+optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"^optim\.learning_rate is not a key.*optim\.lr"):
        validate(cfg)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused(seed):
    with pytest.raises(ConfigError, match=rf"^seed={seed} must be in \[0, "):
        validate(compose_config([f"seed={seed}"]))


def test_an_offset_seed_past_envpools_32_bit_seeds_is_refused():
    # It passed validation, then EnvPool asserted "Seed should be in range of int32".
    envpool = ["seed_scheme=offset", "env.backend=envpool", "collector.total_frames=10000"]
    with pytest.raises(ConfigError, match=r"^seed=2147480000 with seed_scheme=offset and env"):
        validate(compose_config([*envpool, "seed=2147480000"]))
    validate(compose_config([*envpool, f"seed={2**31 - 10_001}"]))  # the last env seed 2**31 - 1
    validate(compose_config(["seed=2147480000", "env.backend=envpool"]))  # streams: below 2**30


def test_a_start_that_failed_before_any_work_may_be_retried_in_its_run_dir(tmp_path):
    saved_run(tmp_path, "seed=1", checkpoint=False)  # e.g. an env id that does not exist
    prepare_run(compose_config([*TINY, f"run_dir={tmp_path}", "seed=2"]))
    assert OmegaConf.load(tmp_path / "config.yaml").seed == 2
    (tmp_path / "eval.csv").write_text("frames,return\n")  # a run that did some work
    with pytest.raises(ConfigError, match=r"stopped before its first checkpoint; start it over"):
        prepare_run(compose_config([*TINY, f"run_dir={tmp_path}"]))
    (tmp_path / "checkpoints" / "ckpt_000000000048").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ckpt_000000000048" / "COMPLETE").write_text("48")
    with pytest.raises(ConfigError, match=r"already holds a run; continue it with resume="):
        prepare_run(compose_config([*TINY, f"run_dir={tmp_path}"]))


def test_a_run_stopped_before_its_first_checkpoint_starts_over_with_any_key(tmp_path, capsys):
    # A non-finite loss at update 2 left config.yaml, eval.csv and logs: the run dir was
    # refused ("holds a run"), and resume= refused the lower lr ("cannot change on resume").
    run_dir = saved_run(tmp_path, checkpoint=False)
    (run_dir / "eval.csv").write_text("frames,return_mean\n")
    cfg = resume(run_dir, "optim.lr=0.0001", "env=hopper")
    assert cfg.optim.lr == 0.0001 and cfg.env.name == "Hopper-v5"
    assert "has no checkpoint yet: the run starts over" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cannot change on resume"):
        resume(saved_run(tmp_path / "learned"), "optim.lr=0.0001")


def test_a_non_finite_loss_says_where_the_run_can_go_on_from(tmp_path):
    after = load_script().after_nonfinite
    assert after(str(tmp_path)).startswith(
        f"No checkpoint was written yet: start the run over with resume={tmp_path}"
    )
    saved_run(tmp_path)
    assert after(str(tmp_path)).startswith("The last checkpoint (48 frames) was written before")


def test_a_run_that_would_never_update_warns(tmp_path):
    overrides = [*TINY, f"run_dir={tmp_path}", "collector.init_random_frames=96"]
    with pytest.warns(UserWarning, match=r"init_random_frames=96 >= collector\.total_frames=96"):
        prepare_run(compose_config(overrides))


def test_multirun_directories_stay_within_a_file_names_length():
    assert config.sweep_subdir(0, "seed=1") == "seed=1"
    many = ",".join(f"collector.some_key_{i}=value_{i}" for i in range(10))
    assert len(many) > 255 and config.sweep_subdir(3, many) == "job3"
    assert config.sweep_subdir(2, "") == "job2"
    # a path or an id with "/" as a value put the job folders deep (plot.py found none)
    assert config.sweep_subdir(4, "env.name=Meta-World/MT1,seed=0") == "job4"


# -- resume: the keys typed with it ----------------------------------------------------------------
def saved_run(tmp_path, *overrides, checkpoint: bool = True) -> Path:
    """A run directory with its config.yaml and, with ``checkpoint``, a (marked) checkpoint at
    48 frames: a run that has learned something, which a resume must not change."""
    prepare_run(compose_config([*TINY, f"run_dir={tmp_path}", *overrides]))
    if checkpoint:
        marked = tmp_path / "checkpoints" / "ckpt_000000000048"
        marked.mkdir(parents=True)
        (marked / "COMPLETE").write_text("48")
    return tmp_path


def resume(run_dir, *overrides):
    typed = [f"resume={run_dir}", *overrides]
    return prepare_run(compose_config(typed), overrides=typed)[0]


def test_resume_takes_the_saved_config_for_every_key_not_typed(tmp_path):
    cfg = resume(saved_run(tmp_path, "seed=3"))  # composed from the defaults: HalfCheetah
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert cfg.env.name == "Pendulum-v1" and cfg.seed == 3 and cfg.progress_bar is False
    assert OmegaConf.to_container(cfg) == {**OmegaConf.to_container(saved), "resume": str(tmp_path)}


def test_resume_applies_typed_keys_that_do_not_change_what_is_learned(tmp_path, capsys):
    run_dir = saved_run(tmp_path)
    typed = ["collector.total_frames=496", "eval.episodes=3", "checkpoint.keep=5", "threads=1"]
    cfg = resume(run_dir, *typed, "progress_bar=false")  # as saved: not a change
    assert (cfg.collector.total_frames, cfg.eval.episodes, cfg.checkpoint.keep) == (496, 3, 5)
    assert cfg.threads == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "resume: collector.total_frames=496 (was 96)",
        "resume: eval.episodes=3 (was 1)",
        "resume: checkpoint.keep=5 (was 2)",
        "resume: threads=1 (was None)",
    ]
    saved = OmegaConf.load(run_dir / "config.yaml")  # a plain resume= after a kill keeps them
    assert saved.collector.total_frames == 496 and saved.resume is None


@pytest.mark.parametrize(
    "override",
    [
        "env.name=InvertedPendulum-v5",
        "seed=1",
        "optim.lr=0.01",
        "network.critic_hidden_sizes=[32,32]",
        "algorithm.gamma=0.9",
        "algorithm.replay_buffer.size=2000",
        "logger.backend=csv",
    ],
)
def test_resume_refuses_a_typed_key_that_changes_the_experiment(tmp_path, override):
    key = override.split("=")[0]
    run_dir = saved_run(tmp_path, "logger.backend=none")
    with pytest.raises(ConfigError, match=rf"^{key}=.* cannot change on resume: the run in "):
        resume(run_dir, override)


def test_resume_accepts_experiment_keys_typed_as_the_run_has_them(tmp_path):
    run_dir = saved_run(tmp_path, "seed=3")
    assert resume(run_dir, "seed=3", "env=pendulum", "env.name=Pendulum-v1").seed == 3


def test_resume_refuses_a_group_that_changes_the_experiment_naming_the_key(tmp_path):
    run_dir = saved_run(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"^env=hopper cannot change on resume: it gives env.name='Hopper-v5' but the run",
    ):
        resume(run_dir, "env=hopper")


def test_resume_into_another_run_dir_is_refused(tmp_path):
    run_dir = saved_run(tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^run_dir=.* with resume=.*drop run_dir"):
        resume(run_dir, f"run_dir={tmp_path / 'b'}")


def test_resume_cannot_stretch_a_cosine_decay_fitted_to_the_run(tmp_path):
    run_dir = saved_run(tmp_path, "algorithm.entropy_tuning.optim.lr_scheduler=cosine")
    with pytest.raises(ConfigError, match=r"^collector.total_frames=496 cannot extend"):
        resume(run_dir, "collector.total_frames=496")


def test_resume_of_a_run_saved_with_keys_that_never_acted(tmp_path):
    run_dir = saved_run(tmp_path)
    saved = OmegaConf.load(run_dir / "config.yaml")
    saved.env.library = "gymnasium"  # as the embodied preset was saved before: these did nothing
    saved.env.categorical_action_encoding = False
    saved.algorithm.replay_buffer.enable_cache = True
    saved.algorithm.replay_buffer.cache_size = 6000
    OmegaConf.save(saved, run_dir / "config.yaml")
    cfg = resume(run_dir)
    rb = cfg.algorithm.replay_buffer
    assert "library" not in cfg.env and "categorical_action_encoding" not in cfg.env
    assert (rb.storage, rb.enable_cache, rb.cache_size) == ("memory", False, 0)


def test_choice_lists_are_the_library_lists():
    from torchrl_crossq.collectors import COLLECTOR_BACKENDS
    from torchrl_crossq.data.sampler import WINDOW_UNITS
    from torchrl_crossq.envs import ENV_BACKENDS
    from torchrl_crossq.logging import LOGGER_BACKENDS
    from torchrl_crossq.objectives.crossq import Q_HEAD_TYPES

    assert CHOICES["collector.backend"] is COLLECTOR_BACKENDS
    assert CHOICES["logger.backend"] is LOGGER_BACKENDS
    assert CHOICES["env.backend"] is ENV_BACKENDS
    assert CHOICES["algorithm.q_head_type"] is Q_HEAD_TYPES
    assert CHOICES["algorithm.replay_buffer.window_unit"] is WINDOW_UNITS


def test_brn_warmup_has_a_name_that_says_brn():
    from torchrl_crossq.from_config import brn_warmup_steps

    cfg = validate(compose_config(["network.brn_warmup_steps=7"]))
    assert brn_warmup_steps(cfg) == 7
    old = validate(compose_config(["network.warmup_steps=9"]))
    with pytest.warns(FutureWarning, match=r"network.warmup_steps is deprecated.*brn_warmup_steps"):
        assert brn_warmup_steps(old) == 9


def test_resume_of_a_run_saved_with_the_old_brn_warmup_key_keeps_its_value(tmp_path):
    run_dir = saved_run(tmp_path)
    saved = OmegaConf.load(run_dir / "config.yaml")
    del saved.network["brn_warmup_steps"]
    saved.network.warmup_steps = 123  # as runs were saved before the key was renamed
    OmegaConf.save(saved, run_dir / "config.yaml")
    cfg = resume(run_dir)
    assert (cfg.network.brn_warmup_steps, cfg.network.warmup_steps) == (123, None)


def test_the_resume_hint_of_a_sweep_job_pastes_back(tmp_path):
    # A sweep job's folder is named key=value,...: unquoted, hydra's grammar refused it.
    job = tmp_path / "collector.total_frames=96,seed=0"
    assert config.resume_argument(tmp_path / "run") == f"resume={tmp_path / 'run'}"
    argument = config.resume_argument(job)
    assert argument == f"\"resume='{job}'\""
    typed = [shlex.split(argument)[0]]  # what the shell passes on
    prepare_run(compose_config([*TINY, f"run_dir='{job}'"]))
    (job / "checkpoints").mkdir()
    _, run_dir, resuming = prepare_run(compose_config(typed), overrides=typed)
    assert resuming and run_dir == job
