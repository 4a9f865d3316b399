"""Classic TRL PPO's side (``trl==0.11.4`` ``PPOTrainer``), one subprocess.

    bench/out/venv-trl011/bin/python bench/compare_trl/trl_ppo_side.py PLAN.json RESULT.json

Runs in its own virtual environment (trl 0.11.4 with a transformers it supports). The loop
is the classic one from TRL's examples: ``generate`` the batch, score the decoded answers
with the arithmetic task's reward, ``step(queries, responses, scores)``. Same initial model,
prompts, reward code and hyperparameters as progrl's side.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, Snapshots, make_task_reward, peak_rss_mb, read_json, set_threads, write_result  # noqa: E402

warnings.filterwarnings("ignore")


def load_tokenizer(folder: str):
    """The task tokenizer saved by transformers 5 (``tokenizer.json`` + special tokens) in transformers 4.x."""
    import json

    from transformers import PreTrainedTokenizerFast

    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in config}
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json"), padding_side="left",
                                   clean_up_tokenization_spaces=False, **special)


def main(plan_path: str, result_path: str) -> int:
    wall = Clock()
    plan = read_json(plan_path)
    set_threads(plan["threads"])
    import torch
    import transformers
    import trl
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    h = plan["hparams"]
    n = plan["samples_per_step"]
    tokenizer = load_tokenizer(plan["model_dir"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained(plan["model_dir"], torch_dtype=torch.float32,
                                                              summary_dropout_prob=0.0)
    kwargs = dict(
        exp_name="compare_trl", seed=plan["seed"], log_with=None, learning_rate=h["lr"],
        batch_size=n, mini_batch_size=h["mini_batch_size"], gradient_accumulation_steps=1,
        ppo_epochs=h["ppo_epochs"], init_kl_coef=h["init_kl_coef"], adap_kl_ctrl=h["adap_kl_ctrl"],
        target=h["target"], horizon=h["horizon"], kl_penalty="kl", gamma=h["gamma"], lam=h["lam"],
        cliprange=h["clip_range"], cliprange_value=h["clip_range_value"], vf_coef=h["vf_coef"],
        max_grad_norm=h["max_grad_norm"], whiten_rewards=False,
    )
    kwargs.update(plan.get("trl_args", {}))  # the time-to-accuracy mode's settings
    config = PPOConfig(**kwargs)
    n = config.batch_size
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)  # TRL copies the reference itself
    reward = make_task_reward()
    banned = [tokenizer.convert_tokens_to_ids(t) for t in plan["banned_tokens"]]
    gen_kwargs = dict(max_new_tokens=1, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                      suppress_tokens=banned, pad_token_id=tokenizer.pad_token_id)
    setup_s = wall()

    def save(folder):
        trainer.model.pretrained_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    loop = Clock()
    snaps = Snapshots(plan)
    rewards, step_ends = [], []
    for step, step_records in enumerate(plan["records"], start=1):
        prompts = [r["prompt"] for r in step_records]
        queries = [tokenizer(p, return_tensors="pt")["input_ids"][0] for p in prompts]
        responses = trainer.generate(queries, batch_size=n, return_prompt=False, **gen_kwargs)
        completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = reward(prompts, completions, [r["reward_scale"] for r in step_records],
                        [r["exact_bonus"] for r in step_records])
        trainer.step(queries, responses, [torch.tensor(s, dtype=torch.float32) for s in scores])
        rewards.append(sum(scores) / len(scores))
        step_ends.append(loop())
        if snaps.tick(save, step):
            break
    loop_s, loop_cpu_s = loop(), loop.cpu()
    final = Path(plan["out_dir"]) / "final"
    trainer.model.pretrained_model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    samples = len(step_ends) * n
    write_result(result_path, side="trl", algo="ppo", samples=samples, snapshots=snaps.saved, loop_s=loop_s, loop_cpu_s=loop_cpu_s,
                 setup_s=setup_s, samples_per_s=samples / loop_s, step_rewards=rewards, step_ends=step_ends,
                 final_model=str(final),
                 versions={"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__},
                 trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                 wall_s=wall(), peak_rss_mb=peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
