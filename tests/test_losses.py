"""Loss terms against values worked out by hand."""

import math

import pytest
import torch

from progrl.losses import (aggregate, batch_entropy, entropy_from_logits, explained_variance, kl_penalty,
                           masked_whiten, policy_loss, token_entropy, value_loss)


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 3)
    # ratios 1.5, 0.5, 0.5 with advantages +1, +1, -1
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(new, old, adv, mask, clip_range=0.2)
    # per token: max(-1.5, -1.2) = -1.2 ; max(-0.5, -0.8) = -0.5 ; max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_policy_loss_ignores_masked_tokens_and_asymmetric_clip():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 9.0]]))
    adv = torch.tensor([[1.0, 5.0]])
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = policy_loss(new, old, adv, mask, clip_range=0.2, clip_range_high=0.28)
    assert loss.item() == pytest.approx(-1.28, abs=1e-6)


def test_value_loss_clipped_by_hand():
    values, old, returns = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 1), clip_range_value=0.2)
    # unclipped (1-2)^2 = 1 ; clipped value 0.7 -> (0.7-2)^2 = 1.69 ; 0.5 * max = 0.845
    assert loss.item() == pytest.approx(0.845)
    assert stats["vf_clipfrac"].item() == 1.0
    loss, _ = value_loss(values, old, returns, torch.ones(1, 1), clip_range_value=None)
    assert loss.item() == pytest.approx(0.5)


def test_token_entropy_by_hand():
    logits = torch.log(torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]]))
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert token_entropy(logits, torch.ones(2, 1)).item() == pytest.approx(h, abs=1e-6)
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4), abs=1e-6)


def test_batch_entropy_by_hand():
    # two states with opposite confident policies: each has low entropy, the batch average is uniform
    logits = torch.log(torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]]))
    h, max_prob = batch_entropy(logits, torch.ones(2, 1))
    assert h.item() == pytest.approx(math.log(2), abs=1e-6)
    assert max_prob.item() == pytest.approx(0.5, abs=1e-6)
    # identical policies (collapse): batch entropy equals the token entropy
    same = torch.log(torch.tensor([[[0.9, 0.1]], [[0.9, 0.1]]]))
    h, max_prob = batch_entropy(same, torch.ones(2, 1))
    assert h.item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-6)
    assert max_prob.item() == pytest.approx(0.9, abs=1e-6)


def test_batch_entropy_equals_paper_definition_for_one_token():
    torch.manual_seed(0)
    logits = torch.randn(16, 1, 11)
    h, _ = batch_entropy(logits, torch.ones(16, 1))
    p_bar = torch.softmax(logits[:, -1], -1).mean(0)  # the paper: average the batch's distributions
    paper = -(p_bar * p_bar.log()).sum()
    assert h.item() == pytest.approx(paper.item(), abs=1e-6)


def test_batch_entropy_multi_token_masked_positions():
    # seq 0 has two tokens, seq 1 one token: position 0 averages both, position 1 only seq 0
    logits = torch.log(torch.tensor([
        [[0.9, 0.1], [0.5, 0.5]],
        [[0.1, 0.9], [1e-9, 1.0]],  # the second position of seq 1 is padding and must not count
    ]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    h, _ = batch_entropy(logits, mask)
    assert h.item() == pytest.approx((2 * math.log(2) + 1 * math.log(2)) / 3, abs=1e-6)
    # gradient flows
    lg = logits.clone().requires_grad_(True)
    batch_entropy(lg, mask)[0].backward()
    assert lg.grad is not None and lg.grad[1, 1].abs().sum() == 0


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log_r = ref - logp = -1
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1, abs=1e-6)
    same = torch.tensor([-0.3])
    for est in ("k1", "k2", "k3"):
        assert kl_penalty(same, same, est).item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(10 / 10)


def test_whiten_and_explained_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    w = masked_whiten(x, torch.ones(1, 4))
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-4)
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(returns, returns, torch.ones(1, 3)) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), returns, torch.ones(1, 3)) == pytest.approx(0.0)
