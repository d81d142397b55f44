"""Several seeds in one command: hydra multirun of sota_implementations/crossq.py."""

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_train_script import TINY, compose_config

from torchrl_crossq.config import prepare_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sota_implementations" / "crossq.py"
QUICK_AND_TINY = [
    "experiment=quick",
    "collector.total_frames=32",
    "collector.init_random_frames=32",
    "collector.frames_per_batch=16",
    "eval.interval=0",
    "eval.episodes=1",
    "eval.max_episode_steps=5",
    "checkpoint.interval=0",
    "progress_bar=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``crossq.py -m seed=0,1`` run in an empty working directory."""
    cwd = tmp_path_factory.mktemp("multirun")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(SCRIPT), "-m", "seed=0,1", *QUICK_AND_TINY]
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=300)
    return cwd


def test_multirun_gives_one_run_dir_per_seed(sweep):
    configs = sorted(sweep.rglob("config.yaml"))
    assert sorted(OmegaConf.load(c).seed for c in configs) == [0, 1]
    assert all((c.parent / "eval.csv").exists() for c in configs)


def test_multirun_writes_under_runs_only(sweep):
    assert sorted(p.name for p in sweep.iterdir()) == ["runs"]


def test_run_dir_may_name_each_seed(tmp_path, monkeypatch):
    # -m seed=0,1,2 'run_dir=runs/hopper/seed${seed}': each job resolves its own.
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([*TINY, "seed=3", "run_dir=runs/sweep/seed${seed}"])
    _, run_dir, _ = prepare_run(cfg)
    assert run_dir == Path("runs/sweep/seed3")
    assert OmegaConf.load(run_dir / "config.yaml").run_dir == "runs/sweep/seed3"


class FrozenClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 12, 0, 0)


def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datetime, "datetime", FrozenClock)
    first = prepare_run(compose_config([*TINY, "seed=0"]))[1]
    second = prepare_run(compose_config([*TINY, "seed=1"]))[1]
    assert first != second
