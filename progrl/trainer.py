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
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from progrl import checkpoint as ckpt
from progrl import expert_iteration
from progrl.advantages import compute_advantages, token_rewards
from progrl.config import ConfigError, TrainConfig, config_to_dict
from progrl.kl import make_kl_controller
from progrl.losses import (aggregate, batch_entropy, explained_variance, kl_penalty, masked_mean, policy_loss,
                           token_entropy, value_loss)
from progrl.policy import Policy, Reference
from progrl.prompt_replay import RetryQueue
from progrl.rollout import Rollout, SamplingParams, forward_response, left_pad, sample
from progrl.sft import supervised_warm_start
from progrl.tasks.base import Task
from progrl.tracking import Tracker, plot_run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(seed: int, step: int, device: torch.device, salt: int = 0) -> torch.Generator:
    """A generator whose stream depends only on (seed, step, salt): resumable without saved state."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))
    return g


def token_ids(tokenizer, tokens: list[str], field: str) -> tuple[int, ...]:
    """Token strings from the config to ids; an unknown token is a config error naming the field."""
    ids = []
    vocab = tokenizer.get_vocab()
    for t in tokens:
        if t not in vocab:
            raise ConfigError(f"config error: {field}: token {t!r} is not in the tokenizer's vocabulary")
        ids.append(vocab[t])
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


class Trainer:
    """Owns the model, optimiser, reward engine and run directory of one run."""

    def __init__(self, cfg: TrainConfig, task: Task, run_dir: str | Path, console=None):
        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.console = console
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)

        lm, self.tokenizer = build_model(cfg, task)
        task.bind_tokenizer(self.tokenizer)
        if cfg.model.lora:
            from progrl import modeling

            lm = modeling.apply_lora(lm, r=cfg.model.lora_r, alpha=cfg.model.lora_alpha,
                                     dropout=cfg.model.lora_dropout, target_modules=cfg.model.lora_target_modules)
        self.policy = Policy(lm, value_head=cfg.algo.uses_critic).to(self.device)
        self.policy.eval()  # dropout off: rollout and update must see the same function
        self.reference: Reference | None = None  # built after the warm start (it is the warm-started model)

        r = cfg.rollout
        eos = self.tokenizer.eos_token_id
        stop = token_ids(self.tokenizer, r.stop_tokens, "rollout.stop_tokens")
        self.sampling = SamplingParams(
            max_new_tokens=r.max_new_tokens, min_new_tokens=r.min_new_tokens, temperature=r.temperature,
            top_k=r.top_k, top_p=r.top_p, stop_ids=tuple(sorted({*stop, *([eos] if eos is not None else [])})),
            banned_ids=token_ids(self.tokenizer, r.banned_tokens, "rollout.banned_tokens"),
            pad_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

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

        from progrl.rewards import RewardEngine

        self.rewards = RewardEngine(cfg.reward, default_functions=task.reward_functions())
        self.replay = expert_iteration.ReplayBuffer(a.raft.replay_capacity)  # RAFT's kept samples (replay > 0)
        self.retry = RetryQueue(r.retry)  # failed prompts to ask again (rollout.retry.fraction > 0)
        self.tracker: Tracker | None = None
        self.step = 0
        self.state: dict = {}

    # ------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        return left_pad(ids, self.sampling.pad_id, self.device)

    def decode(self, rollout: Rollout) -> list[str]:
        ids = rollout.response_ids.masked_fill(rollout.response_mask == 0, self.sampling.pad_id)
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    def generate(self, prompts: list[str], generator: torch.Generator | None, greedy: bool = False) -> Rollout:
        """Sample (or greedily decode) responses for ``prompts`` in chunks of generation_batch_size."""
        params = SamplingParams(**{**self.sampling.__dict__, "greedy": greedy})
        ids, mask = self.encode_prompts(prompts)
        chunk = self.cfg.rollout.generation_batch_size
        parts = [sample(self.policy, ids[i:i + chunk], mask[i:i + chunk], params, generator)
                 for i in range(0, len(prompts), chunk)]
        return concat_rollouts(parts, self.sampling.pad_id)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy decoding on the held-out prompts: mean reward plus the task's metrics."""
        e = self.cfg.eval
        records = self.task.eval_records(e.n_prompts, e.seed)
        prompts = [r["prompt"] for r in records]
        completions: list[str] = []
        for i in range(0, len(prompts), e.batch_size):
            completions += self.decode(self.generate(prompts[i:i + e.batch_size], None, greedy=True))
        result = self.rewards.score(prompts, completions, columns_of(records))
        valid = [x for x in result.rewards if x is not None]
        metrics = {"mean_reward": sum(valid) / max(len(valid), 1)}
        metrics.update(self.task.metrics(records, completions, result.rewards))
        return metrics

    # ------------------------------------------------------------------ warm start
    def warm_start(self) -> list[float]:
        s = self.cfg.sft
        texts = self.task.sft_texts(s.examples, s.seed) if s.examples else []
        if not texts:
            return []
        t0 = time.time()
        losses = supervised_warm_start(self.policy.lm, self.tokenizer, texts, epochs=s.epochs, lr=s.lr,
                                       batch_size=s.batch_size, seed=s.seed, device=self.device)
        self.say(f"warm start: {len(texts)} examples, {s.epochs} epochs, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                 f"({time.time() - t0:.0f}s)")
        return losses

    # ------------------------------------------------------------------ one RL step
    def rl_step(self, step: int) -> tuple[dict, list[dict]]:
        cfg, a, r = self.cfg, self.cfg.algo, self.cfg.rollout
        G = r.num_generations
        timings = {}

        # 1. rollout: G samples for each prompt, contiguous groups
        t0 = time.time()
        retried, tries = self.retry.take(r.batch_size)  # failed prompts of earlier steps first (retry on)
        fresh = self.task.train_records(r.batch_size - len(retried), cfg.seed, step) if len(retried) < r.batch_size else []
        step_records = retried + fresh
        records = [rec for rec in step_records for _ in range(G)]
        prompts = [rec["prompt"] for rec in records]
        rollout = self.generate(prompts, step_generator(cfg.seed, step, self.device))
        completions = self.decode(rollout)
        mask = rollout.response_mask.float()
        timings["time_generation"] = time.time() - t0

        # 2. rewards: programmed scores; dropped samples leave the update
        t0 = time.time()
        result = self.rewards.score(prompts, completions, columns_of(records))
        raw = torch.tensor([math.nan if x is None else float(x) for x in result.rewards], device=self.device)
        dropped = torch.isnan(raw)
        scores = fill_dropped(raw, G)
        best = [None if torch.isnan(g).all() else float(g[~torch.isnan(g)].max()) for g in raw.view(-1, G)]
        self.retry.report(step_records, tries + [0] * len(fresh), best)
        mask = mask * (~dropped).float().unsqueeze(-1)
        timings["time_reward"] = time.time() - t0

        # 3. KL to the reference, per token (only when a reference exists)
        t0 = time.time()
        kl = ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                _, ref_logprobs, _ = forward_response(self.reference, rollout.input_ids, rollout.attention_mask,
                                                      rollout.prompt_ids.shape[1], r.temperature)
            kl = kl_penalty(rollout.logprobs, ref_logprobs, a.kl_estimator) * mask
        beta = self.kl_ctl.value
        in_reward = kl is not None and a.kl_in == "reward"
        rewards = token_rewards(scores, mask, kl if in_reward else None, beta)

        # 4. advantages (RAFT: which samples to imitate)
        keep, batch, batch_mask = None, rollout, mask
        if a.estimator == "raft" or a.raft.coef:
            keep = expert_iteration.select(raw, G, a.raft.min_reward, a.raft.top_k)
        if a.estimator == "raft":
            if a.raft.replay:  # train on this step's kept samples and on kept samples of earlier steps
                old = self.replay.draw(a.raft.replay, step_generator(cfg.seed, step, torch.device("cpu"), salt=2))
                rows = expert_iteration.kept_rows(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                                  rollout.response_mask, keep)
                self.replay.add(rows)
                batch, batch_mask = self.imitation_batch(rows + old)
                if self.reference is not None:
                    with torch.no_grad():
                        ref_logprobs = forward_response(self.reference, batch.input_ids, batch.attention_mask,
                                                        batch.prompt_ids.shape[1], r.temperature)[1]
                advantages, returns = batch_mask, None
            else:
                advantages, returns = keep.float().unsqueeze(-1) * mask, None
        else:
            advantages, returns = compute_advantages(a.estimator, rewards, mask, rollout.values, group_size=G,
                                                     gamma=a.gamma, lam=a.lam, whiten=a.whiten_advantages)
        replayed = None
        if a.estimator != "raft" and a.raft.coef and a.raft.replay:  # the imitation term's earlier samples
            old = self.replay.draw(a.raft.replay, step_generator(cfg.seed, step, torch.device("cpu"), salt=2))
            self.replay.add(expert_iteration.kept_rows(rollout.prompt_ids, rollout.prompt_mask,
                                                       rollout.response_ids, rollout.response_mask, keep))
            replayed = self.imitation_batch(old)[0] if old else None

        # 5. update: epochs x minibatches, reusing the rollout's log-probs and values as "old"
        stats = self.update(batch, batch_mask, advantages, returns, ref_logprobs, beta, step, keep=keep,
                            replayed=replayed)
        timings["time_update"] = time.time() - t0
        if keep is not None:
            stats["kept_fraction"] = float(keep.float().mean())

        if kl is not None:
            seq_kl = float((kl.sum(-1)).mean())
            self.kl_ctl.update(seq_kl, len(prompts))
            stats["kl"] = seq_kl
        stats["kl_coef"] = beta

        valid = raw[~dropped]
        n_tokens = int(rollout.response_mask.sum())
        elapsed = sum(timings.values())
        metrics = {
            "reward_mean": float(valid.mean()) if len(valid) else math.nan,
            "reward_std": float(valid.std()) if len(valid) > 1 else 0.0,
            "reward_min": float(valid.min()) if len(valid) else math.nan,
            "reward_max": float(valid.max()) if len(valid) else math.nan,
            "response_len": float(rollout.response_mask.float().sum(-1).mean()),
            "dropped": int(dropped.sum()),
            **({"retried": len(retried), "retry_queue": len(self.retry)} if r.retry.fraction else {}),
            **{f"fail_{k}": v for k, v in result.failures.items()},
            **stats,
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": len(prompts) / elapsed if elapsed else math.nan,
            "tokens_per_s": n_tokens / elapsed if elapsed else math.nan,
            **timings,
        }
        n_show = min(cfg.log.samples_per_step, len(prompts))
        shown = [{"prompt": prompts[i], "completion": completions[i], "reward": result.rewards[i]}
                 for i in range(0, len(prompts), max(1, len(prompts) // max(n_show, 1)))][:n_show]
        return metrics, shown

    def imitation_batch(self, rows: list) -> tuple[Rollout, torch.Tensor]:
        """RAFT's training rows (prompt and response token lists) as a padded rollout and its mask."""
        pad = self.sampling.pad_id
        if not rows:  # nothing kept yet: an empty update
            rows = [([pad], [pad])]
            empty = True
        else:
            empty = False
        p_ids, p_mask, r_ids, r_mask = expert_iteration.ReplayBuffer.batch(rows, pad, self.device)
        batch = Rollout(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                        logprobs=torch.zeros(r_ids.shape, device=self.device), values=None)
        return batch, r_mask.float() * (0.0 if empty else 1.0)

    def update(self, rollout: Rollout, mask, advantages, returns, ref_logprobs, beta: float, step: int,
               keep: torch.Tensor | None = None, replayed: Rollout | None = None) -> dict:
        a = self.cfg.algo
        raft = a.estimator == "raft"
        # RAFT trains on the kept samples only (their advantage is 1); the others cost nothing
        rows = torch.nonzero(advantages.amax(-1) > 0).squeeze(-1) if raft else torch.arange(mask.shape[0])
        n = len(rows)
        P = rollout.prompt_ids.shape[1]
        # Dr. GRPO's constant normaliser is the generation budget, not this batch's padded
        # width (sampling stops early once every response has ended).
        max_len = self.cfg.rollout.max_new_tokens
        input_ids, attention = rollout.input_ids, rollout.attention_mask
        g = step_generator(self.cfg.seed, step, torch.device("cpu"), salt=1)
        sums: dict[str, float] = {}
        count = 0
        grad_norms = []
        for _epoch in range(a.epochs):
            order = rows[torch.randperm(n, generator=g)].to(self.device)
            minibatches = [order[i:i + a.minibatch_size] for i in range(0, n, a.minibatch_size)]
            if replayed is not None:  # spread the replayed rows over this epoch's minibatches
                r_order = torch.randperm(replayed.response_ids.shape[0], generator=g).to(self.device)
                replay_chunks = [c for c in r_order.tensor_split(len(minibatches)) if len(c)]
            for k, idx in enumerate(minibatches):
                m = mask[idx]
                if m.sum() == 0:
                    continue
                logits, logprobs, values = forward_response(self.policy, input_ids[idx], attention[idx], P,
                                                            self.cfg.rollout.temperature)
                if raft:
                    pg_loss, pg_stats = expert_iteration.raft_loss(logprobs, m)
                else:
                    pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[idx], advantages[idx], m,
                                                    a.clip_range, a.loss_agg, a.clip_range_high, max_len=max_len)
                loss = pg_loss
                st = {"pg_loss": float(pg_loss.detach()), **{k2: float(v) for k2, v in pg_stats.items()}}
                if keep is not None and not raft and a.raft.coef:  # RAFT's imitation term beside the estimator's
                    lps, ms = [logprobs], [m * keep[idx].to(m.dtype).unsqueeze(-1)]
                    if replayed is not None and k < len(replay_chunks):  # kept samples of earlier steps
                        ridx = replay_chunks[k]
                        lps.append(forward_response(self.policy, replayed.input_ids[ridx],
                                                    replayed.attention_mask[ridx], replayed.prompt_ids.shape[1],
                                                    self.cfg.rollout.temperature)[1])
                        ms.append(replayed.response_mask[ridx].to(m.dtype))
                    width = max(x.shape[1] for x in lps)
                    imitation, _ = expert_iteration.raft_loss(
                        torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in lps]),
                        torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in ms]))
                    loss = loss + a.raft.coef * imitation
                    st["raft_nll"] = float(imitation.detach())
                if values is not None:
                    vf_loss, vf_stats = value_loss(values, rollout.values[idx], returns[idx], m, a.clip_range_value)
                    loss = loss + a.vf_coef * vf_loss
                    st.update(vf_loss=float(vf_loss.detach()), value_mean=float(masked_mean(values.detach(), m)),
                              explained_variance=explained_variance(values.detach(), returns[idx], m),
                              **{k2: float(v) for k2, v in vf_stats.items()})
                if a.entropy_coef:
                    ent = token_entropy(logits, m, a.loss_agg, max_len)
                    loss = loss - a.entropy_coef * ent
                else:
                    with torch.no_grad():
                        ent = token_entropy(logits, m, a.loss_agg, max_len)
                if a.batch_entropy_coef:
                    bent, maxp = batch_entropy(logits, m)
                    loss = loss - a.batch_entropy_coef * bent
                else:
                    with torch.no_grad():
                        bent, maxp = batch_entropy(logits, m)
                st.update(entropy=float(ent.detach()), batch_entropy=float(bent.detach()), max_batch_prob=float(maxp))
                if ref_logprobs is not None and a.kl_in == "loss":
                    kl_loss = aggregate(kl_penalty(logprobs, ref_logprobs[idx], a.kl_estimator), m, a.loss_agg,
                                        max_len)
                    loss = loss + beta * kl_loss
                    st["kl_loss"] = float(kl_loss.detach())
                (loss / a.grad_accum_steps).backward()
                if (k + 1) % a.grad_accum_steps == 0 or k + 1 == len(minibatches):
                    params = [p for p in self.policy.parameters() if p.requires_grad]
                    max_norm = a.max_grad_norm if a.max_grad_norm is not None else float("inf")
                    grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k2, v in st.items():
                    sums[k2] = sums.get(k2, 0.0) + (v if v == v else 0.0)
                count += 1
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        return out

    # ------------------------------------------------------------------ the run
    def save(self, step: int) -> None:
        if self.cfg.algo.raft.replay and (self.cfg.algo.estimator == "raft" or self.cfg.algo.raft.coef):
            self.state["raft_replay"] = self.replay.state_dict()
        if self.cfg.rollout.retry.fraction:
            self.state["retry_queue"] = self.retry.state_dict()
        ckpt.save_checkpoint(self.run_dir, step, policy=self.policy, optimizer=self.optimizer,
                             scheduler=self.scheduler, kl_controller=self.kl_ctl, state=self.state,
                             keep=self.cfg.log.keep_checkpoints)

    def resume_from(self, path: Path) -> None:
        self.state = ckpt.load_checkpoint(path, policy=self.policy, optimizer=self.optimizer,
                                          scheduler=self.scheduler, kl_controller=self.kl_ctl)
        self.step = int(self.state["step"])
        if "raft_replay" in self.state:
            self.replay.load_state_dict(self.state["raft_replay"])
        if "retry_queue" in self.state:
            self.retry.load_state_dict(self.state["retry_queue"])
        if self.cfg.algo.uses_reference:
            self.reference = self.make_reference(initial_state=self.run_dir / "checkpoints" / "reference.pt")

    def make_reference(self, initial_state: Path | None = None) -> Reference:
        ref = Reference(self.policy, use_adapter_disable=self.cfg.model.lora)
        if ref.lm is not None and initial_state is not None and initial_state.exists():
            ref.lm.load_state_dict(torch.load(initial_state, map_location="cpu", weights_only=True))
        return ref

    def train(self, resume: bool = False) -> dict:
        """Run (or continue) the whole job; returns a summary dict."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.run_dir, tensorboard=cfg.log.tensorboard)
        start = time.time()
        if resume:
            path = ckpt.latest_checkpoint(self.run_dir)
            if path is None:
                raise ConfigError(f"config error: --resume: no checkpoint in {self.run_dir}")
            self.resume_from(path)
            self.tracker.truncate_after(self.step)
            self.say(f"resumed from {path} at step {self.step}")
        else:
            write_config(self.run_dir, cfg)
            self.warm_start()
            if cfg.algo.uses_reference:
                self.reference = self.make_reference()
                if self.reference.lm is not None:
                    (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                    torch.save(self.reference.lm.state_dict(), self.run_dir / "checkpoints" / "reference.pt")
            before = self.evaluate()
            self.state["eval_before"] = before
            self.tracker.log(0, before, phase="eval")
            self.say("before RL: " + fmt_metrics(before))
        try:
            with progress_bar(cfg, self.step) as bar:
                for step in range(self.step + 1, cfg.steps + 1):
                    metrics, shown = self.rl_step(step)
                    self.tracker.log(step, metrics)
                    self.tracker.log_samples(step, shown)
                    self.step = step
                    if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.steps:
                        ev = self.evaluate()
                        self.tracker.log(step, ev, phase="eval")
                        metrics = {**metrics, **{f"eval_{k}": v for k, v in ev.items()}}
                    if cfg.log.checkpoint_every and step % cfg.log.checkpoint_every == 0:
                        self.save(step)
                    bar.advance(metrics)
            after = self.evaluate() if cfg.steps > 0 else self.state.get("eval_before", {})
        finally:
            self.rewards.close()
        self.tracker.log(self.step, after, phase="eval")
        self.save(self.step)
        export_final(self.run_dir, self.policy, self.tokenizer)
        self.tracker.close()
        if cfg.log.plot:
            plot_run(self.run_dir)
        totals = dict(self.rewards.totals)
        summary = {"eval_before": self.state.get("eval_before", {}), "eval_after": after,
                   "reward_failures": totals, "seconds": time.time() - start, "run_dir": str(self.run_dir)}
        self.say("after RL:  " + fmt_metrics(after))
        if any(totals.values()):
            self.say("reward failures: " + ", ".join(f"{k}={v}" for k, v in totals.items() if v))
        return summary


# ---------------------------------------------------------------------- small helpers


def columns_of(records: list[dict]) -> dict[str, list]:
    keys = [k for k in records[0] if k != "prompt"] if records else []
    return {k: [r.get(k) for r in records] for k in keys}


def fill_dropped(raw: torch.Tensor, group_size: int) -> torch.Tensor:
    """Replace dropped (NaN) scores by their group's mean so they do not move the baseline."""
    groups = raw.view(-1, group_size)
    valid = ~torch.isnan(groups)
    mean = torch.where(valid, groups, torch.zeros_like(groups)).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(valid, groups, mean.expand_as(groups)).reshape(-1)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    T = max(p.response_ids.shape[1] for p in parts)

    def pad_right(x, value):
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([p.prompt_ids for p in parts]),
        prompt_mask=torch.cat([p.prompt_mask for p in parts]),
        response_ids=torch.cat([pad_right(p.response_ids, pad_id) for p in parts]),
        response_mask=torch.cat([pad_right(p.response_mask, 0) for p in parts]),
        logprobs=torch.cat([pad_right(p.logprobs, 0.0) for p in parts]),
        values=None if parts[0].values is None else torch.cat([pad_right(p.values, 0.0) for p in parts]),
    )


def fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    import tomli_w

    (run_dir / "config.toml").write_text(tomli_w.dumps(config_to_dict(cfg)))


def export_final(run_dir: Path, policy: Policy, tokenizer) -> None:
    """The trained model in Hugging Face format (plus the value head), written atomically.

    A LoRA run writes the adapter merged into the base weights (a plain model that loads
    anywhere, e.g. ``--model RUN/final`` or ``progrl eval``) and the adapter alone in
    ``final/adapter``."""
    import copy
    import shutil

    from progrl.modeling import is_peft_model

    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_peft_model(policy.lm):
        policy.lm.save_pretrained(tmp / "adapter")
        copy.deepcopy(policy.lm).merge_and_unload().save_pretrained(tmp)
    else:
        policy.lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if policy.value_head is not None:
        torch.save(policy.value_head.state_dict(), tmp / "value_head.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


class progress_bar:
    """A rich progress bar with ETA and the latest reward; plain lines when not on a terminal."""

    def __init__(self, cfg: TrainConfig, start_step: int):
        self.total = cfg.steps
        self.start = start_step
        self.enabled = cfg.log.progress
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
        if "eval_accuracy" in metrics:
            desc += f"  acc {metrics['eval_accuracy']:.3f}"
        if self.progress is not None:
            self.progress.update(self.task_id, advance=1, description=desc)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            self.console.print(f"step {self.done}/{self.total}  {desc}  "
                               f"({metrics.get('samples_per_s', 0):.0f} samples/s)")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
