"""The logging layer: logger factory and close, the training-metrics window."""

import csv
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from torchrl_crossq.checkpoint import truncate_csv_logs
from torchrl_crossq.logging import (
    LOGGER_BACKENDS,
    EvalHistory,
    TrainingWindow,
    close_logger,
    make_logger,
)


def collected(returns, done):
    """A collector batch of ``len(done)`` steps with episode returns and done flags."""
    n = len(done)
    return TensorDict(
        {
            "next": {
                "done": torch.tensor(done).reshape(n, 1),
                "episode_reward": torch.tensor(returns, dtype=torch.float32).reshape(n, 1),
            }
        },
        [n],
    )


def test_window_logs_the_mean_return_of_the_episodes_that_ended_then_starts_over():
    window = TrainingWindow()
    window.add_batch(collected([1.0, 2.0, 4.0], [False, True, True]))
    window.add_update(TensorDict({"loss_qvalue": torch.tensor(0.5)}, []))
    scalars = window.scalars()
    assert scalars["train/return"] == 3.0 and scalars["train/loss_qvalue"] == 0.5
    assert scalars["perf/frames_per_s"] > 0 and scalars["perf/updates_per_s"] > 0
    later = window.scalars()
    assert "train/return" not in later and later["perf/frames_per_s"] == 0.0
    assert later["train/loss_qvalue"] == 0.5  # the latest value until the next update


def test_window_logs_each_metric_averaged_over_the_updates_that_computed_it():
    # It logged the last update's value alone: 1 of ~1000 minibatches per log.
    window = TrainingWindow()
    for step, loss in enumerate([1.0, 2.0, 30.0], start=1):
        metrics = {"loss_qvalue": torch.tensor(loss)}
        if step == 3:  # an actor update, every policy delay
            metrics["loss_actor"] = torch.tensor(-4.0)
        window.add_update(TensorDict(metrics, []))
    scalars = window.scalars()
    assert scalars["train/loss_qvalue"] == 11.0 and scalars["train/loss_actor"] == -4.0
    window.add_update(TensorDict({"loss_qvalue": torch.tensor(5.0)}, []))
    later = window.scalars()
    assert later["train/loss_qvalue"] == 5.0 and later["train/loss_actor"] == -4.0


def test_a_long_window_keeps_a_bounded_number_of_values():
    window = TrainingWindow()
    updates = 3 * TrainingWindow._CHUNK + 5
    for step in range(updates):
        window.add_update(TensorDict({"loss_qvalue": torch.tensor(float(step))}, []))
    assert len(window._window_metrics["loss_qvalue"]) <= TrainingWindow._CHUNK
    assert window.scalars()["train/loss_qvalue"] == (updates - 1) / 2


def test_unknown_logger_backend_names_the_argument_and_choices(tmp_path):
    with pytest.raises(ValueError, match=r"^backend='mlflw' is not supported; use one of: wandb"):
        make_logger("mlflw", tmp_path, exp_name="x")


@pytest.mark.parametrize("backend", LOGGER_BACKENDS)
def test_close_logger_ends_every_backend(tmp_path, backend, monkeypatch):
    if backend == "tensorboard":
        pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = make_logger(backend, tmp_path, exp_name="x", wandb_mode="offline")
    close_logger(logger)
    if backend == "wandb":
        import wandb

        assert wandb.run is None  # finished by the logger layer


def test_a_kill_while_eval_csv_is_rewritten_keeps_its_rows(tmp_path, monkeypatch):
    # Every append rewrites the file: written in place, a kill there left it empty.
    history = EvalHistory(tmp_path / "eval.csv")
    history.append(100, -5.0, 1.0)

    def killed(self, rows):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        history.append(200, -4.0, 1.0)
    monkeypatch.undo()
    assert [row["frames"] for row in EvalHistory(tmp_path / "eval.csv").rows] == [100]


def test_a_kill_while_csv_logs_are_truncated_keeps_their_rows(tmp_path, monkeypatch):
    scalars = tmp_path / "logs" / "exp" / "scalars"
    scalars.mkdir(parents=True)
    (scalars / "loss.csv").write_text("10,1.0\n20,2.0\n30,3.0\n")

    def killed(self, *args, **kwargs):
        self.open("w").close()  # opened for writing, nothing written yet
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_csv_logs(tmp_path / "logs", 20)
    monkeypatch.undo()
    assert (scalars / "loss.csv").read_text() == "10,1.0\n20,2.0\n30,3.0\n"
    truncate_csv_logs(tmp_path / "logs", 20)
    assert (scalars / "loss.csv").read_text() == "10,1.0\n20,2.0\n"
    assert [p.name for p in scalars.iterdir()] == ["loss.csv"]


def test_tensorboard_of_a_resumed_run_holds_each_step_once(tmp_path):
    # The steps between the checkpoint and a kill were shown twice after the resume.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def log(steps, value, **kwargs):
        logger = make_logger("tensorboard", tmp_path, exp_name="run", **kwargs)
        for step in steps:
            logger.log_scalar("train/x", value, step=step)
        close_logger(logger)

    log([100, 200, 300, 400], 1.0)  # killed after 400, checkpoint at 300
    log([400, 500], 2.0, resumed_at=300)
    events = EventAccumulator(str(tmp_path / "logs" / "run"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/x")]
    assert logged == [(100, 1.0), (200, 1.0), (300, 1.0), (400, 2.0), (500, 2.0)]
