import copy

import pytest
import torch
from helpers import ACTION_DIM, OBS_DIM, make_batch
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import (
    BatchRenorm1d,
    CrossQLoss,
    CrossQUpdater,
    PeriodicSoftUpdate,
    make_actor,
    make_critic,
    make_optimizers,
)


def build(action_spec, q_head_type="crossq", norm="brn", warmup_steps=100, **loss_kwargs):
    torch.manual_seed(0)
    norm_kwargs = {"warmup_steps": warmup_steps, "momentum": 0.01} if norm else None
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8, 8), norm=norm, norm_kwargs=norm_kwargs)
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8, 8), norm=norm, norm_kwargs=norm_kwargs)
    return CrossQLoss(actor, critic, q_head_type=q_head_type, **loss_kwargs)


def brns(module):
    return [m for m in module.modules() if isinstance(m, BatchRenorm1d)]


def grads_of(params):
    return [p.grad for p in params]


# -- gradients reach only what they should --------------------------------------------
def test_each_loss_term_sends_gradients_only_to_its_own_parameters(action_spec, batch):
    loss = build(action_spec)
    groups = {
        "loss_qvalue": list(loss.qvalue_network_params.values(True, True)),
        "loss_actor": list(loss.actor_network_params.values(True, True)),
        "loss_alpha": list(loss.temperature.parameters()),
    }
    groups = {k: [p for p in v if p.requires_grad] for k, v in groups.items()}
    out = loss(batch)
    for name in groups:
        for params in groups.values():
            for p in params:
                p.grad = None
        out[name].backward(retain_graph=True)
        for other, params in groups.items():
            has_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]
            if other == name:
                assert any(has_grad), f"{name} gave no gradient to its own parameters"
            else:
                assert not any(has_grad), f"{name} leaked gradients into the {other} parameters"


@pytest.mark.parametrize("alpha_type", ["exp", "softplus"])
def test_alpha_changes_after_one_optimizer_step(action_spec, batch, alpha_type):
    loss = build(action_spec, alpha_type=alpha_type, initial_alpha=0.5, target_entropy=-10.0)
    update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=1)
    before = loss.alpha.clone()
    update(batch)
    # The entropy is far above the target: the temperature must go down.
    assert loss.alpha < before


def test_fixed_alpha_has_no_alpha_loss_and_no_parameter(action_spec, batch):
    loss = build(action_spec, alpha_type="fixed_alpha", initial_alpha=0.2)
    out = loss(batch)
    assert "loss_alpha" not in out.keys()
    assert list(loss.temperature.parameters()) == []
    torch.testing.assert_close(out["alpha"], torch.tensor(0.2))
    assert "alpha" not in make_optimizers(loss)


def test_softplus_alpha_starts_at_initial_alpha(action_spec):
    loss = build(action_spec, alpha_type="softplus", initial_alpha=0.01)
    torch.testing.assert_close(loss.alpha, torch.tensor(0.01))


# -- the TD target ----------------------------------------------------------------------
def hand_target(loss, actor, critic, batch, seed, gamma):
    """Recomputes y = r + gamma * (1 - terminated) * (agg_q Q(s', a') - alpha * log_pi(a'|s'))."""
    torch.manual_seed(seed)
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        dist = actor.eval().get_dist(batch["next"].select("observation"))
        next_action, next_log_prob = dist.sample_and_log_prob()
        if loss.q_head_type == "crossq":
            critic.train()
            obs = torch.cat([batch["observation"], batch["next", "observation"]])
            act = torch.cat([batch["action"], next_action])
            next_q = critic.module(obs, act)[len(batch) :]
        else:
            next_q = critic.eval().module(batch["next", "observation"], next_action)
    agg = next_q.min(-1).values if loss.agg_q == "min" else next_q.mean(-1)
    value = agg - loss.alpha * next_log_prob
    not_terminated = (~batch["next", "terminated"]).float().squeeze(-1)
    if loss.bootstrap_type == "always":
        not_terminated = torch.ones_like(not_terminated)
    return batch["next", "reward"].squeeze(-1) + gamma * not_terminated * value


@pytest.mark.parametrize("q_head_type", ["crossq", "default"])
@pytest.mark.parametrize("agg_q", ["min", "mean"])
@pytest.mark.parametrize("bootstrap_type", ["standard", "always"])
def test_td_target_matches_hand_computation(action_spec, batch, q_head_type, agg_q, bootstrap_type):
    loss = build(action_spec, q_head_type=q_head_type, agg_q=agg_q, bootstrap_type=bootstrap_type)
    loss.make_value_estimator(gamma=0.9)
    actor, critic = copy.deepcopy(loss.actor_network), copy.deepcopy(loss.qvalue_network)
    torch.manual_seed(3)
    _, metadata = loss.qvalue_loss(batch)
    expected = hand_target(loss, actor, critic, batch, seed=3, gamma=0.9)
    torch.testing.assert_close(metadata["target_value"], expected)


def test_terminated_transitions_do_not_bootstrap_but_truncated_ones_do(action_spec):
    loss = build(action_spec, alpha_type="fixed_alpha", initial_alpha=1e-8)
    batch = make_batch(4)
    batch["next", "terminated"] = torch.tensor([[True], [False], [False], [False]])
    batch["next", "done"] = torch.tensor([[True], [True], [False], [False]])  # row 1: truncated
    _, metadata = loss.qvalue_loss(batch)
    reward = batch["next", "reward"].squeeze(-1)
    assert metadata["target_value"][0] == reward[0]
    assert metadata["target_value"][1] != reward[1]


def test_critic_loss_is_half_squared_error_summed_over_critics(action_spec, batch):
    loss = build(action_spec, q_head_type="default", norm=None)
    torch.manual_seed(0)
    value, metadata = loss.qvalue_loss(batch)
    q = loss.qvalue_network.module(batch["observation"], batch["action"])
    expected = (0.5 * (q - metadata["target_value"].unsqueeze(-1)).pow(2)).sum(-1).mean()
    torch.testing.assert_close(value, expected)


# -- target networks ----------------------------------------------------------------------
def test_crossq_mode_has_no_target_parameters(action_spec):
    loss = build(action_spec)
    assert not [k for k in loss.state_dict() if "target_" in k and "params" in k]


def test_default_mode_has_target_parameters_that_polyak_update(action_spec, batch):
    loss = build(action_spec, q_head_type="default", norm=None)
    online = loss.qvalue_network_params
    target = loss.target_qvalue_network_params
    assert set(target.keys(True, True)) == set(online.keys(True, True))
    updater = PeriodicSoftUpdate(loss, tau=0.25, every=2)
    update = CrossQUpdater(loss, make_optimizers(loss), target_updater=updater)
    before = target.clone()
    update(batch)  # first call: no target update (every=2)
    for key, value in target.items(True, True):
        torch.testing.assert_close(value, before[key])
    update(batch)
    for key, value in target.items(True, True):
        expected = 0.75 * before[key] + 0.25 * online[key].detach()
        torch.testing.assert_close(value, expected)


# -- normalisation modes -------------------------------------------------------------------
def test_critic_statistics_after_one_loss_call_reflect_the_joint_batch(action_spec, batch):
    loss = build(action_spec)
    loss.qvalue_loss(batch)
    input_brn = brns(loss.qvalue_network)[0]
    joint_obs = torch.cat([batch["observation"], batch["next", "observation"]])
    expected = 0.01 * joint_obs.mean(0)
    for member in range(2):
        torch.testing.assert_close(input_brn.running_mean[member, 0, :OBS_DIM], expected)
    assert int(input_brn.num_batches_tracked) == 1


def record_modes(module, log):
    def hook(m, args):
        log.append((m.training, torch.is_grad_enabled()))

    return brns(module)[0].register_forward_pre_hook(hook)


def test_batch_renorm_modes_inside_each_loss(action_spec, batch):
    loss = build(action_spec)
    actor_log, critic_log = [], []
    record_modes(loss.actor_network, actor_log)
    record_modes(loss.qvalue_network, critic_log)
    loss.qvalue_loss(batch)
    assert actor_log == [(False, False)]  # next action: actor in eval mode, no gradient
    assert critic_log == [(True, True)]  # joint pass in train mode
    actor_log.clear(), critic_log.clear()
    loss.actor_loss(batch)
    assert actor_log == [(True, True)]  # actor update in train mode
    assert critic_log == [(False, True)]  # critic in eval mode (gradient to the action only)


def test_target_action_sampling_leaves_actor_statistics_untouched(action_spec, batch):
    loss = build(action_spec)
    before = {k: v.clone() for k, v in loss.actor_network.state_dict().items()}
    loss.qvalue_loss(batch)
    for k, v in loss.actor_network.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_actor_loss_updates_actor_statistics_with_states_not_next_states(action_spec, batch):
    loss = build(action_spec)
    critic_before = {k: v.clone() for k, v in loss.qvalue_network.state_dict().items()}
    loss.actor_loss(batch)
    input_brn = brns(loss.actor_network)[0]
    torch.testing.assert_close(input_brn.running_mean, 0.01 * batch["observation"].mean(0))
    for k, v in loss.qvalue_network.state_dict().items():
        torch.testing.assert_close(v, critic_before[k])


@pytest.mark.parametrize("actor_training, critic_training", [(False, True), (True, False)])
def test_modules_come_back_in_the_mode_they_went_in(
    action_spec, batch, actor_training, critic_training
):
    loss = build(action_spec)
    loss.actor_network.train(actor_training)
    loss.qvalue_network.train(critic_training)
    loss(batch)
    assert all(m.training == actor_training for m in loss.actor_network.modules())
    assert all(m.training == critic_training for m in loss.qvalue_network.modules())


# -- keys ---------------------------------------------------------------------------------
def test_set_keys_works_after_make_value_estimator(action_spec, batch):
    loss = build(action_spec)
    loss.make_value_estimator(gamma=0.5)
    torch.manual_seed(0)
    _, expected = copy.deepcopy(loss).qvalue_loss(batch.clone())
    loss.set_keys(reward="rew", done="finished", terminated="ended", priority="prio")
    renamed = batch.clone()
    for old, new in [("reward", "rew"), ("done", "finished"), ("terminated", "ended")]:
        renamed.rename_key_(("next", old), ("next", new))
    torch.manual_seed(0)
    _, metadata = loss.qvalue_loss(renamed)
    torch.testing.assert_close(metadata["target_value"], expected["target_value"])
    assert "prio" in renamed.keys()
    assert ("next", "rew") in loss.in_keys


def test_missing_key_names_the_key_and_the_set_keys_argument(action_spec, batch):
    loss = build(action_spec)
    del batch["next", "reward"]
    with pytest.raises(KeyError, match=r"'next', 'reward'.*set_keys\(reward="):
        loss(batch)


def test_data_without_terminated_is_refused_with_the_done_alternative(action_spec, batch):
    # TorchRL's estimators would fall back to done silently, ending the bootstrap at time limits.
    loss = build(action_spec)
    del batch["next", "terminated"]
    with pytest.raises(KeyError, match=r"set_keys\(terminated=\.\.\.\).*terminated='done'"):
        loss(batch)
    loss.set_keys(terminated="done")
    assert torch.isfinite(loss(batch)["loss_qvalue"])


def test_loss_writes_only_the_priority_key_into_its_input(action_spec, batch):
    loss = build(action_spec)
    before = batch.clone()
    loss(batch)
    assert set(batch.keys(True, True)) == set(before.keys(True, True)) | {"td_error"}
    for key in before.keys(True, True):
        torch.testing.assert_close(batch[key], before[key])
    assert batch["td_error"].shape == (len(batch),)


def test_kwargs_forward_returns_out_keys_in_order(action_spec, batch):
    loss = build(action_spec)
    kwargs = {"_".join((k,) if isinstance(k, str) else k): batch[k] for k in loss.in_keys}
    values = loss(**kwargs)
    assert len(values) == len(loss.out_keys)
    assert all(v.shape == () for v in values)


def test_select_out_keys_restricts_the_output(action_spec, batch):
    loss = build(action_spec)
    loss.select_out_keys("loss_qvalue", "alpha")
    assert set(loss(batch).keys()) == {"loss_qvalue", "alpha"}


def test_reduction_none_and_sum(action_spec, batch):
    per_sample = build(action_spec, reduction="none")
    summed = build(action_spec, reduction="sum")
    meaned = build(action_spec)
    outs = []
    for loss in (per_sample, summed, meaned):
        torch.manual_seed(0)
        outs.append(loss(batch.clone()))
    assert outs[0]["loss_qvalue"].shape == (len(batch),)
    torch.testing.assert_close(outs[0]["loss_qvalue"].sum(), outs[1]["loss_qvalue"])
    torch.testing.assert_close(outs[1]["loss_actor"] / len(batch), outs[2]["loss_actor"])


def test_per_sample_losses_of_a_multidimensional_batch_keep_its_shape(action_spec):
    # As TorchRL's SACLoss: a [B, T] batch gives [B, T] losses, so [B, T] weights or masks apply.
    loss = build(action_spec, reduction="none")
    twin = copy.deepcopy(loss)  # a call moves the BatchRenorm statistics
    batch = make_batch(8)
    torch.manual_seed(0)
    flat = loss(batch.clone())
    shaped = batch.reshape(2, 4)
    torch.manual_seed(0)
    out = twin(shaped)
    for key in ("loss_qvalue", "loss_actor", "loss_alpha"):
        assert out[key].shape == (2, 4), key
        torch.testing.assert_close(out[key].reshape(-1), flat[key])
    assert shaped["td_error"].shape == (2, 4)


def test_target_entropy_auto_is_minus_action_dim(action_spec):
    assert float(build(action_spec).target_entropy) == -ACTION_DIM


@pytest.mark.parametrize(
    "option, value",
    [
        ("q_head_type", "crossqq"),
        ("agg_q", "max"),
        ("bootstrap_type", "never"),
        ("alpha_type", "log"),
        ("reduction", "median"),
        ("target_entropy", "automatic"),
    ],
)
def test_unknown_option_values_name_the_option_and_accepted_values(action_spec, option, value):
    with pytest.raises(ValueError, match=rf"{option}={value!r} is not supported; use one of"):
        build(action_spec, **{option: value})


def test_the_discount_is_in_the_dtype_of_the_loss_it_was_set_on(action_spec):
    # TorchRL's TD0Estimator stores gamma as a float32 tensor (0.99 -> 0.9900000095), so a
    # float64 loss given its discount after .double() bootstrapped with the rounded value.
    loss = build(action_spec).double()
    loss.make_value_estimator(gamma=0.99)
    assert loss.gamma.dtype == torch.float64
    assert loss.gamma.item() == 0.99
    assert build(action_spec).gamma.dtype == torch.float32


# -- checkpoints ----------------------------------------------------------------------------
def test_state_dict_round_trip_restores_everything(action_spec, batch):
    loss = build(action_spec, warmup_steps=2)
    loss.make_value_estimator(gamma=0.8)
    update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=1)
    for _ in range(4):
        update(batch)
    state = loss.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    fresh = build(action_spec, warmup_steps=2)
    fresh.load_state_dict(state)
    assert float(fresh.gamma) == pytest.approx(0.8)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, state[k])
    torch.manual_seed(0)
    expected = loss(batch.clone())
    torch.manual_seed(0)
    torch.testing.assert_close(fresh(batch.clone()).to_dict(), expected.to_dict())


# -- parity with TorchRL ----------------------------------------------------------------------
def test_same_critic_target_as_torchrl_crossq_loss(action_spec, batch):
    from torchrl.modules import MLP, ValueOperator
    from torchrl.objectives import CrossQLoss as TorchRLCrossQLoss

    # No BatchRenorm on either side: TorchRL samples a' in whatever mode the actor is in, and
    # its BatchRenorm1d normalises with the biased batch variance (ours: sb3-contrib's
    # unbiased one). The target's algebra is compared; the joint pass is tested above.
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8,), norm=None)
    hidden = 8
    their_critic = ValueOperator(
        MLP(
            in_features=OBS_DIM + ACTION_DIM,
            out_features=1,
            num_cells=[hidden],
            activation_class=torch.nn.ReLU,
        ),
        in_keys=["observation", "action"],
    )
    theirs = TorchRLCrossQLoss(actor, their_critic, num_qvalue_nets=2, loss_function="l2")
    theirs.make_value_estimator(gamma=0.95)
    # Ours: the same two critics in TorchRL's MLP layout (Linear -> ReLU -> Linear).
    ours_critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(hidden,), norm=None)
    net = ours_critic.module.net
    layers = [m for m in their_critic.module.modules() if isinstance(m, torch.nn.Linear)]
    params = theirs.qvalue_network_params
    names = {id(m): n for n, m in their_critic.module.named_modules()}
    with torch.no_grad():
        for ours_linear, their_linear in zip([net[0], net[2]], layers):
            key = names[id(their_linear)]
            weight = params.get(("module", *key.split("."), "weight"))
            bias = params.get(("module", *key.split("."), "bias"))
            ours_linear.weight.copy_(weight.transpose(-1, -2))
            ours_linear.bias.copy_(bias.unsqueeze(1))
    ours = CrossQLoss(actor, ours_critic)
    ours.make_value_estimator(gamma=0.95)

    captured = {}
    estimate = theirs.value_estimator.value_estimate

    def capture(*args, **kwargs):
        captured["target"] = estimate(*args, **kwargs)
        return captured["target"]

    theirs.value_estimator.value_estimate = capture
    torch.manual_seed(7)
    theirs.qvalue_loss(batch.clone())
    torch.manual_seed(7)
    _, metadata = ours.qvalue_loss(batch.clone())
    torch.testing.assert_close(metadata["target_value"], captured["target"].squeeze(-1))


def test_an_error_inside_a_network_reaches_the_caller_unchanged(action_spec, batch):
    loss = build(action_spec)

    def broken_critic(module, args):
        raise ValueError("broken critic")

    def interrupted_actor(module, args):
        raise KeyboardInterrupt

    hook = brns(loss.qvalue_network)[0].register_forward_pre_hook(broken_critic)
    with pytest.raises(ValueError, match="broken critic"):
        loss(batch)
    hook.remove()
    brns(loss.actor_network)[0].register_forward_pre_hook(interrupted_actor)
    with pytest.raises(KeyboardInterrupt):
        loss.qvalue_loss(batch)


# -- the entropy scale: the squashed action in [-1, 1], whatever the env's bounds -----------
def same_weights_with_bounds(bound: float) -> CrossQLoss:
    spec = Bounded(-bound, bound, shape=(ACTION_DIM,))
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, spec, num_cells=(8, 8))
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8, 8))
    with torch.no_grad():  # a critic that scores every action 0: targets differ by log-probs only
        critic.module.net[-1].weight.zero_()
        critic.module.net[-1].bias.zero_()
    return CrossQLoss(actor, critic)


def test_log_probs_entropy_and_temperature_do_not_depend_on_the_action_bounds(batch):
    narrow, unit = same_weights_with_bounds(0.4), same_weights_with_bounds(1.0)
    assert float(narrow.target_entropy) == float(unit.target_entropy) == -ACTION_DIM
    outputs = []
    for loss in (narrow, unit):
        torch.manual_seed(1)
        _, value_metadata = loss.qvalue_loss(batch.clone())
        _, actor_metadata = loss.actor_loss(batch.clone())
        loss_alpha = loss.alpha_loss(actor_metadata["log_prob"])
        loss_alpha.backward()
        torch.manual_seed(1)
        entropy = loss(batch.clone())["entropy"]
        outputs.append(
            (
                value_metadata["target_value"],
                actor_metadata["log_prob"],
                loss_alpha,
                loss.temperature.log_alpha.grad,
                entropy,
            )
        )
    for ours_narrow, ours_unit in zip(*outputs, strict=True):
        torch.testing.assert_close(ours_narrow, ours_unit)


def test_squashed_log_prob_of_a_bounded_tanh_normal_is_the_unit_one():
    from torchrl.modules import TanhNormal

    from torchrl_crossq.objectives.crossq import squashed_log_prob

    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    low, high = torch.tensor([-0.4, 0.0, -2.0]), torch.tensor([0.4, 1.0, 3.0])
    bounded, unit = TanhNormal(loc, scale, low=low, high=high), TanhNormal(loc, scale)
    unit_action = torch.rand(5, 3) * 1.8 - 0.9
    action = low + (unit_action + 1) * (high - low) / 2
    torch.testing.assert_close(
        squashed_log_prob(bounded, bounded.log_prob(action)), unit.log_prob(unit_action)
    )


def test_bootstrap_always_honours_multi_step_discounting(action_spec):
    # gamma 0.5, three steps to the next observation, next value 10, reward 1:
    # y = 1 + 0.5 ** 3 * 10, also for a terminated transition under bootstrap_type="always".
    loss = build(action_spec, bootstrap_type="always")
    loss.make_value_estimator(gamma=0.5)
    data = make_batch(2)
    data["next", "reward"] = torch.ones(2, 1)
    data["next", "terminated"] = data["next", "done"] = torch.tensor([[True], [False]])
    data["steps_to_next_obs"] = torch.full((2, 1), 3)
    target = loss._td_target(data, torch.full((2, 1), 10.0))
    torch.testing.assert_close(target, torch.full((2, 1), 2.25))
    assert data["next", "terminated"][0]  # the input is left as it was


@pytest.mark.parametrize("convert", [None, "double"])
def test_batch_renorm_statistics_the_loss_updates_are_the_ones_it_saves(action_spec, convert):
    # The loss skips swapping in parameters its networks already hold; after a dtype or
    # device move the module's buffers are copies, and the swap must happen again.
    loss = build(action_spec)
    data = make_batch()
    if convert:
        loss, data = (
            getattr(loss, convert)(),
            data.apply(lambda x: x.double() if x.is_floating_point() else x),
        )
    loss.qvalue_loss(data)
    loss.actor_loss(data)
    for params in (loss.qvalue_network_params, loss.actor_network_params):
        counters = [v for k, v in params.items(True, True) if k[-1] == "num_batches_tracked"]
        assert counters and all(int(c) == 1 for c in counters)
    assert all(
        int(v) == 1 for k, v in loss.state_dict().items() if k.endswith("num_batches_tracked")
    )
