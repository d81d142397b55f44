import warnings

import pytest
import torch
from helpers import (
    ACTION_DIM,
    OBS_DIM,
    compare_updaters_state_by_state,
    make_batch,
    sgd_optimizers,
)

from torchrl_crossq import (
    OPTIMISED_LOSSES,
    CrossQLoss,
    CrossQUpdater,
    PeriodicSoftUpdate,
    make_actor,
    make_critic,
    make_optimizers,
)
from torchrl_crossq.objectives.update import _fused_adam_calls, step_optimizer, zero_grad


def build(action_spec, **loss_kwargs):
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8,))
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,))
    return CrossQLoss(actor, critic, **loss_kwargs)


def snapshot(params):
    return [p.detach().clone() for p in params.values(True, True)]


def changed(before, params):
    return any(not torch.equal(b, p) for b, p in zip(before, params.values(True, True)))


@pytest.mark.parametrize("alpha_type", ["exp", "softplus", "fixed_alpha"])
def test_every_loss_term_reaches_an_optimizer(action_spec, alpha_type):
    loss = build(action_spec, alpha_type=alpha_type)
    optimizers = make_optimizers(loss)
    stepped = {term: name for name, terms in OPTIMISED_LOSSES.items() for term in terms}
    for key in loss.out_keys:
        if key.startswith("loss_"):
            assert key in stepped, f"{key} is stepped by no optimizer"
            assert stepped[key] in optimizers, f"{key}'s optimizer {stepped[key]} was not built"


def test_optimizers_hold_disjoint_parameter_sets_covering_all_trainable_ones(action_spec):
    loss = build(action_spec)
    optimizers = make_optimizers(loss)
    seen = [id(p) for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    trainable = {id(p) for p in loss.parameters() if p.requires_grad}
    assert set(seen) == trainable


def test_actor_and_alpha_step_every_policy_delay_updates_critic_every_update(action_spec):
    loss = build(action_spec)
    update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=3)
    batch = make_batch(16)
    for step in range(1, 7):
        actor, critic = snapshot(loss.actor_network_params), snapshot(loss.qvalue_network_params)
        alpha = loss.alpha.clone()
        metrics = update(batch)
        assert changed(critic, loss.qvalue_network_params)
        assert changed(actor, loss.actor_network_params) == (step % 3 == 0)
        assert (not torch.equal(alpha, loss.alpha)) == (step % 3 == 0)
        assert ("loss_actor" in metrics.keys()) == (step % 3 == 0)


def test_sac_head_requires_a_target_updater(action_spec):
    loss = build(action_spec, q_head_type="default")
    with pytest.raises(ValueError, match="target_updater"):
        CrossQUpdater(loss, make_optimizers(loss))


def test_gradient_clipping_bounds_the_critic_gradient(action_spec):
    loss = build(action_spec)
    optimizers = make_optimizers(loss)
    update = CrossQUpdater(loss, optimizers, clip_grad_norm=1e-3)
    batch = make_batch(16)
    batch["next", "reward"] *= 1e4
    update(batch)
    grads = [p.grad for g in optimizers["critic"].param_groups for p in g["params"]]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert total <= 1e-3 * (1 + 1e-4)


def test_updater_state_dict_round_trip(action_spec):
    loss = build(action_spec, q_head_type="default")
    update = CrossQUpdater(
        loss, make_optimizers(loss), target_updater=PeriodicSoftUpdate(loss, tau=0.1, every=2)
    )
    for _ in range(5):
        update(make_batch(16))
    state = update.state_dict()
    fresh_loss = build(action_spec, q_head_type="default")
    fresh = CrossQUpdater(
        fresh_loss,
        make_optimizers(fresh_loss),
        target_updater=PeriodicSoftUpdate(fresh_loss, tau=0.1, every=2),
    )
    fresh.load_state_dict(state)
    assert fresh.num_updates == 5 and fresh.target_updater.calls == 5
    assert (
        fresh.optimizers["critic"].state_dict()["state"].keys()
        == state["optimizers"]["critic"]["state"].keys()
    )


@pytest.mark.parametrize("tau, every", [(1.0, 1), (0.5, 2)])
def test_soft_update_copies_the_online_normalisation_statistics_into_the_target(
    action_spec, tau, every
):
    # TorchRL's SoftUpdate averages parameters only: a BRN target critic kept running
    # statistics 0 and 1, so with tau=1 its Q differed from the online critic's in eval mode.
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, action_spec, num_cells=(8,), norm=None)
    critic = make_critic(
        OBS_DIM, ACTION_DIM, num_cells=(8,), norm="brn", norm_kwargs={"warmup_steps": 1}
    )
    loss = CrossQLoss(actor, critic, q_head_type="default")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TorchRL's "eps < 0.5" warning is not for our tau
        target_updater = PeriodicSoftUpdate(loss, tau=tau, every=every)
    update = CrossQUpdater(loss, make_optimizers(loss), target_updater=target_updater)
    online, target = loss.qvalue_network_params, loss.target_qvalue_network_params
    buffers = [k for k, v in online.items(True, True) if not v.requires_grad]
    assert {k[-1] for k in buffers} >= {"running_mean", "running_var"}
    for step in range(1, 5):
        batch = make_batch(16, seed=step)
        batch["observation"] = batch["observation"] * 3 + 5  # statistics far from 0 and 1
        batch["next", "observation"] = batch["next", "observation"] * 3 + 5
        update(batch)
        for key in buffers:
            if step % every == 0:  # copied on a target update, counter included
                assert torch.equal(target.get(key), online.get(key)), key
            elif key[-1] != "num_batches_tracked":  # between them the statistics move on
                assert not torch.equal(target.get(key), online.get(key)), key
    if tau == 1.0:
        td = batch["next"].select("observation").set("action", batch["action"])
        torch.testing.assert_close(loss._q(td, target, False), loss._q(td, online, False))


@pytest.mark.parametrize(
    "kwargs, match", [({"tau": 0.0}, "tau"), ({"tau": 0.1, "every": 0}, "every=0")]
)
def test_soft_update_rejects_bad_values(action_spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PeriodicSoftUpdate(build(action_spec, q_head_type="default"), **kwargs)


def test_bf16_precision_keeps_float32_parameters_and_statistics(action_spec):
    loss = build(action_spec)
    update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=1, precision="bf16")
    metrics = update(make_batch(16))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(t.dtype in (torch.float32, torch.long) for t in loss.state_dict().values())


def test_bf16_update_tracks_the_float32_update(action_spec):
    # Same seeds, same batches: bfloat16 matmuls change the numbers by rounding only.
    torch.manual_seed(1)
    batches = [make_batch(64) for _ in range(3)]
    metrics, steps = {}, {}
    for precision in ("fp32", "bf16"):
        loss = build(action_spec)
        update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=1, precision=precision)
        before = torch.cat([p.detach().flatten() for p in loss.parameters()])
        torch.manual_seed(2)  # the actor's samples
        metrics[precision] = [update(batch) for batch in batches]
        after = torch.cat([p.detach().flatten() for p in loss.parameters()])
        steps[precision] = after - before
    for ours, ref in zip(metrics["bf16"], metrics["fp32"], strict=True):
        for key in ("loss_qvalue", "loss_actor", "loss_alpha", "q_mean", "entropy"):
            assert ours[key].dtype == torch.float32, key
            torch.testing.assert_close(ours[key], ref[key], rtol=0.05, atol=0.02)
    # Adam's steps (critic, actor, temperature) point the same way in both precisions.
    cosine = torch.nn.functional.cosine_similarity(steps["bf16"], steps["fp32"], dim=0)
    assert cosine > 0.95, cosine


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
def test_bf16_warns_where_the_cpu_has_no_bfloat16_matmul(action_spec, monkeypatch, native):
    # An AVX2-only CPU runs bfloat16 matmuls hundreds of times slower than float32.
    import torchrl_crossq.objectives.update as update_module

    monkeypatch.setattr(update_module, "has_native_bf16_matmul", lambda device_type: native)
    loss = build(action_spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CrossQUpdater(loss, make_optimizers(loss), precision="bf16")
        CrossQUpdater(loss, make_optimizers(loss), precision="fp32")
    messages = [str(w.message) for w in caught]
    if native:
        assert not any("bf16" in m for m in messages), messages
    else:
        assert len(messages) == 1, messages
        assert "precision='bf16'" in messages[0] and "AVX512-BF16 nor AMX" in messages[0]
        assert "precision='fp32'" in messages[0]


def test_native_bf16_probe_reads_the_cpu_flags(monkeypatch):
    import torchrl_crossq.objectives.update as update_module

    monkeypatch.setattr(update_module.platform, "machine", lambda: "x86_64")
    for avx512_bf16, amx, expected in [
        (False, False, False),
        (True, False, True),
        (False, True, True),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert update_module.has_native_bf16_matmul("cpu") is expected
    monkeypatch.setattr(update_module.platform, "machine", lambda: "aarch64")
    assert update_module.has_native_bf16_matmul("cpu") is True  # x86 probes say nothing there
    monkeypatch.setattr(update_module.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe
    assert update_module.has_native_bf16_matmul("cpu") is True


def test_unknown_precision_is_rejected(action_spec):
    loss = build(action_spec)
    with pytest.raises(
        ValueError, match="precision='fp8' is not supported; use one of: fp32, bf16"
    ):
        CrossQUpdater(loss, make_optimizers(loss), precision="fp8")


def test_compiled_update_gives_the_eager_update_on_cpu(action_spec):
    # The CPU twin of test_cuda's compile test: same losses and statistics, state by state.
    # (The inductor config's own patch: pytest's monkeypatch deletes the option on undo.)
    import torch._inductor.config

    def updater(**kwargs):
        # Warmup over after two forwards: the r and d corrections act in most updates (a fast
        # momentum makes a gradient computed with the wrong statistics show).
        torch.manual_seed(0)
        norm_kwargs = {"warmup_steps": 2, "momentum": 0.5}
        actor = make_actor(OBS_DIM, action_spec, num_cells=(8,), norm_kwargs=norm_kwargs)
        critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(8,), norm_kwargs=norm_kwargs)
        loss = CrossQLoss(actor, critic)
        loss.make_value_estimator(gamma=0.99)
        return CrossQUpdater(loss, sgd_optimizers(loss), policy_delay=3, **kwargs)

    batches = [make_batch(16, seed=step) for step in range(6)]
    with torch._inductor.config.patch(fallback_random=True):
        compare_updaters_state_by_state(
            updater(), updater(compile=True), batches, rtol=1e-5, atol=1e-6
        )
    assert torch._inductor.config.fallback_random is False  # put back, not deleted


def test_cudagraphs_need_compile(action_spec):
    loss = build(action_spec)
    with pytest.raises(ValueError, match="cudagraphs=True needs compile=True"):
        CrossQUpdater(loss, make_optimizers(loss), cudagraphs=True)


def test_each_compiled_loss_is_traced_once_and_cudagraphs_on_cpu_only_compile(action_spec):
    # The critic-output check runs on the first call only; under compile a guard on its flag
    # traced the critic loss a second time (three graphs where two do). CUDA graphs need a
    # CUDA device: on CPU the same construction compiles the losses only, each whole (a graph
    # break, e.g. on the parameter check, cost recompiles).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs compiled by earlier tests are reused, not counted
    loss = build(action_spec)
    with pytest.warns(UserWarning, match="cudagraphs=True has no effect on device 'cpu'"):
        update = CrossQUpdater(
            loss, make_optimizers(loss), policy_delay=1, compile=True, cudagraphs=True
        )
    assert not update.cudagraphs
    critic = snapshot(loss.qvalue_network_params)
    counters.clear()
    for step in range(4):
        metrics = update(make_batch(16, seed=step))
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert not counters["graph_break"], list(counters["graph_break"])
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert changed(critic, loss.qvalue_network_params)


def two_group_adam(**kwargs):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 2))
    groups = [
        {"params": net[0].parameters()},
        {"params": net[1].parameters(), "lr": 3e-3, "weight_decay": 0.1},
    ]
    return net, torch.optim.Adam(groups, lr=1e-3, betas=(0.5, 0.999), **kwargs)


def train_steps(net, optimizer, step, steps=5):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        zero_grad(optimizer)
        net(x).pow(2).sum().backward()
        step(optimizer)
        for group in optimizer.param_groups:
            group["lr"] *= 0.9  # what a scheduler does between steps


@pytest.mark.parametrize(
    "kwargs",
    [{"fused": True}, {"fused": True, "amsgrad": True}, {"foreach": True}, {"fused": False}],
    ids=["fused", "fused_amsgrad", "foreach", "for_loop"],
)
def test_step_optimizer_gives_adams_own_step_bit_for_bit(kwargs):
    # A fused Adam is stepped through its kernel directly after its first step (when its state
    # exists); any other takes step(). Either way: Adam's own results, every tensor equal.
    net, optimizer = two_group_adam(**kwargs)
    twin, twin_optimizer = two_group_adam(**kwargs)
    train_steps(net, optimizer, lambda opt: opt.step())
    train_steps(twin, twin_optimizer, step_optimizer)
    direct = kwargs == {"fused": True}
    assert (_fused_adam_calls(twin_optimizer) is not None) == direct
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q) and p.grad is not None
    for state, twin_state in zip(
        optimizer.state.values(), twin_optimizer.state.values(), strict=True
    ):
        for key, value in state.items():
            assert torch.equal(value, twin_state[key]), key


def test_step_optimizer_keeps_hooks_and_schedulers_of_step(recwarn):
    # Hooks run and an lr scheduler sees its optimiser stepped (it warns otherwise): both take
    # step() itself.
    net, optimizer = two_group_adam(fused=True)
    calls = []
    optimizer.register_step_post_hook(lambda *args: calls.append(1))
    train_steps(net, optimizer, step_optimizer, steps=3)
    assert len(calls) == 3
    net, optimizer = two_group_adam(fused=True)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=4)
    for _ in range(3):
        train_steps(net, optimizer, step_optimizer, steps=1)
        scheduler.step()
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert _fused_adam_calls(optimizer) is None  # the scheduler's wrapper of step


def test_zero_grad_clears_the_gradients_as_the_optimizers_own():
    net, optimizer = two_group_adam(fused=True)
    net(torch.randn(3, 5)).sum().backward()
    zero_grad(optimizer)
    assert all(p.grad is None for p in net.parameters())

    class Zeroing(torch.optim.SGD):  # a zero_grad of its own is called
        def zero_grad(self, set_to_none=True):
            super().zero_grad(set_to_none=False)

    optimizer = Zeroing(net.parameters(), lr=0.1)
    net(torch.randn(3, 5)).sum().backward()
    zero_grad(optimizer)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())


def train_pendulum(frames: int = 96, slow: bool = False, monkeypatch=None) -> list[dict]:
    """A fixed-seed collect-and-update loop; ``slow`` forces TorchRL's generic paths."""
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.data.replay_buffers import RandomSampler

    from torchrl_crossq.envs import make_env
    from torchrl_crossq.modules import networks
    from torchrl_crossq.objectives import crossq

    if slow:
        monkeypatch.setattr(
            networks.TanhNormalActor, "forward", networks.ProbabilisticActor.forward
        )
        monkeypatch.setattr(
            networks.TanhNormalActor, "get_dist", networks.ProbabilisticActor.get_dist
        )
        monkeypatch.setattr(
            networks.TanhNormalActor,
            "action_and_log_prob",
            lambda self, td, reparameterize=False: networks._dist_sample(
                self.get_dist(td), reparameterize
            ),
        )
        monkeypatch.setattr(crossq.CrossQLoss, "_holds_own", lambda self, network: False)
        monkeypatch.setattr(crossq, "module_output", lambda m, td, key: m(td).get(key, None))
    torch.manual_seed(0)
    env = make_env("Pendulum-v1", seed=0)
    actor = make_actor(3, env.action_spec_unbatched, num_cells=(16,))
    loss = CrossQLoss(actor, make_critic(3, 1, num_cells=(16,)))
    update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=2)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(frames), sampler=RandomSampler(), batch_size=16
    )
    # The script's collector reuses its batch TensorDict (return_same_td).
    collector = Collector(
        env, actor, frames_per_batch=8, total_frames=frames, return_same_td=not slow
    )
    metrics = []
    for data in collector:
        buffer.extend(data)
        metrics.append({k: v.clone() for k, v in update(buffer.sample()).items()})
    collector.shutdown()
    return metrics


def test_speed_paths_give_the_losses_of_torchrls_generic_paths(monkeypatch):
    # The acting fast path, the policy sampling without distribution objects, the reused
    # collector batch, the skipped parameter swaps and the direct critic call change speed
    # only: a fixed-seed run logs bit-identical losses with TorchRL's paths forced.
    fast = train_pendulum()
    with monkeypatch.context() as patch:
        slow = train_pendulum(slow=True, monkeypatch=patch)
    assert len(fast) == len(slow) == 12
    for ours, theirs in zip(fast, slow, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
