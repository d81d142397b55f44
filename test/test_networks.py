import functools
import math

import pytest
import torch
from helpers import ACTION_DIM, OBS_DIM, make_batch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import BatchRenorm1d, make_actor, make_critic, set_training_mode


def obs_td(n=5):
    return TensorDict({"observation": torch.randn(n, OBS_DIM)}, [n])


def test_critic_matches_a_python_loop_over_independent_members():
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8, 8), num_qvalue_nets=3, norm=None)
    obs, act = torch.randn(5, OBS_DIM), torch.randn(5, ACTION_DIM)
    q = critic.module(obs, act)
    assert q.shape == (5, 3)
    layers = [m for m in critic.module.net if hasattr(m, "weight")]
    for member in range(3):
        x = torch.cat([obs, act], -1)
        for i, layer in enumerate(layers):
            x = x @ layer.weight[member] + layer.bias[member]
            if i < len(layers) - 1:
                x = torch.relu(x)
        torch.testing.assert_close(q[:, member], x.squeeze(-1))


def test_critic_layout_has_brn_on_input_and_after_each_activation():
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8, 8))
    kinds = [type(m).__name__ for m in critic.module.net]
    assert kinds == [
        "BatchRenorm1d", "EnsembleLinear", "ReLU", "BatchRenorm1d",
        "EnsembleLinear", "ReLU", "BatchRenorm1d", "EnsembleLinear",
    ]  # fmt: skip


def test_default_widths_follow_the_paper_and_sac():
    crossq = make_critic(OBS_DIM, ACTION_DIM)
    sac = make_critic(OBS_DIM, ACTION_DIM, norm=None)
    assert crossq.module.net[1].out_features == 2048
    assert sac.module.net[0].out_features == 256
    assert not any(isinstance(m, BatchRenorm1d) for m in sac.modules())


def test_critic_members_start_different():
    q = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,), norm=None).module(
        torch.randn(4, OBS_DIM), torch.randn(4, ACTION_DIM)
    )
    assert not torch.allclose(q[:, 0], q[:, 1])


def test_actor_respects_action_bounds_and_writes_log_prob():
    spec = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), shape=(2,))
    actor = make_actor(OBS_DIM, spec, num_cells=(8,), return_log_prob=True)
    out = actor(obs_td(1000))
    assert (out["action"] >= spec.space.low).all() and (out["action"] <= spec.space.high).all()
    assert out["action_log_prob"].shape == (1000,)


def test_actor_samples_by_default_and_is_deterministic_in_deterministic_mode():
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,)).eval()
    td = obs_td()
    assert not torch.equal(actor(td.clone())["action"], actor(td.clone())["action"])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a, b = actor(td.clone())["action"], actor(td.clone())["action"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, torch.tanh(actor(td.clone())["loc"]))


def test_actor_layout_and_sac_variant():
    spec = Bounded(-1.0, 1.0, shape=(ACTION_DIM,))
    crossq = make_actor(OBS_DIM, spec)
    sac = make_actor(OBS_DIM, spec, norm=None)
    assert sum(isinstance(m, BatchRenorm1d) for m in crossq.modules()) == 3
    assert not any(isinstance(m, BatchRenorm1d) for m in sac.modules())
    linears = [m for m in crossq.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [256, 256, 2 * ACTION_DIM]


def test_actor_rejects_unbounded_spec_and_bad_norm():
    with pytest.raises(TypeError, match="Bounded"):
        make_actor(OBS_DIM, Unbounded(shape=(ACTION_DIM,)))
    with pytest.raises(ValueError, match="norm='batchnorm' is not supported"):
        make_critic(OBS_DIM, ACTION_DIM, norm="batchnorm")


def test_set_training_mode_restores_each_submodule():
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))
    actor.eval()
    brn = next(m for m in actor.modules() if isinstance(m, BatchRenorm1d))
    brn.train()  # a mixed state must come back as it was
    with set_training_mode(actor, False):
        assert not brn.training
    assert brn.training and not actor.training


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_ensemble_linear_gradients_match_baddbmm(out_features, autocast):
    # The one-output head has its own backward; both paths must equal baddbmm's autograd.
    from torchrl_crossq.modules.networks import EnsembleLinear

    torch.manual_seed(0)
    layer = EnsembleLinear(2, 16, out_features)
    x = torch.randn(2, 9, 16, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
        expected = torch.baddbmm(bias, x_ref, weight)
    assert y.shape == expected.shape == (2, 9, out_features)
    assert y.dtype == expected.dtype
    probe = torch.randn(2, 9, out_features)
    (y.float() * probe).sum().backward()
    (expected.float() * probe).sum().backward()
    tol = {"atol": 2e-2, "rtol": 2e-2} if autocast else {}
    torch.testing.assert_close(y.float(), expected.float(), **tol)
    for ours, ref in (
        (x.grad, x_ref.grad),
        (layer.weight.grad, weight.grad),
        (layer.bias.grad, bias.grad),
    ):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, **tol)


def _bool_buffers_of_compiled_critic(monkeypatch, relu) -> list[str]:
    """The shapes of the bool buffers in inductor's CPU code of the critic as the actor loss
    runs it (eval mode, weights detached, gradients to its inputs)."""
    import re

    from torch._inductor.utils import run_and_get_code

    from torchrl_crossq.modules import networks

    monkeypatch.setattr(networks, "ReLU", relu)
    torch.manual_seed(0)
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8, 8)).module.eval().requires_grad_(False)
    observation = torch.randn(16, OBS_DIM, requires_grad=True)
    action = torch.randn(16, ACTION_DIM, requires_grad=True)
    q = torch.compile(lambda o, a: critic(o, a).sum())
    _, code = run_and_get_code(lambda: q(observation, action).backward())
    return re.findall(r"empty_strided_cpu\((\([^)]*\)), [^)]*\), torch\.bool\)", "\n".join(code))


def test_the_critic_relu_compiled_on_cpu_keeps_no_bool_mask_for_the_actor_loss(monkeypatch):
    # Inside the actor loss (critic weights detached) inductor kept each critic ReLU's mask as a
    # bool tensor, which its CPU kernels write and read about 20x slower than floats.
    from torchrl_crossq.modules.networks import ReLU

    hidden = "(2, 16, 8)"  # [critics, batch, width]
    assert hidden in _bool_buffers_of_compiled_critic(monkeypatch, torch.nn.ReLU)
    assert hidden not in _bool_buffers_of_compiled_critic(monkeypatch, ReLU)


def test_the_critic_relu_gives_relus_values_and_gradients_eager_and_compiled():
    from torchrl_crossq.modules.networks import ReLU

    weight = torch.randn(2, 8, 8).div(3)
    x = torch.randn(2, 16, 8, requires_grad=True)

    def grad_through(relu):
        return torch.autograd.grad(torch.bmm(relu(torch.bmm(x, weight)), weight).square().sum(), x)

    (expected,) = grad_through(torch.nn.ReLU())
    for relu in (ReLU(), torch.compile(ReLU())):
        torch.testing.assert_close(grad_through(relu)[0], expected, rtol=1e-6, atol=1e-7)
    relus = [
        m
        for m in make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,)).modules()
        if isinstance(m, torch.nn.ReLU)
    ]
    assert relus and all(type(m) is ReLU for m in relus)  # still an nn.ReLU


def test_actor_log_std_is_clipped_to_the_reference_bounds():
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,), norm=None)
    head = actor.module[0].module[-2]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 50.0, -50.0]))  # loc 0, log_std +-50
    scale = actor(obs_td())["scale"]
    torch.testing.assert_close(scale[:, 0], torch.full((5,), math.exp(2.0)))
    torch.testing.assert_close(scale[:, 1], torch.full((5,), math.exp(-20.0)))


def brn_state(actor):
    return {k: v.clone() for k, v in actor.state_dict().items() if "running" in k or "batches" in k}


@pytest.mark.parametrize("num_envs", [1, 2], ids=["single_env", "parallel_env_of_2"])
def test_a_fresh_actor_in_a_collector_acts_on_running_statistics_and_leaves_them(num_envs):
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv, ParallelEnv

    make = functools.partial(GymEnv, "Pendulum-v1")
    env = make() if num_envs == 1 else ParallelEnv(2, make)
    actor = make_actor(3, env.action_spec_unbatched, num_cells=(8,))
    before = brn_state(actor)
    collector = Collector(env, actor, frames_per_batch=4, total_frames=8)
    try:
        frames = sum(data.numel() for data in collector)
    finally:
        collector.shutdown()
    assert frames == 8
    for key, value in brn_state(actor).items():
        assert torch.equal(value, before[key]), key


def test_the_loss_still_puts_a_fresh_actor_in_train_mode_for_its_update_and_back():
    from torchrl_crossq import CrossQLoss

    spec = Bounded(-1.0, 1.0, shape=(ACTION_DIM,))
    actor = make_actor(OBS_DIM, spec, num_cells=(8,))
    loss = CrossQLoss(actor, make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,)))
    seen = []
    brn = next(m for m in actor.modules() if isinstance(m, BatchRenorm1d))
    brn.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    loss.actor_loss(make_batch())
    assert seen == [True] and not brn.training


@pytest.mark.parametrize(
    "low, high",
    [(-1.0, 1.0), (-0.4, 0.4), (torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]))],
    ids=["unit", "symmetric", "asymmetric"],
)
@pytest.mark.parametrize("mode", [ExplorationType.RANDOM, ExplorationType.DETERMINISTIC])
def test_acting_without_gradient_gives_torchrls_actions_bit_for_bit(low, high, mode):
    actor = make_actor(OBS_DIM, Bounded(low, high, shape=(ACTION_DIM,)), num_cells=(8,))
    td = obs_td(64)
    with set_exploration_type(mode):
        torch.manual_seed(0)
        with torch.no_grad():
            fast = actor(td.clone())
        torch.manual_seed(0)
        torchrl = actor(td.clone())  # with gradients: TorchRL's distribution path
    assert torch.equal(fast["action"], torchrl["action"].detach())
    assert set(fast.keys()) == set(torchrl.keys())  # collectors fix their keys on a first call
    # act: the same path on the observation tensor, its outputs in act_keys' order
    with torch.no_grad():
        assert actor.acts_fast(mode)
        torch.manual_seed(0)
        outputs = actor.act(td["observation"], mode)
    assert actor.act_keys == ("loc", "scale", "action")
    for key, value in zip(actor.act_keys, outputs, strict=True):
        assert torch.equal(value, fast[key]), key


def test_acts_fast_only_without_gradient_or_log_prob_and_for_random_or_deterministic():
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))
    with torch.no_grad():
        assert actor.acts_fast(ExplorationType.RANDOM)
        assert not actor.acts_fast(ExplorationType.MEAN)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            assert actor.acts_fast()  # the current exploration type by default
    assert not actor.acts_fast(ExplorationType.RANDOM)  # gradients enabled
    logging_actor = make_actor(
        OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,), return_log_prob=True
    )
    with torch.no_grad():
        assert not logging_actor.acts_fast(ExplorationType.RANDOM)
    with pytest.raises(ValueError, match=r"RANDOM or DETERMINISTIC, got .*MEAN"):
        actor.act(torch.randn(OBS_DIM), ExplorationType.MEAN)


@pytest.mark.parametrize(
    "low, high",
    [(-1.0, 1.0), (-0.4, 0.4), (torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]))],
    ids=["unit", "symmetric", "asymmetric"],
)
@pytest.mark.parametrize("reparameterize", [True, False], ids=["rsample", "sample"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_policy_sample_gives_torchrls_action_log_prob_and_gradients_bit_for_bit(
    low, high, reparameterize, training
):
    # The loss's policy sampling skips TorchRL's distribution objects: the same numbers.
    from torchrl.modules.distributions.utils import rsample_and_log_prob, sample_and_log_prob

    from torchrl_crossq.modules.networks import policy_sample
    from torchrl_crossq.objectives import squashed_log_prob

    def draw(ours: bool):
        torch.manual_seed(1)
        actor = make_actor(OBS_DIM, Bounded(low, high, shape=(ACTION_DIM,)), num_cells=(8,))
        actor.train(training)
        td = TensorDict({"observation": 3 * torch.randn(64, OBS_DIM)}, [64])
        torch.manual_seed(0)
        if ours:
            action, log_prob = policy_sample(actor, td, reparameterize=reparameterize)
        else:
            dist = actor.get_dist(td)
            sample = rsample_and_log_prob if reparameterize else sample_and_log_prob
            action, log_prob = sample(dist)
            log_prob = squashed_log_prob(dist, log_prob)
        grads = torch.autograd.grad(log_prob.sum() + action.sum(), list(actor.parameters()))
        return action, log_prob, grads, actor.module[0].module[0].running_mean

    ours, theirs = draw(ours=True), draw(ours=False)
    assert ours[0].requires_grad == reparameterize
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(*((a, b) if isinstance(a, tuple) else ((a,), (b,))), strict=True):
            assert torch.equal(x, y)


def test_policy_sample_of_another_tanh_normal_setting_takes_torchrls_path():
    # tanh_loc is a TanhNormal setting the fast paths do not reproduce.
    from torchrl.modules import TanhNormal

    from torchrl_crossq.modules.networks import TanhNormalActor, policy_sample

    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))
    kwargs = {"low": -torch.ones(ACTION_DIM), "high": torch.ones(ACTION_DIM), "tanh_loc": True}
    other = TanhNormalActor(
        actor.module[0],
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=TanhNormal,
        distribution_kwargs=kwargs,
    )
    td = TensorDict({"observation": torch.randn(16, OBS_DIM)}, [16])
    torch.manual_seed(0)
    action, log_prob = policy_sample(other, td)
    torch.manual_seed(0)
    expected, expected_log_prob = other.get_dist(td).sample_and_log_prob()
    assert torch.equal(action, expected) and torch.equal(log_prob, expected_log_prob)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        acted = other(td.clone())["action"]
    assert torch.equal(acted, other.get_dist(td).deterministic_sample.detach())


def test_return_log_prob_writes_torchrls_log_prob_when_acting():
    spec = Bounded(-2.0, 2.0, shape=(ACTION_DIM,))
    actor = make_actor(OBS_DIM, spec, num_cells=(8,), return_log_prob=True)
    with torch.no_grad():
        out = actor(obs_td())
    assert out["action_log_prob"].shape == (5,)
