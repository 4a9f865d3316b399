"""TRL's side of the GRPO comparison: the current ``trl.GRPOTrainer``, one subprocess.

    bench/out/venv-trl/bin/python bench/compare_trl/trl_grpo_side.py PLAN.json RESULT.json

Runs in its own virtual environment (current trl + its transformers; progrl is not
installed there). Same initial model folder, prompts (in the same order), reward code and
hyperparameters as progrl's side; fp32, no gradient checkpointing, one update per batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, Snapshots, make_task_reward, peak_rss_mb, read_json, set_threads, write_result  # noqa: E402


def main(plan_path: str, result_path: str) -> int:
    wall = Clock()
    plan = read_json(plan_path)
    set_threads(plan["threads"])
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    h = plan["hparams"]
    G = h["num_generations"]
    n = plan["samples_per_step"]
    rows = [rec for step in plan["records"] for rec in step]  # step s uses rows [8(s-1), 8s): no shuffling
    dataset = Dataset.from_list([{"prompt": r["prompt"], "reward_scale": r["reward_scale"],
                                  "exact_bonus": r["exact_bonus"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(plan["model_dir"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(plan["model_dir"], dtype=torch.float32)
    banned = [tokenizer.convert_tokens_to_ids(t) for t in plan["banned_tokens"]]

    kwargs = dict(
        output_dir=str(Path(plan["out_dir"]) / "trainer"), report_to="none", save_strategy="no",
        logging_steps=1, max_steps=plan["steps"], seed=plan["seed"], use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, dataloader_num_workers=0, disable_dropout=True,
        per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=G, num_iterations=1,
        max_completion_length=1, temperature=1.0, top_k=0, top_p=1.0,
        generation_kwargs={"suppress_tokens": banned},  # progrl's rollout.banned_tokens
        learning_rate=h["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=h["max_grad_norm"],
        beta=h["beta"], epsilon=h["clip_range"], loss_type="dapo", scale_rewards="group",
        shuffle_dataset=False, remove_unused_columns=False, log_completions=False,
    )
    kwargs.update(plan.get("trl_args", {}))  # the time-to-accuracy mode's settings (e.g. a tuned lr)
    args = GRPOConfig(**kwargs)
    snaps = Snapshots(plan)

    class Record(TrainerCallback):
        def __init__(self):
            self.rewards, self.step_ends, self.t_begin, self.t_end = [], [], None, None

        def on_step_end(self, args, state, control, model=None, **kw):
            self.step_ends.append(self.t_begin())

            def save(folder):
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)

            if snaps.tick(save, state.global_step):
                control.should_training_stop = True

        def on_train_begin(self, args, state, control, **kw):
            self.t_begin = Clock()
            snaps.start()

        def on_train_end(self, args, state, control, **kw):
            self.t_end, self.cpu_end = self.t_begin(), self.t_begin.cpu()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    record = Record()
    trainer = GRPOTrainer(model=model, reward_funcs=make_task_reward(), args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[record])
    setup_s = wall()
    trainer.train()
    loop_s = record.t_end
    final = Path(plan["out_dir"]) / "final"
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    samples = len(record.step_ends) * kwargs["per_device_train_batch_size"]
    write_result(result_path, side="trl", algo="grpo", samples=samples, loop_s=loop_s, loop_cpu_s=record.cpu_end,
                 snapshots=snaps.saved, trl_args={k: v for k, v in kwargs.items() if k != "output_dir"},
                 setup_s=setup_s, samples_per_s=samples / loop_s, step_rewards=record.rewards,
                 step_ends=record.step_ends, final_model=str(final),
                 versions={"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__},
                 trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                 wall_s=wall(), peak_rss_mb=peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
