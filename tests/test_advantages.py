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


# ---------------------------------------------------------------- dropped samples (issue 9, item 12)
# Expected values worked out by hand; TRL 1.16's GRPOTrainer / RLOOTrainer give the same numbers
# (bench/compare_trl/advantages_oracle.py runs TRL's own advantage code on these cases).
S73 = (7 / 3) ** 0.5  # unbiased std of {1, 2, 4}


@pytest.mark.parametrize("estimator, expected", [
    # k = 3 valid of G = 4: rewards 1, 2, 4 (mean 7/3), the 4th dropped
    ("grpo", [-4 / 3 / S73, -1 / 3 / S73, 5 / 3 / S73, 0.0]),
    ("dr_grpo", [-4 / 3, -1 / 3, 5 / 3, 0.0]),
    ("rloo", [1 - 3.0, 2 - 2.5, 4 - 1.5, 0.0]),  # baseline = mean of the other two valid ones
])
def test_three_valid_of_four(estimator, expected):
    returns = torch.tensor([1.0, 2.0, 4.0, 123.0])  # the dropped sample's value must not matter
    valid = torch.tensor([True, True, True, False])
    adv = group_baseline(returns, 4, estimator, eps=0.0, valid=valid)
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    # the same as a group of 3 without the dropped member
    alone = group_baseline(returns[:3], 3, estimator, eps=0.0)
    assert adv[:3].tolist() == pytest.approx(alone.tolist(), abs=1e-6)


@pytest.mark.parametrize("estimator, expected", [
    # k = 2 valid of G = 4: rewards 3 and 1 at positions 1 and 3 (mean 2, unbiased std sqrt 2)
    ("grpo", [0.0, 1 / 2**0.5, 0.0, -1 / 2**0.5]),
    ("dr_grpo", [0.0, 1.0, 0.0, -1.0]),
    ("rloo", [0.0, 2.0, 0.0, -2.0]),
])
def test_two_valid_of_four(estimator, expected):
    returns = torch.tensor([-50.0, 3.0, 9.0, 1.0])
    valid = torch.tensor([False, True, False, True])
    adv = group_baseline(returns, 4, estimator, eps=0.0, valid=valid)
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_groups_with_one_or_no_valid_member_get_zero(estimator):
    returns = torch.tensor([0.0, 0.0, 5.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    one = torch.tensor([False, False, True, False])
    none = torch.tensor([False] * 4)
    for v in (one, none):
        adv = group_baseline(returns, 4, estimator, valid=torch.cat([v, torch.ones(4, dtype=torch.bool)]))
        assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
        assert adv[4:].tolist() == pytest.approx(group_baseline(returns[4:], 4, estimator).tolist())
        assert not torch.isnan(adv).any()


def test_old_fill_with_the_group_mean_scaled_grpo_by_sqrt_of_g_minus_1_over_k_minus_1():
    """The bug: the dropped member filled with the group mean and the std taken over all G."""
    r = torch.tensor([1.0, 2.0, 4.0])
    filled = torch.cat([r, r.mean(0, keepdim=True)])
    old = group_baseline(filled, 4, "grpo", eps=0.0)[:3]
    new = group_baseline(torch.cat([r, torch.zeros(1)]), 4, "grpo", eps=0.0,
                         valid=torch.tensor([True, True, True, False]))[:3]
    assert (old / new).tolist() == pytest.approx([(3 / 2) ** 0.5] * 3)  # sqrt((G-1)/(k-1)), G=4, k=3


def test_compute_advantages_dropped_rows_are_zero_and_out_of_the_whitening():
    # two groups of 2, one token each; sample 1 is dropped (its mask row is zero, as the trainer makes it)
    scores = torch.tensor([1.0, 0.0, 2.0, 4.0])
    mask = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    valid = torch.tensor([True, False, True, True])
    rewards = token_rewards(scores, mask)
    adv, _ = compute_advantages("dr_grpo", rewards, mask, group_size=2, valid=valid, whiten=False)
    assert adv.flatten().tolist() == [0.0, 0.0, -1.0, 1.0]  # group 0 has one valid member
    white, _ = compute_advantages("dr_grpo", rewards, mask, group_size=2, valid=valid, whiten=True)
    # whitened over the three valid tokens 0, -1, 1 (mean 0, unbiased var 1): unchanged, dropped stays 0
    assert white.flatten().tolist() == pytest.approx([0.0, 0.0, -1.0, 1.0], abs=1e-6)
    for est in ("gae", "reinforce_pp"):
        values = torch.zeros(4, 1) if est == "gae" else None
        a, _ = compute_advantages(est, rewards, mask, values, valid=valid, whiten=True)
        assert a[1].tolist() == [0.0]
        a_keep, _ = compute_advantages(est, rewards[[0, 2, 3]], mask[[0, 2, 3]],
                                       None if values is None else values[[0, 2, 3]], whiten=True)
        assert a[[0, 2, 3]].flatten().tolist() == pytest.approx(a_keep.flatten().tolist(), abs=1e-6)  # as if absent


def test_whitening_default_follows_the_estimator():
    from progrl.advantages import default_whiten

    assert default_whiten("gae") is True
    assert not any(default_whiten(e) for e in ("grpo", "dr_grpo", "rloo", "reinforce_pp"))
    rewards = torch.tensor([[1.0], [3.0], [0.0], [10.0]])
    mask = torch.ones(4, 1)
    plain, _ = compute_advantages("rloo", rewards, mask, group_size=2)  # whiten=None: RLOO's definition
    assert plain.flatten().tolist() == [-2.0, 2.0, -10.0, 10.0]
    white, _ = compute_advantages("rloo", rewards, mask, group_size=2, whiten=True)
    assert white.flatten().std().item() == pytest.approx(1.0, abs=1e-6)
    values = torch.zeros(4, 1)
    g_default, _ = compute_advantages("gae", rewards, mask, values)
    g_white, _ = compute_advantages("gae", rewards, mask, values, whiten=True)
    assert g_default.tolist() == g_white.tolist()  # gae whitens by default (classic PPO)
