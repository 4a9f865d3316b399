"""Generation speed of a pretrained model on CPU: progrl's sampler vs ``model.generate``.

    python bench/generation_speed.py                                   # smollm2-135m, batches 1,8,32
    python bench/generation_speed.py --markdown docs/benchmarks.md     # also (re)write "## Generation speed"

Both sides sample purely (temperature 1, no top-k / top-p) the same number of new tokens for the
same left-padded prompts (the sentiment task's 2-8 token review openings): progrl with
``min_new_tokens = max_new_tokens`` (no early stop), ``generate`` with ``do_sample=True,
min_new_tokens = max_new_tokens``. progrl is timed as the trainer runs it (policy with a value
head: every token also gets its log-probability and value) and without the value head.
tokens/s = batch x new tokens / wall seconds; the median of the repeats (and the best) is
reported, after one warm-up call per configuration.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, however this file is loaded
import benchdoc  # noqa: E402

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from progrl import modeling  # noqa: E402
from progrl.policy import Policy  # noqa: E402
from progrl.rollout import SamplingParams, left_pad, sample  # noqa: E402
from progrl.tasks import get_task  # noqa: E402

SECTION = "Generation speed"


def _machine() -> str:
    return f"{os.cpu_count()}-core CPU ({benchdoc.cpu_model()}), Python {platform.python_version()}, torch {torch.__version__}"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(model_name: str, batch_sizes: list[int], new_tokens: int, repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    lm, tok = modeling.load_causal_lm(model_name)
    task = get_task("sentiment")
    task.bind_tokenizer(tok)
    with_value = Policy(lm, value_head=True).eval()
    without_value = Policy(lm, value_head=False).eval()
    pad = tok.pad_token_id
    rows = []
    for b in batch_sizes:
        prompts = [r["prompt"] for r in task.train_records(b, seed=0, step=1)]
        ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], pad)
        params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, stop_ids=(tok.eos_token_id,),
                                pad_id=pad)
        g = torch.Generator().manual_seed(0)

        def progrl(policy=with_value):
            r = sample(policy, ids, mask, params, g)
            assert r.response_ids.shape == (b, new_tokens)

        def hf():
            with torch.no_grad():
                out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                  temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=pad)
            assert out.shape == (b, ids.shape[1] + new_tokens)

        for name, fn in (("progrl sample (value head)", progrl),
                         ("progrl sample (no value head)", lambda: progrl(without_value)),
                         ("model.generate", hf)):
            secs = timed(fn, repeats)
            med = statistics.median(secs)
            rows.append({"impl": name, "batch": b, "seconds": med, "tok_s": b * new_tokens / med,
                         "best_tok_s": b * new_tokens / min(secs), "prompt_len": ids.shape[1]})
            print(f"batch {b:3d}  {name:30s} {med:7.3f} s  {b * new_tokens / med:7.1f} tok/s "
                  f"(best {b * new_tokens / min(secs):.1f})", flush=True)
    rows.append(breakdown(lm, tok, task, max(batch_sizes), new_tokens, repeats))
    return rows


def breakdown(lm, tok, task, b: int, new_tokens: int, repeats: int) -> dict:
    """Where sampling time goes at batch ``b``: one ``torch.multinomial`` call over the whole
    vocabulary (paid once per new token by ``generate``) vs inverse-CDF sampling from float64
    uniforms (what progrl's sampler does),
    and the prompt pass with logits at every position vs the last one only (what progrl and ``generate`` run)."""
    prompts = [r["prompt"] for r in task.train_records(b, seed=0, step=1)]
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    probs = torch.softmax(torch.randn(b, lm.config.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        t = {
            "multinomial": timed(lambda: torch.multinomial(probs, 1, generator=g), max(repeats, 10)),
            "inverse_cdf": timed(lambda: torch.searchsorted(probs.double().cumsum(-1),
                                                            torch.rand(b, 1, dtype=torch.float64, generator=g),
                                                            right=True), max(repeats, 10)),
            "prefill_all": timed(lambda: lm(input_ids=ids, attention_mask=mask, use_cache=True), repeats),
            "prefill_last": timed(lambda: lm(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1),
                                  repeats),
        }
    out = {"impl": "breakdown", "batch": b, "vocab": lm.config.vocab_size, "new_tokens": new_tokens,
           "prompt_len": ids.shape[1]}
    out.update({k: statistics.median(v) for k, v in t.items()})
    print(f"breakdown batch {b}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in out.items()
                                                if isinstance(v, float)), flush=True)
    return out


def render(rows: list[dict], model_name: str, new_tokens: int, repeats: int, threads: int, command: str,
           load: str) -> str:
    bd = next(r for r in rows if r["impl"] == "breakdown")
    rows = [r for r in rows if r["impl"] != "breakdown"]
    by = {(r["batch"], r["impl"]): r for r in rows}
    batches = sorted({r["batch"] for r in rows})
    lines = [
        f"## {SECTION}",
        "",
        f"Pure sampling (temperature 1, top_k 0, top_p 1) of {new_tokens} new tokens per sequence with "
        f"`{model_name}` (SmolLM2-135M-Instruct, float32) after 2-8 token review openings (the sentiment task's "
        f"prompts), on a {_machine()}, torch threads = {threads}; 1-minute load average {load} at the start "
        "(above ~1, other jobs shared the cores and absolute numbers are noisy); the implementations run one "
        f"after the other under the same load. tokens/s = batch x "
        f"{new_tokens} / wall seconds, best of {repeats} repeats after a warm-up (the least disturbed by the other "
        "jobs; median in brackets). progrl's sampler "
        "(`progrl.rollout.sample`) also returns each token's log-probability and, with the value head, its value "
        "(what the trainer uses); `model.generate` uses `do_sample=True, min_new_tokens = max_new_tokens`.",
        "",
        f"Reproduce: `{command}`",
        "",
        "| batch | progrl sample (value head) tok/s | progrl sample (no value head) tok/s | model.generate tok/s "
        "| progrl / generate |",
        "|---|---|---|---|---|",
    ]
    for b in batches:
        a = by[(b, "progrl sample (value head)")]
        n = by[(b, "progrl sample (no value head)")]
        h = by[(b, "model.generate")]
        lines.append(f"| {b} | {a['best_tok_s']:.1f} ({a['tok_s']:.1f}) | {n['best_tok_s']:.1f} ({n['tok_s']:.1f}) "
                     f"| {h['best_tok_s']:.1f} ({h['tok_s']:.1f}) | {a['best_tok_s'] / h['best_tok_s']:.2f}x |")
    B, n = bd["batch"], bd["new_tokens"]
    total = by[(B, "model.generate")]["seconds"]
    lines += [
        "",
        f"Where the time goes at batch {B} ({bd['vocab']:,}-token vocabulary, prompts padded to {bd['prompt_len']} "
        f"tokens), medians: the prompt pass with logits at every prompt position "
        f"{bd['prefill_all'] * 1000:.0f} ms vs the last position only (`logits_to_keep=1`, what both progrl and "
        f"`generate` run) {bd['prefill_last'] * 1000:.0f} ms; one `torch.multinomial` draw over the vocabulary "
        f"{bd['multinomial'] * 1000:.1f} ms, paid once per new token by `generate` ({n} x = "
        f"{n * bd['multinomial']:.2f} s, {n * bd['multinomial'] / total:.0%} of `generate`'s time), vs "
        f"{bd['inverse_cdf'] * 1000:.1f} ms for progrl's inverse-CDF draw (a float64 cumulative sum and "
        "`searchsorted` on one float64 uniform per sequence). The rest is the 135M-parameter forward passes, "
        "the same in both.",
        "",
        verdict(by, batches) + " progrl draws by inverse CDF from a row of uniforms per sequence so that a "
        "sequence's tokens do not depend on the batch or process it is sampled in (several processes sample what "
        "one samples; docs/decisions.md); that it is also faster is a side effect.",
        "",
    ]
    return "\n".join(lines)


def verdict(by: dict, batches: list[int]) -> str:
    ratios = [by[(b, "progrl sample (value head)")]["best_tok_s"] / by[(b, "model.generate")]["best_tok_s"]
              for b in batches]
    lo, hi = min(ratios), max(ratios)
    if lo >= 0.9:
        return (f"Conclusion: progrl's sampler runs at {lo:.2f}-{hi:.2f}x the speed of `generate` (best of the "
                "repeats), although it also returns the log-probabilities of the sampled tokens and, with the value "
                "head, the values (its prompt pass runs the LM head on the last position only, as `generate` does).")
    return (f"Conclusion: progrl's sampler runs at {lo:.2f}-{hi:.2f}x the speed of `generate` (best of the "
            "repeats); the gap is the extra work listed above.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", metavar="FILE", help=f"write/replace the '## {SECTION}' section of FILE")
    args = ap.parse_args()
    load = _load()
    rows = run(args.model, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens, args.repeats,
               args.threads)
    command = "python bench/generation_speed.py " + " ".join(
        f"{a}" for a in sys.argv[1:] if a) if len(sys.argv) > 1 else "python bench/generation_speed.py"
    section = render(rows, args.model, args.new_tokens, args.repeats, args.threads, command, load)
    benchdoc.publish(section, SECTION, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
