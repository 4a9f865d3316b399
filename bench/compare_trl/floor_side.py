"""The model-work floor of a 4-epoch PPO step: the GPT-2's passes and nothing else.

    PYTHONPATH=. python bench/compare_trl/floor_side.py PLAN.json RESULT.json

Not an RL implementation: it runs, for the plan's prompts, exactly the model passes that any
implementation of PPO with a value head on the shared trunk, a frozen reference and
``ppo_epochs`` x minibatches must run, with the ``transformers`` GPT-2 on the fastest CPU
kernels we know for it (progrl's fused GELU and fused AdamW) and no RL bookkeeping around them:

- one no-grad forward of the policy over the step's prompts (sampling one answer token,
  its log-prob and value come from the last prompt position);
- one no-grad forward of the frozen reference over the same prompts;
- ``ppo_epochs`` x (samples / ``mini_batch_size``) forward + backward passes of the policy and
  value head over a minibatch, a clipped PPO loss at the answer position, grad-norm clipping
  and an AdamW step.

Its samples/s is therefore a ceiling on how fast ANY implementation of the same algorithm
can run on this machine with these fp32 kernels: ``floor / TRL`` bounds the speed-up over
classic TRL that a faster RL loop around the same passes can reach. ``"dtype": "bfloat16"``
in the plan runs the same passes under CPU bf16 autocast (a numerics change, reported
separately).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, peak_rss_mb, read_json, set_threads, write_result  # noqa: E402


def main(plan_path: str, result_path: str) -> int:
    wall = Clock()
    plan = read_json(plan_path)
    set_threads(plan["threads"])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from progrl.policy import fuse_activations, position_ids_from_mask
    from progrl.trainer import make_adamw

    torch.manual_seed(plan["seed"])
    h = plan["hparams"]
    n, mb, epochs = plan["samples_per_step"], h["mini_batch_size"], h["ppo_epochs"]
    bf16 = plan.get("dtype") == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(plan["model_dir"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(plan["model_dir"], dtype=torch.float32)
    fuse_activations(model)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    value_head = torch.nn.Linear(model.config.n_embd, 1)
    params = [*model.parameters(), *value_head.parameters()]
    optimizer = make_adamw(params, lr=h["lr"], weight_decay=0.0)
    model.train()

    def last_position(lm, ids, mask):
        """Logits and hidden state at the last prompt position (where the answer token is predicted)."""
        positions = position_ids_from_mask(mask)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = lm.transformer(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            last = hidden[:, -1]
            return lm.lm_head(last).float(), last.float()

    setup_s = wall()
    loop = Clock()
    step_ends = []
    for step_records in plan["records"]:
        batch = tokenizer([r["prompt"] for r in step_records], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():  # sampling pass: answer token, its log-prob and value
            logits, last = last_position(model, ids, mask)
            old_logp_all = torch.log_softmax(logits, -1)
            tokens = torch.multinomial(old_logp_all.exp(), 1).squeeze(-1)
            old_logp = old_logp_all.gather(-1, tokens[:, None]).squeeze(-1)
            old_values = value_head(last).squeeze(-1)
            ref_logits, _ = last_position(reference, ids, mask)  # reference pass
            ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        scores = torch.rand(n) - 0.2 * (old_logp - ref_logp)
        advantages = scores - old_values
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        for _ in range(epochs):
            for idx in torch.randperm(n).split(mb):
                logits, last = last_position(model, ids[idx], mask[idx])
                logp = torch.log_softmax(logits, -1).gather(-1, tokens[idx, None]).squeeze(-1)
                ratio = (logp - old_logp[idx]).exp()
                pg = -torch.min(ratio * advantages[idx], ratio.clamp(1 - h["clip_range"], 1 + h["clip_range"])
                                * advantages[idx]).mean()
                vf = (value_head(last).squeeze(-1) - scores[idx]).pow(2).mean()
                loss = pg + h["vf_coef"] * vf
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, h["max_grad_norm"])
                optimizer.step()
        step_ends.append(loop())
    loop_s, loop_cpu_s = loop(), loop.cpu()
    samples = plan["steps"] * n
    write_result(result_path, side="floor", algo="ppo-passes", dtype=plan.get("dtype", "float32"), samples=samples,
                 loop_s=loop_s, loop_cpu_s=loop_cpu_s, setup_s=setup_s, samples_per_s=samples / loop_s,
                 step_rewards=[0.0] * len(step_ends), step_ends=step_ends, wall_s=wall(), peak_rss_mb=peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
