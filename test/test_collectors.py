"""Collection backends: one process, worker processes, Ray; the training loop is the same."""

import functools

import pytest
import torch
from test_train_script import run
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import make_actor
from torchrl_crossq.collectors import (
    GymCollector,
    PolicyWeightSync,
    direct_env_parts,
    make_collector,
)
from torchrl_crossq.envs import make_env
from torchrl_crossq.modules.networks import TanhNormalActor


def ray_or_skip():
    return pytest.importorskip(
        "ray", reason="Ray is an optional extra: pip install -e '.[distributed]'"
    )


@pytest.fixture(scope="module", autouse=True)
def shutdown_ray():
    yield
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize("backend", ["multi_sync", "multi_async", "ray"])
def test_backend_collects_and_trains_a_few_updates(tmp_path, backend):
    if backend == "ray":
        ray_or_skip()
    run(
        [
            f"collector.backend={backend}",
            "collector.num_workers=2",
            "collector.frames_per_batch=32",
            "collector.total_frames=192",
            "ray.num_cpus=2",
            "logger.backend=none",
        ],
        tmp_path,
    )
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[-1].startswith("192,")


def test_multi_sync_workers_draw_the_same_actions_for_a_seed():
    # The worker processes drew their random and sampled actions from unseeded generators.
    def first_batches():
        torch.manual_seed(0)
        actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(16,)).eval()
        collector = make_collector(
            functools.partial(make_env, "Pendulum-v1"), actor, seed=0, backend="multi_sync",
            num_workers=2, frames_per_batch=4, total_frames=8, init_random_frames=4,
        )  # fmt: skip
        try:
            return [batch["action"] for batch in collector]  # random actions, then sampled
        finally:
            collector.shutdown()

    first, second = first_batches(), first_batches()
    assert len(first) == 2
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["multi_sync", "multi_async", "ray"])
def test_workers_act_with_the_learner_weights_after_a_sync(backend):
    if backend == "ray":
        ray_or_skip()
    actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(16,)).eval()
    collector = make_collector(
        functools.partial(make_env, "Pendulum-v1"), actor, seed=0, backend=backend,
        num_workers=2, frames_per_batch=32, total_frames=32 * 8, ray_num_cpus=2,
    )  # fmt: skip
    try:
        batches = iter(collector)
        assert next(batches)["loc"].abs().sum() > 0
        with torch.no_grad():
            for p in actor.parameters():
                p.zero_()  # the learner's new weights: loc == 0 for every observation
        collector.update_policy_weights_()
        # Async workers may each hand in one batch they started before the sync.
        locs = [next(batches)["loc"].abs().sum() for _ in range(6)]
        assert all(loc == 0 for loc in locs[2:]), locs
    finally:
        collector.shutdown()


def test_episode_window_over_multi_async_batches_holds_the_newest_episodes():
    from torchrl_crossq.data import make_replay_buffer

    # 2 workers x 2 envs, episodes of 5 steps in batches of 8: every batch ends mid-episode,
    # and row e of a batch is env e of whichever worker sent it.
    create = functools.partial(
        make_env, "Pendulum-v1", num_envs=2, vectorization="serial", max_episode_steps=5
    )
    collector = make_collector(
        create, None, seed=0, backend="multi_async", num_workers=2, frames_per_batch=16,
        total_frames=64,
    )  # fmt: skip
    rb = make_replay_buffer(
        100, batch_size=256, sample_window_size=8, window_unit="episode", seed=0
    )
    try:
        for batch in collector:
            rb.extend(batch)
    finally:
        collector.shutdown()
    traj_ids = rb.storage[: len(rb)]["collector", "traj_ids"]  # one per episode, all workers
    ids = traj_ids.unique()
    first_index = torch.stack([(traj_ids == traj_id).nonzero()[0, 0] for traj_id in ids])
    newest = ids[first_index.argsort()[-8:]]
    window = set(torch.isin(traj_ids, newest).nonzero().squeeze(-1).tolist())
    assert rb.window_size() == len(window)
    assert set(torch.cat([rb.sample()["index"] for _ in range(10)]).tolist()) == window


def test_unknown_backend_names_the_key_and_choices():
    with pytest.raises(ValueError, match=r"^backend=.threads. is not supported; use one of: sync"):
        make_collector(
            make_env, None, seed=0, backend="threads", frames_per_batch=8, total_frames=8
        )


class CountingCollector:
    def __init__(self):
        self.syncs = 0

    def update_policy_weights_(self):
        self.syncs += 1


@pytest.mark.parametrize("backend, every, syncs", [("sync", 1, 0), ("multi_sync", 2, 3)])
def test_policy_weight_sync_refreshes_worker_copies_every_n_rounds(backend, every, syncs):
    collector = CountingCollector()
    sync = PolicyWeightSync(collector, backend=backend, every=every)
    for _ in range(6):
        sync.after_updates()
    assert collector.syncs == syncs


@pytest.mark.parametrize("frames_per_batch", [1, 5])
def test_reused_batch_holds_what_a_fresh_batch_would(frames_per_batch):
    # reuse_batch (the script's setting) overwrites one TensorDict: read before the next
    # batch, every batch is the one a fresh-copy collector yields, seed for seed.
    def batches(reuse: bool) -> list:
        torch.manual_seed(0)
        actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,))
        collector = make_collector(
            functools.partial(make_env, "Pendulum-v1"),
            actor,
            seed=0,
            frames_per_batch=frames_per_batch,
            total_frames=30,
            init_random_frames=10,
            reuse_batch=reuse,
        )
        out = [(data, data.clone()) for data in collector]
        collector.shutdown()
        return out

    reused, fresh = batches(reuse=True), batches(reuse=False)
    assert len({id(data) for data, _ in reused}) == 1
    assert len(reused) == len(fresh) == 30 // frames_per_batch
    for (_, ours), (_, theirs) in zip(reused, fresh, strict=True):
        assert (ours == theirs).all()


def collect_all(env_name, direct, frames_per_batch, policy=True, hook=None, **env_kwargs):
    """Every batch of a 60-frame run with init_random_frames=6, and the RNG state after."""
    torch.manual_seed(0)
    env = make_env(env_name, seed=3, **env_kwargs)
    actor = None
    if policy:
        obs_size = env.observation_spec["observation"].shape[-1]
        actor = make_actor(obs_size, env.action_spec, num_cells=(8,))
        if hook is not None:
            actor.register_forward_hook(hook)
    torch.manual_seed(1)
    collector = make_collector(
        lambda seed: env,
        actor,
        seed=3,
        frames_per_batch=frames_per_batch,
        total_frames=60,
        init_random_frames=6,
        direct=direct,
    )
    assert isinstance(collector, GymCollector) == direct
    batches = [batch.clone() for batch in collector]
    collector.shutdown()
    return batches, torch.random.get_rng_state()


@pytest.mark.parametrize("frames_per_batch", [1, 3])
@pytest.mark.parametrize(
    "env_name, env_kwargs",
    [
        ("Pendulum-v1", {"max_episode_steps": 25}),  # truncations
        ("InvertedPendulum-v5", {}),  # terminations
    ],
)
def test_direct_collector_yields_what_torchrls_collector_yields(
    env_name, env_kwargs, frames_per_batch
):
    expected, expected_rng = collect_all(env_name, False, frames_per_batch, **env_kwargs)
    batches, rng = collect_all(env_name, True, frames_per_batch, **env_kwargs)
    assert len(batches) == len(expected) == 60 // frames_per_batch
    ended = 0
    for batch, reference in zip(batches, expected, strict=True):
        assert set(batch.keys(True, True)) == set(reference.keys(True, True))
        for key, value in reference.items(True, True):
            assert batch[key].dtype == value.dtype, key
            assert torch.equal(batch[key], value), key
        ended += int(reference["next", "done"].sum())
    assert ended >= 2  # episode ends and resets were compared too
    assert torch.equal(rng, expected_rng)  # the same random draws, in the same order


def test_direct_collector_without_a_policy_draws_what_torchrls_random_policy_draws():
    expected, expected_rng = collect_all("Pendulum-v1", False, 3, policy=False)
    batches, rng = collect_all("Pendulum-v1", True, 3, policy=False)
    for batch, reference in zip(batches, expected, strict=True):
        assert (batch == reference).all()
    assert torch.equal(rng, expected_rng)


def test_direct_is_for_one_gymnasium_env_only():
    serial = make_env("Pendulum-v1", num_envs=2, vectorization="serial", seed=0)
    assert direct_env_parts(serial) is None
    collector = make_collector(
        lambda seed: serial, None, seed=0, frames_per_batch=2, total_frames=4, direct=True
    )
    assert not isinstance(collector, GymCollector)
    collector.shutdown()
    with pytest.raises(ValueError, match="one gymnasium env built by make_env"):
        GymCollector(
            make_env("Pendulum-v1", num_envs=2, seed=0), None, frames_per_batch=1, total_frames=1
        )


def test_direct_and_torchrl_collection_train_the_same_run(tmp_path):
    # The script's default (direct) against TorchRL's collector: the same losses, bit for bit.
    logs = []
    for direct in ("true", "false"):
        run_dir = run([f"collector.direct={direct}", "logger.backend=csv"], tmp_path / direct)
        logs.append(next(run_dir.rglob("scalars/train/loss_qvalue.csv")).read_text())
    assert len(logs[0].splitlines()) >= 2
    assert logs[0] == logs[1]


def test_direct_collector_acts_on_tensors_unless_the_actor_has_hooks(monkeypatch):
    # make_actor's actor acts on the observation tensor (TanhNormalActor.act), no TensorDict
    # in between: the batches and draws of a call on a TensorDict. A hook on it is honoured.
    expected, expected_rng = collect_all("Pendulum-v1", False, 3, max_episode_steps=25)
    calls = {"act": 0, "forward": 0, "hook": 0}
    act, forward = TanhNormalActor.act, TanhNormalActor.forward

    def counting_act(self, *args):
        calls["act"] += 1
        return act(self, *args)

    def counting_forward(self, *args):
        calls["forward"] += 1
        return forward(self, *args)

    def hook(module, args, out):
        calls["hook"] += 1

    monkeypatch.setattr(TanhNormalActor, "act", counting_act)
    monkeypatch.setattr(TanhNormalActor, "forward", counting_forward)
    policy_frames = 60 - 6  # after init_random_frames
    for with_hook in (False, True):
        calls.update(act=0, forward=0, hook=0)
        batches, rng = collect_all(
            "Pendulum-v1", True, 3, hook=hook if with_hook else None, max_episode_steps=25
        )
        for batch, reference in zip(batches, expected, strict=True):
            assert (batch == reference).all()
        assert torch.equal(rng, expected_rng)
        # every policy frame and the collector's first call (which fixes the output keys)
        assert calls["act"] == policy_frames + 1
        # calls on a TensorDict: the first one only, unless a hook is to see every call
        if with_hook:
            assert calls["forward"] == calls["hook"] == policy_frames + 1
        else:
            assert (calls["forward"], calls["hook"]) == (1, 0)


def test_direct_collector_calls_a_subclassed_actors_own_forward():
    # A subclass's forward is what acts, not TanhNormalActor.act on the tensor.
    class Deterministic(TanhNormalActor):
        def forward(self, tensordict, *args, **kwargs):
            with set_exploration_type(ExplorationType.DETERMINISTIC):
                return super().forward(tensordict, *args, **kwargs)

    env = make_env("Pendulum-v1", seed=0)
    actor = make_actor(3, env.action_spec, num_cells=(8,))
    actor.__class__ = Deterministic
    collector = GymCollector(env, actor, frames_per_batch=4, total_frames=8)
    for batch in collector:
        expected = (batch["loc"].tanh() * 2.0).clamp(-2.0, 2.0)  # the mode, not a draw
        torch.testing.assert_close(batch["action"], expected)
    collector.shutdown()
