"""sota_implementations/evaluate.py: a saved run's latest checkpoint, evaluated again."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_train_script import TINY, compose_config, load_script
from test_video import needs_gl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sota_implementations" / "evaluate.py"
# A MuJoCo task, so that --video renders headless as the locomotion tasks do.
TRAIN = [o for o in TINY if not o.startswith("env=")] + ["env=inverted_pendulum"]


def load_evaluate():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(run_dir, *overrides):
    load_script().train(compose_config([*TRAIN, f"run_dir={run_dir}", *overrides]))
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(tmp_path_factory.mktemp("run") / "run")


def last_eval(run_dir):
    return (run_dir / "eval.csv").read_text().splitlines()[-1].split(",")


def test_default_evaluation_reproduces_the_runs_last_eval(run_dir, capsys):
    load_evaluate().main([str(run_dir)])
    out = capsys.readouterr().out
    frames, return_mean, *_ = last_eval(run_dir)
    assert f"InvertedPendulum-v5 at {frames} frames" in out
    assert f"return {float(return_mean):.1f} +- 0.0 over 1 episodes" in out


def test_evaluate_run_returns_mean_std_over_the_episodes(run_dir):
    result, info = load_evaluate().evaluate_run(run_dir, episodes=3, seed=7)
    assert info["episodes"] == 3 and info["seed"] == 7 and info["frames"] == 96
    assert result.return_std >= 0 and result.success_rate is None  # no success on this task


def test_bf16_run_evaluates_like_an_fp32_one(tmp_path):
    # bf16 autocasts the losses; the checkpoint's weights stay float32.
    run_dir = train(tmp_path / "bf16", "precision=bf16")
    result, _ = load_evaluate().evaluate_run(run_dir)
    assert result.return_mean == pytest.approx(float(last_eval(run_dir)[1]), rel=1e-6)


def test_checkpoint_of_another_env_is_a_one_line_error(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("wandb"))  # live logger files
    cfg = OmegaConf.load(other / "config.yaml")
    cfg.env.name = "Pendulum-v1"  # 3 observations, not InvertedPendulum's 4
    OmegaConf.save(cfg, other / "config.yaml")
    with pytest.raises(SystemExit) as err:
        load_evaluate().main([str(other)])
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "(4, 1)" in message and "(3, 1)" in message


def test_directory_without_config_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .* has no config.yaml$"):
        load_evaluate().main([str(tmp_path)])


def test_run_without_checkpoint_is_a_one_line_error(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    with pytest.raises(SystemExit, match=r"^error: .* has no checkpoint yet"):
        load_evaluate().main([str(empty)])


def test_load_actor_weights_takes_the_trained_actor_from_the_loss_state(run_dir):
    evaluate = load_evaluate()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    _, actor = evaluate.make_env_and_actor(cfg, seed=0)
    state = torch.load(
        sorted((run_dir / "checkpoints").glob("ckpt_*"))[-1] / "state.pt", weights_only=False
    )
    evaluate.load_actor_weights(actor, state["loss"])
    for name, value in actor.state_dict().items():
        torch.testing.assert_close(value, state["loss"][f"actor_network_params.{name}"])


@needs_gl
def test_video_flag_writes_the_episode_to_the_run_dir(run_dir, capsys):
    load_evaluate().main([str(run_dir), "--video"])
    out = capsys.readouterr().out
    assert f"video: {run_dir / 'videos' / 'evaluate_96.mp4'}" in out
    assert (run_dir / "videos" / "evaluate_96.mp4").stat().st_size > 0


def test_video_that_cannot_be_made_is_one_warning_line(run_dir, capsys, monkeypatch):
    evaluate = load_evaluate()

    def unavailable(*args, **kwargs):
        raise evaluate.VideoUnavailable("no GL here")

    from torchrl_crossq import from_config

    monkeypatch.setattr(from_config, "record_episode", unavailable)
    evaluate.main([str(run_dir), "--video"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "warning: no video: no GL here" and "return" in out[-2]
