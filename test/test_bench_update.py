"""bench/update.py: the three contestants get the settings its README says are matched."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
update = pytest.importorskip("update")


def test_update_flops_counts_every_matmul_of_one_update():
    # Layer by layer (multiply-adds x 2), against the closed form of update_flops.
    b, e, d = update.BATCH_SIZE, update.NUM_QVALUE_NETS, update.POLICY_DELAY
    obs, act, a = update.OBS_DIM, update.ACTION_DIM, update.ACTOR_CELLS

    def macs(layers, rows):
        return rows * sum(i * o for i, o in layers)

    for width in (256, 2048):
        critic = [(obs + act, width), (width, width), (width, 1)]
        actor = [(obs, a), (a, a), (a, 2 * act)]
        critic_step = macs(actor, b) + 3 * e * macs(critic, 2 * b)  # next action; fwd + 2 bwd
        actor_step = 3 * macs(actor, b) + 2 * e * macs(critic, b)  # critic: fwd + input grad
        expected = 2 * (critic_step + actor_step / d)
        assert update.update_flops(width) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("make", ["make_ours", "make_torchrl", "make_sb3"])
def test_every_contestant_gets_the_matched_optimisers_and_batch_renormalization(make):
    if make == "make_sb3":
        pytest.importorskip("sb3_contrib")
    contestant = getattr(update, make)(16, update.random_transitions(300, seed=0))
    assert len(contestant.optimizers) == 3  # critic, actor, temperature
    for optimizer in contestant.optimizers:
        for group in optimizer.param_groups:
            assert (group["lr"], tuple(group["betas"])) == (update.LR, update.BETAS)
    renorms = [
        m for net in contestant.modules for m in net.modules() if "Renorm" in type(m).__name__
    ]
    assert renorms
    for layer in renorms:
        assert layer.momentum == update.BRN_MOMENTUM
        assert layer.warmup_steps == update.BRN_WARMUP
    contestant()  # one update runs
