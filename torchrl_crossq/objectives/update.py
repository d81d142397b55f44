"""One CrossQ / SAC gradient update: which loss term each optimiser steps, and when."""

from __future__ import annotations

import platform
import warnings
from collections.abc import Iterable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives.utils import SoftUpdate

from torchrl_crossq.objectives.crossq import CrossQLoss

PRECISIONS = ("fp32", "bf16")
NONFINITE_POLICIES = ("raise", "skip", None)


class NonFiniteLossError(FloatingPointError):
    """A batch, loss or gradient held a NaN or an infinity during an update."""


_LOSS_ADVICE = (
    "Lower the learning rate, clip gradients (optim.clip_grad_norm) or set on_nonfinite=skip."
)
_BATCH_ADVICE = (
    "A NaN or inf reached the replay buffer (check the environment's observations and "
    "rewards), or set on_nonfinite=skip to skip such batches."
)


# The loss terms each optimiser steps. Every `loss_*` the loss returns must appear here:
# the anchor bug "alpha never trained" was a loss term that reached no optimiser.
OPTIMISED_LOSSES = {
    "critic": ("loss_qvalue",),
    "actor": ("loss_actor",),
    "alpha": ("loss_alpha",),
}


class PeriodicSoftUpdate(SoftUpdate):
    """Polyak averaging ``target <- (1 - tau) * target + tau * online`` every ``every`` calls.

    TorchRL's :class:`~torchrl.objectives.SoftUpdate`, applied on every
    ``every``-th call of :meth:`step`, which also copies the online network's buffers (a
    normalisation layer's running statistics and step counter) into the target's, as
    stable-baselines3 does for its target networks. TorchRL's updater averages parameters
    only, so a target critic with BatchRenorm would normalise with its initial statistics
    (0 and 1) for the whole run. The target is evaluated in eval mode, on those statistics.

    Args:
        loss_module: a loss with target parameters (``CrossQLoss(q_head_type="default")``).

    Keyword Args:
        tau: the polyak coefficient (SAC: 0.005).
        every: apply the update every this many calls (>= 1).
    """

    def __init__(self, loss_module: CrossQLoss, *, tau: float, every: int = 1) -> None:
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau={tau} must be in (0, 1]")
        if every < 1:
            raise ValueError(f"every={every} must be >= 1")
        with warnings.catch_warnings():  # "eps < 0.5 ... use tau": we take tau
            warnings.filterwarnings("ignore", "Found an eps value < 0.5")
            super().__init__(loss_module, tau=tau)
        self.every = every
        self.calls = 0

    def step(self) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            super().step()
            self._copy_buffers()

    @torch.no_grad()
    def _copy_buffers(self) -> None:
        for name in self._target_names:
            target = getattr(self.loss_module, name)
            source = getattr(self.loss_module, name.removeprefix("target_"))
            for key, value in source.items(True, True):
                if not value.requires_grad:  # a buffer, not a parameter
                    target.get(key).copy_(value)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])


def make_optimizers(
    loss: CrossQLoss,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.5, 0.999),
    alpha_lr: float | None = None,
    alpha_betas: tuple[float, float] | None = None,
    weight_decay: float = 0.0,
) -> dict[str, torch.optim.Optimizer]:
    """Adam optimisers for the critic, the actor and (when trainable) the temperature.

    Defaults are the paper's: lr 1e-3, betas (0.5, 0.999) for all three.

    Returns:
        ``{"critic": ..., "actor": ..., "alpha": ...}`` (no ``"alpha"`` with a fixed temperature).
    """
    if lr <= 0 or (alpha_lr is not None and alpha_lr <= 0):
        raise ValueError(f"learning rates must be positive, got lr={lr}, alpha_lr={alpha_lr}")
    critic_params = _trainable(loss.qvalue_network_params)
    optimizers = {
        "critic": _adam(critic_params, lr=lr, betas=betas, weight_decay=weight_decay),
        "actor": _adam(
            _trainable(loss.actor_network_params), lr=lr, betas=betas, weight_decay=weight_decay
        ),
    }
    if loss.temperature.trainable:
        optimizers["alpha"] = _adam(
            list(loss.temperature.parameters()),
            lr=alpha_lr if alpha_lr is not None else lr,
            betas=alpha_betas if alpha_betas is not None else betas,
        )
    return optimizers


def _adam(params: list[torch.Tensor], **kwargs) -> torch.optim.Adam:
    # The fused kernel reads and writes each state tensor once: on 2 CPU cores it steps the
    # 2048-wide critic about 5x faster than the foreach path.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, fused=fused, **kwargs)


def has_native_bf16_matmul(device_type: str = "cpu") -> bool:
    """Whether this machine's ``device_type`` multiplies bfloat16 matrices in hardware.

    On CPU that takes AVX512-BF16 or AMX (what ``precision="bf16"`` is fast with). Without
    them the bfloat16 matmul is emulated, and on a CPU without AVX-512 (AVX2 only) torch falls
    back to a generic kernel: a (512 x 2048) @ (2048 x 2048) product ran at 0.3 GFLOP/s in
    bfloat16 against 100 GFLOP/s in float32 on a 2-core AVX2 AMD EPYC. On CUDA: compute
    capability 8.0 or newer. Other devices, non-x86 CPUs and CPUs torch cannot query count
    as having it.

    Examples:
        >>> isinstance(has_native_bf16_matmul("cpu"), bool)
        True
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # the probes below are x86's (an Arm CPU may have BF16 instructions)
    probes = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes)


def _trainable(params: TensorDictBase) -> list[torch.Tensor]:
    return [p for p in params.values(True, True) if p.requires_grad]


class CrossQUpdater:
    """Runs one gradient update of CrossQ (or SAC) on a sampled batch.

    The critic is stepped on ``loss_qvalue`` every update; then, every
    ``policy_delay`` updates, the actor on ``loss_actor`` (computed with the
    freshly stepped critic, as in the original code) and the temperature on
    ``loss_alpha``. With a target updater (SAC head) it is stepped after
    every update. With ``on_nonfinite=None`` no host-device synchronisation: the
    returned metrics are detached tensors, read by the caller at its logging interval.

    Args:
        loss: the :class:`CrossQLoss`.
        optimizers: ``{"critic", "actor"[, "alpha"]}`` as :func:`make_optimizers` builds them.

    Keyword Args:
        policy_delay: actor and temperature are updated every this many updates (paper: 3).
        clip_grad_norm: max gradient norm of critic and actor (``None``: no clipping).
        alpha_clip_grad_norm: max gradient norm of the temperature (``None``: no clipping).
        target_updater: a :class:`PeriodicSoftUpdate` for the SAC head, else ``None``.
        alpha_scheduler: a learning-rate scheduler of the temperature optimiser,
            stepped with it (not when its step is skipped).
        compile: ``torch.compile`` the critic and actor loss computations.
        cudagraphs: on CUDA, replay the compiled loss computations (forward and
            backward) as CUDA graphs (``torch.compile(mode="reduce-overhead")``);
            needs ``compile=True``. The optimiser steps stay outside the graphs.
            On CPU it has no effect beyond ``compile`` (a warning says so).
        on_nonfinite: what a NaN or infinity does, in the batch (any float input
            of the loss, checked before the forward passes), in a loss or in a
            clipped gradient norm. ``"raise"``: a :class:`NonFiniteLossError`
            naming the batch key or the loss, the update and the last finite
            values (a bad batch raises before anything changed). ``"skip"``: a
            bad batch skips the whole update (critic, actor, temperature, target
            network); a bad loss or gradient skips that optimiser step and puts
            back the BatchRenorm statistics its forward pass had moved (the
            networks' buffers, small vectors, are copied before each forward
            pass). Skipped optimiser steps are counted in ``num_skipped``, returned
            as the metric ``num_skipped`` (all optimisers together) and warned
            about. ``None``: no check. The checks read one scalar for the batch
            and one per optimiser step (host syncs on CUDA).
        precision: ``"fp32"``, or ``"bf16"``: the loss computations run under
            bfloat16 autocast (matmuls in bfloat16; parameters, optimiser state and
            BatchRenorm statistics stay float32). Fast only where the hardware multiplies
            bfloat16 (:func:`has_native_bf16_matmul`); elsewhere a warning says so.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_crossq import CrossQLoss, make_actor, make_critic
        >>> actor = make_actor(3, Bounded(-1.0, 1.0, shape=(1,)), num_cells=(8,))
        >>> loss = CrossQLoss(actor, make_critic(3, 1, num_cells=(8,)))
        >>> update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=1)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(4, 3), "action": torch.zeros(4, 1),
        ...     "next": {"observation": torch.randn(4, 3), "reward": torch.ones(4, 1),
        ...              "done": torch.zeros(4, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(4, 1, dtype=torch.bool)}}, [4])
        >>> sorted(update(batch).keys())
        ['alpha', 'entropy', 'loss_actor', 'loss_alpha', 'loss_qvalue', 'q_mean', 'target_value_mean']
    """

    def __init__(
        self,
        loss: CrossQLoss,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        policy_delay: int = 3,
        clip_grad_norm: float | None = None,
        alpha_clip_grad_norm: float | None = None,
        target_updater: PeriodicSoftUpdate | None = None,
        alpha_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        compile: bool = False,
        cudagraphs: bool = False,
        precision: str = "fp32",
        on_nonfinite: str | None = "raise",
    ) -> None:
        if policy_delay < 1:
            raise ValueError(f"policy_delay={policy_delay} must be >= 1")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite={on_nonfinite!r} is not supported; use one of: raise, skip, None"
            )
        if precision not in PRECISIONS:
            raise ValueError(
                f"precision={precision!r} is not supported; use one of: {', '.join(PRECISIONS)}"
            )
        if loss.reduction == "none":
            raise ValueError(
                "CrossQUpdater steps scalar losses, but the loss has reduction='none'; build "
                "CrossQLoss with reduction='mean' (default) or 'sum'"
            )
        missing = {"critic", "actor"} - optimizers.keys()
        if loss.temperature.trainable:
            missing |= {"alpha"} - optimizers.keys()
        if missing:
            raise ValueError(
                f"optimizers is missing {sorted(missing)}; expected critic, actor, alpha"
            )
        if cudagraphs and not compile:
            raise ValueError(
                "cudagraphs=True needs compile=True (the CUDA graphs are captured by torch.compile)"
            )
        if loss.q_head_type == "default" and target_updater is None:
            raise ValueError("q_head_type='default' needs a target_updater (PeriodicSoftUpdate)")
        self.loss = loss
        self.optimizers = optimizers
        self.policy_delay = policy_delay
        self.clip_grad_norm = clip_grad_norm
        self.alpha_clip_grad_norm = alpha_clip_grad_norm
        self.target_updater = target_updater
        self.alpha_scheduler = alpha_scheduler
        self.num_updates = 0
        self.precision = precision
        self.on_nonfinite = on_nonfinite
        self.num_skipped = {name: 0 for name in optimizers}
        self._last_finite: dict[str, torch.Tensor] = {}
        self._last_finite_update = 0
        self._device_type = next(loss.parameters()).device.type
        if precision == "bf16" and not has_native_bf16_matmul(self._device_type):
            where = (
                f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has neither AVX512-BF16 "
                "nor AMX"
                if self._device_type == "cpu"
                else f"this {self._device_type} device has no bfloat16 matmul units"
            )
            warnings.warn(
                f"precision='bf16': {where}, so its bfloat16 matmuls are emulated (on a CPU "
                "without AVX-512, hundreds of times slower than float32); use precision='fp32' "
                "on this machine",
                stacklevel=2,
            )
        # torch.compile of the two loss computations (the optimiser steps stay eager).
        self.cudagraphs = cudagraphs and self._device_type == "cuda"
        if cudagraphs and not self.cudagraphs:
            warnings.warn(
                f"cudagraphs=True has no effect on device {self._device_type!r}: the losses are "
                "compiled without CUDA graphs",
                stacklevel=2,
            )
        if compile:
            loss.prepare()  # cached before tracing: no graph breaks on the parameter check
        mode = "reduce-overhead" if self.cudagraphs else None
        self._qvalue_loss = (
            torch.compile(loss.qvalue_loss, mode=mode) if compile else loss.qvalue_loss
        )
        self._actor_loss = torch.compile(loss.actor_loss, mode=mode) if compile else loss.actor_loss

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self._device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _statistics(self) -> list[torch.Tensor]:
        # The networks' buffers (BatchRenorm running statistics and step counters): a
        # train-mode forward pass updates them in place, before its loss can be checked.
        return [
            tensor
            for params in (self.loss.actor_network_params, self.loss.qvalue_network_params)
            for tensor in params.values(True, True)
            if not tensor.requires_grad
        ]

    def _save_statistics(self) -> list[torch.Tensor] | None:
        if self.on_nonfinite != "skip":
            return None
        return [tensor.clone() for tensor in self._statistics()]

    def _step(
        self,
        name: str,
        loss: torch.Tensor,
        max_norm: float | None,
        saved_statistics: list[torch.Tensor] | None = None,
    ) -> bool:
        """Steps optimiser ``name`` on ``loss``; ``False`` when the step was skipped."""
        optimizer = self.optimizers[name]
        zero_grad(optimizer)
        term = OPTIMISED_LOSSES[name][0]
        if self.on_nonfinite is not None and not torch.isfinite(loss.detach()).all():
            value = str(float(loss.detach().float().mean()))
            self._nonfinite([name], f"{term} is", value, _LOSS_ADVICE, saved_statistics)
            return False
        loss.backward()
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(_params_of(optimizer), max_norm, foreach=True)
            if self.on_nonfinite is not None and not torch.isfinite(norm):
                zero_grad(optimizer)
                value = str(float(norm))
                self._nonfinite(
                    [name], f"the gradient of {term} is", value, _LOSS_ADVICE, saved_statistics
                )
                return False
        step_optimizer(optimizer)
        return True

    def _nonfinite_batch(self, batch: TensorDictBase) -> tuple[str, str] | None:
        """Names the float inputs of the loss holding a NaN or an infinity, ``None`` if none.

        Returns ``(what, counts)``: ``"batch key ('next', 'observation') is"`` and
        ``"3 of 48 values"``.
        """
        leaves = {}
        for key in self.loss.in_keys:
            value = batch.get(key, None)  # a missing key is the loss's error to report
            if value is not None and value.is_floating_point():
                leaves[key] = value
        # One sum and one host sync for the whole batch (cat widens dtypes, never narrows): a NaN
        # or an infinity makes the sum non-finite. So can finite values near the dtype's limit,
        # whose sum overflows: the exact check (several passes: isfinite is composite) decides.
        flat = [value.reshape(-1) for value in leaves.values()]
        if not flat:
            return None
        flat = torch.cat(flat)
        if torch.isfinite(flat.sum()) or torch.isfinite(flat).all():
            return None
        bad = {key: int((~torch.isfinite(value)).sum()) for key, value in leaves.items()}
        bad = {key: count for key, count in bad.items() if count}
        keys = ", ".join(map(repr, bad))
        what = f"batch keys {keys} are" if len(bad) > 1 else f"batch key {keys} is"
        counts = ", ".join(f"{count} of {leaves[key].numel()}" for key, count in bad.items())
        return what, f"{counts} values"

    def _nonfinite(
        self,
        steps: list[str],
        what: str,
        value: str,
        advice: str,
        saved_statistics: list[torch.Tensor] | None = None,
    ) -> None:
        """Skips ``steps`` (putting back the saved statistics) or raises, per ``on_nonfinite``.

        ``what`` is the subject and its verb (``"loss_qvalue is"``), ``value`` what it held.
        """
        if self.on_nonfinite == "skip":
            if saved_statistics is not None:
                for tensor, saved in zip(self._statistics(), saved_statistics, strict=True):
                    tensor.copy_(saved)
            for name in steps:
                self.num_skipped[name] += 1
            # No update number in the text: Python shows each distinct warning once.
            warnings.warn(
                f"on_nonfinite='skip': {what} not finite; skipped the {' and '.join(steps)} "
                f"step{'s' if len(steps) > 1 else ''} (counted in num_skipped)",
                stacklevel=2,
            )
            return
        last = {k: round(float(v), 6) for k, v in self._last_finite.items()}
        raise NonFiniteLossError(
            f"{what} not finite ({value}) at update {self.num_updates}; last finite values "
            f"(update {self._last_finite_update}): {last}. {advice}"
        )

    def _skip_count(self) -> dict[str, torch.Tensor]:
        if self.on_nonfinite != "skip":
            return {}
        return {"num_skipped": torch.tensor(sum(self.num_skipped.values()))}

    def __call__(self, batch: TensorDictBase) -> TensorDict:
        self.num_updates += 1
        policy_step = self.num_updates % self.policy_delay == 0
        if self.on_nonfinite is not None:
            # Checked before any forward pass: a NaN observation would move the BatchRenorm
            # statistics, and a NaN next observation fails inside the policy's distribution.
            bad = self._nonfinite_batch(batch)
            if bad is not None:
                steps = [name for name in self.optimizers if name == "critic" or policy_step]
                self._nonfinite(steps, *bad, _BATCH_ADVICE)
                return TensorDict(self._skip_count(), batch_size=[])
        if self.cudagraphs:
            # A new iteration: the previous replay's outputs may be overwritten from here on,
            # so every tensor kept past this update is cloned below.
            torch.compiler.cudagraph_mark_step_begin()
        saved_statistics = self._save_statistics()
        with self._autocast():
            loss_qvalue, value_metadata = self._qvalue_loss(batch)
        self._step("critic", loss_qvalue, self.clip_grad_norm, saved_statistics)
        metrics = {
            "loss_qvalue": loss_qvalue.detach(),
            "q_mean": value_metadata["q_mean"],
            "target_value_mean": value_metadata["target_value_mean"],
        }
        if policy_step:
            saved_statistics = self._save_statistics()
            with self._autocast():
                loss_actor, actor_metadata = self._actor_loss(batch)
            self._step("actor", loss_actor, self.clip_grad_norm, saved_statistics)
            metrics.update(loss_actor=loss_actor.detach(), entropy=actor_metadata["entropy"])
            if self.loss.temperature.trainable:
                loss_alpha = self.loss.alpha_loss(actor_metadata["log_prob"], batch)
                stepped = self._step("alpha", loss_alpha, self.alpha_clip_grad_norm)
                if stepped and self.alpha_scheduler is not None:
                    self.alpha_scheduler.step()
                metrics["loss_alpha"] = loss_alpha.detach()
        if self.target_updater is not None:
            self.target_updater.step()
        metrics["alpha"] = self.loss.alpha
        metrics.update(self._skip_count())
        if self.cudagraphs:
            metrics = {k: v.detach().clone() for k, v in metrics.items()}
        if self.on_nonfinite == "raise":
            self._last_finite.update(metrics)
            self._last_finite_update = self.num_updates
        return TensorDict(metrics, batch_size=[])

    def state_dict(self) -> dict:
        """Optimiser, scheduler and counter state, for checkpoints."""
        state = {
            "num_updates": self.num_updates,
            "num_skipped": dict(self.num_skipped),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
        }
        if self.alpha_scheduler is not None:
            state["alpha_scheduler"] = self.alpha_scheduler.state_dict()
        if self.target_updater is not None:
            state["target_updater"] = self.target_updater.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.num_skipped.update(state.get("num_skipped", {}))  # absent from older checkpoints
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        if self.alpha_scheduler is not None:
            self.alpha_scheduler.load_state_dict(state["alpha_scheduler"])
        if self.target_updater is not None:
            self.target_updater.load_state_dict(state["target_updater"])


# Adam's options that its fused kernel call below leaves out: with any of them set, step().
_ADAM_OPTIONS_OFF = (
    "amsgrad",
    "maximize",
    "differentiable",
    "capturable",
    "decoupled_weight_decay",
)


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)``: its loop over the parameters, without its
    profiler scope (an optimiser class with a ``zero_grad`` of its own gets its own)."""
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad or (
        "zero_grad" in vars(optimizer)
    ):
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


def step_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; a fused ``torch.optim.Adam``'s straight through its kernel.

    ``step()`` of ``Adam(fused=True)`` ends in ``torch._foreach_add_`` on the step counters
    and one ``torch._fused_adam_`` call per parameter group. Around them it runs a profiler
    scope, the step hooks, grouping by device and dtype and the state checks: Python that,
    right after an update's kernels, costs several times what it costs warm (on 2 CPU
    cores, this and ``zero_grad`` below take about 0.4 ms less per training frame at critic
    width 256, 2-3% of a compiled frame). Here the
    same two calls are made on the same tensors with the group's hyperparameters read at
    each step (a scheduler's lr included), so the results are the same bit for bit.
    Anything else takes ``step()``: another optimiser class (a subclass too), a state not
    yet created (the first step), step hooks, an instance-level ``step`` (an lr
    scheduler's wrapper, which records the call), a gradient scaler's ``grad_scale``,
    tensors on several devices or dtypes, sparse or complex ones, a tensor ``lr`` or
    betas, or any of amsgrad, maximize, differentiable, capturable, decoupled weight decay.
    """
    calls = _fused_adam_calls(optimizer)
    if calls is None:
        optimizer.step()
        return
    for group, params, grads, exp_avgs, exp_avg_sqs, steps in calls:
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )


def _fused_adam_calls(optimizer: torch.optim.Optimizer) -> list[tuple] | None:
    """Per parameter group, the tensors of its ``_fused_adam_`` call; ``None``: use ``step()``."""
    from torch.optim import optimizer as optim_module

    if (
        type(optimizer) is not torch.optim.Adam
        or "step" in vars(optimizer)
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or optim_module._global_optimizer_pre_hooks
        or optim_module._global_optimizer_post_hooks
        or getattr(optimizer, "grad_scale", None) is not None
        or getattr(optimizer, "found_inf", None) is not None
    ):
        return None
    calls = []
    for group in optimizer.param_groups:
        if (
            not group["fused"]
            or any(group.get(option) for option in _ADAM_OPTIONS_OFF)
            or isinstance(group["lr"], torch.Tensor)
            or any(isinstance(beta, torch.Tensor) for beta in group["betas"])
        ):
            return None
        params = [param for param in group["params"] if param.grad is not None]
        if not params:
            continue
        device, dtype = params[0].device, params[0].dtype
        states = []
        for param in params:
            state = optimizer.state.get(param)
            grad = param.grad
            if (
                not state
                or param.device != device
                or param.dtype != dtype
                or grad.device != device
                or grad.dtype != dtype
                or grad.is_sparse
                or param.is_complex()
            ):
                return None
            states.append(state)
        calls.append(
            (
                group,
                params,
                [param.grad for param in params],
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [state["step"] for state in states],
            )
        )
    return calls


def _params_of(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


LR_SCHEDULERS = ("torch_constant", "cosine", "linear_warmup")


class _CosineDecay(torch.optim.lr_scheduler.CosineAnnealingLR):
    """PyTorch's cosine annealing up to ``T_max``, then ``eta_min`` (its own rises again)."""

    def get_lr(self) -> list[float]:
        if self.last_epoch > self.T_max:
            return [self.eta_min for _ in self.optimizer.param_groups]
        return super().get_lr()


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "torch_constant",
    *,
    warmup_steps: int = 0,
    decay_steps: int = 1,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A learning-rate schedule, stepped once per optimiser step.

    ``torch_constant``: the optimiser's lr throughout; ``cosine``: cosine decay to
    ``min_lr`` over ``decay_steps``, then ``min_lr``; ``linear_warmup``: linear ramp from ``lr /
    warmup_steps`` to ``lr`` over ``warmup_steps``, then constant.

    Examples:
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = make_lr_scheduler(opt, "linear_warmup", warmup_steps=4)
        >>> lrs = []
        >>> for _ in range(4):
        ...     opt.step()
        ...     sched.step()
        ...     lrs.append(round(opt.param_groups[0]["lr"], 2))
        >>> lrs
        [0.5, 0.75, 1.0, 1.0]
    """
    if name == "torch_constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "cosine":
        return _CosineDecay(optimizer, T_max=max(1, decay_steps), eta_min=min_lr)
    if name == "linear_warmup":
        return torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0 / max(1, warmup_steps), total_iters=max(0, warmup_steps - 1)
        )
    raise ValueError(
        f"lr_scheduler={name!r} is not supported; use one of: {', '.join(LR_SCHEDULERS)}"
    )
