import copy

import pytest
import torch
from torch import nn

from torchrl_crossq import BatchRenorm1d


def reference_brn(x, running_mean, running_var, rmax, dmax, eps):
    """Batch renorm straight from Ioffe (2017), eq. in Algorithm 1, after warmup.

    With sb3-contrib's variance convention: the unbiased batch variance throughout.
    """
    mu = x.mean(0)
    sigma = (x.var(0, unbiased=True) + eps).sqrt()
    running_std = (running_var + eps).sqrt()
    r = (sigma / running_std).detach().clamp(1 / rmax, rmax)
    d = ((mu - running_mean) / running_std).detach().clamp(-dmax, dmax)
    return (x - mu) / sigma * r + d


def make_pair(c=4, warmup=5):
    torch.manual_seed(0)
    brn = BatchRenorm1d(c, momentum=0.1, eps=1e-3, warmup_steps=warmup)
    bn = nn.BatchNorm1d(c, momentum=0.1, eps=1e-3)
    with torch.no_grad():
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-0.5, 0.5)
        bn.weight.copy_(brn.weight)
        bn.bias.copy_(brn.bias)
    return brn, bn


def test_warmup_is_batch_norm_with_the_unbiased_variance_outputs_grads_and_running_stats():
    brn, bn = make_pair(warmup=5)
    for step in range(5):
        x = (torch.randn(32, 4) * (step + 1) + step).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y = brn(x)
        sigma = (x_ref.var(0, unbiased=True) + 1e-3).sqrt()
        expected = brn.weight * (x_ref - x_ref.mean(0)) / sigma + brn.bias
        bn(x_ref.detach())  # the running statistics: PyTorch's convention
        torch.testing.assert_close(y, expected)
        (y * torch.arange(4.0)).sum().backward()
        (expected * torch.arange(4.0)).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)


def test_scale_correction_is_one_when_the_batch_matches_the_running_statistics():
    # r compares the unbiased batch sigma with the (unbiased) running sigma: a batch whose
    # statistics equal the running ones is left as plain batch norm would leave it.
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    brn = BatchRenorm1d(3, warmup_steps=0, affine=False)
    with torch.no_grad():
        brn.running_mean.copy_(x.mean(0))
        brn.running_var.copy_(x.var(0, unbiased=True))
    sigma = (x.var(0, unbiased=True) + brn.eps).sqrt()
    torch.testing.assert_close(brn(x), (x - x.mean(0)) / sigma)


@pytest.mark.parametrize("warmup", [0, 1000], ids=["corrected", "warmup"])
def test_matches_sb3_contrib_batch_renorm_within_1e_3_relative(warmup):
    torch_layers = pytest.importorskip("sb3_contrib.common.torch_layers")
    torch.manual_seed(0)
    ours = BatchRenorm1d(4, momentum=0.01, eps=1e-3, warmup_steps=warmup)
    # sb3-contrib applies corrections once steps > warmup_steps; ours once the counter
    # reached warmup_steps: one step apart.
    theirs = torch_layers.BatchRenorm(4, eps=1e-3, momentum=0.01, warmup_steps=warmup - 1)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
        theirs.scale.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
        for layer_mean, layer_var in (
            (ours.running_mean, ours.running_var),
            (theirs.ra_mean, theirs.ra_var),
        ):
            layer_mean.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0]))
            layer_var.copy_(torch.tensor([1.2, 0.8, 1.0, 1.5]))
    for step in range(5):
        x = torch.randn(256, 4) * (1 + 0.1 * step) + 0.1 * step
        x_theirs = x.clone().requires_grad_()
        x = x.requires_grad_()
        y, y_theirs = ours(x), theirs(x_theirs)
        torch.testing.assert_close(y, y_theirs, rtol=1e-3, atol=1e-3)
        probe = torch.randn(256, 4)
        (y * probe).sum().backward()
        (y_theirs * probe).sum().backward()
        torch.testing.assert_close(x.grad, x_theirs.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours.running_mean, theirs.ra_mean)
    torch.testing.assert_close(ours.running_var, theirs.ra_var)


def test_eval_mode_equals_batchnorm_with_equal_statistics():
    brn, bn = make_pair()
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
        bn.running_mean.copy_(brn.running_mean)
        bn.running_var.copy_(brn.running_var)
    x = torch.randn(7, 4)
    torch.testing.assert_close(brn.eval()(x), bn.eval()(x))


def test_differs_from_batchnorm_after_warmup_and_matches_reference():
    brn, bn = make_pair(warmup=2)
    for _ in range(2):
        x = torch.randn(64, 4)
        brn(x)
        bn(x)
    running_mean, running_var = brn.running_mean.clone(), brn.running_var.clone()
    x = (torch.randn(64, 4) * 3 + 2).requires_grad_()
    y = brn(x)
    assert not torch.allclose(y, bn(x.detach()), atol=1e-3)
    x_ref = x.detach().clone().requires_grad_()
    expected = (
        brn.weight * reference_brn(x_ref, running_mean, running_var, 3.0, 5.0, 1e-3) + brn.bias
    )
    torch.testing.assert_close(y, expected)
    y.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_step_counter_is_capped_at_warmup_after_many_times_the_warmup():
    brn = BatchRenorm1d(3, warmup_steps=4)
    for _ in range(5 * 4):
        brn(torch.randn(8, 3))
    assert int(brn.num_batches_tracked) == 4
    assert brn.num_batches_tracked.dtype == torch.long


@pytest.mark.parametrize("shift, scale", [(100.0, 10.0), (-100.0, 0.001)])
def test_corrections_stay_within_rmax_dmax_far_past_warmup(shift, scale):
    brn = BatchRenorm1d(3, warmup_steps=10, affine=False)
    brn.num_batches_tracked.fill_(10**9)  # a counter far past warmup, e.g. from an old checkpoint
    x = torch.randn(4096, 3) * scale + shift
    y = brn(x)
    # y = x_hat * r + d with r, d clipped: mean of y is d, std of y is std(x_hat) * r.
    sign = 1.0 if shift > 0 else -1.0
    torch.testing.assert_close(y.mean(0), torch.full((3,), 5.0 * sign), atol=1e-3, rtol=0)
    r = 3.0 if scale > 1 else 1 / 3.0
    var = x.var(0, unbiased=True)
    torch.testing.assert_close(y.std(0, unbiased=True), r * (var / (var + 1e-3)).sqrt())


def test_warmup_zero_applies_corrections_from_the_first_step():
    brn = BatchRenorm1d(2, warmup_steps=0, affine=False)
    y = brn(torch.randn(512, 2) * 10 + 50)
    torch.testing.assert_close(y.mean(0), torch.full((2,), 5.0), atol=1e-3, rtol=0)
    assert int(brn.num_batches_tracked) == 0


def test_running_statistics_use_momentum_and_unbiased_variance():
    brn = BatchRenorm1d(2, momentum=0.01)
    x = torch.randn(16, 2)
    brn(x)
    torch.testing.assert_close(brn.running_mean, 0.01 * x.mean(0))
    torch.testing.assert_close(brn.running_var, 0.99 + 0.01 * x.var(0, unbiased=True))


def test_eval_mode_does_not_touch_statistics_or_counter():
    brn = BatchRenorm1d(2).eval()
    state = {k: v.clone() for k, v in brn.state_dict().items()}
    brn(torch.randn(5, 2))
    for k, v in brn.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_state_dict_round_trip_restores_statistics_and_counter():
    brn = BatchRenorm1d(3, warmup_steps=3)
    for _ in range(5):
        brn(torch.randn(10, 3) + 1)
    fresh = BatchRenorm1d(3, warmup_steps=3)
    fresh.load_state_dict(brn.state_dict())
    assert int(fresh.num_batches_tracked) == 3
    x = torch.randn(10, 3)
    torch.testing.assert_close(fresh(x), brn(x))
    torch.testing.assert_close(fresh.eval()(x), brn.eval()(x))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize(
    "ensemble_size, shape", [(None, (3,)), (None, (4, 5, 3)), (2, (2, 5, 3)), (2, (2, 4, 5, 3))]
)
def test_eval_mode_is_the_running_statistics_formula_with_its_gradients(
    affine, ensemble_size, shape
):
    brn = BatchRenorm1d(3, affine=affine, ensemble_size=ensemble_size).eval()
    with torch.no_grad():
        brn.running_mean.normal_()
        brn.running_var.uniform_(0.1, 4.0)
        if affine:
            brn.weight.normal_()
            brn.bias.normal_()
    x = torch.randn(shape, requires_grad=True)
    stats = (3,) if ensemble_size is None else (2,) + (1,) * (len(shape) - 2) + (3,)
    mean, var = brn.running_mean.view(stats), brn.running_var.view(stats)
    expected = (x - mean) / torch.sqrt(var + brn.eps)
    if affine:
        expected = expected * brn.weight.view(stats) + brn.bias.view(stats)
    y = brn(x)
    torch.testing.assert_close(y, expected)
    grad = torch.randn_like(y)
    inputs = [x, *brn.parameters()]
    for ours, reference in zip(
        torch.autograd.grad(y, inputs, grad), torch.autograd.grad(expected, inputs, grad)
    ):
        torch.testing.assert_close(ours, reference)


def test_leading_dimensions_count_as_batch():
    a, b = BatchRenorm1d(3), BatchRenorm1d(3)
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(a(x), b(x.reshape(20, 3)).reshape(4, 5, 3))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_ensemble_members_have_independent_statistics():
    ens = BatchRenorm1d(3, ensemble_size=2, warmup_steps=0)
    singles = [BatchRenorm1d(3, warmup_steps=0) for _ in range(2)]
    with torch.no_grad():
        ens.weight.uniform_()
        for i, s in enumerate(singles):
            s.weight.copy_(ens.weight[i, 0])
    for _ in range(3):
        x = torch.randn(2, 16, 3) * torch.tensor([1.0, 5.0]).view(2, 1, 1)
        y = ens(x)
        for i, s in enumerate(singles):
            torch.testing.assert_close(y[i], s(x[i]))
    for i, s in enumerate(singles):
        torch.testing.assert_close(ens.running_var[i, 0], s.running_var)


def test_single_sample_in_train_mode_is_a_clear_error():
    brn = BatchRenorm1d(3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        brn(torch.randn(1, 3))
    assert brn.eval()(torch.randn(1, 3)).shape == (1, 3)


def test_wrong_feature_count_names_the_shapes():
    with pytest.raises(ValueError, match=r"expects 3 features.*\(4, 5\)"):
        BatchRenorm1d(3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"expects 3 features.*\(\)"):
        BatchRenorm1d(3).eval()(torch.tensor(1.0))


@pytest.mark.parametrize(
    "kwargs", [{"momentum": 0.0}, {"eps": 0.0}, {"rmax": 0.5}, {"dmax": -1.0}, {"warmup_steps": -1}]
)
def test_invalid_hyperparameters_are_rejected(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        BatchRenorm1d(3, **kwargs)


def test_float64_input_keeps_float32_statistics_and_output_precision():
    brn = BatchRenorm1d(3)
    y = brn(torch.randn(8, 3, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert brn.running_mean.dtype == brn.running_var.dtype == torch.float32


def test_bfloat16_input_keeps_float32_statistics():
    brn = BatchRenorm1d(3)
    y = brn(torch.randn(8, 3).bfloat16())
    assert brn.running_mean.dtype == torch.float32
    assert y.dtype == torch.float32


@pytest.mark.parametrize("warmup", [0, 100], ids=["corrected", "warmup"])
@pytest.mark.parametrize("ensemble_size", [None, 2])
def test_gradients_of_input_weight_and_bias_match_autograd_reference(warmup, ensemble_size):
    # The hand-written backward against autograd through the textbook formula, in float64.
    torch.manual_seed(0)
    brn = BatchRenorm1d(5, warmup_steps=warmup, ensemble_size=ensemble_size).double()
    stat_shape = (5,) if ensemble_size is None else (ensemble_size, 1, 5)
    with torch.no_grad():
        brn.running_mean.copy_(torch.randn(stat_shape))
        brn.running_var.copy_(torch.rand(stat_shape) * 0.3 + 0.1)  # r clips at rmax for some
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-0.5, 0.5)
    shape = (12, 5) if ensemble_size is None else (ensemble_size, 12, 5)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_()
    weight = brn.weight.detach().clone().requires_grad_()
    bias = brn.bias.detach().clone().requires_grad_()
    dim = 0 if ensemble_size is None else 1
    mu = x.mean(dim, keepdim=True)
    sigma = (x.var(dim, unbiased=True, keepdim=True) + brn.eps).sqrt()
    running_std = (brn.running_var + brn.eps).sqrt()
    r = (sigma / running_std).detach().clamp(1 / 3, 3)
    d = ((mu - brn.running_mean) / running_std).detach().clamp(-5, 5)
    if warmup:
        r, d = torch.ones_like(r), torch.zeros_like(d)
    expected = weight * ((x - mu) / sigma * r + d) + bias
    x_ours = x.detach().clone().requires_grad_()
    y = brn(x_ours)
    torch.testing.assert_close(y, expected)
    probe = torch.randn(shape, dtype=torch.float64)
    (y * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(x_ours.grad, x.grad)
    torch.testing.assert_close(brn.weight.grad, weight.grad)
    torch.testing.assert_close(brn.bias.grad, bias.grad)


def test_without_affine_gradients_match_the_unbiased_batch_norm_formula():
    torch.manual_seed(0)
    brn = BatchRenorm1d(3, affine=False, eps=1e-3)
    x = torch.randn(16, 3, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    expected = (x_ref - x_ref.mean(0)) / (x_ref.var(0, unbiased=True) + 1e-3).sqrt()
    probe = torch.randn(16, 3)
    (brn(x) * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_warmup_schedule_is_plain_batch_norm_then_the_full_bounds():
    brn = BatchRenorm1d(3, rmax=3.0, dmax=5.0, warmup_steps=2)
    bounds = [tuple(float(b) for b in brn._warmup_schedule()) for _ in range(4)]
    assert bounds == [(1.0, 0.0), (1.0, 0.0), (3.0, 5.0), (3.0, 5.0)]
    assert int(brn.num_batches_tracked) == 2  # capped at warmup_steps


def corrected_layer(momentum=0.5):
    """A layer past warmup whose running statistics are far from the batches it will see."""
    torch.manual_seed(0)
    brn = BatchRenorm1d(3, warmup_steps=0, momentum=momentum)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        brn.running_var.copy_(torch.tensor([0.3, 2.0, 1.0]))
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-0.5, 0.5)
    return brn


def input_gradients(layer, x, probe):
    x = x.clone().requires_grad_()
    (layer(x) * probe).sum().backward()
    return x.grad, layer.weight.grad, layer.bias.grad


def test_compiled_gradients_use_the_statistics_of_the_forward_not_the_updated_ones():
    # torch.compile's partitioner may recompute r and d in the backward from the running
    # statistics, after this forward's update of them: a wrong gradient once r, d are active.
    x, probe = torch.randn(16, 3) * 2 + 1, torch.randn(16, 3)
    eager = corrected_layer()
    compiled = corrected_layer()
    expected = input_gradients(eager, x, probe)
    got = input_gradients(torch.compile(compiled), x, probe)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.running_mean, eager.running_mean)


def test_under_vmap_each_stacked_member_normalises_as_it_would_alone():
    # How TorchRL's losses run a critic ensemble: torch.func over stacked parameters and buffers.
    from torch.func import functional_call, stack_module_state, vmap

    members = [corrected_layer(momentum=0.1) for _ in range(2)]
    with torch.no_grad():
        members[1].running_mean.add_(1.0)
    alone = copy.deepcopy(members)
    params, buffers = stack_module_state(members)
    x, probe = torch.randn(8, 3), torch.randn(2, 8, 3)

    def call(p, b, x):
        return functional_call(members[0], (p, b), (x,))

    y = vmap(call, (0, 0, None))(params, buffers, x)
    (y * probe).sum().backward()
    for i, layer in enumerate(alone):
        expected = layer(x)
        (expected * probe[i]).sum().backward()
        torch.testing.assert_close(y[i], expected)
        torch.testing.assert_close(params["weight"].grad[i], layer.weight.grad)
        torch.testing.assert_close(buffers["running_mean"][i], layer.running_mean)
        torch.testing.assert_close(buffers["running_var"][i], layer.running_var)


def test_reset_parameters_starts_the_layer_over_statistics_and_warmup_included():
    brn = corrected_layer()
    brn.warmup_steps = 10
    brn(torch.randn(8, 3))
    brn.reset_parameters()
    fresh = BatchRenorm1d(3)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(brn.state_dict()[name], value)
