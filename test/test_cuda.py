"""The CUDA paths: skipped without a GPU (CI has none); bench/gpu.sh runs them on one."""

import pytest
import torch
from helpers import (
    ACTION_DIM,
    OBS_DIM,
    compare_updaters_state_by_state,
    make_batch,
    sgd_optimizers,
)
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import CrossQLoss, CrossQUpdater, make_actor, make_critic, make_optimizers

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


# Warmup over after two forwards, with a fast momentum: the r and d corrections act in most
# updates, so a compiled gradient computed with the wrong statistics shows (test_update's twin).
PAST_WARMUP = {"warmup_steps": 2, "momentum": 0.5}


def cuda_updater(compared: bool = True, norm_kwargs=None, **kwargs) -> CrossQUpdater:
    torch.manual_seed(0)
    spec = Bounded(-1.0, 1.0, shape=(ACTION_DIM,))
    net = {"num_cells": (64, 64), "norm_kwargs": norm_kwargs, "device": "cuda"}
    actor = make_actor(OBS_DIM, spec, **net)
    critic = make_critic(OBS_DIM, ACTION_DIM, **net)
    loss = CrossQLoss(actor, critic)
    loss.make_value_estimator(gamma=0.99)
    optimizers = sgd_optimizers(loss) if compared else make_optimizers(loss)
    return CrossQUpdater(loss, optimizers, policy_delay=3, **kwargs)


def cuda_batches(n: int = 12) -> list:
    return [make_batch(64, seed=step).to("cuda") for step in range(n)]


@pytest.fixture(autouse=True)
def eager_random_numbers():
    # Inductor draws its own random numbers unless told to call ATen's: the compiled and
    # eager runs then sample the same actions from the same seed. The config's own patch, not
    # pytest's monkeypatch: undoing that deletes the option, and the next compile fails.
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        yield


def test_compiled_update_on_cuda_gives_the_eager_losses():
    compiled = cuda_updater(norm_kwargs=PAST_WARMUP, compile=True)
    eager = cuda_updater(norm_kwargs=PAST_WARMUP)
    compare_updaters_state_by_state(eager, compiled, cuda_batches(), rtol=1e-4, atol=1e-5)


def test_cuda_graph_update_gives_the_eager_losses():
    graphed = cuda_updater(norm_kwargs=PAST_WARMUP, compile=True, cudagraphs=True)
    assert graphed.cudagraphs
    eager = cuda_updater(norm_kwargs=PAST_WARMUP)
    compare_updaters_state_by_state(eager, graphed, cuda_batches(), rtol=1e-4, atol=1e-5)


def test_bf16_update_on_cuda_keeps_float32_losses():
    update = cuda_updater(compared=False, precision="bf16")
    metrics = [update(batch) for batch in cuda_batches(6)]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for m in metrics for v in m.values())


def test_acting_on_cuda_matches_torchrls_path():
    actor = make_actor(OBS_DIM, Bounded(-2.0, 2.0, shape=(ACTION_DIM,)), device="cuda")
    td = make_batch(32).select("observation").to("cuda")
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(0)
        with torch.no_grad():
            fast = actor(td.clone())["action"]
        torch.manual_seed(0)
        slow = actor(td.clone())["action"].detach()
    assert fast.device.type == "cuda"
    assert torch.equal(fast, slow)


def test_batched_evaluation_with_a_cuda_actor():
    from torchrl_crossq.envs import BatchedEvaluation

    actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,), device="cuda")
    evaluation = BatchedEvaluation("Pendulum-v1", episodes=2, max_steps=10)
    result = evaluation(actor, seed=0)
    assert evaluation.steps == 20 and result.return_mean < 0
    evaluation.close()


def test_transition_storage_on_cuda_reads_and_writes_what_lazy_tensor_storage_does():
    from torchrl.data import LazyTensorStorage

    from torchrl_crossq.data import TransitionStorage

    ours, torchrl = TransitionStorage(40, device="cuda"), LazyTensorStorage(40, device="cuda")
    for step in range(4):  # wraps around
        index = torch.arange(step * 16, step * 16 + 16, device="cuda") % 40
        for storage in (ours, torchrl):
            storage.set(index, make_batch(16, seed=step).to("cuda"))
    for read in (torch.randint(40, (32,)), torch.randint(40, (32,), device="cuda")):
        sample, expected = ours.get(read), torchrl.get(read)
        assert sample.device == expected.device and sample.batch_size == expected.batch_size
        for key in expected.keys(True, True):
            assert torch.equal(sample[key], expected[key])
