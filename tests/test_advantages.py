"""Advantage estimators against values worked out by hand."""

import pytest
import torch

from progrl.advantages import compute_advantages, gae, group_baseline, returns_to_go, token_rewards
from progrl.kl import AdaptiveKLController, FixedKLController


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.8]])
    adv, ret = gae(rewards, values, torch.ones(1, 2), gamma=1.0, lam=0.95)
    # delta1 = 1 - 0.8 = 0.2 ; delta0 = 0 + 0.8 - 0.5 = 0.3 ; A0 = 0.3 + 0.95 * 0.2 = 0.49
    assert adv.tolist()[0] == pytest.approx([0.49, 0.2])
    assert ret.tolist()[0] == pytest.approx([0.99, 1.0])
    adv, _ = gae(rewards, values, torch.ones(1, 2), gamma=0.5, lam=1.0)
    # delta0 = 0 + 0.5 * 0.8 - 0.5 = -0.1 ; A0 = -0.1 + 0.5 * 0.2 = 0.0
    assert adv.tolist()[0] == pytest.approx([0.0, 0.2], abs=1e-7)


def test_gae_respects_padding():
    rewards = torch.tensor([[1.0, 0.0]])
    values = torch.tensor([[0.5, 0.7]])  # the value at the padded position must be ignored
    adv, ret = gae(rewards, values, torch.tensor([[1.0, 0.0]]))
    assert adv.tolist()[0] == pytest.approx([0.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 0.0])


def test_token_rewards_places_score_on_last_token_and_kl_everywhere():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    r = token_rewards(torch.tensor([1.0, 2.0]), mask, kl, kl_coef=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1, 1.0 - 0.15])
    assert r.tolist()[1] == pytest.approx([2.0 - 0.25, 0.0, 0.0])


def test_grpo_by_hand():
    adv = group_baseline(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2, "grpo", eps=0.0)
    # group 1: mean 2, unbiased std sqrt(2) ; group 2: identical rewards -> 0
    assert adv.tolist() == pytest.approx([-1 / 2**0.5, 1 / 2**0.5, 0.0, 0.0], abs=1e-6)


def test_identical_rewards_give_zero_advantage_for_every_estimator():
    for est in ("grpo", "dr_grpo", "rloo"):
        adv = group_baseline(torch.tensor([0.7, 0.7, 0.7]), 3, est)
        assert adv.abs().max().item() == 0.0


def test_rloo_and_dr_grpo_by_hand():
    r = torch.tensor([1.0, 2.0, 6.0])
    # leave-one-out: 1 - (2+6)/2 = -3 ; 2 - (1+6)/2 = -1.5 ; 6 - (1+2)/2 = 4.5
    assert group_baseline(r, 3, "rloo").tolist() == pytest.approx([-3.0, -1.5, 4.5])
    assert group_baseline(r, 3, "dr_grpo").tolist() == pytest.approx([-2.0, -1.0, 3.0])
    with pytest.raises(ValueError):
        group_baseline(r, 2, "grpo")  # 3 is not a whole number of groups of 2


def test_reinforce_pp_by_hand():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(2, 2)
    assert returns_to_go(rewards, mask).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    adv, ret = compute_advantages("reinforce_pp", rewards, mask)
    # returns 1,1,0,0: mean 0.5, unbiased var 1/3 -> +-0.5 / sqrt(1/3) = +-0.8660
    assert adv.flatten().tolist() == pytest.approx([0.8660254, 0.8660254, -0.8660254, -0.8660254], abs=1e-5)
    assert ret is None


def test_group_estimators_broadcast_to_tokens():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # sequence returns 1 and 0, one group of 2
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv, _ = compute_advantages("dr_grpo", rewards, mask, group_size=2)
    assert adv.tolist() == [[0.5, 0.5], [-0.5, 0.0]]


def test_kl_controllers_by_hand():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=128)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 128 / 10000))
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert ctl.value == pytest.approx(0.2 * (1 - 0.1 * 100 / 10000))
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
