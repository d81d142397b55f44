"""Time of one CrossQ update: ours against TorchRL's CrossQLoss and sb3-contrib's CrossQ.train.

Batch 256 with HalfCheetah-v5 shapes at critic widths 2048 and 256; every update samples its
batch from a prefilled 10k-transition replay buffer. The contestants run interleaved in one
process after a warm-up (medians reported); our update's analytic FLOPs are set against a
matmul of the critic's shape timed in the same reps. bench/README.md has the details.

Run: ``make bench`` or ``.venv/bin/python bench/update.py`` (``--quick``: smoke run;
``--precision bf16``: adds ours at ``precision=bf16``; ``--compile``: ours with
``compile=true``; ``--device cuda``: every contestant on the GPU, in its own RESULTS.md
section; ``--cudagraphs``: ours with ``compile=true cudagraphs=true``, CUDA only). The last
lines are ``speedup_vs_torchrl``, ``speedup_vs_sb3`` and ``peak_fraction`` (width 2048; a
speedup is their time over ours), after ``speedup_compiled_vs_sb3``,
``speedup_bf16_compiled_vs_sb3``, ``speedup_bf16_vs_sb3`` and ``speedup_cudagraphs_vs_sb3``
when those settings ran.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
import warnings
from collections.abc import Callable

import harness  # bench/ is on sys.path
import numpy as np
import torch

OBS_DIM = 17  # HalfCheetah-v5
ACTION_DIM = 6
BATCH_SIZE = 256
ACTOR_CELLS = 256
NUM_QVALUE_NETS = 2
POLICY_DELAY = 3
BUFFER_SIZE = 10_000
LR = 1e-3
BETAS = (0.5, 0.999)
GAMMA = 0.99
BRN_MOMENTUM = 0.01
BRN_WARMUP = 100_000

Update = Callable[[], None]
CPU = torch.device("cpu")
# Our contestants besides the default settings, with their config overrides (table order).
VARIANTS = {
    "ours_compiled": "compile=true",
    "ours_bf16": "precision=bf16",
    "ours_bf16_compiled": "precision=bf16 compile=true",
    "ours_cudagraphs": "compile=true cudagraphs=true",  # CUDA only
}
# Their summary lines, in the order printed before the three headline lines.
VARIANT_SUMMARY = {
    "ours_compiled": "speedup_compiled_vs_sb3",
    "ours_bf16_compiled": "speedup_bf16_compiled_vs_sb3",
    "ours_bf16": "speedup_bf16_vs_sb3",
    "ours_cudagraphs": "speedup_cudagraphs_vs_sb3",
}


# -- the measurement ----------------------------------------------------------------------
def bench_width(width: int, args: argparse.Namespace, data: dict[str, np.ndarray]) -> dict:
    """Every contestant at critic ``width``: a warm-up, then ``--reps`` reps, each timing every
    contestant (in an order that rotates each rep) and the matmul peak."""
    device = torch.device(args.device)
    contestants: dict[str, Update] = {
        "ours": make_ours(width, data, device=device),
        "torchrl": make_torchrl(width, data, device),
        "sb3": make_sb3(width, data, device),
    }
    if args.precision == "bf16":
        contestants["ours_bf16"] = make_ours(width, data, "bf16", device=device)
    if args.compile or args.cudagraphs:
        # Every compiled contestant recompiles the same loss methods (a new module each, and
        # both widths in one process): lift dynamo's per-function recompile limit so none of
        # them falls back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if args.compile:
        contestants["ours_compiled"] = make_ours(width, data, compile=True, device=device)
        if args.precision == "bf16":
            contestants["ours_bf16_compiled"] = make_ours(
                width, data, "bf16", compile=True, device=device
            )
    if args.cudagraphs:
        contestants["ours_cudagraphs"] = make_ours(
            width, data, compile=True, cudagraphs=True, device=device
        )
    names = list(contestants)
    peak_precisions = ["fp32", "bf16"] if args.precision == "bf16" else ["fp32"]

    # Warm-up: optimiser state, allocator pools, lazy inits. Also sizes a timed sample.
    warm = {}
    for name in names:
        warm[name] = min(
            time_updates(contestants[name], POLICY_DELAY, name == "sb3", device)
            for _ in range(args.warmup)
        )
    for precision in peak_precisions:
        matmul_peak(precision, device)
    cycles = args.cycles or max(1, math.ceil(args.sample_seconds / (POLICY_DELAY * warm["ours"])))
    n = cycles * POLICY_DELAY

    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {p: [] for p in peak_precisions}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order
        for name in order:
            times[name].append(time_updates(contestants[name], n, name == "sb3", device))
        for precision in peak_precisions:
            peaks[precision].append(matmul_peak(precision, device))

    if args.profile and width == max(args.widths):
        profile_ours(contestants, width, device)
    return summarise(width, n, times, peaks)


def time_updates(update: Update, n: int, sb3: bool, device: torch.device) -> float:
    """Seconds per update over ``n`` consecutive updates (``n`` a multiple of the policy delay);
    on CUDA, until the last update's kernels have finished."""
    gc.collect()
    synchronize(device)
    start = time.perf_counter()
    if sb3:
        update(n)  # one train() call, like sb3's learn loop with gradient_steps=n
    else:
        for _ in range(n):
            update()
    synchronize(device)
    return (time.perf_counter() - start) / n


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    precision: str, device: torch.device = CPU, width: int = 2048, calls: int = 5
) -> float:
    """FLOP/s of ``torch.mm`` of the critic's largest shape, (2B x W) @ (W x W), median of ``calls``.

    bf16 runs under autocast from float32 inputs, as a bf16 update would. On CUDA a call is 20
    products back to back (one alone is mostly launch time).
    """
    x = torch.randn(2 * BATCH_SIZE, width, device=device)
    w = torch.randn(width, width, device=device)
    repeat = 20 if device.type == "cuda" else 1
    flops = 2.0 * 2 * BATCH_SIZE * width * width * repeat
    times = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        torch.mm(x, w)
        for _ in range(calls):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeat):
                torch.mm(x, w)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times)


# -- the three contestants --------------------------------------------------------------
def make_ours(
    width: int,
    data: dict[str, np.ndarray],
    precision: str = "fp32",
    compile: bool = False,
    cudagraphs: bool = False,
    device: torch.device = CPU,
) -> Update:
    """Our CrossQUpdater at ``precision`` (``"bf16"``: bfloat16 autocast of the losses).

    ``compile``: the script's ``compile=true`` (``torch.compile`` of the two loss computations);
    ``cudagraphs``: its ``cudagraphs=true`` (those replayed as CUDA graphs).
    """
    from torchrl.data import Bounded

    from torchrl_crossq import CrossQLoss, CrossQUpdater, make_actor, make_critic, make_optimizers

    updater_kwargs = {"precision": precision, "compile": compile, "cudagraphs": cudagraphs}
    torch.manual_seed(0)
    norm_kwargs = {"momentum": BRN_MOMENTUM, "warmup_steps": BRN_WARMUP}
    actor = make_actor(
        OBS_DIM,
        Bounded(-1.0, 1.0, shape=(ACTION_DIM,), device=device),
        num_cells=(ACTOR_CELLS, ACTOR_CELLS),
        norm_kwargs=norm_kwargs,
        device=device,
    )
    critic = make_critic(
        OBS_DIM, ACTION_DIM, num_cells=(width, width), num_qvalue_nets=NUM_QVALUE_NETS,
        norm_kwargs=norm_kwargs, device=device,
    )  # fmt: skip
    loss = CrossQLoss(actor, critic)
    loss.make_value_estimator(gamma=GAMMA)
    updater = CrossQUpdater(
        loss, make_optimizers(loss, lr=LR, betas=BETAS), policy_delay=POLICY_DELAY,
        **updater_kwargs,
    )  # fmt: skip
    buffer = torchrl_buffer(data, device)

    def update() -> None:
        updater(buffer.sample())

    update.optimizers = tuple(updater.optimizers.values())
    update.modules = (loss.actor_network, loss.qvalue_network)  # for the settings' test
    return update


def make_torchrl(width: int, data: dict[str, np.ndarray], device: torch.device = CPU) -> Update:
    """TorchRL 0.14's CrossQLoss with the networks of its SOTA script (sota-implementations/crossq).

    As in utils.py there: MLPs with ``torchrl.modules.BatchRenorm1d`` after each hidden
    Linear, a TanhNormal ``ProbabilisticActor``, a ``ValueOperator`` critic that the loss
    expands to 2 vmapped copies, ``loss_function="l2"``. The update steps each term with its
    own optimiser (not the script's ``q_loss + actor_loss + actor_loss`` sum, which never
    trains alpha).
    """
    from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
    from torch import nn
    from torchrl.data import Bounded
    from torchrl.modules import MLP, BatchRenorm1d, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import CrossQLoss

    torch.manual_seed(0)

    def brn_kwargs(features: int) -> dict:
        return {"num_features": features, "momentum": BRN_MOMENTUM, "warmup_steps": BRN_WARMUP}

    actor_net = MLP(
        in_features=OBS_DIM,
        out_features=2 * ACTION_DIM,
        num_cells=[ACTOR_CELLS, ACTOR_CELLS],
        activation_class=nn.ReLU,
        norm_class=BatchRenorm1d,
        norm_kwargs=brn_kwargs(ACTOR_CELLS),
    )
    actor_module = TensorDictModule(
        nn.Sequential(
            actor_net, NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1)
        ),
        in_keys=["observation"],
        out_keys=["loc", "scale"],
    )
    action_spec = Bounded(-1.0, 1.0, shape=(ACTION_DIM,), device=device)
    actor = ProbabilisticActor(
        actor_module,
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        },
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )
    qvalue = ValueOperator(
        MLP(
            in_features=OBS_DIM + ACTION_DIM,
            out_features=1,
            num_cells=[width, width],
            activation_class=nn.ReLU,
            norm_class=BatchRenorm1d,
            norm_kwargs=brn_kwargs(width),
        ),
        in_keys=["action", "observation"],
    )
    loss = CrossQLoss(
        actor_network=actor.to(device),
        qvalue_network=qvalue.to(device),
        num_qvalue_nets=NUM_QVALUE_NETS,
        loss_function="l2",
        alpha_init=1.0,
    )
    loss.make_value_estimator(gamma=GAMMA)
    loss.to(device)

    def adam(params) -> torch.optim.Adam:
        return torch.optim.Adam(
            [p for p in params if p.requires_grad], lr=LR, betas=BETAS, eps=1e-8
        )

    critic_opt = adam(loss.qvalue_network_params.flatten_keys().values())
    actor_opt = adam(loss.actor_network_params.flatten_keys().values())
    alpha_opt = torch.optim.Adam([loss.log_alpha], lr=LR, betas=BETAS)
    buffer = torchrl_buffer(data, device)
    num_updates = 0

    def update() -> None:
        nonlocal num_updates
        num_updates += 1
        batch = buffer.sample()
        q_loss, _ = loss.qvalue_loss(batch)
        critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        critic_opt.step()
        if num_updates % POLICY_DELAY == 0:
            actor_loss, metadata = loss.actor_loss(batch)
            actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_opt.step()
            alpha_loss = loss.alpha_loss(metadata["log_prob"])
            alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            alpha_opt.step()

    update.optimizers = (critic_opt, actor_opt, alpha_opt)
    update.modules = (loss.actor_network, loss.qvalue_network)  # for the settings' test
    return update


def make_sb3(width: int, data: dict[str, np.ndarray], device: torch.device = CPU) -> Update:
    """sb3-contrib's ``CrossQ``; one call of ``update`` is one gradient step of ``CrossQ.train``."""
    import gymnasium as gym
    from sb3_contrib import CrossQ
    from stable_baselines3.common.logger import Logger

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = gym.make("HalfCheetah-v5")
    except Exception:
        env = _spaces_only_env()
    threads = torch.get_num_threads()
    model = CrossQ(
        "MlpPolicy",
        env,
        learning_rate=LR,
        buffer_size=BUFFER_SIZE,
        learning_starts=0,
        batch_size=BATCH_SIZE,
        gamma=GAMMA,
        policy_delay=POLICY_DELAY,
        policy_kwargs={
            "net_arch": {"pi": [ACTOR_CELLS, ACTOR_CELLS], "qf": [width, width]},
            "batch_norm_momentum": BRN_MOMENTUM,
            "renorm_warmup_steps": BRN_WARMUP,
            "optimizer_kwargs": {"betas": BETAS},
        },
        seed=0,
        device=device,
    )
    # sb3 builds the temperature's Adam with torch's default betas; the others use BETAS.
    model.ent_coef_optimizer = torch.optim.Adam([model.log_ent_coef], lr=LR, betas=BETAS)
    torch.set_num_threads(threads)  # same thread count for all, whatever sb3 does
    model.set_logger(Logger(folder=None, output_formats=[]))
    buffer = model.replay_buffer
    done = data["terminated"] | data["truncated"]
    for i in range(len(done)):
        buffer.add(
            data["observation"][i : i + 1],
            data["next_observation"][i : i + 1],
            data["action"][i : i + 1],
            data["reward"][i : i + 1],
            done[i : i + 1],
            [{"TimeLimit.truncated": bool(data["truncated"][i])}],
        )

    def update(gradient_steps: int = 1) -> None:
        model.train(gradient_steps=gradient_steps, batch_size=BATCH_SIZE)

    update.optimizers = (model.critic.optimizer, model.actor.optimizer, model.ent_coef_optimizer)
    update.modules = (model.policy,)  # for the settings' test
    return update


def _spaces_only_env():
    """HalfCheetah-v5's spaces, for sb3 when MuJoCo is missing (``train`` never steps it)."""
    import gymnasium as gym

    class SpacesOnly(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(OBS_DIM), {}

        def step(self, action):
            return np.zeros(OBS_DIM), 0.0, False, False, {}

    return SpacesOnly()


# -- data ---------------------------------------------------------------------------------
def random_transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` HalfCheetah-v5 transitions under uniform random actions (random numbers if MuJoCo is missing)."""
    rng = np.random.default_rng(seed)
    try:
        import gymnasium as gym

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = gym.make("HalfCheetah-v5")
    except Exception as err:  # no MuJoCo: same shapes, random values
        print(f"# HalfCheetah-v5 unavailable ({type(err).__name__}: {err}); random data instead")
        obs = rng.standard_normal((n + 1, OBS_DIM)).astype(np.float32)
        return {
            "observation": obs[:-1],
            "action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
            "next_observation": obs[1:],
            "reward": rng.standard_normal(n).astype(np.float32),
            "terminated": np.zeros(n, dtype=bool),
            "truncated": np.zeros(n, dtype=bool),
        }
    env.action_space.seed(seed)
    columns: dict[str, list] = {
        k: []
        for k in ("observation", "action", "next_observation", "reward", "terminated", "truncated")
    }
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(
            columns, (obs, action, next_obs, reward, terminated, truncated), strict=True
        ):
            columns[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return {
        key: np.asarray(
            values, dtype=np.float32 if key not in ("terminated", "truncated") else bool
        )
        for key, values in columns.items()
    }


def torchrl_buffer(data: dict[str, np.ndarray], device: torch.device = CPU):
    """A prefilled ``TensorDictReplayBuffer`` (no prefetch: it hurts on 2 cores, perf-notes),
    its storage on ``device`` (so are the sampled batches)."""
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

    n = len(data["reward"])
    terminated = torch.from_numpy(data["terminated"]).unsqueeze(-1)
    done = terminated | torch.from_numpy(data["truncated"]).unsqueeze(-1)
    transitions = TensorDict(
        {
            "observation": torch.from_numpy(data["observation"]),
            "action": torch.from_numpy(data["action"]),
            "next": {
                "observation": torch.from_numpy(data["next_observation"]),
                "reward": torch.from_numpy(data["reward"]).unsqueeze(-1),
                "done": done,
                "terminated": terminated,
            },
        },
        batch_size=[n],
    )
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n, device=device), batch_size=BATCH_SIZE
    )
    buffer.extend(transitions)
    return buffer


# -- work and the hardware limit ----------------------------------------------------------
def update_flops(width: int) -> float:
    """Matmul FLOPs of one update, policy delay averaged (2 FLOPs per multiply-add).

    Per sample, one critic's forward is ``Fc = (obs+act)*W + W*W + W`` multiply-adds and the
    actor's ``Fa = obs*A + A*A + A*2*act``. Backward = 2x forward (input and weight gradients).

        critic step (every update): actor fwd on B (next action, no grad)  2*B*Fa
                                    E critics fwd+bwd on the joint 2B      6*2B*E*Fc
        actor step (every D-th):    actor fwd+bwd on B                     6*B*Fa
                                    E critics fwd on B + input-grad bwd    4*B*E*Fc
        per update = 12*B*E*Fc + 2*B*Fa + (6*B*Fa + 4*B*E*Fc) / D

    Elementwise work (Batch Renormalization, Adam, the distribution) is not counted.
    """
    b, e, d, a = BATCH_SIZE, NUM_QVALUE_NETS, POLICY_DELAY, ACTOR_CELLS
    fc = (OBS_DIM + ACTION_DIM) * width + width * width + width
    fa = OBS_DIM * a + a * a + a * 2 * ACTION_DIM
    return 12 * b * e * fc + 2 * b * fa + (6 * b * fa + 4 * b * e * fc) / d


def summarise(width: int, n: int, times: dict, peaks: dict) -> dict:
    """Medians, speedups and peak fractions of one width's timed reps."""
    median = {name: statistics.median(t) for name, t in times.items()}
    flops = update_flops(width)
    peak = {p: statistics.median(v) for p, v in peaks.items()}
    result = {
        "width": width,
        "updates_per_sample": n,
        "times_s": times,
        "median_s": median,
        "speedup_vs_torchrl": median["torchrl"] / median["ours"],
        "speedup_vs_sb3": median["sb3"] / median["ours"],
        "flop_per_update": flops,
        "ours_flop_per_s": flops / median["ours"],
        "matmul_peak_flop_per_s": peak,
        "matmul_peak_per_rep": peaks,
        "peak_fraction": flops / median["ours"] / peak["fp32"],
    }
    # Each of our other settings against the references; its peak in its own precision.
    result["variants"] = {}
    for name in (v for v in VARIANTS if v in median):
        precision = "bf16" if "bf16" in name else "fp32"
        result["variants"][name] = {
            "precision": precision,
            "speedup_vs_torchrl": median["torchrl"] / median[name],
            "speedup_vs_sb3": median["sb3"] / median[name],
            "flop_per_s": flops / median[name],
            "peak_fraction": flops / median[name] / peak[precision],
            "floor_s": flops / peak[precision],
        }
    return result


def report_width(r: dict) -> list[str]:
    ms = {k: 1e3 * v for k, v in r["median_s"].items()}
    lines = [
        f"width {r['width']}: ms per update, median of {len(r['times_s']['ours'])} reps "
        f"of {r['updates_per_sample']} updates (min..max)"
    ]
    for name, t in r["times_s"].items():
        lines.append(f"  {name:<10} {ms[name]:8.2f}  ({harness.span([1e3 * v for v in t])})")
    lines.append(
        f"  ours/torchrl {ms['ours'] / ms['torchrl']:.3f}   ours/sb3 {ms['ours'] / ms['sb3']:.3f}"
        f"   (speedups {r['speedup_vs_torchrl']:.3f}x, {r['speedup_vs_sb3']:.3f}x)"
    )
    peak = r["matmul_peak_flop_per_s"]
    lines.append(
        f"  ours: {r['flop_per_update'] / 1e9:.2f} GFLOP/update -> "
        f"{r['ours_flop_per_s'] / 1e9:.1f} GFLOP/s; fp32 matmul peak {peak['fp32'] / 1e9:.1f} "
        f"GFLOP/s -> {r['peak_fraction']:.3f} of peak "
        f"(floor {1e3 * r['flop_per_update'] / peak['fp32']:.2f} ms)"
    )
    variants = r["variants"]
    if "ours_compiled" in variants:
        v = variants["ours_compiled"]
        lines.append(
            f"  ours compiled: {v['speedup_vs_torchrl']:.3f}x TorchRL, "
            f"{v['speedup_vs_sb3']:.3f}x sb3, {v['peak_fraction']:.3f} of peak"
        )
    if "ours_cudagraphs" in variants:
        v = variants["ours_cudagraphs"]
        lines.append(
            f"  ours cudagraphs: {v['speedup_vs_torchrl']:.3f}x TorchRL, "
            f"{v['speedup_vs_sb3']:.3f}x sb3, {v['peak_fraction']:.3f} of peak"
        )
    for name in ("ours_bf16", "ours_bf16_compiled"):
        if name in variants:
            v = variants[name]
            lines.append(
                f"  {name.replace('_', ' ')}: {v['flop_per_s'] / 1e9:.1f} GFLOP/s; bf16 matmul "
                f"peak {peak['bf16'] / 1e9:.1f} GFLOP/s -> {v['peak_fraction']:.3f} of peak; "
                f"{v['speedup_vs_sb3']:.3f}x sb3's float32 update "
                f"(floor {1e3 * v['floor_s']:.2f} ms)"
            )
    return lines


def profile_ours(
    contestants: dict[str, Update],
    width: int,
    device: torch.device,
    updates: int = 3 * POLICY_DELAY,
) -> None:
    """Prints torch.profiler's top operators (self CPU time) over ``updates`` of ours, and of
    ours with CUDA graphs when it ran: on a GPU, what the host still does around the graphs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for name in ("ours", "ours_cudagraphs"):
        if name not in contestants:
            continue
        with profile(activities=activities) as prof:
            time_updates(contestants[name], updates, False, device)
        print(f"# profile of {name}, width {width}, {updates} updates")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


# -- summary lines and RESULTS.md ----------------------------------------------------------
def headline(results: list[dict]) -> dict:
    """Width 2048's result, else the widest's."""
    return next((r for r in results if r["width"] == 2048), max(results, key=lambda r: r["width"]))


def summary_lines(results: list[dict]) -> list[str]:
    r = headline(results)
    return [
        *(
            f"{line}: {r['variants'][name]['speedup_vs_sb3']:.3f}"
            for name, line in VARIANT_SUMMARY.items()
            if name in r["variants"]
        ),
        f"speedup_vs_torchrl: {r['speedup_vs_torchrl']:.3f}",
        f"speedup_vs_sb3: {r['speedup_vs_sb3']:.3f}",
        f"peak_fraction: {r['peak_fraction']:.3f}",
    ]


def warning(info: dict, results: list[dict]) -> str | None:
    """The load warning; this script's own sign is a matmul peak unsteady across reps."""
    unsteady = []
    for r in results:
        peaks = [p / 1e9 for p in r["matmul_peak_per_rep"]["fp32"]]
        if harness.varies(peaks, by=1.3):
            unsteady.append(
                f"matmul peak varied {harness.span(peaks, '.0f')} GFLOP/s across reps at width {r['width']}"
            )
    return harness.busy_warning(info, unsteady, what="times")


COLUMNS = (
    "width", "ours ms", "TorchRL ms", "sb3-contrib ms", "speedup vs TorchRL", "speedup vs sb3",
    "ours GFLOP/s", "fp32 matmul peak GFLOP/s", "peak fraction",
)  # fmt: skip
VARIANT_COLUMNS = (
    "width", "ours, settings", "ms", "speedup vs sb3 (float32)", "GFLOP/s",
    "matmul peak GFLOP/s", "peak fraction", "matmul floor ms",
)  # fmt: skip


def write_results(saved: dict) -> None:
    """Replaces (or appends) this script's section of bench/RESULTS.md."""
    info, results = saved["info"], saved["results"]
    device = saved.get("device", "cpu")
    rows, variant_rows = [], []
    for r in results:
        ms = {k: 1e3 * v for k, v in r["median_s"].items()}
        peak = r["matmul_peak_flop_per_s"]
        rows.append(
            (
                str(r["width"]), f"{ms['ours']:.2f}", f"{ms['torchrl']:.2f}", f"{ms['sb3']:.2f}",
                f"{r['speedup_vs_torchrl']:.3f}", f"{r['speedup_vs_sb3']:.3f}",
                f"{r['ours_flop_per_s'] / 1e9:.1f}", f"{peak['fp32'] / 1e9:.1f}",
                f"{r['peak_fraction']:.3f}",
            )
        )  # fmt: skip
        for name, v in r["variants"].items():  # built in VARIANTS order
            variant_rows.append(
                (
                    str(r["width"]), VARIANTS[name], f"{ms[name]:.2f}",
                    f"{v['speedup_vs_sb3']:.3f}", f"{v['flop_per_s'] / 1e9:.1f}",
                    f"{peak[v['precision']] / 1e9:.1f}", f"{v['peak_fraction']:.3f}",
                    f"{1e3 * v['floor_s']:.2f}",
                )
            )  # fmt: skip
    body = [
        *harness.header_lines(
            info,
            f"torch threads {info['torch_threads']}, device {device}",
            allocator_note="sampling from the replay buffer included",
            warning=info.get("warning"),
        ),
        "",
        *harness.markdown_table(COLUMNS, rows),
    ]
    if variant_rows:
        body += [
            "",
            "Our other settings, same run (`precision=bf16`: bfloat16 autocast of the losses; "
            "`compile=true`: torch.compile of the losses; `cudagraphs=true`: those replayed as "
            "CUDA graphs); peak and floor in that precision:",
            "",
            *harness.markdown_table(VARIANT_COLUMNS, variant_rows),
        ]
    name, title = harness.section_of("bench/update.py", "Per-update time", device, info)
    harness.write_section(name, title, body, summary_lines(results))


# -- command line --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2048, 256])
    parser.add_argument("--reps", type=int, default=7, help="timed reps per contestant")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up delay cycles")
    parser.add_argument(
        "--cycles", type=int, default=0, help="delay cycles per timed sample (0: auto)"
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=1.0, help="target length of a sample (auto)"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (every contestant)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time ours with compile=true (torch.compile of the losses; ~1 min to compile)",
    )
    parser.add_argument(
        "--cudagraphs",
        action="store_true",
        help="also time ours with compile=true cudagraphs=true (CUDA only)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps, 1 warm-up")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler's top ops of ours (and of ours with --cudagraphs)",
    )
    harness.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.sample_seconds = 2, 1, 0.0
    harness.require_at_least(parser, args, 1, "reps", "warmup")
    if args.cudagraphs and not args.device.startswith("cuda"):
        parser.error(f"--cudagraphs needs --device cuda (got --device {args.device})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.results_from:
        write_results(harness.load_dump(args.results_from))
        return
    harness.quiet()
    info = harness.machine_info()
    harness.console_header(info, f"torch threads {info['torch_threads']}")
    print(
        f"# batch {BATCH_SIZE}, obs {OBS_DIM}, action {ACTION_DIM}, policy delay {POLICY_DELAY}, "
        f"buffer {BUFFER_SIZE}; sampling from the replay buffer INCLUDED in every time"
    )
    if args.precision == "bf16" and not harness.measures_bf16(args.device, "precision=bf16"):
        args.precision = "fp32"
    data = random_transitions(BUFFER_SIZE, seed=0)
    results = []
    for width in args.widths:
        results.append(bench_width(width, args, data))
        print("\n".join(report_width(results[-1])), flush=True)
    harness.end_of_run(info)
    info["warning"] = warning(info, results)
    if info["warning"]:
        print(f"# {info['warning']}")
    if 2048 not in args.widths:
        print(f"# width 2048 not run: the last lines are width {headline(results)['width']}'s")
    saved = {"info": info, "device": args.device, "results": results}
    harness.finish(args, saved, write_results, summary_lines(results))


if __name__ == "__main__":
    main()
