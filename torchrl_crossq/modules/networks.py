"""Actor and critic factories for CrossQ and SAC (TensorDict modules)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule, TensorDictModuleBase
from tensordict.nn.probabilistic import interaction_type
from torch import nn
from torch.autograd.function import once_differentiable
from torchrl.data import Bounded, TensorSpec
from torchrl.envs.utils import ExplorationType
from torchrl.modules import ProbabilisticActor, TanhNormal
from torchrl.modules.distributions.utils import (
    rsample_and_log_prob,
    safetanh_noeps,
    sample_and_log_prob,
)

from torchrl_crossq.modules.batchrenorm import BatchRenorm1d

NORMS = ("brn", None)
CROSSQ_CRITIC_CELLS = (2048, 2048)  # paper: 2 hidden layers of 2048 for the critic
SAC_CELLS = (256, 256)  # paper: actor 256 x 2; SAC's critic 256 x 2
# The clip of the policy's log sigma in the original code and sb3-contrib.
LOG_STD_BOUNDS = (-20.0, 2.0)
# The exploration types TanhNormalActor.act draws or computes an action under without a
# distribution object; the others (mean, mode, median) go through TorchRL's distribution.
_FAST_MODES = (InteractionType.RANDOM, InteractionType.DETERMINISTIC)


def _check_norm(norm: str | None) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; use one of: 'brn', None")


def _check_cells(num_cells: Sequence[int], name: str) -> tuple[int, ...]:
    cells = tuple(int(c) for c in num_cells)
    if any(c <= 0 for c in cells):
        raise ValueError(f"{name}={num_cells!r} must hold positive layer widths")
    return cells


def _brn(num_features: int, norm_kwargs: Mapping | None, ensemble_size: int | None = None):
    return BatchRenorm1d(num_features, ensemble_size=ensemble_size, **(norm_kwargs or {}))


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated with one batched matmul.

    Input ``[E, N, in_features]``, output ``[E, N, out_features]``. Each member
    is initialised as ``torch.nn.Linear`` would be.

    Examples:
        >>> layer = EnsembleLinear(2, 4, 3)
        >>> layer(torch.randn(2, 5, 4)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws every member's weights as ``torch.nn.Linear`` would (TorchRL's
        ``reset_parameters_recursive`` calls this)."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return f"ensemble_size={self.ensemble_size}, in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_features == 1:
            return _EnsembleHead.apply(x, self.weight, self.bias)
        return torch.baddbmm(self.bias, x, self.weight)


class _EnsembleHead(torch.autograd.Function):
    """``E`` linear layers with one output, ``[E, N, C] -> [E, N, 1]``.

    The same maths as ``baddbmm(bias, x, weight)``, laid out so that no matrix
    product has a dimension of one in an awkward place: on CPU a batched
    matrix-vector product ``x^T g`` (the weight gradient) or an outer product
    ``g w^T`` (the input gradient) runs at a tenth of the speed of its
    transposed form. Under autocast the products run in the autocast dtype, as
    ``baddbmm`` would.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        else:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        ctx.save_for_backward(x, weight)
        # [E, 1, C] @ [E, C, N] -> [E, 1, N]: a row vector times a matrix.
        out = torch.baddbmm(bias, weight.transpose(1, 2), x.transpose(1, 2))
        return out.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * weight.transpose(1, 2)  # [E, N, 1] * [E, 1, C]
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad.transpose(1, 2), x).transpose(1, 2)  # [E, C, 1]
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1, keepdim=True)
        return grad_x, grad_weight, grad_bias


class HeadLinear(nn.Linear):
    """``nn.Linear`` whose output keeps the parameters' dtype under autocast.

    The last layer of the actor: its output parameterises the TanhNormal, whose
    log-probability (entropy term, temperature loss) needs float32, while the
    matmul itself may run in bfloat16. Same parameters and state-dict keys as
    ``nn.Linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(self.weight.dtype)


class GaussianParams(nn.Module):
    """Splits ``[..., 2 * A]`` into the Gaussian's ``loc`` and ``scale = exp(clip(log_std))``.

    The policy head of the original CrossQ code and sb3-contrib: ``log_std`` is
    clipped to ``[log_std_min, log_std_max]`` (``[-20, 2]``), so the policy's
    scale is bounded above as well as below.

    Examples:
        >>> loc, scale = GaussianParams()(torch.tensor([[0.5, -30.0, 10.0, 0.0]]))
        >>> loc.tolist(), [round(v, 4) for v in scale[0].tolist()]
        ([[0.5, -30.0]], [7.3891, 1.0])
    """

    def __init__(self, log_std_min: float = -20.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(
                f"log_std_bounds=({log_std_min}, {log_std_max}) must be increasing (min, max)"
            )
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = x.chunk(2, dim=-1)
        return loc, log_std.clamp(self.log_std_min, self.log_std_max).exp()

    def extra_repr(self) -> str:
        return f"log_std_min={self.log_std_min}, log_std_max={self.log_std_max}"


class _ReLUFromOutput(torch.autograd.Function):
    """ReLU whose backward reads its float output: ``grad * sign(out)``, which is ``grad`` where
    the output is positive and 0 elsewhere (eager ReLU's gradient, for a finite ``grad``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * out.sign()


class ReLU(nn.ReLU):
    """``nn.ReLU``, except that compiled for the CPU its backward keeps no boolean mask.

    When nothing else needs a ReLU's output (the critic inside the actor loss, whose weights
    are detached), torch.compile's partitioner keeps ``output <= 0`` as a bool tensor for the
    backward, and inductor's CPU kernels write and read bool tensors an order of magnitude
    slower than float ones (torch 2.13, AVX2: 1.5 ms to write the mask of 2 x 256 x 256
    values, 0.07 ms as float). Under ``torch.compile`` on the CPU this ReLU's backward reads
    its float output instead (:class:`_ReLUFromOutput`): the same values and gradients.
    Eager, and on other devices, it is ``nn.ReLU``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu":
            return _ReLUFromOutput.apply(x)
        return super().forward(x)


class QEnsemble(nn.Module):
    """An ensemble of Q-networks ``Q_i(s, a)`` evaluated in one batched call.

    Layout (original CrossQ): ``[BRN] -> (Linear -> ReLU -> [BRN]) x depth -> Linear``,
    with BRN on the input and after each hidden activation when ``norm="brn"``.

    ``forward(observation, action)`` takes ``[*B, obs_dim]`` and ``[*B, action_dim]`` and
    returns ``[*B, num_qvalue_nets]``: one column per critic.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_cells: Sequence[int],
        num_qvalue_nets: int,
        norm: str | None,
        norm_kwargs: Mapping | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.num_qvalue_nets = num_qvalue_nets
        in_dim = obs_dim + action_dim
        layers: list[nn.Module] = []
        if norm == "brn":
            layers.append(_brn(in_dim, norm_kwargs, num_qvalue_nets))
        for width in num_cells:
            # In place: the matmul's output is not needed by its backward, so ReLU may overwrite it.
            act = ReLU(inplace=True) if activation is nn.ReLU else activation()
            layers += [EnsembleLinear(num_qvalue_nets, in_dim, width), act]
            if norm == "brn":
                layers.append(_brn(width, norm_kwargs, num_qvalue_nets))
            in_dim = width
        layers.append(EnsembleLinear(num_qvalue_nets, in_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([observation, action], dim=-1)
        batch_shape = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.num_qvalue_nets, -1, -1)
        q = self.net(x)  # [E, N, 1]
        return q.squeeze(-1).transpose(0, 1).reshape(*batch_shape, self.num_qvalue_nets)


def _positional_module(module) -> bool:
    """Whether ``module`` is a plain ``TensorDictModule`` (or a subclass keeping its forward,
    e.g. ``ValueOperator``) whose network takes its input keys positionally (``in_keys`` a
    list, not tensordict's mapping to keyword arguments)."""
    return (
        isinstance(module, TensorDictModule)
        and type(module).forward is TensorDictModule.forward
        and getattr(module, "_kwargs", None) is None
    )


def module_output(module: TensorDictModuleBase, tensordict: TensorDictBase, key) -> torch.Tensor:
    """``module(tensordict).get(key)``, calling a plain ``TensorDictModule``'s network directly.

    For a ``TensorDictModule`` (or a subclass with its forward, e.g. ``ValueOperator``) with
    one output key and its input keys as a list (not a mapping to keyword arguments), the
    wrapped network is called on the input keys: tensordict 0.14
    wraps every output through ``TensorDict.from_any``, which looks pandas up in the
    import system on every call. Anything else goes through ``module(tensordict)``;
    ``None`` when it writes no ``key``.
    """
    if (
        _positional_module(module)
        and len(module.out_keys) == 1
        and module.out_keys[0] == key
        and not module._forward_hooks
        and not module._forward_pre_hooks
    ):
        return module.module(*(tensordict.get(k) for k in module.in_keys))
    return module(tensordict).get(key, None)


class ExpandedCritic(TensorDictModuleBase):
    """``n`` copies of one Q-network, run one after the other, their outputs side by side.

    How :class:`~torchrl_crossq.CrossQLoss` (like TorchRL's losses with
    ``num_qvalue_nets``) turns a single critic ``(observation, action) ->
    Q [*B, 1]`` into an ensemble writing ``[*B, n]``. Member 0 is the given
    module; the others are deep copies whose layers with a ``reset_parameters``
    method are re-initialised (normalisation layers: their statistics and warmup
    counters too), so the members start different. Each member runs
    its own forward (its own normalisation statistics); :func:`make_critic`'s
    stacked ensemble does the same work in one batched matmul per layer.

    Args:
        critic: a ``TensorDictModule`` writing one Q value per sample, ``[*B, 1]``.
        num_qvalue_nets: the number of members (>= 1).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import MLP, ValueOperator
        >>> q = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]),
        ...                   in_keys=["observation", "action"])
        >>> critic = ExpandedCritic(q, 2)
        >>> td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 2)}, [4])
        >>> critic(td)["state_action_value"].shape
        torch.Size([4, 2])
    """

    def __init__(self, critic: TensorDictModuleBase, num_qvalue_nets: int) -> None:
        super().__init__()
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets={num_qvalue_nets} must be >= 1")
        if len(critic.out_keys) != 1:
            raise ValueError(
                f"the critic writes {critic.out_keys}; an expanded critic needs exactly one "
                "output key (its Q value)"
            )
        members = [critic]
        for _ in range(num_qvalue_nets - 1):
            member = copy.deepcopy(critic)
            for layer in member.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
            members.append(member)
        self.members = nn.ModuleList(members)
        self.num_qvalue_nets = num_qvalue_nets
        self.in_keys = list(critic.in_keys)
        self.out_keys = list(critic.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        key = self.out_keys[0]
        values = []
        for member in self.members:
            value = module_output(member, tensordict.select(*self.in_keys), key)
            if value is None or value.shape != (*tensordict.batch_size, 1):
                written = "nothing" if value is None else f"shape {tuple(value.shape)}"
                raise ValueError(
                    f"critic {type(member).__name__} wrote {written} under {key!r}; a critic "
                    f"expanded with num_qvalue_nets must write one Q value per sample, "
                    f"[{', '.join(map(str, tensordict.batch_size))}, 1]"
                )
            values.append(value)
        return tensordict.set(key, torch.cat(values, -1))


def make_critic(
    obs_dim: int,
    action_dim: int,
    num_cells: Sequence[int] | None = None,
    num_qvalue_nets: int = 2,
    norm: str | None = "brn",
    *,
    norm_kwargs: Mapping | None = None,
    activation: type[nn.Module] = nn.ReLU,
    observation_key: str = "observation",
    action_key: str = "action",
    out_key: str = "state_action_value",
    device: torch.device | str | None = None,
) -> TensorDictModule:
    """Builds a Q ensemble ``(observation, action) -> state_action_value``.

    The output has one column per critic: ``[*B, num_qvalue_nets]``. All critics
    run in one batched matmul per layer (stacked weights), not a Python loop.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        num_cells: hidden widths; default ``(2048, 2048)`` with ``norm="brn"``
            (paper) and ``(256, 256)`` with ``norm=None`` (SAC).
        num_qvalue_nets: number of critics (paper: 2).
        norm: ``"brn"`` for Batch Renormalization on the input and after each
            hidden activation (CrossQ), ``None`` for a plain MLP (SAC).

    Keyword Args:
        norm_kwargs: keyword arguments of :class:`BatchRenorm1d` (momentum, eps,
            rmax, dmax, warmup_steps).
        activation: hidden activation class (paper: ReLU).
        observation_key: input key of the observation.
        action_key: input key of the action.
        out_key: output key of the Q values.
        device: where the parameters live.

    Examples:
        >>> from tensordict import TensorDict
        >>> critic = make_critic(3, 1, num_cells=(16, 16))
        >>> td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 1)}, [4])
        >>> critic(td)["state_action_value"].shape
        torch.Size([4, 2])
    """
    _check_norm(norm)
    cells = _check_cells(
        num_cells or (CROSSQ_CRITIC_CELLS if norm == "brn" else SAC_CELLS), "num_cells"
    )
    if num_qvalue_nets < 1:
        raise ValueError(f"num_qvalue_nets={num_qvalue_nets} must be >= 1")
    net = QEnsemble(obs_dim, action_dim, cells, num_qvalue_nets, norm, norm_kwargs, activation)
    return TensorDictModule(
        net.to(device), in_keys=[observation_key, action_key], out_keys=[out_key]
    )


def make_actor(
    obs_dim: int,
    action_spec: TensorSpec,
    num_cells: Sequence[int] = SAC_CELLS,
    norm: str | None = "brn",
    *,
    norm_kwargs: Mapping | None = None,
    activation: type[nn.Module] = nn.ReLU,
    observation_key: str = "observation",
    action_key: str = "action",
    log_std_bounds: tuple[float, float] = LOG_STD_BOUNDS,
    return_log_prob: bool = False,
    device: torch.device | str | None = None,
) -> TanhNormalActor:
    """Builds a TanhNormal policy ``observation -> action``.

    A :class:`~tensordict.nn.ProbabilisticTensorDictSequential` (TorchRL's
    ``ProbabilisticActor``): an MLP ``TensorDictModule`` writing ``loc`` and
    ``scale`` (``log_std`` clipped to ``log_std_bounds``, as the original code),
    then a TanhNormal ``ProbabilisticTensorDictModule`` bounded by the action
    spec. It samples by default (``ExplorationType.RANDOM``); under
    ``set_exploration_type(ExplorationType.DETERMINISTIC)`` it returns the
    TanhNormal's deterministic action (tanh of the Gaussian mode).

    The actor is returned in **eval mode**: acting (a TorchRL collector, an
    evaluation loop) normalises with the Batch Renormalization running
    statistics and never changes them, with one env (unbatched observations) or
    many. :class:`~torchrl_crossq.CrossQLoss` puts it in train mode for the actor
    update only, and back afterwards.

    Acting without gradients takes :class:`TanhNormalActor`'s fast path (no
    distribution object, no log-probability; the same actions for the same
    random state, the same keys). With ``return_log_prob=True`` the actor also writes TorchRL's
    ``<action_key>_log_prob``, the density of the action on the env's scale;
    :class:`~torchrl_crossq.CrossQLoss` computes its own, of the squashed action
    in ``[-1, 1]``, the scale ``target_entropy = -action_dim`` refers to.

    Args:
        obs_dim: observation size.
        action_spec: a bounded TorchRL spec of the action with finite bounds,
            unbatched (``env.action_spec_unbatched``): its shape and bounds are used.
        num_cells: hidden widths (paper: 256, 256).
        norm: ``"brn"`` for Batch Renormalization on the input and after each
            hidden activation (CrossQ), ``None`` for a plain MLP (SAC).

    Keyword Args:
        norm_kwargs: keyword arguments of :class:`BatchRenorm1d`.
        activation: hidden activation class (paper: ReLU).
        observation_key: input key of the observation.
        action_key: output key of the action.
        log_std_bounds: ``(min, max)`` clip of the Gaussian's log-scale (original
            code and sb3-contrib: ``(-20, 2)``).
        return_log_prob: also write ``<action_key>_log_prob`` (the loss does not need it).
        device: where the parameters live.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> spec = Bounded(-2.0, 2.0, shape=(1,))
        >>> actor = make_actor(3, spec, num_cells=(16, 16))
        >>> out = actor(TensorDict({"observation": torch.randn(4, 3)}, [4]))
        >>> out["action"].shape
        torch.Size([4, 1])
        >>> bool((out["action"].abs() <= 2.0).all())
        True
    """
    _check_norm(norm)
    cells = _check_cells(num_cells, "num_cells")
    _check_action_spec(action_spec)
    action_dim = action_spec.shape[-1]
    layers: list[nn.Module] = []
    in_dim = obs_dim
    if norm == "brn":
        layers.append(_brn(in_dim, norm_kwargs))
    for width in cells:
        layers += [nn.Linear(in_dim, width), activation()]
        if norm == "brn":
            layers.append(_brn(width, norm_kwargs))
        in_dim = width
    layers += [
        HeadLinear(in_dim, 2 * action_dim),
        GaussianParams(*log_std_bounds),
    ]
    net = nn.Sequential(*layers).to(device)
    module = TensorDictModule(net, in_keys=[observation_key], out_keys=["loc", "scale"])
    spec = action_spec.to(device) if device is not None else action_spec
    actor = TanhNormalActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        return_log_prob=return_log_prob,
        log_prob_key=f"{action_key}_log_prob",
        default_interaction_type=ExplorationType.RANDOM,
    )
    return actor.eval()


def squashed_log_prob(
    dist: torch.distributions.Distribution, log_prob: torch.Tensor
) -> torch.Tensor:
    """The log-probability of the squashed action in ``[-1, 1]``, whatever the env's bounds.

    TorchRL's :class:`~torchrl.modules.TanhNormal` bounded by ``[low, high]``
    scores the rescaled action, so its log-probability carries the log-Jacobian
    ``sum(log((high - low) / 2))`` of the rescaling; this removes it.
    ``target_entropy = -action_dim`` (paper, SAC) refers to actions in
    ``[-1, 1]``, as the original code, sbx and sb3-contrib compute them (they
    squash to ``[-1, 1]`` and rescale outside the policy's density). Other
    distributions are returned as they are.

    Examples:
        >>> dist = TanhNormal(torch.zeros(3), torch.ones(3), low=-0.4, high=0.4)
        >>> unit = TanhNormal(torch.zeros(3), torch.ones(3))
        >>> action = torch.tensor([0.2, -0.1, 0.0])
        >>> torch.allclose(squashed_log_prob(dist, dist.log_prob(action)), unit.log_prob(action / 0.4))
        True
    """
    if not isinstance(dist, TanhNormal):
        return log_prob
    log_half_range = ((dist.high - dist.low) / 2).log()
    event_dims = len(dist.event_shape)
    log_half_range = log_half_range.expand(dist.batch_shape + dist.event_shape)
    if event_dims:
        log_half_range = log_half_range.flatten(-event_dims).sum(-1)
    return log_prob + log_half_range


_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def _plain_tanh_normal(distribution_class: type, distribution_kwargs: Mapping) -> bool:
    """Whether the head is TorchRL's TanhNormal with the settings our fast paths reproduce.

    Bounds only (``upscale`` acts only with ``tanh_loc``): no ``tanh_loc``, the safe tanh,
    one event dimension.
    """
    kwargs = dict(distribution_kwargs)
    return (
        distribution_class is TanhNormal
        and set(kwargs) <= {"low", "high", "upscale", "tanh_loc", "safe_tanh", "event_dims"}
        and not kwargs.get("tanh_loc", False)
        and kwargs.get("safe_tanh", True)
        and kwargs.get("event_dims") in (None, 1)
    )


def _dist_sample(
    dist: torch.distributions.Distribution, reparameterize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    action, log_prob = (rsample_and_log_prob if reparameterize else sample_and_log_prob)(dist)
    return action, squashed_log_prob(dist, log_prob)


def policy_sample(
    actor: TensorDictModuleBase, tensordict: TensorDictBase, *, reparameterize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(action, log_prob)`` of a draw of ``actor``'s policy, as the CrossQ/SAC loss needs them.

    ``log_prob`` is the log-density of the squashed action in ``[-1, 1]``
    (:func:`squashed_log_prob`). ``reparameterize``: the action carries pathwise gradients
    (TorchRL's ``rsample_and_log_prob``), else ``sample_and_log_prob``'s. A
    :class:`TanhNormalActor` computes it without the distribution objects
    (:meth:`TanhNormalActor.action_and_log_prob`); any other TorchRL probabilistic actor
    through its ``get_dist``.
    """
    if isinstance(actor, TanhNormalActor):
        return actor.action_and_log_prob(tensordict, reparameterize=reparameterize)
    return _dist_sample(actor.get_dist(tensordict), reparameterize)


class TanhNormalActor(ProbabilisticActor):
    """TorchRL's ``ProbabilisticActor`` over a TanhNormal, with a fast acting path.

    Acting (no gradient, no log-probability asked for, random or deterministic
    exploration) skips the distribution object: ``a = mid + half * clip(tanh(u))``
    with ``u = loc + scale * eps`` (random) or ``u = loc`` (deterministic), the
    same arithmetic and the same random draws as :class:`~torchrl.modules.TanhNormal`
    (safe tanh, affine rescaling to the spec's bounds), so the actions are
    identical, and the keys (``loc``, ``scale``, the action) are TorchRL's. :meth:`act` is
    that path on tensors, for a loop that holds its observation as one. Anything
    else (gradients, ``get_dist``, other interaction types) is TorchRL's path.
    Built by :func:`make_actor`.
    """

    def __init__(self, module: TensorDictModule, **kwargs) -> None:
        # The fast paths call the network on the observation tensor and read (loc, scale).
        if not (
            _positional_module(module) and len(module.in_keys) == 1 and len(module.out_keys) == 2
        ):
            raise ValueError(
                f"TanhNormalActor needs a TensorDictModule with one input key, given as a list, "
                f"writing [loc, scale]; got {type(module).__name__} with in_keys="
                f"{list(getattr(module, 'in_keys', []))}, out_keys="
                f"{list(getattr(module, 'out_keys', []))}. Use TorchRL's ProbabilisticActor for "
                "other policy networks (CrossQLoss accepts it)"
            )
        super().__init__(module, **kwargs)
        low, high = kwargs["distribution_kwargs"]["low"], kwargs["distribution_kwargs"]["high"]
        # TanhNormal skips the affine map when the bounds are [-1, 1].
        self._rescale = bool((low != -1.0).any() or (high != 1.0).any())
        # Plain attributes, not buffers: the loss's parameter set and checkpoints stay TorchRL's.
        self._mid, self._half_range = (high + low) / 2, (high - low) / 2
        self._log_half_range = self._half_range.log()  # > 0: also TorchRL's abs().log()
        self._observation_key = module.in_keys[0]
        self._action_key = kwargs["out_keys"][0]
        #: the keys of :meth:`act`'s outputs, in order
        self.act_keys = (*module.out_keys, self._action_key)
        self._plain = _plain_tanh_normal(
            kwargs["distribution_class"], kwargs["distribution_kwargs"]
        )

    def get_dist(self, tensordict: TensorDictBase, *args, **kwargs) -> TanhNormal:
        """TorchRL's ``get_dist`` (the TanhNormal of the observation), without the key plumbing."""
        if args or kwargs:
            return super().get_dist(tensordict, *args, **kwargs)
        loc, scale = self.module[0].module(tensordict.get(self._observation_key))
        dist_module = self.module[-1]
        return dist_module.distribution_class(
            loc=loc, scale=scale, **dist_module.distribution_kwargs
        )

    def action_and_log_prob(
        self, tensordict: TensorDictBase, *, reparameterize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw of the policy and the log-density of its squashed value in ``[-1, 1]``.

        The values (and, with ``reparameterize``, the gradients) of TorchRL's
        ``rsample_and_log_prob`` (``reparameterize=True``) or ``sample_and_log_prob`` of
        :meth:`get_dist`, followed by :func:`squashed_log_prob`: the same operations on the
        same random draws, without building the distribution objects (about a third of the
        loss's policy sampling time at batch 256). The action is in the spec's bounds.
        """
        if not self._plain:
            return _dist_sample(self.get_dist(tensordict), reparameterize)
        loc, scale = self.module[0].module(tensordict.get(self._observation_key))
        # Normal.rsample / Normal.sample, then TorchRL's safe tanh. Normal.sample calls
        # torch.normal(loc, scale), which draws, scales and shifts in that order, as here, but
        # first checks scale >= 0 on the host: a sync per call on CUDA, and an error inside
        # a CUDA graph capture. scale is positive by construction (softplus + lower bound).
        preimage = loc + torch.empty_like(loc).normal_() * scale
        if not reparameterize:
            preimage = preimage.detach()  # Normal.sample: no gradient through the draw
        action = safetanh_noeps(preimage)
        # Normal.log_prob, then the tanh's log-Jacobian (TanhTransform's stable form).
        normal = -((preimage - loc) ** 2) / (2 * scale**2) - scale.log() - _LOG_SQRT_2PI
        log_det = 2.0 * (math.log(2.0) - preimage - nn.functional.softplus(-2.0 * preimage))
        if not self._rescale:
            return action, normal.sum(-1) - log_det.sum(-1)
        # TanhNormal's affine part adds log(half range) to the Jacobian; squashed_log_prob
        # takes it back out (both kept, in their order, for the same rounding).
        mid, half_range = self._mid.to(loc.device), self._half_range.to(loc.device)
        log_half_range = self._log_half_range.to(loc.device)
        log_prob = normal.sum(-1) - (log_det + log_half_range).sum(-1)
        log_prob = log_prob + log_half_range.expand(loc.shape).sum(-1)
        return mid + half_range * action, log_prob

    def forward(self, tensordict: TensorDictBase, *args, **kwargs) -> TensorDictBase:
        mode = self._mode()
        if args or kwargs or not self.acts_fast(mode):
            return super().forward(tensordict, *args, **kwargs)
        # The same keys as TorchRL's path: collectors fix their output keys on a first call.
        for key, value in zip(self.act_keys, self.act(tensordict.get(self._observation_key), mode)):
            tensordict.set(key, value)
        return tensordict

    def _mode(self, mode: InteractionType | None = None) -> InteractionType:
        """``mode``, else the current exploration type, else the actor's default."""
        return mode or interaction_type() or self.default_interaction_type

    def acts_fast(self, mode: InteractionType | None = None) -> bool:
        """Whether a call now, under exploration ``mode`` (default: the current one), takes
        the fast acting path: no gradient, no log-probability, random or deterministic."""
        mode = self._mode(mode)
        return (
            self._plain
            and not self.module[-1].return_log_prob
            and not torch.is_grad_enabled()
            and mode in _FAST_MODES
        )

    def act(
        self, observation: torch.Tensor, mode: InteractionType | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, action)`` for ``observation``: the fast acting path on tensors.

        What a call on a TensorDict writes under ``loc``, ``scale`` and the action key when
        :meth:`acts_fast` holds (the same values, the same random draws), for a loop that
        holds its observation as a tensor (:class:`~torchrl_crossq.collectors.GymCollector`).
        ``mode``: random or deterministic; default, the current exploration type. Other
        modes (mean, mode, median) are TorchRL's distribution path: call the actor on a
        TensorDict.
        """
        mode = self._mode(mode)
        if mode not in _FAST_MODES:
            raise ValueError(
                f"TanhNormalActor.act acts under InteractionType.RANDOM or DETERMINISTIC, got "
                f"{mode!r}; call the actor on a TensorDict for TorchRL's {mode} action"
            )
        loc, scale = self.module[0].module(observation)
        preimage = loc
        if mode is InteractionType.RANDOM:
            preimage = loc + torch.empty_like(loc).normal_() * scale
        lim = 1.0 - torch.finfo(loc.dtype).resolution  # TorchRL's safe tanh
        action = preimage.tanh().clamp(-lim, lim)
        if self._rescale:
            mid, half_range = self._mid.to(loc.device), self._half_range.to(loc.device)
            action = mid + half_range * action
        return loc, scale, action


def _check_action_spec(action_spec: TensorSpec) -> None:
    if not isinstance(action_spec, Bounded):
        raise TypeError(
            f"action_spec must be a bounded continuous spec (torchrl.data.Bounded), "
            f"got {type(action_spec).__name__}"
        )
    if action_spec.ndim != 1:
        raise ValueError(
            f"action_spec has shape {tuple(action_spec.shape)}; make_actor needs the spec of one "
            "action, [action_dim]: pass env.action_spec_unbatched (a batched env's action_spec "
            "carries the env batch dimensions)"
        )
    low, high = action_spec.space.low, action_spec.space.high
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(
            f"action_spec has non-finite bounds (low={low.tolist()}, high={high.tolist()}); "
            "the TanhNormal policy squashes into [low, high] and needs finite bounds"
        )
    if not (high > low).all():
        raise ValueError(
            f"action_spec needs high > low in every dimension, got low={low.tolist()}, "
            f"high={high.tolist()}"
        )


@contextlib.contextmanager
def set_training_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Puts ``module`` (and its children) in train or eval mode, then restores each one's mode.

    The one place where CrossQ switches its Batch Renormalization layers: the
    loss and the training script both use it, so a module always comes back
    in the mode it went in. It sets each module's ``training`` flag, as
    ``nn.Module.train`` does, without calling ``train()``: a module that overrides
    ``train()`` to do more than set the flag is not told.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), BatchRenorm1d(2)).eval()
        >>> with set_training_mode(net, True):
        ...     net[1].training
        True
        >>> net[1].training
        False
    """
    # Only the modules in the other mode are touched, and back: the loss enters this a few
    # times per update, and nn.Module.train's recursion is pure overhead there.
    switched = [m for m in module.modules() if m.training != training]
    for m in switched:
        m.training = training
    try:
        yield module
    finally:
        for m in switched:
            m.training = not training
