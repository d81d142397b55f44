"""CrossQ loss (Bhatt et al., ICLR 2024), with standard SAC as a one-key switch."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictModuleBase,
    dispatch,
)
from tensordict.utils import unravel_key
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator

from torchrl_crossq.modules.networks import (
    ExpandedCritic,
    module_output,
    policy_sample,
    set_training_mode,
    squashed_log_prob,  # noqa: F401  (public here too, where it was first defined)
)
from torchrl_crossq.objectives.entropy import Temperature

Q_HEAD_TYPES = ("crossq", "default")
AGG_Q = ("min", "mean")
BOOTSTRAP_TYPES = ("standard", "always")
REDUCTIONS = ("mean", "sum", "none")
LOSS_FUNCTIONS = ("l2", "smooth_l1", "l1")


@contextlib.contextmanager
def _parameters_in(
    module: torch.nn.Module, params: TensorDictBase, held: bool = False
) -> Iterator[None]:
    """Swaps ``params`` into ``module`` for the block, then puts the previous ones back.

    ``held``: the module already holds ``params`` (see :func:`_holds`), so the
    swap, about a millisecond of Python per call, is skipped.
    ``TensorDictBase.to_module`` used directly as a context manager turns any
    exception raised inside the block into "Converting a tensordict to boolean
    value is not permitted" (its ``__exit__`` returns a TensorDict); this keeps
    the original error.
    """
    if held:
        yield
        return
    swap = params.to_module(module, preserve_module_state=False)
    swap.__enter__()
    try:
        yield
    finally:
        swap.__exit__(None, None, None)


def _holds(module: torch.nn.Module, params: TensorDictBase) -> bool:
    """Whether ``module`` holds every tensor of ``params`` at its path (the same memory).

    True for a loss's own parameters: ``convert_to_functional`` leaves the module
    holding the very parameters and views of the same buffers. False for target
    or detached copies, and for buffers a device move copied apart.
    """
    for key, value in params.items(True, True):
        held = module
        for name in (key,) if isinstance(key, str) else key:
            held = getattr(held, name, None)
        if held is value:
            continue
        if not (
            isinstance(held, torch.Tensor)  # a buffer, shared with params' copy of it
            and not isinstance(held, torch.nn.Parameter)
            and not isinstance(value, torch.nn.Parameter)
            and held.data_ptr() == value.data_ptr()
            and held.shape == value.shape
            and held.stride() == value.stride()
            and held.dtype == value.dtype
            and held.device == value.device
        ):
            return False
    return True


def _has_batch_norm(module: torch.nn.Module) -> bool:
    """Whether any layer normalises with batch statistics (ours, TorchRL's or torch's)."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        or "BatchRenorm" in type(m).__name__
        or "BatchNorm" in type(m).__name__
        for m in module.modules()
    )


def _check_networks(actor_network, qvalue_network) -> None:
    if not isinstance(actor_network, ProbabilisticTensorDictSequential):
        raise TypeError(
            f"actor_network must be a ProbabilisticTensorDictSequential (e.g. TorchRL's "
            f"ProbabilisticActor, or make_actor), got {type(actor_network).__name__}"
        )
    if not isinstance(qvalue_network, TensorDictModuleBase):
        raise TypeError(
            f"qvalue_network must be a TensorDictModule, got {type(qvalue_network).__name__}: "
            "wrap it as TensorDictModule(critic, in_keys=['observation', 'action'], "
            "out_keys=['state_action_value']) (or TorchRL's ValueOperator)"
        )


def _as_ensemble(
    critic: TensorDictModuleBase, num_qvalue_nets: int | None
) -> tuple[TensorDictModuleBase, int]:
    """The critic as an ensemble writing ``[B, n]``, and ``n``."""
    size = getattr(getattr(critic, "module", critic), "num_qvalue_nets", None)
    if size is None:
        size = 2 if num_qvalue_nets is None else num_qvalue_nets
        return ExpandedCritic(critic, size), size
    if num_qvalue_nets is not None and num_qvalue_nets != size:
        raise ValueError(
            f"num_qvalue_nets={num_qvalue_nets}, but the critic is an ensemble of {size}; "
            "leave num_qvalue_nets out or build the critic with that many members"
        )
    return critic, size


def _check_choice(name: str, value, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(
            f"{name}={value!r} is not supported; use one of: {', '.join(map(str, accepted))}"
        )


class _Rows:
    """Which rows of a flattened input enter the losses, and their weights.

    ``mask``: the flattened input's rows kept (``None``: all); ``weights``: one importance
    weight per kept row (``None``: unweighted); ``batch_size``: the input's batch shape.
    """

    def __init__(
        self, mask: torch.Tensor | None, weights: torch.Tensor | None, batch_size: torch.Size
    ) -> None:
        self.mask, self.weights, self.batch_size = mask, weights, batch_size

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """The kept rows of per-sample ``values`` in the input's batch shape."""
        values = values.reshape(-1)
        return values if self.mask is None else values[self.mask]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Per-kept-row ``values`` in the input's batch shape, 0 at the rows left out."""
        if self.mask is not None:
            values = values.new_zeros(self.mask.shape).index_put((self.mask,), values)
        return values.reshape(self.batch_size)


class CrossQLoss(LossModule):
    """The CrossQ loss: SAC without target networks, with a joint critic pass.

    CrossQ (Bhatt et al., "CrossQ: Batch Normalization in Deep Reinforcement
    Learning for Greater Sample Efficiency and Simplicity", ICLR 2024) changes
    SAC in three ways: no target networks, Batch Renormalization in actor and
    critic, and one critic forward in train mode on the concatenation
    ``[s; s']``, ``[a; a']`` so the normalisation statistics see both
    distributions. The ``s'`` half of that pass is the bootstrap value, under
    stop-gradient.

    Normalisation modes, set here and restored afterwards:

    - next action for the target: actor in eval mode, no gradient;
    - critic loss: critic in train mode (joint pass);
    - actor loss: actor in train mode, critic in eval mode with detached
      weights (gradients reach the action only).

    With ``q_head_type="default"`` it is standard SAC: the current critic
    scores ``(s, a)`` and a target copy of the critic (``target_qvalue_network_params``)
    scores ``(s', a')``; update the target with :class:`PeriodicSoftUpdate`.

    Args:
        actor_network: a TanhNormal policy writing the action (a
            ``ProbabilisticTensorDictSequential``), e.g. :func:`make_actor`.
        qvalue_network: a ``TensorDictModule`` critic. Either an ensemble that
            writes one column per critic, ``[*B, n]``, and says so with a
            ``num_qvalue_nets`` attribute on its module (:func:`make_critic`), or
            one Q-network writing ``[*B, 1]`` (e.g. a TorchRL ``ValueOperator``),
            which is expanded into ``num_qvalue_nets`` members (:class:`ExpandedCritic`),
            as TorchRL's losses do.

    Keyword Args:
        num_qvalue_nets: critics in the ensemble; for one Q-network, how many
            copies (default 2, the paper's and TorchRL's); for an ensemble,
            ``None`` or its size.
        loss_function: the per-critic TD loss: ``"l2"`` (``0.5 * (Q_i - y)^2``,
            the paper's and sb3-contrib's scale; TorchRL's ``"l2"`` has no 0.5),
            ``"smooth_l1"`` or ``"l1"`` (as TorchRL's ``distance_loss``). Summed
            over critics.
        q_head_type: ``"crossq"`` (no target networks, joint pass) or
            ``"default"`` (SAC with a polyak-averaged target critic).
        agg_q: reduction over the ensemble for the target and the actor loss:
            ``"min"`` (paper) or ``"mean"``.
        bootstrap_type: ``"standard"``: ``y = r + gamma * (1 - terminated) * V(s')``;
            ``"always"``: ``y = r + gamma * V(s')``. Truncation never stops the bootstrap.
        alpha_type: temperature parametrisation, ``"exp"`` (paper), ``"softplus"``
            or ``"fixed_alpha"`` (see :class:`Temperature`).
        initial_alpha: starting temperature (paper: 1.0).
        target_entropy: a number, or ``"auto"`` for ``-action_dim`` (paper).
        action_spec: the action spec, when the actor carries none (for ``"auto"``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.
        alpha_init, fixed_alpha, priority_key, deactivate_vmap: the names of
            TorchRL's ``CrossQLoss``, accepted so its constructor call works
            unchanged: ``alpha_init`` is ``initial_alpha``, ``fixed_alpha=True`` is
            ``alpha_type="fixed_alpha"``, ``priority_key`` is
            ``set_keys(priority=...)``, ``deactivate_vmap`` has no effect (no vmap
            here). TorchRL's ``min_alpha``, ``max_alpha``, ``separate_losses=True``
            and ``scalar_output_mode`` are not supported (an error says so).

    The discount is set TorchRL's way: ``loss.make_value_estimator(gamma=0.99)``
    (TD(0), the default; multi-step data carrying ``steps_to_next_obs`` is honoured).

    Every log-probability (soft-Q target, actor loss, temperature loss,
    ``entropy``) is that of the squashed action in ``[-1, 1]``, whatever the
    env's bounds (see :func:`squashed_log_prob`), so ``target_entropy="auto"``
    means what the paper means on every task.

    Padded or invalid positions are left out as TorchRL's losses leave them out: where the
    input holds a mask named by ``loss_mask_key`` (``"auto"``: ``("collector", "mask")``,
    written by ``SliceSampler(pad_output=True)``, and ``"shifted_valid"``), only the
    positions it marks ``True`` enter the losses, and the BatchRenorm statistics too (they
    are computed on those rows alone). With ``priority_weight`` in the input (prioritised
    replay), the three losses are weighted means ``sum(w * l) / sum(w)`` (sums: ``sum(w *
    l)``), as TorchRL's ``SACLoss`` weights them; ``loss.use_prioritized_weights = False``
    turns this off.

    Returns from ``forward``: ``loss_qvalue`` (``0.5 * (Q_i - y)^2`` summed over
    critics), ``loss_actor`` (``alpha * log_pi - agg_q(Q)``), ``loss_alpha``
    (``-alpha * (log_pi + target_entropy)``; absent with ``"fixed_alpha"``), and
    detached ``alpha``, ``entropy``, ``q_mean``, ``target_value_mean``. Writes
    the per-sample TD error (max over critics) to the input under the
    ``priority`` key, for prioritised replay; nothing else of the input changes.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_crossq import CrossQLoss, make_actor, make_critic
        >>> spec = Bounded(-1.0, 1.0, shape=(2,))
        >>> actor = make_actor(3, spec, num_cells=(16,))
        >>> critic = make_critic(3, 2, num_cells=(16,))
        >>> loss = CrossQLoss(actor, critic)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool)}}, [8])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads and writes; rename them with ``set_keys``.

        Attributes:
            action: the action taken (input), also the key under which the
                actor writes its action.
            state_action_value: the critic's output, one column per critic.
            priority: where the per-sample TD error is written.
            reward: the reward, read under ``"next"``.
            done: the done flag, read under ``"next"``.
            terminated: the termination flag, read under ``"next"``.
            priority_weight: importance-sampling weights of a prioritised sample
                (TorchRL's ``PrioritizedSampler`` writes them); read when present and
                ``use_prioritized_weights`` is ``"auto"`` (default) or ``True``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0

    actor_network: ProbabilisticTensorDictSequential
    actor_network_params: TensorDictBase
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictBase
    target_actor_network_params: TensorDictBase
    target_qvalue_network_params: TensorDictBase

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModuleBase,
        *,
        num_qvalue_nets: int | None = None,
        loss_function: str = "l2",
        q_head_type: str = "crossq",
        agg_q: str = "min",
        bootstrap_type: str = "standard",
        alpha_type: str = "exp",
        initial_alpha: float = 1.0,
        target_entropy: float | str = "auto",
        action_spec=None,
        reduction: str | None = "mean",
        alpha_init: float | None = None,
        fixed_alpha: bool = False,
        priority_key: NestedKey | None = None,
        deactivate_vmap: bool = False,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        separate_losses: bool = False,
        scalar_output_mode: str | None = None,
    ) -> None:
        reduction = "mean" if reduction is None else reduction  # TorchRL's None
        _check_choice("q_head_type", q_head_type, Q_HEAD_TYPES)
        _check_choice("agg_q", agg_q, AGG_Q)
        _check_choice("bootstrap_type", bootstrap_type, BOOTSTRAP_TYPES)
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_choice("loss_function", loss_function, LOSS_FUNCTIONS)
        unsupported = {
            "min_alpha": min_alpha is not None,
            "max_alpha": max_alpha is not None,
            "separate_losses": separate_losses,
            "scalar_output_mode": scalar_output_mode is not None,
        }
        for name, given in unsupported.items():
            if given:
                raise ValueError(
                    f"{name} (an argument of TorchRL's CrossQLoss) is not supported by "
                    f"{type(self).__name__}; leave it at its default"
                )
        if alpha_init is not None:
            initial_alpha = alpha_init
        if fixed_alpha:
            alpha_type = "fixed_alpha"
        _check_networks(actor_network, qvalue_network)
        self._in_keys = None
        self._out_keys = None
        super().__init__()
        self.q_head_type = q_head_type
        self.agg_q = agg_q
        self.bootstrap_type = bootstrap_type
        self.reduction = reduction
        self.loss_function = loss_function
        self.deactivate_vmap = deactivate_vmap
        if priority_key is not None:
            self.set_keys(priority=priority_key)

        qvalue_network, self.num_qvalue_nets = _as_ensemble(qvalue_network, num_qvalue_nets)
        if q_head_type == "crossq" and not _has_batch_norm(qvalue_network):
            warnings.warn(
                "q_head_type='crossq' with a critic that has no batch normalisation: CrossQ "
                "without BatchNorm in the critic is unstable (it diverges in the paper, no target "
                "network holds it back). Build the critic with make_critic(norm='brn'), add "
                "BatchRenorm1d layers, or use q_head_type='default' (SAC with target networks)",
                stacklevel=2,
            )
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", create_target_params=q_head_type == "default"
        )
        self._uses_batch_norm = _has_batch_norm(actor_network) or _has_batch_norm(qvalue_network)
        self._critic_output_checked = False
        self.temperature = Temperature(alpha_type, initial_alpha)
        spec = self._action_spec(action_spec)
        self._action_dim = None if spec is None else spec.shape[-1:].numel()
        self.register_buffer(
            "target_entropy", torch.tensor(self._resolve_target_entropy(target_entropy, spec))
        )
        self.make_value_estimator()
        self.prepare()

    def prepare(self) -> None:
        """Puts the loss's own parameters and buffers into its networks, and caches that they hold them.

        ``convert_to_functional`` leaves each network holding the very tensors of
        ``<network>_network_params``, so the actor a collector acts with normalises with the
        statistics the loss updates. A device or dtype move (``.to()``, ``.double()``)
        converts the module's buffers apart from the loss's, and a deep copy can copy them
        apart: this ties them again. Done at construction, after every move and copy, and by
        :class:`~torchrl_crossq.CrossQUpdater` before ``torch.compile``-ing the loss's methods,
        so that compiled code finds the answer cached instead of tracing the check.
        """
        cache = self.__dict__.setdefault("_cache_holds_own", {})
        for network in ("actor", "qvalue"):
            module = getattr(self, f"{network}_network")
            params = getattr(self, f"{network}_network_params")
            if not _holds(module, params):
                params.to_module(module, return_swap=False)
            cache[network] = _holds(module, params)

    @property
    def _constructed(self) -> bool:
        """Whether the constructor has registered the critic's parameters, after the actor's."""
        return "qvalue_network_params" in self._modules

    def _apply(self, fn, *args, **kwargs):
        # TorchRL's _apply erases the caches; the networks' buffers were converted apart from
        # the loss's (a new tensor each), so tie them again.
        out = super()._apply(fn, *args, **kwargs)
        if self._constructed:  # not while the constructor moves parts
            self.prepare()
        return out

    def __setstate__(self, state: dict) -> None:
        # A deep copy (or unpickling) may copy a network's tensors apart from the loss's, and
        # the copied cache would then say they are held: check and tie them again.
        super().__setstate__(state)
        if self._constructed:
            self.prepare()

    def _action_spec(self, action_spec):
        """The spec of one action: the given one, or the actor's (its action key, or its only leaf)."""
        spec = action_spec if action_spec is not None else getattr(self.actor_network, "spec", None)
        if spec is not None and hasattr(spec, "keys"):
            leaves = [k for k in spec.keys(True, True) if spec[k] is not None]
            key = unravel_key(self.tensor_keys.action)
            if key in leaves:
                spec = spec[key]
            elif len(leaves) == 1:
                spec = spec[leaves[0]]
            else:
                spec = None
        return spec

    def _resolve_target_entropy(self, target_entropy: float | str, spec) -> float:
        if target_entropy != "auto":
            if isinstance(target_entropy, str):
                raise ValueError(
                    f"target_entropy={target_entropy!r} is not supported; use one of: a number, 'auto'"
                )
            return float(target_entropy)
        if spec is None:
            raise ValueError(
                "target_entropy='auto' needs the action's spec: give the actor a spec "
                "(make_actor does), pass action_spec=..., or pass a number"
            )
        return -float(spec.shape[-1:].numel())

    @property
    def log_alpha(self) -> torch.Tensor:
        """The temperature's log-parameter, as TorchRL's ``CrossQLoss.log_alpha``.

        ``alpha_type="exp"``: the trainable parameter, for an optimiser built by hand
        (``torch.optim.Adam([loss.log_alpha])``); ``"fixed_alpha"``: ``log(alpha)``, a
        tensor without gradient (TorchRL's ``fixed_alpha=True`` buffer). There is none for
        ``"softplus"``. :func:`~torchrl_crossq.make_optimizers` steps
        ``loss.temperature.parameters()`` whatever the parametrisation.
        """
        if self.temperature.alpha_type == "fixed_alpha":
            return self.temperature.fixed_alpha.log()
        return self.temperature.log_alpha  # an AttributeError for softplus: see __getattr__

    def __getattr__(self, name: str):
        # A property's AttributeError lands here, where nn.Module's would drop its message.
        if name == "log_alpha":
            raise AttributeError(
                f"log_alpha exists for alpha_type 'exp' and 'fixed_alpha' (this loss has "
                f"{self.temperature.alpha_type!r}); use loss.temperature.parameters() for its "
                "optimiser and loss.alpha for its value"
            )
        return super().__getattr__(name)

    # -- TorchRL LossModule plumbing -------------------------------------------------
    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams):
        """Sets the TD(0) estimator and its discount, e.g. ``make_value_estimator(gamma=0.99)``."""
        if value_type is None:
            value_type = self.default_value_estimator
        if value_type != ValueEstimators.TD0:
            raise NotImplementedError(
                f"value_type={value_type} is not supported by {type(self).__name__}; "
                "use ValueEstimators.TD0 (a one-step target, as in the paper)"
            )
        hyperparams.setdefault("gamma", 0.99)
        gamma = float(hyperparams["gamma"])
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma} must be in [0, 1]")
        hyperparams.setdefault("device", self._default_device)
        self.value_type = value_type
        estimator = TD0Estimator(value_network=None, **hyperparams)
        # TorchRL stores the discount as a default-dtype tensor: a loss of a wider float dtype
        # (float64, made so before this call) gets it in its own, as the gamma given.
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        if dtype is not None and torch.finfo(dtype).bits > torch.finfo(estimator.gamma.dtype).bits:
            estimator.to(dtype).gamma.fill_(gamma)
        self._value_estimator = estimator
        self._forward_value_estimator_keys()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._in_keys = None

    @property
    def gamma(self) -> torch.Tensor:
        """The discount of the TD target."""
        return self.value_estimator.gamma

    def _actor_in_keys(self) -> list[NestedKey]:
        return [unravel_key(k) for k in self.actor_network.in_keys]

    def _critic_state_keys(self) -> list[NestedKey]:
        action = unravel_key(self.tensor_keys.action)
        return [unravel_key(k) for k in self.qvalue_network.in_keys if unravel_key(k) != action]

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            keys = [
                self.tensor_keys.action,
                ("next", self.tensor_keys.reward),
                ("next", self.tensor_keys.done),
                ("next", self.tensor_keys.terminated),
            ]
            for key in self._actor_in_keys() + self._critic_state_keys():
                keys += [key, ("next", *((key,) if isinstance(key, str) else key))]
            self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = ["loss_qvalue", "loss_actor"]
            if self.temperature.trainable:
                keys.append("loss_alpha")
            self._out_keys = [*keys, "alpha", "entropy", "q_mean", "target_value_mean"]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    # -- helpers ------------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        """The current temperature, detached."""
        return self.temperature().detach()

    def _reduce(self, loss: torch.Tensor, rows: _Rows | None = None) -> torch.Tensor:
        """The mean or sum of the per-row ``loss`` (weighted by ``rows.weights``, if any); for
        ``"none"``, per sample in the input's batch shape (masked positions 0)."""
        weights = None if rows is None else rows.weights
        if weights is not None:
            loss = loss * weights
        if self.reduction == "mean":
            if weights is not None:  # (all rows masked: 0, as without weights)
                return loss.sum() / weights.sum() if weights.numel() else loss.sum()
            if rows is not None and rows.mask is not None:  # 0, as TorchRL's, if none is kept
                return loss.sum() / max(loss.shape[0], 1)
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss if rows is None else rows.scatter(loss)

    def _aggregate(self, q: torch.Tensor) -> torch.Tensor:
        return q.min(-1).values if self.agg_q == "min" else q.mean(-1)

    def _check_input(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Flattens the batch; names a missing key, a wrong action width or a too small batch."""
        present = set(tensordict.keys(True, True))
        names = {unravel_key(getattr(self.tensor_keys, f)): f for f in ("action",)}
        for f in ("reward", "done", "terminated"):
            names[unravel_key(("next", getattr(self.tensor_keys, f)))] = f
        for key in self.in_keys:
            if key not in present:
                hint = (
                    f"; rename it with loss.set_keys({names[key]}=...)"
                    if key in names
                    else " (an input of the actor or the critic)"
                )
                if names.get(key) == "terminated":
                    # TorchRL's estimators fall back to done, which ends the bootstrap at time
                    # limits too: only on the user's word.
                    hint += (
                        ", or, for data without time limits, loss.set_keys(terminated="
                        f"{self.tensor_keys.done!r}) (done then ends the bootstrap)"
                    )
                raise KeyError(f"{type(self).__name__}: the input has no key {key!r}{hint}")
        if tensordict.ndim != 1:
            tensordict = tensordict.reshape(-1)
        action = tensordict.get(self.tensor_keys.action)
        if self._action_dim is not None and action.shape[-1:].numel() != self._action_dim:
            raise ValueError(
                f"{type(self).__name__}: the action under {self.tensor_keys.action!r} has shape "
                f"{tuple(action.shape)}, but the actor's spec has {self._action_dim} action "
                "dimension(s); check the key (loss.set_keys(action=...)) and the env"
            )
        self._check_batch(tensordict.batch_size[0], "")
        for f in ("reward", "done", "terminated"):
            key = ("next", getattr(self.tensor_keys, f))
            shape = tensordict.get(key).shape
            if tuple(shape[1:]) != (1,):
                raise ValueError(
                    f"{type(self).__name__}: {unravel_key(key)!r} has shape {tuple(shape)} once "
                    f"the batch is flattened; expected [{shape[0]}, 1]: the batch shape with a "
                    "trailing 1, as TorchRL's envs write it (add it with .unsqueeze(-1))"
                )
        return tensordict

    def _check_batch(self, size: int, which: str) -> None:
        if self._uses_batch_norm and size < 2:
            raise ValueError(
                f"{type(self).__name__} needs a batch of at least 2 {which}transitions, got "
                f"{size}: BatchRenorm estimates batch statistics in the loss's train-mode passes "
                "(the loss sets the modes itself)"
            )

    def _rows(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, _Rows]:
        """The flattened input's rows that enter the losses, and their :class:`_Rows`."""
        flat = self._check_input(tensordict)
        rows = self._row_info(flat, tensordict.batch_size)
        if rows.mask is not None:
            flat = flat[rows.mask]
            self._check_batch(flat.batch_size[0], "unmasked ")
        return flat, rows

    def _row_info(self, flat: TensorDictBase, batch_size: torch.Size) -> _Rows:
        """The rows a mask of ``loss_mask_key`` keeps, and the ``priority_weight`` of each."""
        if flat.ndim != 1:
            flat = flat.reshape(-1)
        weights = self._maybe_get_priority_weight(flat)
        if weights is not None:
            if weights.numel() != flat.batch_size[0]:
                raise ValueError(
                    f"{type(self).__name__}: {self.tensor_keys.priority_weight!r} has shape "
                    f"{tuple(weights.shape)}; expected one weight per transition, "
                    f"{list(batch_size)}"
                )
            weights = weights.reshape(-1).to(torch.float32)
        mask = None
        for key in self._loss_mask_keys():
            found = flat.get(key, None)
            if found is None:
                continue
            if found.numel() != flat.batch_size[0]:
                raise ValueError(
                    f"{type(self).__name__}: the mask {key!r} has shape {tuple(found.shape)}; "
                    f"expected one flag per transition, {list(batch_size)} (or with a trailing 1)"
                )
            found = found.reshape(-1).bool()
            mask = found if mask is None else mask & found
        if mask is not None and weights is not None:
            weights = weights[mask]
        return _Rows(mask, weights, batch_size)

    def _holds_own(self, network: str) -> bool:
        """Whether ``<network>_network`` holds ``<network>_network_params``, cached.

        The cache's name starts with ``_cache``: TorchRL's ``LossModule._apply``
        (``.to()``, ``.double()``...) erases it, and a device or dtype move can copy
        the module's buffers apart from the loss's.
        """
        cache = self.__dict__.setdefault("_cache_holds_own", {})
        if network not in cache:
            module = getattr(self, f"{network}_network")
            cache[network] = _holds(module, getattr(self, f"{network}_network_params"))
        return cache[network]

    def _critic_input(self, source: TensorDictBase, action: torch.Tensor) -> TensorDictBase:
        td = source.select(*self._critic_state_keys())
        td.set(self.tensor_keys.action, action)
        return td

    def _q(self, td: TensorDictBase, params: TensorDictBase, training: bool) -> torch.Tensor:
        with (
            _parameters_in(
                self.qvalue_network,
                params,
                params is self.qvalue_network_params and self._holds_own("qvalue"),
            ),
            set_training_mode(self.qvalue_network, training),
        ):
            q = module_output(self.qvalue_network, td, self.tensor_keys.state_action_value)
        # Under torch.compile the check runs while tracing, and the flag is not read: a guard
        # on it would compile the critic loss a second time, once the flag flipped.
        if torch.compiler.is_compiling() or not self._critic_output_checked:
            self._check_critic_output(q, td.batch_size)
        # At least float32 even when the critic's last matmul ran under bfloat16 autocast:
        # TD errors are small differences of large values.
        return q.to(torch.promote_types(q.dtype, torch.float32))

    def _check_critic_output(self, q, batch_size: torch.Size) -> None:
        """The first call: the critic wrote ``[B, num_qvalue_nets]`` under the expected key."""
        name = type(self.qvalue_network).__name__
        key = self.tensor_keys.state_action_value
        if q is None:
            written = sorted(map(str, self.qvalue_network.out_keys))
            raise KeyError(
                f"{type(self).__name__}: the critic {name} wrote {written} but not {key!r}; "
                "tell the loss its output key with loss.set_keys(state_action_value=...)"
            )
        expected = (*batch_size, self.num_qvalue_nets)
        if tuple(q.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: the critic {name} wrote {key!r} of shape "
                f"{tuple(q.shape)}; expected {list(expected)}, one column per critic. A critic "
                "writing one Q value [B, 1] is expanded by num_qvalue_nets; an ensemble says "
                "its size with a num_qvalue_nets attribute on its module (make_critic's does)"
            )
        self._critic_output_checked = True

    def _next_action(self, next_td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``a' ~ pi(s')`` with the actor in eval mode, without gradient."""
        with (
            torch.no_grad(),
            set_exploration_type(ExplorationType.RANDOM),
            _parameters_in(self.actor_network, self.actor_network_params, self._holds_own("actor")),
            set_training_mode(self.actor_network, False),
        ):
            return policy_sample(self.actor_network, next_td.select(*self._actor_in_keys()))

    # -- the three losses -------------------------------------------------------------
    def qvalue_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic loss ``sum_i 0.5 * (Q_i(s, a) - y)^2``.

        Writes the per-sample TD error to ``tensordict[priority]``. Returns the
        reduced loss and detached metadata (per-sample ``td_error`` and
        ``target_value``; ``q_mean``, ``target_value_mean``).
        """
        original = tensordict
        tensordict, rows = self._rows(tensordict)
        batch = tensordict.batch_size[0]
        next_td = tensordict.get("next")
        next_action, next_log_prob = self._next_action(next_td)
        current = self._critic_input(tensordict, tensordict.get(self.tensor_keys.action))
        upcoming = self._critic_input(next_td, next_action)
        if self.q_head_type == "crossq":
            # One train-mode pass over [s; s'], [a; a']: BRN statistics see both distributions.
            joint = self._q(torch.cat([current, upcoming], 0), self.qvalue_network_params, True)
            q, next_q = joint.split(batch, 0)
            next_q = next_q.detach()
        else:
            q = self._q(current, self.qvalue_network_params, True)
            with torch.no_grad():
                next_q = self._q(upcoming, self.target_qvalue_network_params, False)
        next_value = self._aggregate(next_q) - self.alpha * next_log_prob
        target = self._td_target(tensordict, next_value.unsqueeze(-1)).squeeze(-1)
        error = q - target.unsqueeze(-1)
        loss = self._distance(error).sum(-1)
        td_error = error.detach().abs().max(-1).values
        original.set(self.tensor_keys.priority, rows.scatter(td_error))
        metadata = {
            "td_error": td_error,
            "target_value": target,
            "q_mean": q.detach().mean(),
            "target_value_mean": target.mean(),
        }
        return self._reduce(loss, rows), metadata

    def _distance(self, error: torch.Tensor) -> torch.Tensor:
        if self.loss_function == "l2":
            return 0.5 * error.pow(2)
        if self.loss_function == "smooth_l1":
            return torch.nn.functional.smooth_l1_loss(
                error, torch.zeros_like(error), reduction="none"
            )
        return error.abs()

    def _td_target(self, tensordict: TensorDictBase, next_value: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.bootstrap_type == "always":
                # The same data (multi-step discounts included) with no episode ever ending.
                next_td = tensordict.get("next").copy()
                never = torch.zeros_like(next_td.get(self.tensor_keys.terminated))
                next_td.set(self.tensor_keys.done, never)
                next_td.set(self.tensor_keys.terminated, never)
                tensordict = tensordict.copy().set("next", next_td)
            return self.value_estimator.value_estimate(tensordict, next_value=next_value)

    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss ``alpha * log_pi(a|s) - agg_q(Q(s, a))`` with ``a ~ pi(s)`` reparameterised.

        Actor in train mode; critic in eval mode with detached weights, so only
        the actor receives gradients. Returns the reduced loss and ``{"log_prob"}``
        (detached, in the input's batch shape: 0 where a mask leaves a row out) for
        :meth:`alpha_loss`, and ``{"entropy"}`` (minus the mean log-probability of the rows
        kept).
        """
        tensordict, rows = self._rows(tensordict)
        with (
            set_exploration_type(ExplorationType.RANDOM),
            _parameters_in(self.actor_network, self.actor_network_params, self._holds_own("actor")),
            set_training_mode(self.actor_network, True),
        ):
            action, log_prob = policy_sample(
                self.actor_network,
                tensordict.select(*self._actor_in_keys()),
                reparameterize=True,
            )
        q = self._q(
            self._critic_input(tensordict, action), self.qvalue_network_params.detach(), False
        )
        loss = self.alpha * log_prob - self._aggregate(q)
        log_prob = log_prob.detach()
        return self._reduce(loss, rows), {
            "log_prob": rows.scatter(log_prob),
            "entropy": -log_prob.mean(),
        }

    def alpha_loss(
        self, log_prob: torch.Tensor, tensordict: TensorDictBase | None = None
    ) -> torch.Tensor:
        """The temperature loss ``-alpha * (log_pi + target_entropy)``; gradients reach alpha only.

        ``log_prob``: :meth:`actor_loss`'s; with the input ``tensordict`` (as TorchRL's
        ``alpha_loss`` takes it), its mask and ``priority_weight`` apply.
        """
        rows = None
        if tensordict is not None:
            rows = self._row_info(tensordict, tensordict.batch_size)
            log_prob = rows.select(log_prob)
        return self._reduce(self.temperature.loss(log_prob, self.target_entropy), rows)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the critic, actor and temperature losses with the current parameters.

        For CrossQ's update order (critic stepped before the actor, actor every
        ``policy_delay`` updates) call :meth:`qvalue_loss`, :meth:`actor_loss`
        and :meth:`alpha_loss` separately, as :class:`~torchrl_crossq.CrossQUpdater` does.
        """
        loss_qvalue, value_metadata = self.qvalue_loss(tensordict)
        loss_actor, actor_metadata = self.actor_loss(tensordict)
        out = {"loss_qvalue": loss_qvalue, "loss_actor": loss_actor}
        if self.temperature.trainable:
            out["loss_alpha"] = self.alpha_loss(actor_metadata["log_prob"], tensordict)
        out.update(
            alpha=self.alpha,
            entropy=actor_metadata["entropy"],
            q_mean=value_metadata["q_mean"],
            target_value_mean=value_metadata["target_value_mean"],
        )
        return TensorDict(out, batch_size=[]).select(*self.out_keys)
