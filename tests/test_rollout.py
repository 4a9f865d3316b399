"""Sampling and scoring: padding must not change anything, controls must hold."""

import pytest
import torch

from progrl.modeling import build_causal_lm_from_config
from progrl.policy import Policy
from progrl.rollout import SamplingParams, filter_logits, forward_response, left_pad, sample

VOCAB = 40
PAD, EOS = 0, 1


def tiny_policy(arch="gpt2", value_head=True, seed=0):
    lm = build_causal_lm_from_config(arch, VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64,
                                     bos_token_id=2, eos_token_id=EOS, pad_token_id=PAD, seed=seed)
    return Policy(lm, value_head=value_head).eval()


def prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 7, 1, 5]
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_left_padded_logprobs_equal_each_sequence_alone(arch):
    policy = tiny_policy(arch)
    seqs = prompts()
    response = torch.randint(3, VOCAB, (len(seqs), 4), generator=torch.Generator().manual_seed(1))
    ids, mask = left_pad(seqs, PAD)
    full = torch.cat([ids, response], 1)
    full_mask = torch.cat([mask, torch.ones_like(response)], 1)
    with torch.no_grad():
        _, batch_lp, batch_v = forward_response(policy, full, full_mask, ids.shape[1])
        for i, s in enumerate(seqs):
            alone = torch.tensor([s + response[i].tolist()])
            _, lp, v = forward_response(policy, alone, torch.ones_like(alone), len(s))
            assert torch.allclose(batch_lp[i], lp[0], atol=1e-5), (arch, i)
            assert torch.allclose(batch_v[i], v[0], atol=1e-5), (arch, i)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sampling_logprobs_and_values_match_the_update_forward_pass(arch):
    # the rollout's log-probs are reused as the old policy: they must equal a fresh forward pass
    policy = tiny_policy(arch)
    ids, mask = left_pad(prompts(2), PAD)
    params = SamplingParams(max_new_tokens=6, temperature=0.7, stop_ids=(EOS,), pad_id=PAD)
    ro = sample(policy, ids, mask, params, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, lp, v = forward_response(policy, ro.input_ids, ro.attention_mask, ids.shape[1], temperature=0.7)
    m = ro.response_mask.bool()
    assert torch.allclose(ro.logprobs[m], lp[m], atol=1e-5)
    assert torch.allclose(ro.values[m], v[m], atol=1e-5)


def test_stop_tokens_min_tokens_and_banned_tokens():
    policy = tiny_policy()
    # make the stop token EOS likely: the final layer norm's output then points along EOS's embedding
    with torch.no_grad():
        ln = policy.lm.transformer.ln_f
        ln.weight.mul_(0.3)
        ln.bias.copy_(policy.lm.transformer.wte.weight[EOS] * 1.0 / policy.lm.transformer.wte.weight[EOS].norm())
    ids, mask = left_pad(prompts(), PAD)
    banned = (5, 6, 7)
    params = SamplingParams(max_new_tokens=8, min_new_tokens=3, stop_ids=(EOS, 9), banned_ids=banned, pad_id=PAD)
    stopped = 0
    for seed in range(5):
        ro = sample(policy, ids, mask, params, torch.Generator().manual_seed(seed))
        toks = ro.response_ids
        assert not torch.isin(toks[ro.response_mask.bool()], torch.tensor(banned)).any()
        for row, m in zip(toks.tolist(), ro.response_mask.tolist()):
            n = sum(m)
            assert n >= 3  # min_new_tokens: no stop token before position 3
            assert all(t not in (EOS, 9) for t in row[: min(n, 3)])
            if n < len(row):  # stopped: the stop token is the last real token, padding after it
                stopped += 1
                assert row[n - 1] in (EOS, 9)
                assert all(t == PAD for t in row[n:])
                assert m[n:] == [0] * (len(row) - n)
    assert stopped > 0


def test_greedy_equals_top_k_one_and_is_deterministic():
    policy = tiny_policy()
    ids, mask = left_pad(prompts(), PAD)
    greedy = sample(policy, ids, mask, SamplingParams(max_new_tokens=5, greedy=True, pad_id=PAD))
    topk = sample(policy, ids, mask, SamplingParams(max_new_tokens=5, top_k=1, pad_id=PAD),
                  torch.Generator().manual_seed(3))
    assert torch.equal(greedy.response_ids, topk.response_ids)


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_p=0.7)  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7 -> keep two
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, top_k=3)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    kept = filter_logits(logits, top_p=0.1)  # the best token always survives
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]


def test_policy_without_value_head_has_no_values():
    policy = tiny_policy(value_head=False)
    ids, mask = left_pad(prompts(), PAD)
    ro = sample(policy, ids, mask, SamplingParams(max_new_tokens=2, pad_id=PAD), torch.Generator().manual_seed(0))
    assert ro.values is None
    assert not any("value_head" in n for n, _ in policy.named_parameters())


class IgnoresLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes ``logits_to_keep`` but returns every position anyway."""

    def __init__(self, lm):
        super().__init__()
        self.inner = lm
        self.config = lm.config

    def forward(self, logits_to_keep=0, **kwargs):
        return self.inner(**kwargs)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_logits_to_keep_gives_the_last_positions_of_the_full_pass(arch, wrapped):
    policy = tiny_policy(arch)
    ids, mask = left_pad(prompts(), PAD)
    full_logits, full_values, _ = policy(ids, mask)
    if wrapped:
        policy.lm = IgnoresLogitsToKeep(policy.lm)
    for keep in (1, 3):
        logits, values, _ = policy(ids, mask, logits_to_keep=keep)
        assert logits.shape == (ids.shape[0], keep, VOCAB) and values.shape == (ids.shape[0], keep)
        assert torch.allclose(logits, full_logits[:, -keep:], atol=1e-5)
        assert torch.allclose(values, full_values[:, -keep:], atol=1e-5)
