"""The single-process parts of scaling out: global reductions as pure functions, sampling that
does not depend on how a batch is split, mixed precision, gradient checkpointing, the KV cache,
thread defaults, and the accelerate configs. (The multi-process runs: test_distributed.py.)"""

from __future__ import annotations

import gc
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from progrl import losses
from progrl.config import ConfigError, build_config, resume_conflicts
from progrl.losses import (BatchCounts, aggregate, batch_counts, batch_entropy, batch_probability_sums,
                           explained_variance, explained_variance_from_sums, explained_variance_sums, policy_loss,
                           token_entropy, value_loss)
from progrl.modeling import build_causal_lm_from_config
from progrl.policy import Policy
from progrl.rollout import SamplingParams, forward_response, inverse_cdf, left_pad, sample, sampling_uniforms
from progrl.tasks import get_task
from progrl.tracking import read_jsonl
from progrl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def tiny_policy(arch="gpt2", precision="fp32", value_head=True, seed=0):
    lm = build_causal_lm_from_config(arch, 64, n_layer=2, n_embd=64, n_head=4, n_positions=64, bos_token_id=2,
                                     eos_token_id=1, pad_token_id=0, seed=seed)
    return Policy(lm, value_head=value_head, precision=precision).eval()


def prompts(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return left_pad([torch.randint(3, 64, (int(k),), generator=g).tolist()
                     for k in torch.randint(2, 10, (n,), generator=g)], 0)


# ----------------------------------------------------------------------------- the reductions, split by hand

def split_batch(B=6, T=3, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    mask = torch.ones(B, T)
    mask[1, 2:] = 0
    mask[4, 1:] = 0
    return logits, mask


def test_batch_entropy_parts_give_the_whole_batch_value_and_gradient():
    """Two 'processes' holding rows 0-2 and 3-5: the reduced sums give each the whole batch's
    H_batch, and their gradients (the local-gradient form) add up to the whole batch's."""
    logits, mask = split_batch()
    whole, whole_max = batch_entropy(logits, mask)
    (g_whole,) = torch.autograd.grad(whole, logits)
    parts = [slice(0, 3), slice(3, 6)]
    sums = [batch_probability_sums(logits[p].detach(), mask[p]) for p in parts]
    reduced = (sums[0][0] + sums[1][0], sums[0][1] + sums[1][1])
    g_parts = torch.zeros_like(logits)
    for p in parts:
        value, max_prob = batch_entropy(logits[p], mask[p], reduced)
        assert torch.allclose(value, whole, atol=1e-6) and torch.allclose(max_prob, whole_max, atol=1e-6)
        (g,) = torch.autograd.grad(value, logits)
        g_parts += g
    assert torch.allclose(g_parts, g_whole, atol=1e-6)
    # one part holding everything is the plain definition
    value, _ = batch_entropy(logits, mask, batch_probability_sums(logits.detach(), mask))
    (g,) = torch.autograd.grad(value, logits)
    assert torch.allclose(g, g_whole, atol=1e-6)


@pytest.mark.parametrize("loss_agg", losses.LOSS_AGGREGATIONS)
def test_shares_with_global_counts_add_up_to_the_whole_batch(loss_agg):
    logits, mask = split_batch(B=8, T=4)
    logits = logits.detach()
    g = torch.Generator().manual_seed(3)
    lp, old, adv = (torch.randn(8, 4, generator=g) * 0.1 for _ in range(3))
    v, old_v, ret = (torch.randn(8, 4, generator=g) for _ in range(3))
    counts = batch_counts(mask)
    assert counts == BatchCounts(tokens=float(mask.sum()), sequences=8.0, rows=8.0)
    parts = [slice(0, 3), slice(3, 8)]
    whole_pg, whole_pg_stats = policy_loss(lp, old, adv, mask, loss_agg=loss_agg, max_len=4)
    whole_vf, whole_vf_stats = value_loss(v, old_v, ret, mask, 0.2)
    pg = sum(policy_loss(lp[p], old[p], adv[p], mask[p], loss_agg=loss_agg, max_len=4, counts=counts)[0]
             for p in parts)
    assert torch.allclose(pg, whole_pg, atol=1e-6)
    for k in whole_pg_stats:
        share = sum(policy_loss(lp[p], old[p], adv[p], mask[p], loss_agg=loss_agg, max_len=4, counts=counts)[1][k]
                    for p in parts)
        assert torch.allclose(share, whole_pg_stats[k], atol=1e-6), k
    vf = sum(value_loss(v[p], old_v[p], ret[p], mask[p], 0.2, counts=counts)[0] for p in parts)
    assert torch.allclose(vf, whole_vf, atol=1e-6)
    ent = sum(token_entropy(logits[p], mask[p], loss_agg, 4, counts) for p in parts)
    assert torch.allclose(ent, token_entropy(logits, mask, loss_agg, 4), atol=1e-6)
    agg = sum(aggregate(adv[p], mask[p], loss_agg, 4, counts) for p in parts)
    assert torch.allclose(agg, aggregate(adv, mask, loss_agg, 4), atol=1e-6)
    ev = explained_variance_from_sums(sum(explained_variance_sums(v[p], ret[p], mask[p]) for p in parts))
    assert ev == pytest.approx(explained_variance(v, ret, mask), rel=1e-5)


def test_explained_variance_of_constant_returns_is_nan():
    v, r, m = torch.randn(4, 2), torch.full((4, 2), 3.0), torch.ones(4, 2)
    assert math.isnan(explained_variance_from_sums(explained_variance_sums(v, r, m)))


def test_value_clip_counts_no_ties():
    """A V inside the clip range is not counted as clipped. These values come from a run: V near the
    return R, where old + (V - old) rounds away from V and classic TRL's formula counts a 'clip'."""
    old = torch.tensor([[0.02637520432472229, 0.3, 0.3]])
    v = torch.tensor([[0.0007949661230668426, 0.35, 0.7]])
    ret = torch.tensor([[0.001822102814912796, 0.0, 1.0]])
    tie = old[0, 0] + torch.clamp(v[0, 0] - old[0, 0], -0.2, 0.2)
    assert (tie - ret[0, 0]).pow(2) > (v[0, 0] - ret[0, 0]).pow(2)  # the rounding that used to count
    _, stats = value_loss(v, old, ret, torch.ones_like(v), 0.2)
    assert float(stats["vf_clipfrac"]) == pytest.approx(1 / 3)  # only the third: clipped to 0.5, worse than 0.7


# ----------------------------------------------------------------------------- sampling

def test_inverse_cdf_never_draws_impossible_tokens_and_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0]]).expand(20000, -1)
    u = sampling_uniforms(20000, 1, torch.Generator().manual_seed(0))[:, 0]
    tokens = inverse_cdf(probs, u)
    counts = torch.bincount(tokens, minlength=6).float() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probs[0], atol=0.015)
    edge = inverse_cdf(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.0]))  # u = 0: the first possible token
    assert edge.tolist() == [1]


def test_a_sequence_samples_the_same_tokens_whatever_batch_it_is_in():
    """Its row of uniforms decides its tokens: split into parts (processes, chunks) or not, the
    same responses come out."""
    policy = tiny_policy()
    ids, mask = prompts(8)
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_k=20, stop_ids=(1,), pad_id=0)
    u = sampling_uniforms(8, 6, torch.Generator().manual_seed(5))
    whole = sample(policy, ids, mask, params, uniforms=u)
    for part in (slice(0, 3), slice(3, 8), slice(5, 6)):
        sub_ids, sub_mask = ids[part], mask[part]
        width = int(sub_mask.sum(-1).max())  # as another process would pad it: to its own longest prompt
        got = sample(policy, sub_ids[:, -width:], sub_mask[:, -width:], params, uniforms=u[part])
        T = got.response_ids.shape[1]
        assert torch.equal(got.response_ids, whole.response_ids[part, :T])
        assert torch.allclose(got.logprobs, whole.logprobs[part, :T], atol=1e-5)


def test_sampling_releases_its_kv_cache():
    from transformers import Cache

    policy = tiny_policy()
    ids, mask = prompts(4)
    def caches() -> int:  # live KV caches (isinstance on every object also touches torch's deprecated aliases)
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return sum(isinstance(o, Cache) for o in gc.get_objects())

    before = caches()
    sample(policy, ids, mask, SamplingParams(max_new_tokens=5, pad_id=0), torch.Generator().manual_seed(0))
    assert caches() == before


# ----------------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_update_pass_gives_the_same_bits_for_any_rows_under_bf16(arch):
    """Why the trainer re-scores under mixed precision: the sampler's KV-cache passes round
    differently (ratio off by ~1e-3 under bf16), a scoring pass does not depend on its batch."""
    policy = tiny_policy(arch, precision="bf16")
    ids, mask = prompts(8)
    ro = sample(policy, ids, mask, SamplingParams(max_new_tokens=8, temperature=0.9, pad_id=0),
                torch.Generator().manual_seed(0))
    P, m = ids.shape[1], ro.response_mask.bool()
    with torch.no_grad():
        _, lp_all, v_all = forward_response(policy, ro.input_ids, ro.attention_mask, P, 0.9, share_prompts=False)
        assert float((lp_all - ro.logprobs)[m].abs().max()) > 1e-5  # the sampler's rounding differs
        for rows in ([0, 1, 2, 3, 4], [6, 2], [7]):
            _, lp, v = forward_response(policy, ro.input_ids[rows], ro.attention_mask[rows], P, 0.9, share_prompts=False)
            assert torch.equal(lp[m[rows]], lp_all[rows][m[rows]]) and torch.equal(v[m[rows]], v_all[rows][m[rows]])


TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "sft.examples=16", "sft.epochs=1",
        "eval.n_prompts=8", "log.progress=false", "log.tensorboard=false", "log.plot=false",
        "log.checkpoint_every=0", "algo.lr=1e-3", "threads=1", "rollout.batch_size=8"]


def run(tmp_path, extra, steps=1):
    task = get_task("arithmetic")
    cfg = build_config(task.defaults(), {}, [*TINY, *extra], {"steps": steps})
    Trainer(cfg, task, tmp_path).train()
    return [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["phase"] == "train"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_first_epoch_ratio_is_one_under_autocast(tmp_path, precision):
    """One epoch, one minibatch: every ratio is the first epoch's; the old log-probs and values come
    from the update's own pass, so the ratio is 1 and nothing is clipped (exactly, on CPU)."""
    row = run(tmp_path, [f"model.precision=\"{precision}\"", "algo.epochs=1", "algo.minibatch_size=8",
                         "algo.estimator=\"gae\"", "algo.kl_coef=0.05"])[0]
    assert row["ratio_mean"] == pytest.approx(1.0, abs=1e-7)
    assert row["approx_kl"] == pytest.approx(0.0, abs=1e-12) and row["clipfrac"] == 0.0
    assert row["vf_clipfrac"] == 0.0 and row["kl"] == pytest.approx(0.0, abs=1e-7)  # reference = policy at step 1
    assert math.isfinite(row["pg_loss"]) and math.isfinite(row["grad_norm"])


def test_gradient_checkpointing_computes_the_same_run(tmp_path):
    plain = run(tmp_path / "plain", ["algo.epochs=2", "algo.minibatch_size=4"], steps=2)
    checkpointed = run(tmp_path / "gc", ["algo.epochs=2", "algo.minibatch_size=4", "model.gradient_checkpointing=true"],
                       steps=2)
    for a, b in zip(plain, checkpointed):
        for k in ("pg_loss", "vf_loss", "grad_norm", "reward_mean", "entropy"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_gradient_checkpointing_recomputes_in_the_backward_pass(tmp_path):
    task = get_task("arithmetic")
    cfg = build_config(task.defaults(), {}, [*TINY, "model.gradient_checkpointing=true", "algo.epochs=1",
                                             "algo.minibatch_size=8"], {"steps": 1})
    trainer = Trainer(cfg, task, tmp_path)
    block = trainer.policy.lm.transformer.h[0]
    calls = {"forward": 0}
    block.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    trainer.train()
    # per step: sampling (1 pass), scoring for the update (1) and its recomputation in backward (1),
    # evaluation before and after (1 each): without checkpointing this would be 4
    assert calls["forward"] == 5


# ----------------------------------------------------------------------------- configuration

def test_precision_and_checkpointing_are_validated_and_resume_rules():
    task = get_task("arithmetic")
    with pytest.raises(ConfigError, match=r"model.precision"):
        build_config(task.defaults(), {}, ["model.precision=\"bfloat16\""])
    base = build_config(task.defaults(), {}, [])
    asked = build_config(task.defaults(), {}, ["model.gradient_checkpointing=true",
                                               "rollout.generation_batch_size=16"])
    assert resume_conflicts(base, asked) == []  # a memory/time trade, the same computation
    asked = build_config(task.defaults(), {}, ["model.precision=\"bf16\""])
    assert [c[0] for c in resume_conflicts(base, asked)] == ["model.precision"]


def test_default_threads_divide_the_cores_between_local_processes(monkeypatch):
    from progrl import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.default_threads(1) == 8 and threads.default_threads(2) == 4 and threads.default_threads(16) == 1
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        assert threads.apply_threads(None) == 1  # the user's OMP_NUM_THREADS, one process
        monkeypatch.setenv("WORLD_SIZE", "2")  # a launcher's OMP_NUM_THREADS=1: progrl divides the cores
        assert threads.apply_threads(None, local_processes=2) == 4
        assert threads.apply_threads(3, local_processes=2) == 3  # `threads` always wins
    finally:
        torch.set_num_threads(before)
    import progrl  # noqa: F401

    assert os.environ.get("OMP_WAIT_POLICY")  # progrl's PASSIVE unless the environment chose


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed-zero2", "DEEPSPEED"),
                                       ("deepspeed-zero3", "DEEPSPEED")])
def test_accelerate_configs_load(name, kind):
    """The shipped accelerate configs load with Accelerate's own loader; the DeepSpeed ones also
    build the DeepSpeed config Accelerate hands DeepSpeed (DeepSpeed itself needs GPUs)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(cfg.distributed_type).endswith(kind)
    assert cfg.mixed_precision in ("no", "bf16")
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert cfg.mixed_precision == "no"
    if kind == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin

        ds = cfg.deepspeed_config
        plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                                 offload_param_device=ds["offload_param_device"],
                                 zero3_init_flag=ds["zero3_init_flag"],
                                 zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False))
        plugin.set_mixed_precision(cfg.mixed_precision)
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(name[-1])
        assert plugin.deepspeed_config["bf16"]["enabled"] is True
