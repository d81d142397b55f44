"""Batch Renormalization (Ioffe, 2017) as used by CrossQ (Bhatt et al., ICLR 2024)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class BatchRenorm1d(nn.Module):
    r"""Batch Renormalization over the last (feature) dimension.

    In train mode the input is normalised with the batch statistics, corrected
    towards the running statistics:

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} r + d, \quad
        r = \mathrm{clip}\left(\frac{\sigma_B}{\sigma}, \frac{1}{r_{max}}, r_{max}\right), \quad
        d = \mathrm{clip}\left(\frac{\mu_B - \mu}{\sigma}, -d_{max}, d_{max}\right)

    with ``r`` and ``d`` under stop-gradient. For the first ``warmup_steps``
    training forwards ``r = 1`` and ``d = 0`` (plain batch norm), which lets the
    running statistics settle before they are trusted (the schedule is one method,
    ``_warmup_schedule``). The step counter is a buffer capped at ``warmup_steps``,
    so it is saved in checkpoints and ``r``, ``d`` stay within their bounds however
    long training runs. Running
    statistics follow PyTorch's convention: ``running = (1 - momentum) *
    running + momentum * batch``. In eval mode the running statistics are used.

    One variance convention throughout, sb3-contrib's: ``sigma_B`` is the
    unbiased batch standard deviation in the normalisation, in ``r`` and in the
    running variance, so ``r = 1`` when the batch matches the running
    statistics (``torch.nn.BatchNorm1d`` normalises with the biased one). The
    original code and sb3-contrib divide by ``sqrt(var_B / r^2 + eps)`` (and shift the
    mean by ``d * sigma_B / r``) rather than multiply by ``r / sqrt(var_B + eps)`` and add
    ``d`` (the BRN paper's form): the two differ by terms of order ``eps / var_B``, about
    ``(r^2 - 1) * eps / (2 * var_B)`` relative in the scale and ``d * r^2 * eps / (2 * var_B)``
    absolute in the shift (large only for features whose batch variance is near ``eps``,
    and zero during warmup, where ``r = 1`` and ``d = 0``), and this form keeps the
    backward free of ``1 / sigma_B`` terms (finite for a constant feature).

    Shapes: the features are the last dimension. Without ``ensemble_size`` the
    input is ``[*, C]`` and every leading dimension counts as batch (in eval mode
    a single unbatched ``[C]`` observation is fine too). With
    ``ensemble_size=E`` the input is ``[E, *, C]``: each of the ``E`` members
    has its own statistics and affine parameters (used by the critic
    ensemble, which evaluates all critics in one batched call).

    The train-mode backward is written by hand (a few fused passes) and is
    differentiable once: no double backward. Under ``torch.func`` transforms
    (``vmap``, as TorchRL's losses run their critic ensembles; ``grad``) the same
    arithmetic runs as plain differentiable operations.

    Args:
        num_features: number of features ``C``.

    Keyword Args:
        momentum: running-statistics update rate (paper: 0.01, i.e. 0.99 in
            Flax's convention).
        eps: added to the variances (paper: 1e-3).
        rmax: bound on the scale correction ``r`` (paper: 3).
        dmax: bound on the shift correction ``d`` (paper: 5).
        warmup_steps: training forwards before the corrections apply (paper: 100k).
        affine: learn a per-feature scale and shift.
        ensemble_size: number of independent members along the first input
            dimension, or ``None`` for a single normaliser.

    Examples:
        >>> import torch
        >>> brn = BatchRenorm1d(3, warmup_steps=10)
        >>> y = brn(torch.randn(8, 3))
        >>> y.shape, int(brn.num_batches_tracked)
        (torch.Size([8, 3]), 1)
        >>> ens = BatchRenorm1d(3, ensemble_size=2)
        >>> ens(torch.randn(2, 8, 3)).shape
        torch.Size([2, 8, 3])
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.01,
        eps: float = 1e-3,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 100_000,
        affine: bool = True,
        ensemble_size: int | None = None,
    ) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features={num_features} must be positive")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must be in (0, 1]")
        if eps <= 0:
            raise ValueError(f"eps={eps} must be positive")
        if rmax < 1.0:
            raise ValueError(f"rmax={rmax} must be >= 1")
        if dmax < 0.0:
            raise ValueError(f"dmax={dmax} must be >= 0")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        if ensemble_size is not None and ensemble_size <= 0:
            raise ValueError(f"ensemble_size={ensemble_size} must be positive or None")
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.rmax = rmax
        self.dmax = dmax
        self.warmup_steps = warmup_steps
        self.affine = affine
        self.ensemble_size = ensemble_size
        # Statistics are stored as [C] or [E, 1, C] so they broadcast against [*, C] / [E, B, C].
        shape = (num_features,) if ensemble_size is None else (ensemble_size, 1, num_features)
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        if affine:
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, and the warmup counter back to 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """The running statistics and the warmup counter, and the affine scale 1 and shift 0,
        as at construction (``torch.nn.BatchNorm1d``'s meaning: a re-initialised layer starts
        over)."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        ens = "" if self.ensemble_size is None else f", ensemble_size={self.ensemble_size}"
        return (
            f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, rmax={self.rmax}, "
            f"dmax={self.dmax}, warmup_steps={self.warmup_steps}, affine={self.affine}{ens}"
        )

    def _check_shape(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} features in the last "
                f"dimension, got input of shape {tuple(x.shape)}"
            )
        if self.ensemble_size is None:
            if x.dim() < 2 and self.training:
                raise ValueError(
                    f"{type(self).__name__} expects an input of shape [*, B, C], got {tuple(x.shape)}"
                )
        elif x.dim() < 3 or x.shape[0] != self.ensemble_size:
            raise ValueError(
                f"{type(self).__name__} with ensemble_size={self.ensemble_size} expects an input "
                f"of shape [{self.ensemble_size}, *, B, C], got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(x)
        # Statistics in float32 even when the matmuls around run in bfloat16.
        if x.dtype != self.running_mean.dtype:
            x = x.to(torch.promote_types(x.dtype, self.running_mean.dtype))
        if self.training:
            return self._train_forward(x)
        # y = x * scale + shift, scale = weight / sqrt(var + eps), shift = bias - weight * mean
        # / sqrt(var + eps). Statistics of shape [C] broadcast as they are (an actor acting:
        # no views to build); an ensemble's [E, 1, C] are viewed against [E, *, B, C].
        unit_scale = (self.running_var + self.eps).rsqrt()
        mean = self.running_mean
        if self.ensemble_size is not None:
            stat_shape = self._stat_shape(x)
            unit_scale, mean = unit_scale.view(stat_shape), mean.view(stat_shape)
        if not self.affine:
            return torch.addcmul((mean * unit_scale).neg_(), x, unit_scale)
        weight, bias = self.weight, self.bias
        if self.ensemble_size is not None:
            weight, bias = weight.view(stat_shape), bias.view(stat_shape)
        shift = torch.addcmul(bias, weight, mean * unit_scale, value=-1)
        return torch.addcmul(shift, x, weight * unit_scale)

    def _stat_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """An ensemble's statistics ``[E, 1, C]`` laid out against ``x: [E, *, B, C]``."""
        return (self.ensemble_size,) + (1,) * (x.dim() - 2) + (self.num_features,)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        # One layout for both cases: [G, N, C] with G = ensemble_size (or 1), statistics [G, 1, C].
        groups = 1 if self.ensemble_size is None else self.ensemble_size
        x3 = x.reshape(groups, -1, self.num_features)
        n = x3.shape[1]
        if n < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples per feature in train mode to "
                f"estimate batch statistics, got input of shape {tuple(x.shape)}; "
                "call .eval() to normalise single samples with the running statistics"
            )
        stat_shape = (groups, 1, self.num_features)
        running_mean = self.running_mean.view(stat_shape)
        running_var = self.running_var.view(stat_shape)
        weight = bias = None
        if self.affine:
            weight, bias = self.weight.view(stat_shape), self.bias.view(stat_shape)
        rmax, dmax = self._warmup_schedule()
        mean_before, var_before = running_mean, running_var
        transformed = False
        if torch.compiler.is_compiling():
            # torch.compile's partitioner may recompute r and d in the backward from the
            # buffers, which by then hold this batch's update (pytorch/pytorch#197039): the
            # gradient would use the new statistics. An opaque copy pins the values read here
            # (one call for both: each costs tens of microseconds of Python dispatch).
            mean_before, var_before = _snapshot(torch.stack([running_mean, running_var]))
        else:
            # torch.func transforms (vmap, as TorchRL's losses run their critics; grad) need
            # autograd.Functions written for them: plain operations there, the same arithmetic.
            wrapped = torch._C._functorch.is_functorch_wrapped_tensor
            transformed = wrapped(x3) or wrapped(running_mean) or (self.affine and wrapped(weight))
        train = _batch_renorm_train_ops if transformed else _BatchRenormTrain.apply
        y, batch_mean, batch_var = train(
            x3, weight, bias, mean_before, var_before, self.eps, rmax, dmax
        )
        with torch.no_grad():
            for running, batch in ((running_mean, batch_mean), (running_var, batch_var)):
                batch = batch.to(running.dtype)
                if transformed:  # lerp_ has no batching rule: the same update, spelled out
                    running.add_((batch - running) * self.momentum)
                else:
                    running.lerp_(batch, self.momentum)
        return y.view(x.shape)

    @torch.no_grad()
    def _warmup_schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds on ``r`` and ``d`` of this training forward, and one step of the counter.

        A hard switch, as in the original code (sbx) and sb3-contrib: plain batch norm
        (``r = 1``, ``d = 0``) for the first ``warmup_steps`` training forwards, then the full
        bounds ``rmax``, ``dmax`` (sbx switches at the same forward; sb3-contrib, which tests
        ``steps > warmup_steps``, one forward later). The
        paper (Ioffe, 2017) relaxes the bounds gradually instead; a schedule is a change here.
        Tensors, not a Python ``if``: no host sync, and ``torch.compile`` traces it.
        """
        warmed_up = self.num_batches_tracked >= self.warmup_steps
        # Capped: past warmup the counter stays at warmup_steps.
        self.num_batches_tracked.add_((~warmed_up).to(torch.long))
        dtype = self.running_var.dtype
        rmax = torch.where(warmed_up, self.rmax, 1.0).to(dtype)
        dmax = torch.where(warmed_up, self.dmax, 0.0).to(dtype)
        return rmax, dmax


def _batch_renorm_train_ops(x, weight, bias, running_mean, running_var, eps, rmax, dmax):
    """:class:`_BatchRenormTrain` in differentiable operations (``r``, ``d`` detached)."""
    n = x.shape[1]
    mean = x.sum(1, keepdim=True) / n
    centred = x - mean
    var = centred.square().sum(1, keepdim=True) / (n - 1)
    inv_std = (var + eps).rsqrt()
    with torch.no_grad():
        running_inv_std = (running_var + eps).rsqrt()
        r = torch.clamp((var + eps).sqrt() * running_inv_std, rmax.reciprocal(), rmax)
        d = torch.clamp((mean - running_mean) * running_inv_std, -dmax, dmax)
    y = centred * (inv_std * r) + d
    if weight is not None:
        y = y * weight + bias
    return y, mean.detach(), var.detach()


@torch.library.custom_op("torchrl_crossq::statistics_snapshot", mutates_args=())
def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` that torch.compile's partitioner never recomputes from it."""
    return tensor.clone()


@_snapshot.register_fake
def _(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor)


class _BatchRenormTrain(torch.autograd.Function):
    """Train-mode Batch Renormalization of ``x: [G, N, C]`` over ``N``, affine included.

    ``y = weight * (x_hat * r + d) + bias`` with ``x_hat = (x - mean_B) / sqrt(var_B + eps)``
    and the corrections ``r``, ``d`` (from the running statistics, clipped to
    ``[1 / rmax, rmax]`` and ``[-dmax, dmax]``, tensors from the warmup schedule) under
    stop-gradient, ``var_B`` the unbiased batch variance. Returns
    ``(y, mean_B, var_B)``; the batch statistics carry no gradient and feed the running averages.

    Forward and backward are each a handful of passes over ``x``; the backward is

    ``dx = k * (g - mean(g) - x_hat * sum(g * x_hat) / (N - 1))`` with
    ``k = weight * r / sqrt(var_B + eps)``,
    ``dweight = sum(g * (x_hat * r + d))``, ``dbias = sum(g)``.
    Pure (the caller updates the running statistics), so ``torch.compile`` can trace it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, rmax, dmax):
        n = x.shape[1]
        # Two-pass mean and variance: several times faster than torch.var_mean on CPU.
        mean = x.sum(1, keepdim=True).div_(n)
        centred = x - mean
        y = torch.square(centred)  # scratch, then the output: one allocation, not two
        var = y.sum(1, keepdim=True).div_(n - 1)
        inv_std = (var + eps).rsqrt()
        running_inv_std = (running_var + eps).rsqrt()
        r = torch.clamp((var + eps).sqrt() * running_inv_std, rmax.reciprocal(), rmax)
        d = torch.clamp((mean - running_mean) * running_inv_std, -dmax, dmax)
        # y = centred * scale + shift, one fused pass.
        scale, shift = inv_std * r, d
        if weight is not None:
            shift = torch.addcmul(bias, weight, shift)
            scale = scale * weight
        torch.addcmul(shift, centred, scale, out=y)
        ctx.save_for_backward(centred, inv_std, r, d, weight)
        ctx.has_affine = weight is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_mean, _grad_var):
        centred, inv_std, r, d, weight = ctx.saved_tensors
        n = grad.shape[1]
        sum_grad = grad.sum(1, keepdim=True)
        # sum(g * x_hat) = inv_std * sum(g * centred)
        grad_x = grad * centred  # scratch, then dx
        sum_grad_x_hat = grad_x.sum(1, keepdim=True).mul_(inv_std)
        k = inv_std * r if weight is None else inv_std * r * weight
        # dx = k * g - k * mean(g) - centred * (k * inv_std * sum(g * x_hat) / (n - 1)), two
        # fused passes; n - 1 because var_B is the unbiased variance.
        torch.addcmul(k * sum_grad * (-1.0 / n), grad, k, out=grad_x)
        grad_x.addcmul_(centred, k * inv_std * sum_grad_x_hat * (-1.0 / (n - 1)))
        grad_weight = grad_bias = None
        if ctx.has_affine:
            grad_weight = torch.addcmul(d * sum_grad, r, sum_grad_x_hat)
            grad_bias = sum_grad
        return grad_x, grad_weight, grad_bias, None, None, None, None, None
