"""Eval videos: one deterministic episode to MP4, and the file handed to each logger."""

import ctypes.util
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.data import Bounded

from torchrl_crossq import make_actor
from torchrl_crossq.envs import env_dims, make_env
from torchrl_crossq.logging import make_logger
from torchrl_crossq.video import VideoUnavailable, log_video, read_video, record_episode

imageio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")

HEADLESS_GL = os.environ.get("MUJOCO_GL") or ctypes.util.find_library("EGL")
needs_gl = pytest.mark.skipif(
    not HEADLESS_GL,
    reason="no headless OpenGL here: MuJoCo renders through EGL (apt-get install libegl1) "
    "or OSMesa (MUJOCO_GL=osmesa)",
)


def cheetah_actor():
    env = make_env("HalfCheetah-v5")
    torch.manual_seed(0)
    return make_actor(env_dims(env)[0], env.action_spec_unbatched, num_cells=(8,))


def write_video(path, frames=6, size=(32, 48)):
    with imageio.get_writer(path, format="FFMPEG", fps=10, codec="libx264") as writer:
        for t in range(frames):
            writer.append_data(np.full((*size, 3), 20 * t, dtype=np.uint8))
    return path


@needs_gl
def test_record_episode_writes_an_mp4_with_one_frame_per_state(tmp_path):
    # HalfCheetah never terminates: 5 steps, and the state after the reset.
    path = record_episode(
        cheetah_actor(), tmp_path / "videos" / "ep.mp4", env_name="HalfCheetah-v5", max_steps=5
    )
    frames = read_video(path)
    assert frames.shape == (6, 480, 480, 3)
    assert frames.float().std() > 0  # a rendered scene, not a blank frame


def test_a_simulator_that_cannot_render_raises_one_line(tmp_path, monkeypatch):
    import gymnasium.envs.mujoco.mujoco_env as mujoco_env

    def no_gl(self):
        raise RuntimeError("Cannot initialize a EGL device display.\nmore detail")

    monkeypatch.setattr(mujoco_env.MujocoEnv, "render", no_gl)
    with pytest.raises(VideoUnavailable) as err:
        record_episode(cheetah_actor(), tmp_path / "ep.mp4", env_name="HalfCheetah-v5")
    message = str(err.value)
    assert "\n" not in message and "EGL" in message and "apt-get install libegl1" in message
    assert not (tmp_path / "ep.mp4").exists()


def test_an_env_that_takes_no_render_mode_raises_one_line(tmp_path):
    # Made outside the try, its TypeError ended a training run at its first video.
    class NoRenderMode(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    name = f"Test/NoRenderMode-{len(gym.registry)}-v0"
    gym.register(name, entry_point=lambda: NoRenderMode())  # no **kwargs: render_mode fails
    actor = make_actor(3, Bounded(-1.0, 1.0, shape=(1,)), num_cells=(8,))
    with pytest.raises(
        VideoUnavailable, match=rf"^{name} cannot be made with render_mode='rgb_array': TypeError"
    ):
        record_episode(actor, tmp_path / "ep.mp4", env_name=name)


def test_a_missing_encoder_raises_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(VideoUnavailable, match=r"pip install 'imageio\[ffmpeg\]'"):
        record_episode(cheetah_actor(), tmp_path / "ep.mp4", env_name="HalfCheetah-v5")


def test_read_video_gives_frames_time_height_width_rgb(tmp_path):
    frames = read_video(write_video(tmp_path / "v.mp4"))
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == torch.uint8


@pytest.mark.parametrize("backend", ["csv", "none"])
def test_csv_and_no_logger_keep_the_file_where_it_is(tmp_path, backend):
    video = write_video(tmp_path / "v.mp4")
    log_video(make_logger(backend, tmp_path, exp_name="run"), video, step=10)
    assert read_video(video).shape[0] == 6


def test_tensorboard_gets_the_video_as_an_animated_image(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = make_logger("tensorboard", tmp_path, exp_name="run")
    log_video(logger, write_video(tmp_path / "v.mp4"), step=10)
    events = EventAccumulator(str(tmp_path / "logs" / "run"))
    events.Reload()
    (image,) = events.Images("eval/video")
    assert (image.step, image.width, image.height) == (10, 48, 32)
    assert image.encoded_image_string.startswith(b"GIF")


def test_wandb_gets_the_mp4_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = make_logger("wandb", tmp_path, exp_name="run")
    log_video(logger, write_video(tmp_path / "v.mp4"), step=10)
    logger.experiment.finish()
    (logged,) = tmp_path.glob("wandb/offline-run-*/files/media/videos/eval/video_*.mp4")
    assert read_video(logged).shape == (6, 32, 48, 3)


@needs_gl
def test_training_with_eval_video_writes_a_video_past_each_interval(tmp_path):
    from test_train_script import run

    from torchrl_crossq.video import read_video

    run(
        [
            "env=inverted_pendulum",
            "eval.video=true",
            "eval.video_interval=96",
            "logger.backend=csv",
        ],
        tmp_path,
    )
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["eval_96.mp4"]  # the evals at 48 and 96 frames: one interval passed
    frames = read_video(tmp_path / "videos" / "eval_96.mp4")
    assert frames.shape[0] >= 2 and frames.shape[1:] == (480, 480, 3)


def test_training_with_eval_video_where_none_can_be_made_warns_once_and_trains(
    tmp_path, monkeypatch, capsys
):
    from test_train_script import run

    from torchrl_crossq import from_config

    def unavailable(*args, **kwargs):
        raise from_config.VideoUnavailable("no OpenGL here")

    monkeypatch.setattr(from_config, "record_episode", unavailable)
    run(["eval.video=true", "eval.video_interval=48", "logger.backend=none"], tmp_path)
    out = capsys.readouterr().out
    assert out.count("warning: eval.video: no OpenGL here") == 1
    assert len((tmp_path / "eval.csv").read_text().splitlines()) == 3  # header, 48, 96
