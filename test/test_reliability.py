"""Crash safety, numerical guards and bad input (kill, resume, corrupted files, fuzzed configs)."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ACTION_DIM, OBS_DIM, make_batch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tensordict import TensorDict
from test_train_script import SCRIPT, TINY, compose_config, load_script, run

from torchrl_crossq import (
    CrossQLoss,
    CrossQUpdater,
    NonFiniteLossError,
    make_actor,
    make_critic,
    make_optimizers,
)
from torchrl_crossq.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    recover_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from torchrl_crossq.config import (
    CHOICES,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    ConfigError,
    prepare_run,
    validate,
)
from torchrl_crossq.data import make_replay_buffer
from torchrl_crossq.logging import write_text_atomically
from torchrl_crossq.objectives.update import make_lr_scheduler


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_sigkill_mid_run_then_resume_reaches_the_final_frame_count(tmp_path):
    args = [a for a in TINY if not a.startswith(("collector.total_frames", "checkpoint.interval"))]
    common = [*args, "collector.total_frames=400", "checkpoint.interval=64", "logger.backend=csv"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *common, f"run_dir={tmp_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert wait_for(lambda: len(list_checkpoints(tmp_path / "checkpoints")) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = int(list_checkpoints(tmp_path / "checkpoints")[-1].name.split("_")[1])
    assert 0 < killed_at < 400
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), f"resume={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at {killed_at} frames" in resumed.stdout
    state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["frames"] == 400
    # Every transition collected up to the checkpoint survived the kill, then the rest came in.
    buffer = torch.load(
        tmp_path / "checkpoints" / "ckpt_000000000400" / "replay" / "sampler" / "sampler_state.pt",
        weights_only=True,
    )
    assert buffer["num_written"] == 400
    frames = [float(r.split(",")[0]) for r in (tmp_path / "eval.csv").read_text().splitlines()[1:]]
    assert frames == sorted(set(frames))  # no evaluation duplicated by the resume
    assert frames == [48 * k for k in range(1, 9)] + [400]  # the schedule survives the kill
    logged = next((tmp_path / "logs").rglob("scalars/eval/return.csv")).read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in logged]
    assert steps == sorted(set(steps)) and steps[-1] == 400


def logged(run_dir, name="train/loss_qvalue"):
    text = next(run_dir.rglob(f"scalars/{name}.csv")).read_text()
    return {int(step): value for step, value in (line.split(",") for line in text.splitlines())}


@pytest.mark.parametrize(
    "envs, resumed_with",
    [
        (["env.num_envs=1"], []),
        (["env.num_envs=2", "env.vectorization=serial"], []),
        (["env=halfcheetah", "env.num_envs=1"], []),  # MuJoCo: the same qpos/qvel/warm start
        # Checkpoints of either single-env collector resume with the other.
        (["env.num_envs=1", "collector.direct=false"], ["collector.direct=true"]),
        (["env.num_envs=1"], ["collector.direct=false"]),
        # Batches that hold the end of one episode and the start of the next, and a window
        # counted in trajectories: the resumed collector gave its episodes ids already used,
        # so two episodes made one trajectory and the window differed.
        *(
            (
                [
                    "env.num_envs=1",
                    f"collector.direct={direct}",
                    "collector.frames_per_batch=3",
                    "collector.total_frames=162",
                    # the checkpoint at 48 falls in trajectory 1, whose end shares a batch
                    # with the next episode's start (frames 60-62)
                    "env.max_episode_steps=31",
                    "algorithm.replay_buffer.window_unit=trajectory",
                    "algorithm.replay_buffer.sample_window_size=2",
                ],
                [],
            )
            for direct in ("true", "false")
        ),
    ],
)
def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path, envs, resumed_with):
    overrides = [
        "seed=7",
        "collector.total_frames=160",
        "env.max_episode_steps=20",  # episodes are under way at the checkpoint
        "logger.backend=csv",
        "logger.log_interval=16",
        "checkpoint.interval=48",
        "checkpoint.keep=10",
        *envs,  # last: a case may replace the keys above
    ]
    whole = run(overrides, tmp_path / "whole")
    # "Kill" a copy right after its checkpoint at 48 frames: only that checkpoint survives.
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "config.yaml").write_text((whole / "config.yaml").read_text())
    import shutil

    shutil.copytree(
        whole / "checkpoints" / "ckpt_000000000048",
        killed / "checkpoints" / "ckpt_000000000048",
    )
    typed = [f"resume={killed}", *resumed_with]
    load_script().train(compose_config(typed), overrides=typed)
    expected = {step: v for step, v in logged(whole).items() if step > 48}
    assert len(expected) >= 6  # every round after the checkpoint
    for name in ("train/loss_qvalue", "train/loss_actor", "train/alpha", "eval/return"):
        after = {step: v for step, v in logged(whole, name).items() if step > 48}
        assert logged(killed, name) == after, name


def test_a_finished_run_trained_further_gives_the_losses_of_a_longer_run(tmp_path):
    # The final checkpoint is written before the envs close: their episodes continue.
    overrides = [
        "seed=3",
        "env.max_episode_steps=20",  # an episode is under way at the end of the short run
        "logger.backend=csv",
        "logger.log_interval=16",
        "checkpoint.interval=48",
    ]
    longer = run([*overrides, "collector.total_frames=160"], tmp_path / "longer")
    shorter = run([*overrides, "collector.total_frames=96"], tmp_path / "shorter")
    typed = [f"resume={shorter}", "collector.total_frames=160"]
    load_script().train(compose_config(typed), overrides=typed)
    for name in ("train/loss_qvalue", "train/loss_actor", "eval/return"):
        assert logged(shorter, name) == logged(longer, name), name


def test_resume_below_the_frames_already_held_is_refused_and_the_config_kept(tmp_path):
    cfg = compose_config([*TINY, f"run_dir={tmp_path}"])
    prepare_run(cfg)
    (tmp_path / "checkpoints" / "ckpt_000000000096").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ckpt_000000000096" / "COMPLETE").write_text("96")
    saved = (tmp_path / "config.yaml").read_text()
    typed = [f"resume={tmp_path}", "collector.total_frames=64"]
    with pytest.raises(ConfigError, match=r"total_frames=64 is below the 96 frames.*at least 96"):
        prepare_run(compose_config(typed), overrides=typed)
    assert (tmp_path / "config.yaml").read_text() == saved


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    run([], tmp_path)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    load_script().train(compose_config([f"resume={tmp_path}"]))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_resume_of_a_run_killed_in_its_final_evaluation_only_evaluates(tmp_path):
    # It printed "nothing to resume": the final evaluation and the curve were never made.
    run([], tmp_path)
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[-1].startswith("96,")
    (tmp_path / "eval.csv").write_text("".join(f"{row}\n" for row in rows[:-1]))
    (tmp_path / "curve.png").unlink()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    load_script().train(compose_config([f"resume={tmp_path}"]))
    assert (tmp_path / "eval.csv").read_text().splitlines() == rows  # the same evaluation
    assert (tmp_path / "curve.png").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == checkpoints


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path):
    for frames in (10, 20):
        save_checkpoint(tmp_path, frames, {"frames": frames, "x": torch.arange(1000)}, keep=3)
    newest = tmp_path / "ckpt_000000000020" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"ckpt_000000000020 is unreadable"):
        state = load_latest_checkpoint(tmp_path)
    assert state["frames"] == 10


def test_a_run_whose_checkpoints_are_all_unreadable_is_refused_not_restarted(tmp_path):
    run([], tmp_path)
    for state in (tmp_path / "checkpoints").glob("ckpt_*/state.pt"):
        state.write_bytes(state.read_bytes()[:100])
    eval_csv = (tmp_path / "eval.csv").read_text()
    with pytest.raises(SystemExit, match=r"^error: no checkpoint in .* could be loaded"):
        load_script().main.__wrapped__(compose_config([f"resume={tmp_path}"]))
    assert (tmp_path / "eval.csv").read_text() == eval_csv


def test_keeps_only_the_last_k_checkpoints_and_no_temporary_folders(tmp_path):
    for frames in range(1, 6):
        save_checkpoint(tmp_path, frames, {"frames": frames}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_000000000004",
        "ckpt_000000000005",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000000004", "ckpt_000000000005"]


def test_a_kill_while_a_checkpoint_is_written_again_keeps_it(tmp_path, monkeypatch):
    # The end of a run saves the frame count its interval just saved: the old folder was
    # deleted before the new one was renamed in, so a kill there lost the checkpoint.
    save_checkpoint(tmp_path, 5, {"frames": 5}, keep=1)
    real_replace, calls = os.replace, []

    def killed_on_the_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 5, {"frames": 5, "again": True}, keep=1)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == []  # moved aside, the new one not in place
    recover_checkpoints(tmp_path)
    assert load_latest_checkpoint(tmp_path) == {
        "frames": 5,
        "path": str(tmp_path / "ckpt_000000000005"),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000000005"]


def _record_fsyncs_and_renames(monkeypatch) -> list[tuple]:
    """Records ``("fsync", path)`` and ``("replace", source, destination)`` in their order."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_checkpoint_is_on_the_disk_before_its_rename_and_the_rename_before_old_ones_go(
    tmp_path, monkeypatch
):
    # A rename is durable only with the renamed files and the folder holding the new name
    # synced: a power loss soon after an unsynced save could leave ckpt_<frames> of empty files.
    tmp_path = tmp_path.resolve()
    save_checkpoint(tmp_path, 1, {"frames": 1}, keep=1)
    buffer = make_replay_buffer(100, batch_size=2, seed=0)
    buffer.extend(TensorDict({"observation": torch.randn(4, OBS_DIM)}, [4]))
    events = _record_fsyncs_and_renames(monkeypatch)
    final = save_checkpoint(tmp_path, 2, {"frames": 2}, replay_buffer=buffer, keep=1)
    monkeypatch.undo()
    (rename,) = [i for i, event in enumerate(events) if event[-1] == str(final)]
    written = Path(events[rename][1])  # the temporary folder renamed into place
    synced_before = {event[1] for event in events[:rename] if event[0] == "fsync"}
    files = [path.relative_to(final) for path in final.rglob("*") if path.is_file()]
    assert {"state.pt", "COMPLETE"} <= {str(path) for path in files}
    assert any(path.parts[0] == "replay" for path in files)
    assert {str(written / path) for path in files} <= synced_before
    assert str(written) in synced_before
    assert ("fsync", str(tmp_path)) in events[rename:]  # the folder holding the new name
    assert [path.name for path in list_checkpoints(tmp_path)] == ["ckpt_000000000002"]


def test_text_written_atomically_is_on_the_disk_before_its_rename(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    events = _record_fsyncs_and_renames(monkeypatch)
    write_text_atomically(tmp_path / "eval.csv", "frames\n1\n")
    monkeypatch.undo()
    written, target = str(tmp_path / ".eval.csv.tmp"), str(tmp_path / "eval.csv")
    assert events == [("fsync", written), ("replace", written, target), ("fsync", str(tmp_path))]


def test_recovery_removes_the_temporary_folders_of_killed_writes(tmp_path):
    save_checkpoint(tmp_path, 5, {"frames": 5})
    (tmp_path / ".tmp_ckpt_000000000010_4242" / "replay").mkdir(parents=True)  # killed mid-dump
    save_checkpoint(tmp_path, 10, {"frames": 10})
    aside = tmp_path / ".old_ckpt_000000000010_4243"  # replaced before the kill
    aside.mkdir()
    (aside / "COMPLETE").write_text("10")
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000000005", "ckpt_000000000010"]
    assert load_latest_checkpoint(tmp_path)["frames"] == 10


def test_half_written_checkpoint_folder_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"frames": 1})
    (tmp_path / "ckpt_000000000002").mkdir()  # a crash before COMPLETE was written
    assert load_latest_checkpoint(tmp_path)["frames"] == 1


def test_checkpoint_for_another_env_is_refused_with_both_shapes(tmp_path):
    run([], tmp_path)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    saved.env.name = "InvertedPendulum-v5"
    saved.collector.total_frames = 200
    OmegaConf.save(saved, tmp_path / "config.yaml")
    with pytest.raises(
        ConfigError, match=r"sizes \(3, 1\) but env.name='InvertedPendulum-v5' has \(4, 1\)"
    ):
        load_script().train(compose_config([f"resume={tmp_path}"]))


# -- numerical guards ---------------------------------------------------------------------------------
def build_updater(action_spec, **kwargs):
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8,))
    loss = CrossQLoss(actor, make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,)))
    kwargs.setdefault("policy_delay", 1)
    return CrossQUpdater(loss, make_optimizers(loss), **kwargs)


def training_state(update):
    """Every parameter and buffer of the loss and every optimiser's state, as flat copies."""
    state = {f"loss.{k}": v.clone() for k, v in update.loss.state_dict().items()}
    for name, optimizer in update.optimizers.items():
        for index, slots in optimizer.state_dict()["state"].items():
            state.update({f"{name}.{index}.{k}": v.clone() for k, v in slots.items()})
    return state


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"changed: {changed}"


BATCH_FIELDS = ["observation", ("next", "observation"), "action", ("next", "reward")]


@pytest.mark.parametrize("field", BATCH_FIELDS, ids=str)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_skip_of_a_nonfinite_batch_leaves_the_whole_state_untouched(action_spec, field, value):
    update = build_updater(action_spec, on_nonfinite="skip")
    update(make_batch(16))  # the optimisers have state
    before = training_state(update)
    bad = make_batch(16, seed=1)
    bad[field][0, 0] = value
    with pytest.warns(UserWarning, match=re.escape(repr(field))):
        update(bad)
    assert_same_state(before, training_state(update))
    assert update.num_skipped == {"critic": 1, "actor": 1, "alpha": 1}


@pytest.mark.parametrize("field", BATCH_FIELDS, ids=str)
def test_training_continues_after_a_skipped_nonfinite_batch(action_spec, field):
    update = build_updater(action_spec, on_nonfinite="skip")
    update(make_batch(16))
    bad = make_batch(16, seed=1)
    bad[field][0, 0] = float("inf")
    with pytest.warns(UserWarning):
        update(bad)
    before = training_state(update)
    metrics = update(make_batch(16, seed=2))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    after = training_state(update)
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert not torch.equal(before["critic.0.exp_avg"], after["critic.0.exp_avg"])
    assert not torch.equal(before["actor.0.exp_avg"], after["actor.0.exp_avg"])


@pytest.mark.parametrize("field", BATCH_FIELDS, ids=str)
def test_nonfinite_batch_raises_naming_the_field_update_and_last_finite_values(action_spec, field):
    update = build_updater(action_spec)
    update(make_batch(16))
    before = training_state(update)
    bad = make_batch(16, seed=1)
    bad[field][0, 0] = float("nan")
    with pytest.raises(
        NonFiniteLossError,
        match=re.escape(f"batch key {field!r} is not finite (1 of ")
        + r".* at update 2; last finite values \(update 1\): \{.*'loss_qvalue'",
    ):
        update(bad)
    assert_same_state(before, training_state(update))


def test_finite_batch_values_whose_sum_overflows_are_not_called_nonfinite(action_spec):
    update = build_updater(action_spec)
    huge = make_batch(16)
    huge["next", "reward"][:4] = torch.finfo(torch.float32).max  # finite; their sum is not
    # The batch passes its check; the critic loss (squared TD errors) is what overflows.
    with pytest.raises(NonFiniteLossError, match=r"^loss_qvalue is not finite"):
        update(huge)


def test_nonfinite_loss_raises_naming_the_loss_update_and_last_finite_values(action_spec):
    update = build_updater(action_spec)
    update(make_batch(16))
    overflow = make_batch(16)
    overflow["next", "reward"][0] = 1e30  # finite, but its squared TD error is not
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss_qvalue is not finite \(inf\) at update 2; last finite values \(update 1\): \{.*'loss_qvalue'",
    ):
        update(overflow)


def test_skip_of_a_nonfinite_critic_loss_keeps_the_statistics_of_its_forward_pass(action_spec):
    update = build_updater(action_spec, on_nonfinite="skip", policy_delay=2)
    update(make_batch(16))
    update(make_batch(16, seed=1))
    before = training_state(update)
    overflow = make_batch(16, seed=2)
    overflow["next", "reward"][0] = 1e30  # finite inputs: the critic's statistics see them
    with pytest.warns(UserWarning, match="loss_qvalue is not finite"):
        update(overflow)
    assert update.num_skipped == {"critic": 1, "actor": 0, "alpha": 0}
    assert_same_state(before, training_state(update))


def test_skip_of_a_nonfinite_actor_loss_keeps_the_statistics_of_its_forward_pass(
    action_spec,
):
    update = build_updater(action_spec, on_nonfinite="skip")
    update(make_batch(16))
    actor_loss = update._actor_loss

    def infinite_actor_loss(batch):  # after the forward pass that moved the actor's statistics
        loss, metadata = actor_loss(batch)
        return loss * float("inf"), metadata

    update._actor_loss = infinite_actor_loss
    actor = {
        k: v
        for k, v in training_state(update).items()
        if k.startswith(("loss.actor_network_params", "actor."))
    }
    with pytest.warns(UserWarning, match="loss_actor is not finite"):
        update(make_batch(16, seed=1))
    after = training_state(update)
    assert update.num_skipped == {"critic": 0, "actor": 1, "alpha": 0}
    assert_same_state(actor, {k: after[k] for k in actor})


def test_skipped_temperature_step_leaves_its_learning_rate_schedule(action_spec):
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8,))
    loss = CrossQLoss(actor, make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,)))
    optimizers = make_optimizers(loss)
    scheduler = make_lr_scheduler(optimizers["alpha"], "linear_warmup", warmup_steps=4)
    update = CrossQUpdater(
        loss, optimizers, policy_delay=1, alpha_scheduler=scheduler, on_nonfinite="skip"
    )
    update(make_batch(16))
    lr = optimizers["alpha"].param_groups[0]["lr"]
    loss.alpha_loss = lambda log_prob, batch=None: torch.tensor(float("nan"), requires_grad=True)
    with pytest.warns(UserWarning, match="loss_alpha is not finite"):
        update(make_batch(16, seed=1))
    assert update.num_skipped == {"critic": 0, "actor": 0, "alpha": 1}
    assert scheduler.last_epoch == 1 and optimizers["alpha"].param_groups[0]["lr"] == lr


def test_skip_count_is_kept_in_the_updater_checkpoint(action_spec):
    update = build_updater(action_spec, on_nonfinite="skip")
    bad = make_batch(16)
    bad["observation"][0, 0] = float("nan")
    with pytest.warns(UserWarning):
        update(bad)
    resumed = build_updater(action_spec, on_nonfinite="skip")
    resumed.load_state_dict(update.state_dict())
    assert resumed.num_skipped == {"critic": 1, "actor": 1, "alpha": 1}


def test_nonfinite_gradient_is_caught_through_the_clipped_norm(action_spec, monkeypatch):
    update = build_updater(action_spec, clip_grad_norm=1.0)
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("inf"))
    )
    before = [p.clone() for p in update.optimizers["critic"].param_groups[0]["params"]]
    with pytest.raises(NonFiniteLossError, match="the gradient of loss_qvalue is not finite"):
        update(make_batch(16))
    after = update.optimizers["critic"].param_groups[0]["params"]
    assert all(torch.equal(b, p) for b, p in zip(before, after))


def test_skip_leaves_weights_untouched_and_counts(action_spec):
    update = build_updater(action_spec, on_nonfinite="skip")
    weights = [p for p in update.loss.qvalue_network_params.values(True, True) if p.requires_grad]
    before = [p.clone() for p in weights]
    bad = make_batch(16)
    bad["next", "reward"][:] = float("inf")
    with pytest.warns(UserWarning, match="is not finite"):
        metrics = update(bad)
    assert update.num_skipped["critic"] == 1
    assert int(metrics["num_skipped"]) == 3  # the critic, actor and temperature steps
    assert all(torch.equal(b, p) for b, p in zip(before, weights))


def test_training_stops_cleanly_on_a_nonfinite_batch_keeping_the_last_checkpoint(
    tmp_path, monkeypatch
):
    from torchrl_crossq.objectives import update as update_module

    real_call = update_module.CrossQUpdater.__call__

    def poisoned(self, batch):
        if self.num_updates >= 4:
            batch["next", "observation"][0, 0] = float("inf")
        return real_call(self, batch)

    monkeypatch.setattr(update_module.CrossQUpdater, "__call__", poisoned)
    with pytest.raises(
        SystemExit, match=r"^error: batch key \('next', 'observation'\) is not finite"
    ):
        load_script().main.__wrapped__(compose_config([*TINY, f"run_dir={tmp_path}"]))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_000000000048"]
    state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert all(torch.isfinite(v).all() for v in state["loss"].values() if v.is_floating_point())


def test_skip_run_finishes_and_logs_the_skipped_steps(tmp_path, monkeypatch):
    from torchrl_crossq.objectives import update as update_module

    real_call = update_module.CrossQUpdater.__call__

    def poisoned(self, batch):
        if self.num_updates == 4:
            batch["observation"][0, 0] = float("nan")
        return real_call(self, batch)

    monkeypatch.setattr(update_module.CrossQUpdater, "__call__", poisoned)
    with pytest.warns(UserWarning, match="'observation' is not finite"):
        run(["on_nonfinite=skip", "logger.backend=csv"], tmp_path)
    assert logged(tmp_path, "train/num_skipped") == {64: "0.0", 96: "1.0"}  # update 5 at 80
    state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["frames"] == 96 and state["updater"]["num_skipped"]["critic"] == 1


# -- bad input ---------------------------------------------------------------------------------------
def test_wrong_type_names_the_key():
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        compose_config(["optim.batch_size=abc"])
    assert "optim.batch_size" in str(err.value) + str(err.value.__cause__)


def bad_overrides(seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    numbers = [*POSITIVE, *NON_NEGATIVE, *UNIT_INTERVAL]
    values = ["-1", "-0.5", "nan", "inf", "-inf", "1e9x", "[]", "''", "null", "{a: 1}"]
    cases = []
    for _ in range(count):
        if rng.random() < 0.3:
            key = rng.choice(sorted(CHOICES))
            value = rng.choice(["bogus", "MIN", "-1", "''", "3.5"])
        else:
            key = rng.choice(numbers)
            value = rng.choice(values)
        cases.append((key, value))
    cases.append(("algorithm.not_a_key", "1"))
    return cases


@pytest.mark.parametrize("key, value", bad_overrides(seed=0, count=40))
def test_fuzzed_invalid_override_ends_in_a_clean_error_naming_the_key(key, value):
    try:
        cfg = compose_config([f"{key}={value}"])
    except (ConfigCompositionException, OmegaConfBaseException) as err:
        text = str(err) + str(err.__cause__)
        assert key.split(".")[-1] in text
        return
    if key in ("network.dmax",) and value == "inf":
        pytest.skip("an infinite dmax is a valid (unbounded) correction")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(key)


def test_cosine_temperature_schedule_stays_at_min_lr_after_its_decay():
    # PyTorch's CosineAnnealingLR climbs back to the full lr over the next decay_steps.
    def lrs(scheduler_of, steps=30):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = scheduler_of(optimizer)
        out = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            out.append(optimizer.param_groups[0]["lr"])
        return out

    ours = lrs(lambda o: make_lr_scheduler(o, "cosine", decay_steps=10, min_lr=1e-5))
    torchs = lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-5))
    assert ours[:10] == torchs[:10]  # the same decay, bit for bit
    assert ours[10:] == [1e-5] * 20
    assert max(torchs[10:]) > 9e-4  # what it replaces


def test_cuda_rng_states_of_more_gpus_than_the_machine_has_restore_those_it_has(monkeypatch):
    # A run checkpointed with 2 visible GPUs, resumed with 1: set_rng_state_all targeted cuda:1.
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((s, i)))
    state = rng_state()
    state["cuda"] = ["gpu0", "gpu1"]
    set_rng_state(state)
    assert restored == [("gpu0", 0)]
