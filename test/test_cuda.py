"""The CUDA paths: skipped without a GPU (CI has none); bench/gpu.sh runs them on one."""

import pytest
import torch
from helpers import ACTION_DIM, OBS_DIM, make_batch
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import CrossQLoss, CrossQUpdater, make_actor, make_critic, make_optimizers

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_updater(**kwargs) -> CrossQUpdater:
    torch.manual_seed(0)
    spec = Bounded(-1.0, 1.0, shape=(ACTION_DIM,))
    actor = make_actor(OBS_DIM, spec, num_cells=(64, 64), device="cuda")
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=(64, 64), device="cuda")
    loss = CrossQLoss(actor, critic)
    loss.make_value_estimator(gamma=0.99)
    return CrossQUpdater(loss, make_optimizers(loss), policy_delay=3, **kwargs)


def run_updates(update: CrossQUpdater, n: int = 12) -> list[dict]:
    out = []
    for step in range(n):
        batch = make_batch(64, seed=step).to("cuda")
        torch.manual_seed(100 + step)
        out.append({k: v.clone() for k, v in update(batch).items()})
    return out


def assert_close_runs(ours: list[dict], reference: list[dict], **tolerance) -> None:
    for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=f"{key} at update {step}", **tolerance)


@pytest.fixture(autouse=True)
def eager_random_numbers(monkeypatch):
    # Inductor draws its own random numbers unless told to call ATen's: the compiled and
    # eager runs then sample the same actions from the same seed.
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)


def test_compiled_update_on_cuda_gives_the_eager_losses():
    eager = run_updates(cuda_updater())
    compiled = run_updates(cuda_updater(compile=True))
    assert_close_runs(compiled, eager, rtol=1e-4, atol=1e-5)


def test_cuda_graph_update_gives_the_eager_losses():
    eager = run_updates(cuda_updater())
    graphed = cuda_updater(compile=True, cudagraphs=True)
    assert graphed.cudagraphs
    assert_close_runs(run_updates(graphed), eager, rtol=1e-4, atol=1e-5)


def test_bf16_update_on_cuda_keeps_float32_losses():
    metrics = run_updates(cuda_updater(precision="bf16"), n=6)
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
