"""Every advantage estimator wired through the real trainer on a tiny arithmetic model.

Checks that each estimator runs with the loss aggregations and the entropy / batch-entropy /
KL options, that the critic-free estimators build no value head (no parameters, no optimiser
state, no hidden-state request, no value loss), and that Dr. GRPO's constant normaliser is the
generation budget (``rollout.max_new_tokens``), not the batch's padded width.
"""

from __future__ import annotations

import math

import pytest
import torch

from progrl import losses
from progrl.config import ConfigError, build_config
from progrl.tasks import get_task
from progrl.tasks import arithmetic_core as core
from progrl.tracking import read_jsonl
from progrl.trainer import Trainer

TINY = [
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
    "sft.examples=16", "sft.epochs=1",
    "rollout.batch_size=2", "rollout.num_generations=4", "algo.minibatch_size=4", "algo.epochs=2",
    "eval.n_prompts=8", "log.progress=false", "log.tensorboard=false", "log.plot=false",
    "log.checkpoint_every=0", "algo.lr=1e-3", "threads=1",
]
CRITIC_FREE = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
VALUE_KEYS = ("vf_loss", "value_mean", "explained_variance", "vf_clipfrac")

# (loss_agg, extra overrides): together they cover every aggregation, KL in the reward and in
# the loss, the three KL estimators, both controllers, token entropy and batch entropy.
COMBOS = {
    "token_mean/kl-reward-k1-fixed/entropy": (
        "token_mean", ["algo.kl_coef=0.05", "algo.kl_in=\"reward\"", "algo.kl_estimator=\"k1\"",
                       "algo.entropy_coef=0.01"]),
    "seq_mean_token_mean/kl-loss-k3-adaptive/batch-entropy": (
        "seq_mean_token_mean", ["algo.kl_coef=0.05", "algo.kl_in=\"loss\"", "algo.kl_estimator=\"k3\"",
                                "algo.kl_controller=\"adaptive\"", "algo.kl_target=0.1", "algo.kl_horizon=100",
                                "algo.batch_entropy_coef=0.1"]),
    "seq_mean_token_sum_norm/kl-loss-k2/both-entropies": (
        "seq_mean_token_sum_norm", ["algo.kl_coef=0.05", "algo.kl_in=\"loss\"", "algo.kl_estimator=\"k2\"",
                                    "algo.entropy_coef=0.01", "algo.batch_entropy_coef=0.1"]),
}


def make_config(estimator: str, extra: list[str] = (), steps: int = 2, task: str = "arithmetic"):
    t = get_task(task)
    return t, build_config(t.defaults(), {}, [*TINY, f"algo.estimator=\"{estimator}\"", *extra], {"steps": steps})


def train_rows(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["phase"] == "train"]


def lm_param_count(trainer: Trainer) -> int:
    return sum(p.numel() for p in trainer.policy.lm.parameters() if p.requires_grad)


def optimizer_param_count(trainer: Trainer) -> int:
    return sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])


@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("estimator", ["gae", *CRITIC_FREE])
def test_every_estimator_with_every_option_trains(estimator, combo, tmp_path):
    loss_agg, extra = COMBOS[combo]
    task, cfg = make_config(estimator, [f"algo.loss_agg=\"{loss_agg}\"", *extra])
    trainer = Trainer(cfg, task, tmp_path)
    summary = trainer.train()
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    keys = ["reward_mean", "pg_loss", "entropy", "batch_entropy", "max_batch_prob", "grad_norm", "approx_kl",
            "clipfrac", "kl", "kl_coef"]
    if "algo.kl_in=\"loss\"" in extra:
        keys.append("kl_loss")
    for row in rows:
        for key in keys:
            assert key in row, key
            assert math.isfinite(row[key]), (key, row[key])
        if estimator == "gae":
            assert math.isfinite(row["vf_loss"])
        else:
            assert not any(k in row for k in VALUE_KEYS), row
    if "algo.kl_controller=\"adaptive\"" in extra:
        assert rows[-1]["kl_coef"] != 0.05  # the controller moved the coefficient
    assert 0.0 <= summary["eval_after"]["mean_reward"] <= 1.0
    # the weights stayed finite
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())


@pytest.mark.parametrize("estimator", CRITIC_FREE)
def test_critic_free_estimators_have_no_critic(estimator, tmp_path, monkeypatch):
    task, cfg = make_config(estimator, steps=1)
    trainer = Trainer(cfg, task, tmp_path)
    assert trainer.policy.value_head is None
    assert not any("value_head" in name for name, _ in trainer.policy.named_parameters())
    assert optimizer_param_count(trainer) == lm_param_count(trainer)

    requested = []
    original = trainer.policy.lm.forward

    def spy(*args, **kwargs):
        requested.append(bool(kwargs.get("output_hidden_states")))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.policy.lm, "forward", spy)
    trainer.train()
    assert requested and not any(requested)  # neither sampling nor the update asked for hidden states
    assert len(trainer.optimizer.state) == len(list(trainer.policy.lm.parameters()))  # no critic Adam state
    assert not any(k in train_rows(tmp_path)[0] for k in VALUE_KEYS)


def test_gae_keeps_its_value_head(tmp_path):
    task, cfg = make_config("gae", steps=1)
    trainer = Trainer(cfg, task, tmp_path)
    assert trainer.policy.value_head is not None
    head = sum(p.numel() for p in trainer.policy.value_head.parameters())
    assert optimizer_param_count(trainer) == lm_param_count(trainer) + head
    trainer.train()
    assert "vf_loss" in train_rows(tmp_path)[0]


def test_dr_grpo_normaliser_is_the_generation_budget(tmp_path, monkeypatch):
    # every token ends a response, so sampling stops after one token although the budget is 3:
    # the padded width is 1, and the constant normaliser must still be B * 3.
    every_token = [t for t in core.build_tokenizer().get_vocab() if t not in (core.PAD, core.BOS, core.UNK)]
    stop = "[" + ", ".join(f"\"{t}\"" for t in every_token) + "]"
    task, cfg = make_config("dr_grpo", ["algo.loss_agg=\"seq_mean_token_sum_norm\"", "rollout.max_new_tokens=3",
                                        f"rollout.stop_tokens={stop}", "algo.entropy_coef=0.01",
                                        "algo.kl_coef=0.05", "algo.kl_in=\"loss\""], steps=1)
    calls = []
    original = losses.aggregate

    def spy(per_token, mask, loss_agg="token_mean", max_len=None, counts=None):
        out = original(per_token, mask, loss_agg, max_len, counts)
        if loss_agg == "seq_mean_token_sum_norm":
            calls.append((per_token.shape, max_len))
            expected = (per_token * mask).sum() / (per_token.shape[0] * 3)
            assert torch.allclose(out, expected)
        return out

    monkeypatch.setattr(losses, "aggregate", spy)
    monkeypatch.setattr("progrl.trainer.aggregate", spy)
    Trainer(cfg, task, tmp_path).train()
    # policy loss, token entropy and KL loss of every minibatch of both epochs
    assert len(calls) == 3 * 2 * 2
    assert all(shape[1] == 1 and max_len == 3 for shape, max_len in calls)


def test_groups_split_across_generation_chunks_and_ragged_minibatches(tmp_path, monkeypatch):
    # 3 prompts x 3 samples = 9 sequences, generated 4 at a time (groups straddle chunks) and
    # updated in minibatches of 4 (the last one has 1 sequence)
    task, cfg = make_config("grpo", ["rollout.batch_size=3", "rollout.num_generations=3",
                                     "rollout.generation_batch_size=4", "algo.minibatch_size=4",
                                     "algo.whiten_advantages=false"], steps=2)
    trainer = Trainer(cfg, task, tmp_path)
    seen = {}
    from progrl import trainer as trainer_module

    original = trainer_module.compute_advantages

    def spy(estimator, rewards, mask, values=None, **kw):
        adv, ret = original(estimator, rewards, mask, values, **kw)
        seen["group_size"], seen["adv"], seen["rewards"] = kw["group_size"], adv, rewards
        return adv, ret

    monkeypatch.setattr(trainer_module, "compute_advantages", spy)
    trainer.train()
    assert seen["group_size"] == 3 and seen["adv"].shape[0] == 9
    seq_adv = seen["adv"][:, 0].view(3, 3)
    assert torch.allclose(seq_adv.sum(-1), torch.zeros(3), atol=1e-5)  # each group is centred on its own mean
    rows = train_rows(tmp_path)
    assert len(rows) == 2 and all(math.isfinite(r["pg_loss"]) for r in rows)


DROPPY = """
import zlib

def score_one(prompt, completion, **columns):
    if zlib.crc32((prompt + completion).encode()) % 3 == 0:
        raise RuntimeError("no reward for this one")
    return (zlib.crc32(completion.encode()) % 10) / 10
"""


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_dropped_samples_get_zero_advantage_and_stay_out_of_the_group_baseline(estimator, tmp_path, monkeypatch):
    """Issue 9 item 12: with k valid of G the statistics are those of the k (TRL 1.16's convention)."""
    reward = tmp_path / "droppy.py"
    reward.write_text(DROPPY)
    task, cfg = make_config(estimator, [f'reward.functions=["{reward}:score_one"]', 'reward.backend="inline"',
                                        'reward.on_error="drop"', "rollout.batch_size=6",
                                        "rollout.temperature=3.0"], steps=2)
    trainer = Trainer(cfg, task, tmp_path / "run")
    from progrl import trainer as trainer_module

    seen = []
    original = trainer_module.compute_advantages

    def spy(est, rewards, mask, values=None, **kw):
        adv, ret = original(est, rewards, mask, values, **kw)
        seen.append((rewards, mask, kw["valid"], adv))
        return adv, ret

    monkeypatch.setattr(trainer_module, "compute_advantages", spy)
    trainer.train()
    n_dropped = n_partial = 0
    for rewards, mask, valid, adv in seen:
        seq_adv, R = adv.sum(-1) / mask.sum(-1).clamp(min=1), (rewards * mask).sum(-1)
        for g in range(len(valid) // 4):
            v, r, a = valid[4 * g:4 * g + 4], R[4 * g:4 * g + 4], seq_adv[4 * g:4 * g + 4]
            k = int(v.sum())
            n_dropped += 4 - k
            n_partial += 0 < k < 4
            assert a[~v].tolist() == [0.0] * (4 - k)
            if k < 2 or float(r[v].max() - r[v].min()) == 0.0:
                assert a.abs().max().item() == 0.0
                continue
            rv = r[v]
            if estimator == "rloo":
                expected = rv - (rv.sum() - rv) / (k - 1)
            else:
                expected = (rv - rv.mean()) / (rv.std() + 1e-4)
            assert torch.allclose(a[v], expected, atol=1e-5)
    assert n_dropped > 0 and n_partial > 0  # the case under test happened
    assert sum(r["dropped"] for r in train_rows(tmp_path / "run")) == n_dropped


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_need_two_samples_per_prompt(estimator, tmp_path):
    task, cfg = make_config(estimator, ["rollout.num_generations=1"])
    with pytest.raises(ConfigError, match="num_generations"):
        Trainer(cfg, task, tmp_path)


def test_reinforce_pp_runs_with_one_sample_per_prompt(tmp_path):
    task, cfg = make_config("reinforce_pp", ["rollout.num_generations=1", "rollout.batch_size=8"], steps=1)
    Trainer(cfg, task, tmp_path).train()
    assert math.isfinite(train_rows(tmp_path)[0]["pg_loss"])


# ----------------------------------------------------------------------------- shared prompts
# Group estimators sample G responses per prompt; sampling and scoring compute each distinct
# prompt once (progrl.rollout.prefill). That must be the same function as one plain pass.

from progrl.modeling import build_causal_lm_from_config  # noqa: E402
from progrl.policy import Policy, Reference, position_ids_from_mask  # noqa: E402
from progrl.rollout import SamplingParams, forward_response, left_pad, sample, unique_rows  # noqa: E402


def plain_forward(policy, ids, mask, P, temperature=1.0):
    """The unshared reference: one pass over every full row, sliced to the response."""
    logits, values, _ = policy(ids, mask, position_ids=position_ids_from_mask(mask))
    T = ids.shape[1] - P
    logits = logits[:, P - 1:P - 1 + T].float() / temperature
    logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
    return logits, logprobs, None if values is None else values[:, P - 1:P - 1 + T]


def grouped_batch(T: int, G: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 6, 1)]
    ids, mask = left_pad([p for p in prompts for _ in range(G)], 0)
    response = torch.randint(3, 40, (ids.shape[0], T), generator=g)
    rmask = torch.ones_like(response)
    rmask[1, T - 1:] = 0  # one response ended early (padding after it)
    response = response.masked_fill(rmask == 0, 0)
    return torch.cat([ids, response], 1), torch.cat([mask, rmask], 1), ids.shape[1]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("T", [1, 4])
def test_shared_prompt_forward_equals_plain_forward_with_gradients(arch, T):
    lm = build_causal_lm_from_config(arch, 40, n_layer=2, n_embd=32, n_head=4, n_positions=64, bos_token_id=2,
                                     eos_token_id=1, pad_token_id=0, seed=0)
    policy = Policy(lm, value_head=True).eval()
    ids, mask, P = grouped_batch(T)
    assert unique_rows(ids[:, :P], mask[:, :P]) is not None  # the shared path is taken
    results = []
    for fn in (forward_response, plain_forward):
        policy.zero_grad(set_to_none=True)
        logits, logprobs, values = fn(policy, ids, mask, P, 0.7)
        m = mask[:, P:].float()
        ((logprobs * m).sum() + (values * m).pow(2).sum()).backward()
        grads = [p.grad.clone() for p in policy.parameters()]
        results.append((logits, logprobs, values, grads))
    (l1, lp1, v1, g1), (l2, lp2, v2, g2) = results
    m = mask[:, P:].bool()
    assert torch.allclose(lp1[m], lp2[m], atol=1e-5) and torch.allclose(v1[m], v2[m], atol=1e-5)
    assert torch.allclose(l1[m], l2[m], atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 5])
def test_sampling_with_shared_prompts_matches_the_scoring_pass(T):
    lm = build_causal_lm_from_config("gpt2", 40, n_layer=2, n_embd=32, n_head=4, n_positions=64, bos_token_id=2,
                                     eos_token_id=1, pad_token_id=0, seed=1)
    policy = Policy(lm, value_head=True).eval()
    ids, mask, P = grouped_batch(1, G=4, seed=2)
    ids, mask = ids[:, :P], mask[:, :P]
    ro = sample(policy, ids, mask, SamplingParams(max_new_tokens=T, temperature=0.9, stop_ids=(1,), pad_id=0),
                torch.Generator().manual_seed(0))
    assert len(set(map(tuple, ro.response_ids.tolist()))) > 1  # the copies of a prompt sample independently
    with torch.no_grad():
        _, lp, v = plain_forward(policy, ro.input_ids, ro.attention_mask, P, 0.9)
        ref = Reference(policy)
        _, ref_lp, ref_v = forward_response(ref, ro.input_ids, ro.attention_mask, P, 0.9)
    m = ro.response_mask.bool()
    assert torch.allclose(ro.logprobs[m], lp[m], atol=1e-5) and torch.allclose(ro.values[m], v[m], atol=1e-5)
    assert ref_v is None and torch.allclose(ref_lp[m], lp[m], atol=1e-5)  # the reference starts equal to the policy
