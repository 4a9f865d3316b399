"""The training loop, readable top to bottom.

    setup: tokenizer, policy (+ value head), reference (only with KL), optimiser, rewards
    [warm start]  supervised next-token training on task examples
    evaluate      held-out greedy accuracy / reward before RL
    for step in steps:
        rollout     sample responses (log-probs and values come back with them)
        rewards     programmed scores through the reward engine; KL penalty per token
        advantages  gae | grpo | dr_grpo | rloo | reinforce_pp
        update      epochs x minibatches of clipped policy loss (+ value loss)
                    - token entropy - batch entropy (+ KL in the loss)
        log         metrics.jsonl, samples.jsonl, TensorBoard, progress bar
        checkpoint  every log.checkpoint_every steps, atomically
    evaluate, save final model, plot

Several processes (``torchrun`` / ``accelerate launch``, see docs/scaling.md): ``self.dist``
(:class:`progrl.distributed.Dist`) says which share of each batch this process samples,
scores and trains on; :mod:`progrl.reductions` gathers the batch and reduces the batch
statistics, so every step computes what one process would on the whole batch. Only the
main process writes the run directory. With one process all of that is the identity.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from progrl import branching
from progrl import checkpoint as ckpt
from progrl import expert_iteration
from progrl.advantages import compute_advantages, token_rewards
from progrl.chat import assistant_message, is_conversation
from progrl.config import ConfigError, TrainConfig, config_to_dict
from progrl.distributed import Dist, resolve_device
from progrl.kl import make_kl_controller
from progrl.losses import (aggregate, batch_entropy, explained_variance_sums, kl_penalty, masked_mean, policy_loss,
                           token_entropy, value_loss)
from progrl.policy import Policy, Reference, enable_activation_checkpointing
from progrl.prompt_replay import RetryQueue
from progrl.reductions import (UpdateStats, batch_distribution, gather_batch, minibatch_counts, minibatch_share)
from progrl.rollout import Rollout, SamplingParams, forward_response, left_pad, sample, sampling_uniforms
from progrl.sft import supervised_warm_start
from progrl.stopping import StopStrings
from progrl.storage import (StorageError, atomic_torch_save, atomic_write_text, describe, disk_full, remove_tree,
                            torch_save)
from progrl.tasks.base import Task
from progrl.threads import apply_threads
from progrl.tracking import NullTracker, Tracker, plot_run

__all__ = ["Trainer", "resolve_device", "step_generator", "build_model", "make_adamw"]


def step_generator(seed: int, step: int, device: torch.device, salt: int = 0) -> torch.Generator:
    """A generator whose stream depends only on (seed, step, salt): resumable without saved state."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))
    return g


def token_ids(tokenizer, tokens: list[str], field: str) -> tuple[int, ...]:
    """Tokens from the config to ids: a vocabulary entry (``"Ċ"``) or a text that is one token (``"\\n"``).

    Anything else is a config error naming the field (a text of several tokens is a stop string:
    ``rollout.stop``)."""
    ids = []
    vocab = tokenizer.get_vocab()
    for t in tokens:
        if t in vocab:
            ids.append(vocab[t])
            continue
        encoded = tokenizer(t, add_special_tokens=False)["input_ids"] if t else []
        if len(encoded) != 1:
            hint = " (use rollout.stop for stop strings)" if field == "rollout.stop_tokens" else ""
            raise ConfigError(f"config error: {field}: {t!r} is not one token of the tokenizer's vocabulary "
                              f"(it encodes to {len(encoded)} tokens){hint}")
        ids.append(encoded[0])
    return tuple(ids)


def build_model(cfg: TrainConfig, task: Task):
    """The tokenizer and the causal LM named by ``cfg.model`` (or built from its config)."""
    from progrl import modeling

    if cfg.model.name:
        lm, tokenizer = modeling.load_causal_lm(cfg.model.name, dtype=cfg.model.dtype,
                                                trust_remote_code=cfg.model.trust_remote_code)
    else:
        tokenizer = task.build_tokenizer()
        if tokenizer is None:
            raise ConfigError(f"config error: model.name: task {task.name!r} needs a pretrained model name")
        m = cfg.model
        lm = modeling.build_causal_lm_from_config(
            m.arch, len(tokenizer), n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, n_positions=m.n_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, seed=cfg.seed)
    tokenizer = modeling.prepare_tokenizer(tokenizer)
    modeling.sync_pad_token(lm, tokenizer)
    return lm, tokenizer


def with_lora(lm, cfg: TrainConfig):
    """``lm`` with the config's LoRA adapter (unchanged without ``model.lora``)."""
    if not cfg.model.lora:
        return lm
    from progrl import modeling

    m = cfg.model
    return modeling.apply_lora(lm, r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                               target_modules=m.lora_target_modules)


def make_adamw(params: list, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where it has one for these parameters, else the plain loop.

    The same update (up to float rounding), in one kernel instead of a dozen small ops per
    tensor: on CPU ~4x faster per step, ~5% of a small model's PPO update.
    """
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # old torch, or a device/dtype without the kernel
        return torch.optim.AdamW(params, **kwargs)


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        progress = min(1.0, (i - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0
    return f


def check_split(cfg: TrainConfig, processes: int) -> None:
    """With several processes the step's prompts (whole groups) and every minibatch split evenly."""
    if processes == 1:
        return
    r, a = cfg.rollout, cfg.algo
    if a.estimator == "raft" or a.raft.coef or r.retry.fraction:
        what = ("algo.estimator" if a.estimator == "raft" else "algo.raft.coef" if a.raft.coef
                else "rollout.retry.fraction")
        raise ConfigError(f"config error: {what}: RAFT, its replay and prompt retry run in one process only "
                          f"(got {processes}); drop them or run one process")
    if r.batch_size % processes:
        raise ConfigError(f"config error: rollout.batch_size: {r.batch_size} prompts per step do not split over "
                          f"{processes} processes (each samples whole groups of one prompt); use a multiple of "
                          f"{processes}")
    if a.minibatch_size % processes:
        raise ConfigError(f"config error: algo.minibatch_size: {a.minibatch_size} sequences do not split over "
                          f"{processes} processes; use a multiple of {processes}")
    if cfg.eval.n_prompts < processes:
        raise ConfigError(f"config error: eval.n_prompts: {cfg.eval.n_prompts} held-out prompts for "
                          f"{processes} processes; use at least {processes}")


class Trainer:
    """Owns the model, optimiser, reward engine and run directory of one run."""

    def __init__(self, cfg: TrainConfig, task: Task, run_dir: str | Path, console=None, reward_functions=None,
                 dist: Dist | None = None):
        """``reward_functions``: ``(callable or spec, weight)`` pairs used instead of the task's own
        when the config names none (the Python API passes callables this way). ``dist``: this
        process's place among several (progrl.distributed; default: one process)."""
        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.dist = dist if dist is not None else Dist(device=resolve_device(cfg.device))
        self.console = console if self.dist.is_main else None
        self.device = self.dist.device
        apply_threads(cfg.threads, self.dist.local_world_size)
        torch.manual_seed(cfg.seed)
        check_split(cfg, self.dist.world_size)

        task.load_data()  # a bad data file is reported before the model is loaded
        if not cfg.reward.functions and not (reward_functions or task.reward_functions()):
            raise ConfigError('config error: reward.functions: task %r has no reward of its own; name yours, e.g. '
                              '--set \'reward.functions=["rewards.py:correct"]\'' % task_label_of(cfg.task))
        lm, self.tokenizer = build_model(cfg, task)
        task.bind_tokenizer(self.tokenizer)
        self.data_note = task.data_summary()
        lm = with_lora(lm, cfg)
        if cfg.model.gradient_checkpointing:
            enable_activation_checkpointing(lm)
        self.policy = Policy(lm, value_head=cfg.algo.uses_critic, precision=cfg.model.precision).to(self.device)
        self.policy.eval()  # dropout off: rollout and update must see the same function
        self.model: torch.nn.Module = self.policy  # what the update runs: wrapped for DDP / FSDP by prepare()
        # Mixed precision: the sampler's KV-cache passes round differently from a full scoring pass
        # (max |ratio - 1| ~1e-3 under bf16 autocast), so the "old" log-probs and values are
        # re-scored by the update's own pass, which gives the same bits for any batch of rows
        # (docs/decisions.md): the first epoch starts at ratio 1.
        self.rescore = cfg.model.precision != "fp32"
        # one model call per minibatch (no shared-prompt KV cache) where a call must be alike on every
        # process (sharded models), where the model runs without a cache (gradient checkpointing), and
        # under mixed precision (a shared-prompt pass rounds like the sampler, not like a full pass)
        self.share_prompts = (not cfg.model.gradient_checkpointing and not self.rescore
                              and self.dist.sharding in ("none", "ddp"))
        self.reference: Reference | None = None  # built after the warm start (it is the warm-started model)

        r = cfg.rollout
        eos = self.tokenizer.eos_token_id
        stop = token_ids(self.tokenizer, r.stop_tokens, "rollout.stop_tokens")
        self.stop_strings = StopStrings(self.tokenizer, r.stop, keep=r.stop_keep)
        self.sampling = SamplingParams(
            max_new_tokens=r.max_new_tokens, min_new_tokens=r.min_new_tokens, temperature=r.temperature,
            top_k=r.top_k, top_p=r.top_p, stop_ids=tuple(sorted({*stop, *([eos] if eos is not None else [])})),
            banned_ids=token_ids(self.tokenizer, r.banned_tokens, "rollout.banned_tokens"),
            pad_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0,
            stop_check=self.stop_strings.hits if self.stop_strings else None)

        a = cfg.algo
        if a.estimator in ("grpo", "dr_grpo", "rloo") and r.num_generations < 2:
            # one sample per prompt: the group baseline equals the reward and every advantage is 0
            raise ConfigError(f"config error: rollout.num_generations: estimator {a.estimator!r} needs at least 2 "
                              f"samples per prompt (got {r.num_generations})")
        self.optimizer = make_adamw([p for p in self.policy.parameters() if p.requires_grad], lr=a.lr,
                                    eps=a.adam_eps, weight_decay=a.weight_decay)
        samples = r.batch_size * r.num_generations
        updates_per_step = a.epochs * math.ceil(math.ceil(samples / a.minibatch_size) / a.grad_accum_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(a.lr_schedule, a.warmup_steps, max(1, cfg.steps * updates_per_step)))
        self.kl_ctl = make_kl_controller(a.kl_controller, a.kl_coef, a.kl_target, a.kl_horizon)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (then a pass-through)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.model.precision == "fp16")

        from progrl.rewards import RewardEngine
        from progrl.trackers import check_available

        check_available([n for n in cfg.log.report_to if n != "tensorboard"])
        self.rewards = RewardEngine(cfg.reward, default_functions=reward_functions or task.reward_functions())
        self.replay = expert_iteration.ReplayBuffer(a.raft.replay_capacity)  # RAFT's kept samples (replay > 0)
        self.retry = RetryQueue(r.retry)  # failed prompts to ask again (rollout.retry.fraction > 0)
        self.tracker: Tracker | NullTracker | None = None
        self.step = 0
        self.saved_step: int | None = None  # the step whose checkpoint on disk holds the current state
        self.state: dict = {}

    # ------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def encode_prompts(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of the records' prompts (strings or conversations, as the task renders them), left-padded."""
        return left_pad(self.task.encode_prompts(self.tokenizer, prompts), self.sampling.pad_id, self.device)

    def decode(self, rollout: Rollout) -> list[str]:
        """The completions' text, cut at the first stop string (see progrl.stopping)."""
        ids = rollout.response_ids.masked_fill(rollout.response_mask == 0, self.sampling.pad_id)
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        if self.stop_strings:
            texts = [self.stop_strings.cut(t)[0] for t in texts]
        return texts

    def generate(self, prompts: list, uniforms: torch.Tensor | None, greedy: bool = False) -> Rollout:
        """Sample (or greedily decode) responses for ``prompts`` in chunks of generation_batch_size;
        ``uniforms`` (one row per prompt) are the draws (progrl.rollout)."""
        params = SamplingParams(**{**self.sampling.__dict__, "greedy": greedy})
        ids, mask = self.encode_prompts(prompts)
        return self.sample_ids(ids, mask, params, uniforms)

    def sample_ids(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams,
                   uniforms: torch.Tensor | None) -> Rollout:
        """Sample from left-padded prompt ids in chunks of generation_batch_size."""
        chunk = self.cfg.rollout.generation_batch_size
        with self.dist.full_model(self.policy):
            parts = [sample(self.policy, ids[i:i + chunk], mask[i:i + chunk], params,
                            uniforms=None if uniforms is None else uniforms[i:i + chunk])
                     for i in range(0, ids.shape[0], chunk)]
        return concat_rollouts(parts, self.sampling.pad_id)

    @torch.no_grad()
    def score_with_update_pass(self, rollout: Rollout) -> None:
        """Replace the sampler's log-probs and values by those of the update's forward pass (see
        ``self.rescore``), in chunks of a minibatch share."""
        P, chunk = rollout.prompt_ids.shape[1], max(1, self.cfg.algo.minibatch_size // self.dist.world_size)
        ids, att, m = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        with self.dist.full_model(self.policy):
            for i in range(0, ids.shape[0], chunk):
                _, lp, v = forward_response(self.policy, ids[i:i + chunk], att[i:i + chunk], P,
                                            self.cfg.rollout.temperature, share_prompts=False)
                rollout.logprobs[i:i + chunk] = lp * m[i:i + chunk]
                if v is not None:
                    rollout.values[i:i + chunk] = v.float() * m[i:i + chunk]

    def gather_completions(self, rollout: Rollout) -> list[str]:
        """The completions of every process's share (:meth:`Dist.split`), decoded, in order."""
        ids = self.dist.gather_rows(rollout.response_ids, self.sampling.pad_id)
        mask = self.dist.gather_rows(rollout.response_mask, 0)
        return self.decode(Rollout(prompt_ids=ids[:, :0], prompt_mask=mask[:, :0], response_ids=ids,
                                   response_mask=mask, logprobs=mask.float(), values=None))

    def gather_values(self, values: list) -> list:
        """Every process's per-sample values (None: no value), in order; the values themselves with
        one process."""
        if not self.dist.enabled:
            return values
        raw = reward_tensor(values, self.device, torch.float64)  # float64: every value crosses exactly
        return [None if x != x else x for x in self.dist.gather_rows(raw, math.nan).tolist()]

    def failures_per_function(self, result) -> dict[str, int]:
        """Failed evaluations of each reward function, summed over the processes."""
        counts = function_failures(result)
        if not self.dist.enabled or not counts:
            return counts
        return dict(zip(counts, (int(v) for v in self.dist.sum(torch.tensor(list(counts.values()),
                                                                            device=self.device)).tolist())))

    # ------------------------------------------------------------------ evaluation
    def score(self, prompts: list, completions: list[str], records: list[dict], ids: tuple[list, list]):
        """The reward engine on one batch: conversations get TRL's completion shape; ``ids`` are the
        (prompt ids, completion ids) lists, for functions that ask for them."""
        columns = columns_of(records)
        columns["prompt_ids"], columns["completion_ids"] = ids  # what TRL passes: the token ids, no padding
        result = self.rewards.score(prompts, reward_completions(prompts, completions), columns)
        self.rewards.check_failures(result)  # RewardFailureError: every sample failed for one reason
        return result

    @torch.no_grad()
    def evaluate(self, step: int | None = None) -> dict:
        """Greedy decoding on the held-out prompts: mean reward (overall and per function) plus the
        task's metrics. With ``step``, the generations and their rewards go to eval_samples.jsonl."""
        e = self.cfg.eval
        records = self.task.eval_records(e.n_prompts, e.seed)
        mine = records[self.dist.split(len(records))]  # this process's share of the held-out prompts
        prompts = [r["prompt"] for r in mine]
        parts: list[Rollout] = []
        completions: list[str] = []
        for i in range(0, len(prompts), e.batch_size):
            parts.append(self.generate(prompts[i:i + e.batch_size], None, greedy=True))
            completions += self.decode(parts[-1])
        rollout = concat_rollouts(parts, self.sampling.pad_id)
        truncated = truncated_of(rollout).tolist()
        result = self.score(prompts, completions, mine, id_lists(rollout))
        rewards, per_function = result.rewards, result.per_function
        if self.dist.enabled:  # every process's share, on every process
            prompts = [r["prompt"] for r in records]
            completions = self.gather_completions(rollout)
            rewards = self.gather_values(rewards)
            per_function = {k: self.gather_values(v) for k, v in per_function.items()}
            truncated = self.dist.gather_rows(truncated_of(rollout).long()).bool().tolist()
        valid = [x for x in rewards if x is not None]
        metrics = {"mean_reward": sum(valid) / max(len(valid), 1)}
        metrics.update(means_per_function(per_function))
        metrics["truncated_fraction"] = sum(truncated) / max(len(truncated), 1)
        metrics.update(self.task.metrics(records, completions, rewards))
        if step is not None and self.tracker is not None:
            self.tracker.log_eval_samples(step, [
                {"prompt": p, "completion": c, "reward": rewards[i],
                 "rewards": {k: v[i] for k, v in per_function.items()}, "truncated": truncated[i]}
                for i, (p, c) in enumerate(zip(prompts, completions))])
        return metrics

    # ------------------------------------------------------------------ warm start
    def warm_start(self) -> list[float]:
        s = self.cfg.sft
        texts = self.task.sft_texts(s.examples, s.seed) if s.examples else []
        if not texts:
            return []
        t0 = time.time()
        template = self.task.response_template if s.completion_only else None
        if s.completion_only and not template:
            raise ConfigError(f"config error: sft.completion_only: task {self.task.name!r} has no response template")
        losses = supervised_warm_start(self.policy.lm, self.tokenizer, texts, epochs=s.epochs, lr=s.lr,
                                       batch_size=s.batch_size, seed=s.seed, device=self.device,
                                       completion_template=template)
        self.say(f"warm start: {len(texts)} examples, {s.epochs} epochs, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                 f"({time.time() - t0:.0f}s)")
        return losses

    # ------------------------------------------------------------------ one RL step
    def rl_step(self, step: int) -> tuple[dict, list[dict]]:
        cfg, a, r, dist = self.cfg, self.cfg.algo, self.cfg.rollout, self.dist
        G = r.num_generations
        timings = {}

        # 1. rollout: this process's share of the step's prompts (whole groups), G samples each, contiguous
        t0 = time.time()
        retried, tries = self.retry.take(r.batch_size)  # failed prompts of earlier steps first (retry on)
        fresh = self.task.train_records(r.batch_size - len(retried), cfg.seed, step) if len(retried) < r.batch_size else []
        everyone = retried + fresh
        mine = dist.shard(len(everyone))
        records = [rec for rec in everyone[mine] for _ in range(G)]
        prompts = [rec["prompt"] for rec in records]
        uniforms = sampling_uniforms(len(everyone) * G, r.max_new_tokens,
                                     step_generator(cfg.seed, step, torch.device("cpu")))
        rollout = self.generate(prompts, uniforms[mine.start * G:mine.stop * G])
        if self.rescore:
            self.score_with_update_pass(rollout)
        completions = self.decode(rollout)
        timings["time_generation"] = time.time() - t0

        # 2. rewards: programmed scores, where the samples are; dropped samples (NaN) leave the update
        t0 = time.time()
        result = self.score(prompts, completions, records, id_lists(rollout))
        raw = reward_tensor(result.rewards, self.device)
        truncated = truncated_of(rollout)
        if r.on_truncated == "mask":  # DAPO's overlong filtering: no reward, out of the loss
            raw = raw.masked_fill(truncated, math.nan)
        elif r.on_truncated != "keep":
            raw = raw.masked_fill(truncated & ~torch.isnan(raw), float(r.on_truncated))
        timings["time_reward"] = time.time() - t0

        # 3. the reference's log-probs of these samples (only when a reference exists)
        t0 = time.time()
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad(), dist.full_model(self.reference_module):
                _, ref_logprobs, _ = forward_response(self.reference, rollout.input_ids, rollout.attention_mask,
                                                      rollout.prompt_ids.shape[1], r.temperature, self.share_prompts)

        # from here on the whole step's batch, on every process (progrl.reductions)
        rollout, raw, ref_logprobs = gather_batch(dist, rollout, raw, ref_logprobs, self.sampling.pad_id)
        dropped = torch.isnan(raw)
        scores = torch.where(dropped, torch.zeros_like(raw), raw)  # a dropped sample's score is never read
        if r.retry.fraction:  # each prompt's best score decides whether it is asked again
            best = [None if torch.isnan(g).all() else float(g[~torch.isnan(g)].max()) for g in raw.view(-1, G)]
            self.retry.report(everyone, tries + [0] * len(fresh), best)
        mask = rollout.response_mask.float() * (~dropped).float().unsqueeze(-1)
        kl = None if ref_logprobs is None else kl_penalty(rollout.logprobs, ref_logprobs, a.kl_estimator) * mask
        beta = self.kl_ctl.value
        in_reward = kl is not None and a.kl_in == "reward"
        rewards = token_rewards(scores, mask, kl if in_reward else None, beta)

        # 4. advantages (RAFT: which samples to imitate)
        keep, weights, tokens, lengths, batch, batch_mask = None, None, None, None, rollout, mask
        branched, branch_stats = [], {}
        if a.estimator == "raft" or a.raft.coef:
            keep = expert_iteration.select(raw, G, a.raft.min_reward, a.raft.top_k)
            lengths = rollout.response_mask.sum(-1) * keep  # imitated tokens of each sample (0: none)
            if a.raft.prefixes:  # and the verified steps of the samples not kept whole
                verified = self.verified_prefix_lengths(records, completions, rollout, skip=keep | dropped)
                if verified is not None:
                    lengths = torch.where(keep | dropped, lengths, verified.to(lengths.device))
            if a.raft.branches:  # continuations sampled from the failures' verified starts
                t1 = time.time()
                branched, branch_stats = self.branch_rows(records, rollout, lengths, ~(keep | dropped), step)
                timings["time_branch"] = time.time() - t1
            if a.raft.distinct:  # each distinct imitated row once
                lengths = lengths * expert_iteration.first_occurrences(rollout.prompt_ids, rollout.prompt_mask,
                                                                       rollout.response_ids, lengths).to(lengths.device)
            tokens = expert_iteration.prefix_mask(lengths, mask.shape[1]) * mask  # (B, T) imitated tokens
            weights = (lengths > 0).float()  # how much each sample counts in the imitation (0: not imitated)
            if a.raft.weight == "inverse_probability":
                weights = weights * expert_iteration.importance_weights(rollout.logprobs, tokens, a.raft.max_weight)
            tokens = tokens * weights.unsqueeze(-1)
        if a.estimator == "raft":
            if a.raft.replay or a.raft.branches:  # this step's kept samples (and branches), and earlier steps'
                rows, old = self.replay_step(rollout, lengths, step, weights)
                self.replay.add(branched)
                batch, batch_mask = self.imitation_batch(rows + branched + old)
                if self.reference is not None:
                    with torch.no_grad():
                        ref_logprobs = forward_response(self.reference, batch.input_ids, batch.attention_mask,
                                                        batch.prompt_ids.shape[1], r.temperature)[1]
                advantages, returns = batch_mask, None
            else:
                advantages, returns = tokens, None
        else:
            advantages, returns = compute_advantages(a.estimator, rewards, mask, rollout.values, group_size=G,
                                                     gamma=a.gamma, lam=a.lam, whiten=a.whiten_advantages,
                                                     valid=~dropped)
        replayed = None
        if a.estimator != "raft" and a.raft.coef and (a.raft.replay or a.raft.branches):  # the imitation
            old = self.replay_step(rollout, lengths, step, weights)[1]  # term's earlier samples (and branches)
            self.replay.add(branched)
            replayed = self.imitation_batch(branched + old) if branched or old else None

        # 5. update: epochs x minibatches, reusing the rollout's log-probs and values as "old"
        stats = self.update(batch, batch_mask, advantages, returns, ref_logprobs, beta, step, imitation_weights=tokens,
                            replayed=replayed)
        timings["time_update"] = time.time() - t0 - timings.get("time_branch", 0.0)  # the branches are their own
        if keep is not None:
            stats["kept_fraction"] = float(keep.float().mean())
            stats.update(branch_stats)
            if a.raft.prefixes:
                stats["imitated_token_fraction"] = float(tokens.gt(0).sum() / mask.sum().clamp(min=1))
            if a.raft.weight != "uniform" and keep.any():
                stats["kept_weight_mean"] = float(weights[keep].mean())

        if kl is not None:
            seq_kl = float((kl.sum(-1)).mean())
            self.kl_ctl.update(seq_kl, len(everyone) * G)
            stats["kl"] = seq_kl
        stats["kl_coef"] = beta

        valid = raw[~dropped]
        n_samples = len(everyone) * G
        n_tokens = int(rollout.response_mask.sum())
        elapsed = sum(timings.values())
        failures = dict(zip(result.failures, dist.sum(torch.tensor(list(result.failures.values()),
                                                                   device=self.device)).tolist()))
        per_function = {k: self.gather_values(v) for k, v in result.per_function.items()}
        metrics = {
            "reward_mean": float(valid.mean()) if len(valid) else math.nan,
            "reward_std": float(valid.std()) if len(valid) > 1 else 0.0,
            "reward_min": float(valid.min()) if len(valid) else math.nan,
            "reward_max": float(valid.max()) if len(valid) else math.nan,
            **means_per_function(per_function),
            "response_len": float(rollout.response_mask.float().sum(-1).mean()),
            "truncated_fraction": float(truncated_of(rollout).float().mean()),
            "dropped": int(dropped.sum()),
            **({"retried": len(retried), "retry_queue": len(self.retry)} if r.retry.fraction else {}),
            **{f"fail_{k}": int(v) for k, v in failures.items()},
            **self.failures_per_function(result),
            **stats,
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": n_samples / elapsed if elapsed else math.nan,
            "tokens_per_s": n_tokens / elapsed if elapsed else math.nan,
            **timings,
        }
        step_rewards = self.gather_values(result.rewards)
        if dist.enabled:  # what is shown comes from the whole batch
            completions = self.decode(rollout) if dist.is_main else []
            prompts = [rec["prompt"] for rec in everyone for _ in range(G)]
        n_show = min(cfg.log.samples_per_step, n_samples) if dist.is_main else 0
        shown = [{"prompt": prompts[i], "completion": completions[i], "reward": step_rewards[i],
                  "rewards": {k: v[i] for k, v in per_function.items()}}
                 for i in range(0, n_samples, max(1, n_samples // max(n_show, 1)))][:n_show] if n_show else []
        return metrics, shown

    def verified_prefix_lengths(self, records: list[dict], completions: list[str], rollout: Rollout,
                                skip: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` response tokens of each sample that the task's checker verifies
        (:meth:`Task.verified_prefix`), 0 for the rows ``skip`` (bool ``(B,)``: kept whole or
        dropped, not asked), or None when the task has no steps."""
        ids = rollout.response_ids.masked_fill(rollout.response_mask == 0, self.sampling.pad_id)
        out = []
        for i, (record, text) in enumerate(zip(records, completions)):
            if skip[i]:
                out.append(0)
                continue
            prefix = self.task.verified_prefix(record, text)
            if prefix is None:
                return None
            n = int(rollout.response_mask[i].sum())
            out.append(expert_iteration.prefix_token_count(self.tokenizer, ids[i, :n].tolist(), prefix) if prefix else 0)
        return torch.tensor(out, dtype=torch.long)

    def branch_rows(self, records: list[dict], rollout: Rollout, lengths: torch.Tensor, failed: torch.Tensor,
                    step: int) -> tuple[list, dict]:
        """RAFT's forks from the failures (``algo.raft.branches``, :mod:`progrl.branching`): the
        ``failed`` samples' (bool ``(B,)``) distinct verified starts, the prompt plus the first
        ``lengths[i]`` response tokens, continued by this policy and judged whole by the reward
        engine and the task's checker, as a sample is. Returns the imitation rows and the
        step's metrics."""
        rb, r, pad = self.cfg.algo.raft, self.cfg.rollout, self.sampling.pad_id
        g = step_generator(self.cfg.seed, step, torch.device("cpu"), salt=3)  # the draw of starts, then the samples
        starts = branching.failed_starts(*id_lists(rollout), lengths, failed, rb.branch_starts, g)

        @torch.no_grad()
        def next_token_logits(heads: list[list[int]]) -> torch.Tensor:
            ids, mask = left_pad(heads, pad, self.device)
            with self.dist.full_model(self.policy):
                return self.policy(ids, mask, logits_to_keep=1)[0][:, -1].float()

        @torch.no_grad()
        def sample_on(heads: list[list[int]], room: int) -> list[list[int]]:
            params = SamplingParams(**{**self.sampling.__dict__, "max_new_tokens": room,
                                       "temperature": rb.branch_temperature or self.sampling.temperature})
            ids, mask = left_pad(heads, pad, self.device)
            return id_lists(self.sample_ids(ids, mask, params, sampling_uniforms(len(heads), room, g)))[1]

        def judge(origins: list[int], whole: tuple) -> torch.Tensor:
            p_ids, p_mask, r_ids, r_mask = whole
            rollout = Rollout(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                              logprobs=torch.zeros(r_ids.shape), values=None)
            recs = [records[i] for i in origins]
            completions = self.decode(rollout)
            result = self.score([rec["prompt"] for rec in recs], completions, recs, id_lists(rollout))
            raw = reward_tensor(result.rewards)
            kept = expert_iteration.select(raw, 1, rb.min_reward, 0)
            verified = self.verified_prefix_lengths(recs, completions, rollout, skip=kept | torch.isnan(raw))
            full = r_mask.sum(-1).cpu()
            return torch.where(kept, full, verified if verified is not None else torch.zeros_like(full))

        return branching.search(starts, branches=rb.branches, branch_first=rb.branch_first,
                                max_new_tokens=r.max_new_tokens, stop_ids=self.sampling.stop_ids,
                                banned_ids=self.sampling.banned_ids, pad_id=pad, device=self.device,
                                next_token_logits=next_token_logits, sample=sample_on, judge=judge)

    def replay_step(self, rollout: Rollout, lengths: torch.Tensor, step: int,
                    weights: torch.Tensor | None = None) -> tuple[list, list]:
        """RAFT's replay for this step: ``(this step's imitated rows, rows drawn from earlier steps)``;
        the draw comes first, then this step's rows (each sample's first ``lengths`` tokens, those
        with none left out) join the buffer (with their imitation weights when ``algo.raft.weight``
        is not uniform)."""
        old = self.replay.draw(self.cfg.algo.raft.replay, step_generator(self.cfg.seed, step, torch.device("cpu"),
                                                                          salt=2))
        weighted = self.cfg.algo.raft.weight != "uniform"
        rows = expert_iteration.kept_rows(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                          rollout.response_mask, lengths > 0, weights if weighted else None,
                                          lengths=lengths)
        self.replay.add(rows)
        return rows, old

    def imitation_batch(self, rows: list) -> tuple[Rollout, torch.Tensor]:
        """RAFT's training rows (prompt and response token lists) as a padded rollout and its mask,
        each row's tokens weighted by the row's imitation weight (1 when stored without one)."""
        pad = self.sampling.pad_id
        empty = not rows
        if empty:  # nothing kept yet: an empty update
            rows = [([pad], [pad], 0.0)]
        p_ids, p_mask, r_ids, r_mask = expert_iteration.ReplayBuffer.batch(rows, pad, self.device)
        batch = Rollout(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                        logprobs=torch.zeros(r_ids.shape, device=self.device), values=None)
        return batch, r_mask.float() * expert_iteration.row_weights(rows).to(self.device).unsqueeze(-1)

    def update(self, rollout: Rollout, mask, advantages, returns, ref_logprobs, beta: float, step: int,
               imitation_weights: torch.Tensor | None = None,
               replayed: tuple[Rollout, torch.Tensor] | None = None) -> dict:
        """Epochs x minibatches over the whole batch; this process trains on its share of each
        minibatch, with every average taken over the whole minibatch (progrl.reductions).

        RAFT (one process only, see check_split): estimator "raft" trains on the kept rows alone
        (``advantages`` hold each kept row's imitation weight); ``imitation_weights`` (``(B, T)``: each
        token's weight, 0 = not imitated) with ``algo.raft.coef`` adds the weighted likelihood of the kept
        samples (and of ``replayed`` ones of earlier steps: their rollout and weighted mask) to
        the estimator's loss."""
        a, dist = self.cfg.algo, self.dist
        raft = a.estimator == "raft"
        # RAFT trains on the kept samples only; the others cost nothing
        rows = torch.nonzero(advantages.amax(-1) > 0).squeeze(-1).cpu() if raft else torch.arange(mask.shape[0])
        n = len(rows)
        P = rollout.prompt_ids.shape[1]
        # Dr. GRPO's constant normaliser is the generation budget, not this batch's padded
        # width (sampling stops early once every response has ended).
        max_len = self.cfg.rollout.max_new_tokens
        input_ids, attention = rollout.input_ids, rollout.attention_mask
        g = step_generator(self.cfg.seed, step, torch.device("cpu"), salt=1)
        stats = UpdateStats()
        grad_norms = []
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = a.max_grad_norm if a.max_grad_norm is not None else float("inf")
        if self.cfg.model.gradient_checkpointing:
            self.policy.train()  # transformers checkpoints only in training mode; dropout is 0 everywhere
        for _epoch in range(a.epochs):
            order = rows[torch.randperm(n, generator=g)].to(self.device)
            minibatches = [order[i:i + a.minibatch_size] for i in range(0, n, a.minibatch_size)]
            if replayed is not None:  # spread the replayed rows over this epoch's minibatches
                r_order = torch.randperm(replayed[0].response_ids.shape[0], generator=g).to(self.device)
                replay_chunks = [c for c in r_order.tensor_split(len(minibatches)) if len(c)]
            for k, idx in enumerate(minibatches):
                counts = minibatch_counts(mask, idx)  # the whole minibatch: the same on every process
                if counts.tokens == 0:
                    continue
                last = (k + 1) % a.grad_accum_steps == 0 or k + 1 == len(minibatches)
                mine = minibatch_share(dist, idx)
                m = mask[mine]
                with contextlib.nullcontext() if last else dist.no_sync(self.model):
                    logits, logprobs, values = forward_response(self.model, input_ids[mine], attention[mine], P,
                                                                self.cfg.rollout.temperature, self.share_prompts)
                    if raft:
                        pg_loss, pg_stats = expert_iteration.raft_loss(logprobs, m * advantages[mine])
                    else:
                        pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[mine], advantages[mine], m,
                                                        a.clip_range, a.loss_agg, a.clip_range_high, max_len=max_len,
                                                        counts=counts)
                    loss = pg_loss
                    shares = {"pg_loss": pg_loss, **pg_stats}
                    if imitation_weights is not None and not raft and a.raft.coef:  # RAFT's imitation term beside the estimator's
                        lps, ms = [logprobs], [m * imitation_weights[mine].to(m.dtype)]
                        if replayed is not None and k < len(replay_chunks):  # kept samples of earlier steps
                            ridx = replay_chunks[k]
                            old_batch, old_mask = replayed
                            lps.append(forward_response(self.model, old_batch.input_ids[ridx],
                                                        old_batch.attention_mask[ridx], old_batch.prompt_ids.shape[1],
                                                        self.cfg.rollout.temperature)[1])
                            ms.append(old_mask[ridx].to(m.dtype))
                        width = max(x.shape[1] for x in lps)
                        imitation, _ = expert_iteration.raft_loss(
                            torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in lps]),
                            torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in ms]))
                        loss = loss + a.raft.coef * imitation
                        shares["raft_nll"] = imitation
                    ev_sums = None
                    if values is not None:
                        vf_loss, vf_stats = value_loss(values, rollout.values[mine], returns[mine], m,
                                                       a.clip_range_value, counts=counts)
                        loss = loss + a.vf_coef * vf_loss
                        shares.update(vf_loss=vf_loss, value_mean=masked_mean(values.detach(), m, count=counts.tokens),
                                      **vf_stats)
                        ev_sums = explained_variance_sums(values.detach(), returns[mine], m)
                    with contextlib.nullcontext() if a.entropy_coef else torch.no_grad():
                        ent = token_entropy(logits, m, a.loss_agg, max_len, counts)
                    loss = loss - a.entropy_coef * ent if a.entropy_coef else loss
                    # several processes: the batch-averaged distribution of the whole minibatch
                    reduced = batch_distribution(dist, logits, m) if dist.enabled else None
                    with contextlib.nullcontext() if a.batch_entropy_coef else torch.no_grad():
                        bent, maxp = batch_entropy(logits, m, reduced)
                    loss = loss - a.batch_entropy_coef * bent if a.batch_entropy_coef else loss
                    shares["entropy"] = ent
                    whole = {"batch_entropy": float(bent.detach()), "max_batch_prob": float(maxp)}
                    if ref_logprobs is not None and a.kl_in == "loss":
                        kl_loss = aggregate(kl_penalty(logprobs, ref_logprobs[mine], a.kl_estimator), m, a.loss_agg,
                                            max_len, counts)
                        loss = loss + beta * kl_loss
                        shares["kl_loss"] = kl_loss
                    self.backward(loss / a.grad_accum_steps)
                if last:
                    grad_norms.append(self.optimizer_step(params, max_norm))
                stats.add(shares, whole, ev_sums)
        if self.cfg.model.gradient_checkpointing:
            self.policy.eval()
        out = stats.reduce(dist)
        out["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        return out

    def backward(self, loss: torch.Tensor) -> None:
        self.dist.backward(self.scaler.scale(loss))

    def optimizer_step(self, params: list, max_norm: float) -> float:
        """Clip (after unscaling fp16 gradients), step, schedule; returns the gradient norm."""
        self.scaler.unscale_(self.optimizer)
        norm = self.dist.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ the run
    @property
    def reference_module(self) -> torch.nn.Module:
        """The module holding the reference's weights (the policy itself for LoRA)."""
        return self.reference.lm if self.reference is not None and self.reference.lm is not None else self.policy

    def prepare(self) -> None:
        """Wrap the policy and optimiser for several processes (DDP / FSDP / DeepSpeed) and shard
        the reference like the policy; nothing with one process."""
        a = self.cfg.algo
        self.model, self.optimizer = self.dist.prepare(
            self.policy, self.optimizer, micro_batch=a.minibatch_size // self.dist.world_size,
            grad_accum=a.grad_accum_steps, max_grad_norm=a.max_grad_norm)
        if self.reference is not None and self.reference.lm is not None:
            self.reference.lm = self.dist.prepare_frozen(self.reference.lm)

    def export(self) -> None:
        """``final/`` by the main process. A sharded policy is gathered (every process takes part)
        into a replica on the main process's CPU, built like the policy and exported as one."""
        if self.dist.sharding in ("none", "ddp"):
            if self.dist.is_main:
                export_final(self.run_dir, self.policy, self.tokenizer)
            return
        state = self.dist.model_state(self.policy)
        if self.dist.is_main:
            lm, _ = build_model(self.cfg, self.task)
            replica = Policy(with_lora(lm, self.cfg), value_head=self.policy.value_head is not None)
            replica.load_state_dict(state)
            export_final(self.run_dir, replica, self.tokenizer)

    def save(self, step: int) -> None:
        """A checkpoint of this step, written by the main process (the state is gathered first
        when the model is sharded: every process takes part). DeepSpeed runs write none (its
        partitioned optimiser state is not gathered; docs/scaling.md)."""
        if self.cfg.algo.raft.replay and (self.cfg.algo.estimator == "raft" or self.cfg.algo.raft.coef):
            self.state["raft_replay"] = self.replay.state_dict()
        if self.cfg.rollout.retry.fraction:
            self.state["retry_queue"] = self.retry.state_dict()
        if self.dist.sharding == "deepspeed":
            self.saved_step = step
            return
        policy_state = self.dist.model_state(self.policy)
        optimizer_state = self.dist.optimizer_state(self.policy, self.optimizer)
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, step, policy=_State(policy_state), optimizer=_State(optimizer_state),
                                 scheduler=self.scheduler, kl_controller=self.kl_ctl,
                                 state={**self.state, **self.layout()}, keep=self.cfg.log.keep_checkpoints)
        self.saved_step = step

    def layout(self) -> dict:
        """How the run's processes hold the model: a checkpoint's optimiser state is written in
        the layout's format (FSDP: by parameter name)."""
        return {"processes": self.dist.world_size, "sharding": self.dist.sharding}

    def resume_from(self, path: Path, optimizer: bool = True) -> None:
        """Load a checkpoint into the (not yet prepared) policy. ``optimizer=False``: leave the
        optimiser state for :meth:`resume_optimizer` (sharded optimisers load after prepare)."""
        self.state = ckpt.load_checkpoint(path, policy=self.policy, optimizer=self.optimizer if optimizer else None,
                                          scheduler=self.scheduler, kl_controller=self.kl_ctl)
        for key in self.layout():
            self.state.pop(key, None)
        self.step = int(self.state["step"])
        self.saved_step = self.step
        if "raft_replay" in self.state:
            self.replay.load_state_dict(self.state["raft_replay"])
        if "retry_queue" in self.state:
            self.retry.load_state_dict(self.state["retry_queue"])
        if self.cfg.algo.uses_reference:
            self.reference = self.make_reference(initial_state=self.run_dir / "checkpoints" / "reference.pt")

    def resume_optimizer(self, path: Path) -> None:
        file = path / "optimizer.pt"
        state = ckpt.load_torch(file)
        try:
            self.dist.load_optimizer_state(self.policy, self.optimizer, state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise ckpt.CheckpointError(f"checkpoint file {file} does not fit this run's model "
                                       f"({' '.join(str(exc).split())[:160]})") from None

    def make_reference(self, initial_state: Path | None = None) -> Reference:
        ref = Reference(self.policy, use_adapter_disable=self.cfg.model.lora)
        if ref.lm is not None and initial_state is not None and initial_state.exists():
            try:
                ref.lm.load_state_dict(ckpt.load_torch(initial_state))
            except RuntimeError as exc:
                raise ckpt.CheckpointError(f"checkpoint file {initial_state} does not fit this run's reference "
                                           f"model ({' '.join(str(exc).split())[:160]})") from None
        return ref

    def train(self, resume: bool = False) -> dict:
        """Run (or continue) the whole job; returns a summary dict. With several processes every
        process calls it; only the main one writes the run directory."""
        cfg, dist = self.cfg, self.dist
        main = dist.is_main
        if not resume and ((self.run_dir / "metrics.jsonl").exists() or ckpt.latest_checkpoint(self.run_dir)):
            raise ConfigError(f"config error: out: {self.run_dir} already holds a run; resume it or use a new "
                              f"directory (two runs in one directory would mix their metrics and checkpoints)")
        dist.barrier()  # every process has looked at the directory before the main one writes to it
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.run_dir, tensorboard=cfg.log.tensorboard, report_to=cfg.log.report_to,
                               project=cfg.log.project, run_name=cfg.log.run_name,
                               config=config_to_dict(cfg)) if main else NullTracker()
        start = time.time()
        if self.data_note:
            self.say(self.data_note)
        if resume:
            path = ckpt.recover(self.run_dir, keep=cfg.log.keep_checkpoints) if main else None
            dist.barrier()  # the main process has tidied what an interrupted save left
            path = path or ckpt.latest_checkpoint(self.run_dir)
            if path is None:
                raise ConfigError(f"config error: --resume: no checkpoint in {self.run_dir}")
            check_layout(ckpt.read_state(path), self.layout(), path)
            sharded_optimizer = dist.sharding == "fsdp"
            self.resume_from(path, optimizer=not sharded_optimizer)
            self.prepare()
            if sharded_optimizer:
                self.resume_optimizer(path)
            self.tracker.truncate_after(self.step)
            self.say(f"resumed from {path} at step {self.step}")
        else:
            if main:
                write_config(self.run_dir, cfg)
            if self.warm_start():
                dist.broadcast_module(self.policy.lm)  # GPU kernels need not be deterministic: one model for all
            if cfg.algo.uses_reference:
                self.reference = self.make_reference()
                if self.reference.lm is not None and main:
                    (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                    atomic_torch_save(self.reference.lm.state_dict(), self.run_dir / "checkpoints" / "reference.pt")
            self.prepare()
            before = self.evaluate(step=0)
            self.state["eval_before"] = before
            self.tracker.log(0, before, phase="eval")
            self.say("before RL: " + fmt_metrics(before))
        try:
            with progress_bar(cfg, self.step, enabled=main) as bar:
                for step in range(self.step + 1, cfg.steps + 1):
                    metrics, shown = self.rl_step(step)
                    self.tracker.log(step, metrics)
                    self.tracker.log_samples(step, shown)
                    self.step = step
                    if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.steps:
                        ev = self.evaluate(step=step)
                        self.tracker.log(step, ev, phase="eval")
                        metrics = {**metrics, **{f"eval_{k}": v for k, v in ev.items()}}
                    if cfg.log.checkpoint_every and step % cfg.log.checkpoint_every == 0:
                        self.save(step)
                    bar.advance(metrics)
            after = self.evaluate(step=self.step) if cfg.steps > 0 else self.state.get("eval_before", {})
        finally:
            self.rewards.close()
        self.tracker.log(self.step, after, phase="eval")
        if self.saved_step != self.step:  # the last step's checkpoint, unless it was just written
            self.save(self.step)
        self.export()
        self.tracker.close()
        if cfg.log.plot and main:
            plot_run(self.run_dir)
        names = list(self.rewards.totals)
        totals = dict(zip(names, (int(v) for v in dist.sum(torch.tensor(
            [self.rewards.totals[k] for k in names], device=self.device)).tolist())))
        dist.barrier()  # nobody leaves (and tears the process group down) before the main process is done
        summary = {"eval_before": self.state.get("eval_before", {}), "eval_after": after,
                   "reward_failures": totals, "seconds": time.time() - start, "run_dir": str(self.run_dir)}
        self.say("after RL:  " + fmt_metrics(after))
        if any(totals.values()):
            self.say("reward failures: " + ", ".join(f"{k}={v}" for k, v in totals.items() if v))
        return summary


class _State:
    """A state dict already taken (gathered from the processes), in the shape save_checkpoint reads."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def check_layout(state: dict, layout: dict, path: Path) -> None:
    """A checkpoint's optimiser state must be in this run's format: FSDP writes it by parameter
    name, one process or DDP by index. The number of processes may change (a batch splits the
    same way over any number that divides it)."""
    saved = "fsdp" if state.get("sharding") == "fsdp" else "plain"
    now = "fsdp" if layout["sharding"] == "fsdp" else "plain"
    if saved != now:
        how = {"fsdp": "with FSDP (accelerate launch --config_file configs/accelerate/fsdp.yaml)",
               "plain": "without FSDP (one process, torchrun, or accelerate with DDP)"}
        raise ConfigError(f"config error: --resume: the checkpoint {path} was written {how[saved]}; resume it "
                          f"the same way, not {how[now]}")


# ---------------------------------------------------------------------- small helpers


def task_label_of(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def columns_of(records: list[dict]) -> dict[str, list]:
    keys = [k for k in records[0] if k != "prompt"] if records else []
    return {k: [r.get(k) for r in records] for k in keys}


def id_lists(rollout: Rollout) -> tuple[list[list[int]], list[list[int]]]:
    """``(prompt ids, completion ids)`` of each row as plain lists, padding removed (the stop token kept)."""
    prompts = [[t for t, m in zip(row, mask) if m] for row, mask in
               zip(rollout.prompt_ids.tolist(), rollout.prompt_mask.tolist())]
    completions = [[t for t, m in zip(row, mask) if m] for row, mask in
                   zip(rollout.response_ids.tolist(), rollout.response_mask.tolist())]
    return prompts, completions


def reward_tensor(rewards: list, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The reward engine's per-sample rewards as a tensor (of torch's default dtype unless ``dtype``), a dropped
    sample (None) as NaN."""
    return torch.tensor([math.nan if x is None else float(x) for x in rewards], dtype=dtype, device=device)


def reward_completions(prompts: list, completions: list[str]) -> list:
    """TRL's shapes: a completion of a conversational prompt is ``[{"role": "assistant", "content": text}]``."""
    return [assistant_message(c) if is_conversation(p) else c for p, c in zip(prompts, completions)]


def _mean(values) -> float:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else math.nan


def function_means(result) -> dict[str, float]:
    """Each reward function's mean (over the samples it did not drop) as ``rewards/<name>/mean`` (TRL's key)."""
    return means_per_function(result.per_function)


def means_per_function(per_function: dict[str, list]) -> dict[str, float]:
    """:func:`function_means` of ``{name: values}`` (e.g. gathered from every process)."""
    return {f"rewards/{name}/mean": _mean(values) for name, values in per_function.items()}


def truncated_of(rollout: Rollout) -> torch.Tensor:
    """``(B,)`` bool: responses that hit ``max_new_tokens`` without a stop (none when unknown)."""
    if rollout.truncated is not None:
        return rollout.truncated
    return torch.zeros(rollout.response_ids.shape[0], dtype=torch.bool, device=rollout.response_ids.device)


def function_failures(result) -> dict[str, int]:
    """Failed evaluations of each function (all kinds together) as ``rewards/<name>/failed``."""
    counts = getattr(result, "function_failures", None) or {}
    return {f"rewards/{name}/failed": int(sum(kinds.values())) for name, kinds in counts.items()}


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout of several (chunks, or batches encoded apart): prompts left-padded and responses
    right-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.response_ids.shape[1] for p in parts)

    def pad_left(x, value):
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

    def pad_right(x, value):
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([pad_left(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([pad_left(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([pad_right(p.response_ids, pad_id) for p in parts]),
        response_mask=torch.cat([pad_right(p.response_mask, 0) for p in parts]),
        logprobs=torch.cat([pad_right(p.logprobs, 0.0) for p in parts]),
        values=None if parts[0].values is None else torch.cat([pad_right(p.values, 0.0) for p in parts]),
        truncated=None if parts[0].truncated is None else torch.cat([p.truncated for p in parts]),
    )


def fmt_rate(x: float) -> str:
    """A rate with sensible digits: ``260``, ``42.4``, ``0.42``, ``0.0031`` (never a bare ``0``
    for a rate below 1)."""
    if x is None or x != x:
        return "nan"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) >= 1 else f"{x:.2g}"


def fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    import tomli_w

    atomic_write_text(run_dir / "config.toml", tomli_w.dumps(config_to_dict(cfg)))


def export_final(run_dir: Path, policy: Policy, tokenizer) -> None:
    """The trained model in Hugging Face format (plus the value head), written atomically.

    A LoRA run writes the adapter merged into the base weights (a plain model that loads
    anywhere, e.g. ``--model RUN/final`` or ``progrl eval``) and the adapter alone in
    ``final/adapter``. It is written to ``.final.tmp``; an existing ``final/`` is renamed
    aside until the new one is in place, so a kill leaves one of them (``progrl eval`` falls
    back to the checkpoint when ``final/`` is missing). A failed write (full disk) removes
    ``.final.tmp`` and keeps the old ``final/``."""
    import copy
    import shutil

    from progrl.modeling import is_peft_model

    final, tmp, old = run_dir / "final", run_dir / ".final.tmp", run_dir / ".final.old"
    try:
        if old.exists():  # a previous export was interrupted between its two renames
            if final.exists():
                remove_tree(old)
            else:
                os.replace(old, final)
        if tmp.exists():
            remove_tree(tmp)
        if is_peft_model(policy.lm):
            policy.lm.save_pretrained(tmp / "adapter")
            copy.deepcopy(policy.lm).merge_and_unload().save_pretrained(tmp)
        else:
            policy.lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if policy.value_head is not None:
            torch_save(policy.value_head.state_dict(), tmp / "value_head.pt")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, StorageError):
            raise
        if isinstance(exc, OSError) or disk_full(exc):  # safetensors wraps ENOSPC in its own error
            raise StorageError(describe(exc, final) + "; the checkpoint is kept") from exc
        raise
    try:
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        remove_tree(old)
    except OSError as exc:
        raise StorageError(describe(exc, final)) from exc


class progress_bar:
    """A rich progress bar with ETA and the latest reward; plain lines when not on a terminal."""

    def __init__(self, cfg: TrainConfig, start_step: int, enabled: bool = True):
        self.total = cfg.steps
        self.start = start_step
        self.enabled = cfg.log.progress and enabled
        self.progress = None
        self.every = max(1, cfg.steps // 20)
        self.done = start_step

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            console = Console(stderr=True)
            if console.is_terminal:
                self.progress = Progress(TextColumn("RL"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                         TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                         console=console)
                self.progress.start()
                self.task_id = self.progress.add_task("", total=self.total, completed=self.start)
            self.console = console
        return self

    def advance(self, metrics: dict) -> None:
        self.done += 1
        desc = f"reward {metrics.get('reward_mean', float('nan')):.3f}"
        per_fn = [(k[len("rewards/"):-len("/mean")], v) for k, v in metrics.items()
                  if k.startswith("rewards/") and k.endswith("/mean")]
        if len(per_fn) > 1:
            desc += " (" + ", ".join(f"{name} {v:.3f}" for name, v in per_fn) + ")"
        if "eval_accuracy" in metrics:
            desc += f"  acc {metrics['eval_accuracy']:.3f}"
        if self.progress is not None:
            self.progress.update(self.task_id, advance=1, description=desc)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            self.console.print(f"step {self.done}/{self.total}  {desc}  "
                               f"({fmt_rate(metrics.get('samples_per_s', 0.0))} samples/s)")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
