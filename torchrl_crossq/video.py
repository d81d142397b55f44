"""Eval videos: one deterministic episode rendered to MP4, and handed to the run's logger.

MuJoCo (gymnasium's v5 tasks, Meta-World) renders headless through EGL: unless ``MUJOCO_GL``
is already set, :func:`record_episode` sets it to ``egl`` before the first frame (the
renderer reads it then; OSMesa is the other headless choice, ``MUJOCO_GL=osmesa``). Frames are
encoded with the ffmpeg binary of the ``imageio-ffmpeg`` wheel, so no system ffmpeg is needed.
Anything missing (GL, the encoder, a renderer) raises :class:`VideoUnavailable`, whose message
is one line a training run prints as a warning and carries on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq.envs import check_env, make_gym_env, reset_seeded
from torchrl_crossq.modules.networks import set_training_mode

ENCODER_INSTALL = "pip install 'imageio[ffmpeg]'"
GL_HINT = (
    "headless MuJoCo needs EGL (apt-get install libegl1) or OSMesa "
    "(MUJOCO_GL=osmesa, apt-get install libosmesa6)"
)
# TensorBoard keeps a video as a GIF inside its event file: longer episodes are subsampled.
TENSORBOARD_MAX_FRAMES = 250


class VideoUnavailable(RuntimeError):
    """A video cannot be made or logged here; the message says why in one line."""


def record_episode(
    policy,
    path: str | Path,
    *,
    env_name: str,
    task: str | None = None,
    max_episode_steps: int | None = None,
    max_steps: int = 1_000,
    seed: int = 0,
    task_seed: int | None = None,
    fps: int | None = None,
    observation_key: str = "observation",
    action_key: str = "action",
) -> Path:
    """Renders one deterministic episode of ``policy`` to an MP4 file at ``path``.

    The env is the plain gymnasium task (:func:`~torchrl_crossq.envs.make_gym_env`, as
    :class:`~torchrl_crossq.envs.BatchedEvaluation` steps it) with
    ``render_mode="rgb_array"``; frames are the simulator's own size (480 x 480 for MuJoCo
    and Meta-World). The video holds the state after the reset and after each step:
    ``steps + 1`` frames. The policy acts as in evaluation (deterministic action, eval mode).

    Args:
        policy: a TorchRL actor ``observation -> action``.
        path: where the ``.mp4`` goes; its folder is created.

    Keyword Args:
        env_name: a gymnasium id, or ``"Meta-World/MT1"`` with ``task``.
        task: the Meta-World task.
        max_episode_steps: override of the task's time limit.
        max_steps: the episode stops after this many steps at most.
        seed: the reset's seed (the episode's initial state).
        task_seed: Meta-World's construction seed (see :func:`~torchrl_crossq.envs.make_gym_env`).
        fps: frames per second of the video (``None``: the env's ``render_fps``, real time).
        observation_key: the policy's observation input key.
        action_key: the policy's action output key.

    Returns:
        ``path``.

    Raises:
        VideoUnavailable: the encoder is not installed, or the env cannot render here
            (no headless OpenGL, a renderer's package missing).
    """
    imageio = _require_encoder()
    path = Path(path)
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless; read when the first frame is rendered
    check_env(env_name, task)
    try:
        env = make_gym_env(
            env_name, task, max_episode_steps, task_seed=task_seed, render_mode="rgb_array"
        )
    except Exception as err:  # a constructor without render_mode, a renderer's package missing
        raise VideoUnavailable(
            f"{env_name} cannot be made with render_mode='rgb_array': {type(err).__name__}: "
            f"{_first_line(err)}"
        ) from err
    device = next(iter(policy.parameters()), torch.empty(0)).device
    try:
        observation, _ = reset_seeded(env, seed)
        frames = [_render(env, env_name)]
        with (
            torch.no_grad(),
            set_exploration_type(ExplorationType.DETERMINISTIC),
            set_training_mode(policy, False),
        ):
            for _ in range(max_steps):
                obs = torch.as_tensor(observation, dtype=torch.float32, device=device)
                action = policy(TensorDict({observation_key: obs})).get(action_key)
                observation, _, terminated, truncated, _ = env.step(action.cpu().numpy())
                frames.append(_render(env, env_name))
                if terminated or truncated:
                    break
        fps = fps or env.metadata.get("render_fps") or 30
    finally:
        env.close()  # frees the GL context while the display still exists
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # no half-written video on a kill
    with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264") as writer:
        for frame in frames:
            writer.append_data(frame)
    tmp.replace(path)
    return path


def _require_encoder():
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the plugin's ffmpeg binary)
    except ImportError as err:
        raise VideoUnavailable(f"eval videos need an MP4 encoder: {ENCODER_INSTALL}") from err
    return imageio


def _first_line(err: Exception) -> str:
    """The first line of an error's message (``""`` for none): the one-line reason given."""
    return str(err).splitlines()[0] if str(err) else ""


def _render(simulator, env_name: str):
    try:
        frame = simulator.render()
    except Exception as err:  # GL, pygame, ...: each simulator fails its own way
        reason = _first_line(err)
        hint = "" if "install" in reason else f"; {GL_HINT}"
        raise VideoUnavailable(
            f"{env_name} cannot render here (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): "
            f"{type(err).__name__}: {reason}{hint}"
        ) from err
    if frame is None:
        raise VideoUnavailable(f"{env_name} rendered no frame (render_mode='rgb_array' ignored)")
    return frame


def read_video(path: str | Path) -> torch.Tensor:
    """The frames of a video file as a uint8 tensor ``[T, H, W, 3]``."""
    imageio = _require_encoder()
    with imageio.get_reader(path, format="FFMPEG") as reader:  # len(reader) is inf: iterate
        return torch.stack([torch.from_numpy(frame) for frame in reader])


def log_video(logger, path: str | Path, *, step: int, name: str = "eval/video") -> None:
    """Hands the video file at ``path`` to a TorchRL logger, under ``name`` at ``step``.

    wandb gets the MP4 itself; TensorBoard an animated GIF (its only video format, real-time
    speed, at most :data:`TENSORBOARD_MAX_FRAMES` frames); the CSV logger and no logger keep
    the file where it is. Neither path needs moviepy, which TorchRL's ``log_video`` does.

    Raises:
        VideoUnavailable: a logger that cannot take videos (the file stays at ``path``).
    """
    from torchrl.record.loggers import CSVLogger, TensorboardLogger, WandbLogger

    if logger is None or isinstance(logger, CSVLogger):
        return
    if isinstance(logger, WandbLogger):
        import wandb

        prefix, sep, _ = name.rpartition("/")
        step_key = f"{prefix}{sep}step"  # TorchRL's WandbLogger steps each group by <group>/step
        logger.experiment.define_metric(name, step_metric=step_key)
        logger.experiment.log({name: wandb.Video(str(path), format="mp4"), step_key: step})
        return
    if isinstance(logger, TensorboardLogger):
        _log_tensorboard_gif(logger.experiment, path, step=step, name=name)
        return
    raise VideoUnavailable(f"{type(logger).__name__} cannot take videos; the video stays at {path}")


def _log_tensorboard_gif(writer, path: str | Path, *, step: int, name: str) -> None:
    import io

    import imageio.v2 as imageio
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    with imageio.get_reader(path, format="FFMPEG") as reader:
        fps = reader.get_meta_data().get("fps") or 30
        frames = [frame for frame in reader]  # not list(reader): its len() is inf
    every = math.ceil(len(frames) / TENSORBOARD_MAX_FRAMES)
    images = [Image.fromarray(frame) for frame in frames[::every]]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 * every / fps),
        loop=0,
    )
    height, width = frames[0].shape[:2]
    image = Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue()
    )
    writer._get_file_writer().add_summary(
        Summary(value=[Summary.Value(tag=name, image=image)]), step
    )
    writer.flush()
