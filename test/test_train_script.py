"""End-to-end runs of sota_implementations/crossq.py on tiny settings, and its configs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from torchrl_crossq.config import CHOICES, ConfigError, prepare_run, validate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sota_implementations" / "crossq.py"
CONFIGS = ROOT / "configs"

TINY = [
    "env=pendulum",
    "collector.total_frames=96",
    "collector.init_random_frames=32",
    "collector.frames_per_batch=16",
    "algorithm.update_epoch=2",
    "optim.batch_size=16",
    "network.critic_hidden_sizes=[16,16]",
    "network.actor_hidden_sizes=[16,16]",
    "algorithm.replay_buffer.size=1000",
    "eval.interval=48",
    "eval.episodes=1",
    "eval.max_episode_steps=10",
    "logger.log_interval=32",
    "checkpoint.interval=48",
    "progress_bar=false",
]


def load_script():
    spec = importlib.util.spec_from_file_location("crossq_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_config(overrides):
    load_script()  # registers the schema
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("crossq", overrides=overrides)


def run(overrides, tmp_path):
    cfg = compose_config([*TINY, f"run_dir={tmp_path}", *overrides])
    load_script().train(cfg)
    return tmp_path


@pytest.mark.parametrize("backend", ["csv", "none", "wandb", "tensorboard"])
def test_tiny_run_with_each_logger_backend(tmp_path, backend, monkeypatch):
    if backend == "tensorboard":
        pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run([f"logger.backend={backend}"], tmp_path)
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "frames,return_mean,return_std,success_rate" and len(rows) == 3  # 48, 96
    assert rows[1].endswith(",nan")  # Pendulum reports no success
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert (tmp_path / "checkpoints" / "ckpt_000000000096" / "COMPLETE").exists()
    if backend == "csv":
        scalars = next((tmp_path / "logs").rglob("scalars"))
        logged = {str(p.relative_to(scalars).with_suffix("")) for p in scalars.rglob("*.csv")}
        expected = {"eval/return", "train/loss_qvalue", "train/loss_actor", "train/loss_alpha"}
        assert expected | {"train/alpha", "train/entropy", "perf/frames_per_s"} <= logged


def test_two_parallel_envs(tmp_path):
    run(["env.num_envs=2", "env.vectorization=parallel"], tmp_path)
    assert len((tmp_path / "eval.csv").read_text().splitlines()) == 3


def resume(run_dir, *overrides):
    """Continues a run as ``crossq.py resume=<run_dir> <overrides>`` does."""
    typed = [f"resume={run_dir}", *overrides]
    load_script().train(compose_config(typed), overrides=typed)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    run(["collector.total_frames=48"], tmp_path)
    resume(tmp_path)  # composed from today's defaults: 1M frames of HalfCheetah
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.collector.total_frames == 48  # keys not typed come from the saved config
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints[-1] == "ckpt_000000000048"


def test_resume_with_a_larger_total_trains_a_finished_run_further(tmp_path):
    run(["logger.backend=csv"], tmp_path)  # 96 frames
    resume(tmp_path, "collector.total_frames=496")
    rows = (tmp_path / "eval.csv").read_text().splitlines()[1:]
    assert [int(float(row.split(",")[0])) for row in rows] == [48 * k for k in range(1, 11)] + [496]
    newest = sorted((tmp_path / "checkpoints").iterdir())[-1]
    assert newest.name == "ckpt_000000000496"
    sampler = torch.load(newest / "replay" / "sampler" / "sampler_state.pt", weights_only=True)
    assert sampler["num_written"] == 496  # the buffer kept filling after the resume
    logged = next((tmp_path / "logs").rglob("scalars/train/loss_qvalue.csv")).read_text()
    assert [int(line.split(",")[0]) for line in logged.splitlines()][-1] == 480


def test_resume_that_changes_the_env_stops_with_one_line_naming_the_key(tmp_path):
    prepare_run(compose_config([*TINY, f"run_dir={tmp_path}"]))  # the run's config.yaml
    # and a checkpoint (marked complete): a run that has learned (one without starts over)
    (tmp_path / "checkpoints" / "ckpt_000000000048").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ckpt_000000000048" / "COMPLETE").write_text("48")
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), f"resume={tmp_path}", "env.name=InvertedPendulum-v5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode != 0
    [line] = resumed.stderr.strip().splitlines()
    assert line.startswith(
        f"error: env.name='InvertedPendulum-v5' cannot change on resume: the run in {tmp_path} "
        "has env.name='Pendulum-v1'"
    )


def test_a_disk_buffer_run_resumes_from_its_checkpoint(tmp_path):
    disk = [f"algorithm.replay_buffer.{key}" for key in ("storage=disk", "enable_cache=true")]
    run([*disk, "algorithm.replay_buffer.cache_size=4", "collector.total_frames=48"], tmp_path)
    resume(tmp_path, "collector.total_frames=96")
    rows = (tmp_path / "eval.csv").read_text().splitlines()[1:]
    assert [int(float(row.split(",")[0])) for row in rows] == [48, 96]


def test_resume_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    cfg = compose_config([*TINY, f"resume={tmp_path}"])
    with pytest.raises(ConfigError, match="is not a run directory"):
        load_script().train(cfg)


def test_embodied_block_loads_verbatim_and_trains_a_few_updates(tmp_path):
    cfg = compose_config(["experiment=embodied"])
    assert cfg.algorithm.update_epoch == 32 and cfg.algorithm.gamma == 0.8
    assert cfg.algorithm.entropy_tuning.alpha_type == "softplus"
    assert cfg.algorithm.replay_buffer.sample_window_size == 6000
    run(
        [
            "experiment=embodied",
            "env=pendulum",
            "env.backend=gymnasium",
            "env.num_envs=2",
            "env.vectorization=serial",
            "collector.frames_per_batch=16",
            "algorithm.update_epoch=2",
            "algorithm.replay_buffer.size=10000",
        ],
        tmp_path,
    )
    assert (tmp_path / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "experiment", [None, *(p.stem for p in sorted((CONFIGS / "experiment").glob("*.yaml")))]
)
@pytest.mark.parametrize("env", [p.stem for p in sorted((CONFIGS / "env").glob("*.yaml"))])
def test_every_shipped_config_loads_and_validates(experiment, env):
    overrides = [f"env={env}"] + ([f"experiment={experiment}"] if experiment else [])
    validate(compose_config(overrides))


BAD_VALUES = {key: "not-a-choice" for key in CHOICES}
BAD_VALUES["algorithm.group_size"] = 2


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_each_bad_enumerated_value_names_the_key(key):
    cfg = compose_config([])
    OmegaConf.update(cfg, key, BAD_VALUES[key])
    with pytest.raises(ConfigError, match=rf"^{key}=.*use one of"):
        validate(cfg)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=-1", "optim.lr"),
        ("algorithm.gamma=1.5", "algorithm.gamma"),
        ("algorithm.replay_buffer.cache_size=-3", "algorithm.replay_buffer.cache_size"),
        ("env.num_envs=3", "collector.frames_per_batch"),
        # Each passed validation and failed later: a torch traceback, a NaN at the end of the
        # BRN warmup, a crash at the first update or the first extend, or a silent run.
        ("optim.beta1=1.0", r"optim.beta1=1.0 must be in \[0, 1\)"),
        ("optim.beta2=1.0", r"optim.beta2=1.0 must be in \[0, 1\)"),
        ("network.batch_norm_momentum=5", r"network.batch_norm_momentum=5.0 must be in \(0, 1\]"),
        ("network.rmax=nan", "network.rmax=nan must be a finite number"),
        ("algorithm.entropy_tuning.target_entropy=nan", "target_entropy=nan is not supported"),
        ("algorithm.entropy_tuning.target_entropy=true", "target_entropy=True is not supported"),
        ("algorithm.entropy_tuning.optim.lr=inf", "entropy_tuning.optim.lr=inf must be"),
        ("optim.batch_size=1", "optim.batch_size=1 must be >= 2 with Batch Renormalization"),
        ("collector.frames_per_batch=2000000", "frames_per_batch=2000000 exceeds algorithm.replay"),
        ("run_dir=''", "run_dir='' is empty"),
        ("resume=''", "resume='' is empty"),
        ("ray.num_cpus=0", "ray.num_cpus=0 must be >= 1"),
        ("cudagraphs=true", "cudagraphs=true needs compile=true"),  # was found after env builds
        (
            "collector.total_frames=300 algorithm.replay_buffer.min_buffer_size=500",
            "min_buffer_size=500 trajectories can never be written",
        ),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(override.split()))


def test_the_sac_head_without_brn_takes_a_batch_of_one():
    validate(compose_config(["experiment=sac", "optim.batch_size=1"]))


def test_the_ray_backend_without_ray_names_the_key_and_the_other_backends(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"collector.backend=ray needs Ray.*use one of: sync"):
        validate(compose_config(["collector.backend=ray", "collector.frames_per_batch=2"]))


def test_threads_is_checked_and_applied(tmp_path):
    with pytest.raises(ConfigError, match=r"^threads=0 must be >= 1"):
        validate(compose_config(["threads=0"]))
    before = torch.get_num_threads()
    try:
        run(["threads=1", "logger.backend=none"], tmp_path)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_window_larger_than_the_capacity_names_the_key():
    cfg = compose_config(["experiment=embodied", "algorithm.replay_buffer.size=100"])
    with pytest.raises(
        ConfigError, match=r"algorithm.replay_buffer.sample_window_size=6000 exceeds"
    ):
        validate(cfg)


def test_cli_typo_and_bad_value_stop_before_any_work(tmp_path):
    # The two processes run side by side: each spends its seconds importing.
    typo, bad = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), override, f"run_dir={tmp_path}/{name}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, override in (("a", "algorithm.agg_qq=min"), ("b", "algorithm.agg_q=max"))
    ]  # fmt: skip
    typo_stderr = typo.communicate(timeout=120)[1]
    bad_stderr = bad.communicate(timeout=120)[1]
    assert typo.returncode != 0 and "agg_qq" in typo_stderr
    assert bad.returncode != 0
    assert "algorithm.agg_q='max' is not supported; use one of: min, mean" in bad_stderr
    assert "Traceback" not in bad_stderr


def test_unknown_env_id_lists_close_matches(tmp_path):
    cfg = compose_config([*TINY, f"run_dir={tmp_path}", "env.name=Pendulum-v2"])
    from torchrl_crossq.envs import UnknownEnvError

    with pytest.raises(UnknownEnvError, match="did you mean: Pendulum-v1"):
        load_script().train(cfg)


def test_same_seed_gives_the_same_first_eval_return(tmp_path):
    first = run(["seed=3", "logger.backend=none"], tmp_path / "a")
    second = run(["seed=3", "logger.backend=none"], tmp_path / "b")
    rows = [(p / "eval.csv").read_text().splitlines()[1] for p in (first, second)]
    assert rows[0] == rows[1]
    other = run(["seed=4", "logger.backend=none"], tmp_path / "c")
    assert (other / "eval.csv").read_text().splitlines()[1] != rows[0]


def test_sigint_writes_a_checkpoint_before_exiting(tmp_path):
    import signal
    import time

    args = [a for a in TINY if not a.startswith(("collector.total_frames", "checkpoint.interval"))]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "collector.total_frames=1000000",
         "checkpoint.interval=0", "logger.backend=none", f"run_dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    eval_csv = tmp_path / "eval.csv"
    while time.monotonic() < deadline and proc.poll() is None:
        if eval_csv.exists() and len(eval_csv.read_text().splitlines()) > 1:
            break  # training is under way: the first evaluation is done
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    checkpoints = list((tmp_path / "checkpoints").glob("ckpt_*/COMPLETE"))
    assert len(checkpoints) == 1
    assert int(checkpoints[0].read_text()) >= 48


def test_same_seed_gives_bit_identical_training_losses(tmp_path):
    runs = [run(["seed=5", "logger.backend=csv"], tmp_path / name) for name in "ab"]
    logs = [next(r.rglob("scalars/train/loss_qvalue.csv")).read_text() for r in runs]
    assert len(logs[0].splitlines()) >= 2
    assert logs[0] == logs[1]


def test_the_first_window_spent_learning_prints_the_remaining_time(tmp_path, capsys):
    run(["logger.log_interval=32", "logger.backend=none"], tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if "estimate:" in line]
    # Learning starts after 32 random frames: the window 32-64 is the first spent learning.
    assert len(lines) == 1 and "left for 32 frames at" in lines[0]


def test_with_compile_the_estimate_waits_out_the_compiling_window(tmp_path, capsys, monkeypatch):
    # torch.compile made an identity here: the rule reads the config, not the clock.
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    run(["logger.log_interval=16", "logger.backend=none", "compile=true"], tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if "estimate:" in line]
    # Learning starts after 32 random frames; 32-48 compiles, 48-64 is the first measured.
    assert len(lines) == 1 and "left for 32 frames at" in lines[0]
