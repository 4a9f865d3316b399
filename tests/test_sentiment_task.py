"""The sentiment task (paper task 1) with tiny models built from a config: prompts, reward, runs.

Never touches the 135M model or the Hub: the "pretrained" model is a one-layer Llama saved with
``save_pretrained`` next to a small byte-level BPE tokenizer trained on the built-in openings.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import math

import pytest
import torch

pytest.importorskip("vaderSentiment")

from progrl.cli import main
from progrl.config import ConfigError
from progrl.tasks import get_task, sentiment_core as core
from progrl.tasks.sentiment import SentimentTask, split_texts
from progrl.tracking import read_jsonl

EOT = "<|endoftext|>"
TIMING = {"samples_per_s", "tokens_per_s", "time_generation", "time_reward", "time_update"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "progrl-cache"))


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = core.load_prompt_texts("builtin")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tok):
    """A one-layer Llama + tokenizer in a folder, as ``save_pretrained`` writes them."""
    from progrl.modeling import build_causal_lm_from_config

    folder = tmp_path_factory.mktemp("tiny-llama")
    eos = tok.eos_token_id
    lm = build_causal_lm_from_config("llama", len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=64,
                                     bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, seed=0)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def bound(tok, **options) -> SentimentTask:
    task = get_task("sentiment", options)
    task.bind_tokenizer(tok)
    return task


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------------------------
# options, prompts, records
# ------------------------------------------------------------------------------------------


def test_options_are_validated():
    with pytest.raises(ConfigError, match="task_options.bogus: unknown field"):
        get_task("sentiment", {"bogus": 1})
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        get_task("sentiment", {"min_prompt_tokens": 5, "max_prompt_tokens": 3})
    with pytest.raises(ConfigError, match="min_prompt_tokens"):
        get_task("sentiment", {"min_prompt_tokens": 0})


def test_defaults_follow_the_paper():
    d = get_task("sentiment").defaults()
    assert d["model"]["name"] == "smollm2-135m"
    r = d["rollout"]
    assert (r["min_new_tokens"], r["max_new_tokens"], r["temperature"], r["top_k"], r["top_p"]) == (4, 16, 1.0, 0, 1.0)
    assert d["reward"]["backend"] == "inline" and d["sft"]["examples"] == 0
    assert d["algo"]["kl_coef"] == 0.0
    assert d["eval"]["n_prompts"] <= 64


def test_prompts_need_the_tokenizer():
    task = get_task("sentiment")
    with pytest.raises(RuntimeError, match="bind_tokenizer"):
        task.train_records(4, 0, 1)


def test_train_records_are_2_to_8_tokens_and_a_pure_function(tok):
    task = bound(tok)
    records = task.train_records(64, seed=3, step=5)
    assert len(records) == 64 and all(set(r) == {"prompt"} for r in records)
    counts = [n_tokens(tok, r["prompt"]) for r in records]
    assert min(counts) >= 2 and max(counts) <= 8
    assert len(set(counts)) > 3  # k is drawn, not fixed
    # every prompt is the opening of a training text
    assert all(any(t.startswith(r["prompt"]) for t in task._train) for r in records)
    # a pure function of (n, seed, step): same call, fresh task object -> same prompts
    assert task.train_records(64, 3, 5) == records
    assert bound(tok).train_records(64, 3, 5) == records
    assert task.train_records(64, 3, 6) != records
    assert task.train_records(64, 4, 5) != records
    # more prompts than texts: drawn with replacement, still n of them
    assert len(task.train_records(len(task._train) + 7, 0, 1)) == len(task._train) + 7


def test_eval_records_come_from_held_out_texts(tok):
    task = bound(tok)
    texts = core.load_prompt_texts("builtin")
    train, held_out = split_texts(texts)
    assert len(held_out) == round(0.1 * len(texts)) and not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(texts)
    records = task.eval_records(64, seed=11)
    assert len(records) == 64 and records == task.eval_records(64, 11)
    assert all(2 <= n_tokens(tok, r["prompt"]) <= 8 for r in records)
    assert all(any(t.startswith(r["prompt"]) for t in task._eval) for r in records)
    # the split does not depend on the run seed
    assert split_texts(texts) == (train, held_out)


def test_prompt_files_and_token_range(tok, tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("review,sentiment\n" + "\n".join(
        f'"Review number {i}: the acting was fine<br />and the plot was long.",positive' for i in range(30)) + "\n")
    task = bound(tok, prompts=str(csv_path), min_prompt_tokens=3, max_prompt_tokens=4)
    prompts = [r["prompt"] for r in task.train_records(20, 0, 1)]
    assert all(3 <= n_tokens(tok, p) <= 4 for p in prompts)
    assert all("<br" not in t and t.startswith("Review number") for t in task._train + task._eval)  # cleaned
    assert all(any(t.startswith(p) for t in task._train) for p in prompts)
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"A lovely film, number {i}."}) for i in range(5)) + "\n")
    assert len(bound(tok, prompts=str(jsonl)).eval_records(3, 0)) == 3
    with pytest.raises(ValueError, match="prompt file not found"):
        bound(tok, prompts=str(tmp_path / "missing.csv"))


def test_sentiment_run_names_its_prompt_column_and_refuses_a_csv_without_text(tiny_model_dir, tmp_path, capsys):
    """Issue 9 item 11 through the CLI: the column used is printed; no text column -> one line, exit 2."""
    bad = tmp_path / "ids.csv"
    bad.write_text("id,label\n" + "".join(f"c-{1000 + i}-beta,{i % 2}\n" for i in range(40)))
    code = main(["train", "sentiment", "--model", str(tiny_model_dir), "--out", str(tmp_path / "bad-run"),
                 "--set", f'task_options.prompts="{bad}"', "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "ids.csv has no text column" in err and "Traceback" not in err
    good = tmp_path / "labelled.csv"
    good.write_text("label,body\n" + "".join(f"{i % 2},What a film number {i} was, truly\n" for i in range(40)))
    code = main(["train", "sentiment", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"),
                 "--set", f'task_options.prompts="{good}"', "--steps", "1", "--set", "rollout.batch_size=2",
                 "--set", "eval.n_prompts=4", "--set", "log.progress=false", "--set", "log.tensorboard=false",
                 "--set", "log.plot=false", "--set", "rollout.max_new_tokens=4"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "column 'body'" in " ".join(err.split())


# ------------------------------------------------------------------------------------------
# reward and metrics
# ------------------------------------------------------------------------------------------


def test_reward_is_vader_of_prompt_plus_response_through_the_engine():
    from progrl.rewards import RewardEngine
    from progrl.rewards.config import RewardConfig

    prompts = ["What a terrible, awful film.", "The plot"]
    completions = [" The end.", " was wonderful and I loved it"]
    for response_only, texts in ((False, [p + c for p, c in zip(prompts, completions)]), (True, completions)):
        task = get_task("sentiment", {"response_only": response_only})
        with RewardEngine(RewardConfig(backend="inline"), default_functions=task.reward_functions()) as engine:
            result = engine.score(prompts, completions)
        assert result.rewards == [core.vader_compound(t) for t in texts]
    assert core.vader_compound(prompts[0] + completions[0]) < -0.5


def test_metrics():
    task = get_task("sentiment")
    completions = [" great", " awful", " a man", " great"]
    rewards = [0.6, -0.5, 0.0, 0.6]
    m = task.metrics([{"prompt": ""}] * 4, completions, rewards)
    assert m["positive_fraction"] == 0.5 and m["negative_fraction"] == 0.25
    assert m["distinct_completions"] == 0.75
    assert m["response_compound"] == pytest.approx(sum(core.vader_compound(c) for c in completions) / 4)


# ------------------------------------------------------------------------------------------
# end to end with a tiny local model
# ------------------------------------------------------------------------------------------

RUN = ["--set", "threads=1", "--set", "rollout.batch_size=4", "--set", "algo.minibatch_size=8",
       "--set", "algo.epochs=2", "--set", "algo.lr=1e-3", "--set", "eval.n_prompts=8",
       "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "log.plot=false"]


def train_rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(run_dir / "metrics.jsonl") if r["phase"] == "train"]


def test_train_sentiment_end_to_end_with_vader_rewards(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    gae = ["--set", "algo.estimator=gae", "--set", "rollout.num_generations=1"]  # also the value-head path
    args = ["train", "sentiment", "--model", str(tiny_model_dir), "--steps", "2", "--out", str(run), *RUN, *gae]
    assert main(args) == 0
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "eval"]
    assert len(evals) == 2 and all("positive_fraction" in e and "mean_reward" in e for e in evals)
    # the logged rewards are VADER compound scores of prompt + completion
    samples = read_jsonl(run / "samples.jsonl")
    assert samples
    for s in samples:
        assert s["reward"] == pytest.approx(core.vader_compound(s["prompt"] + s["completion"]), abs=1e-12)
        assert 2 <= n_tokens(core_tok(tiny_model_dir), s["prompt"]) <= 8
    for r in rows:
        assert -1.0 <= r["reward_min"] <= r["reward_mean"] <= r["reward_max"] <= 1.0
        assert 4 <= r["response_len"] <= 16
    cfg = (run / "config.toml").read_text()
    assert 'backend = "inline"' in cfg and "min_new_tokens = 4" in cfg
    assert (run / "final" / "config.json").exists()
    assert "held-out mean_reward" in capsys.readouterr().out


def core_tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_lora_reference_is_the_base_model_with_the_adapter_disabled(tiny_model_dir, tok):
    """The Trainer's reference for a LoRA run: no copy, the adapter switched off."""
    from progrl import modeling
    from progrl.policy import Policy, Reference

    base, _ = modeling.load_causal_lm(str(tiny_model_dir))
    frozen, _ = modeling.load_causal_lm(str(tiny_model_dir))
    policy = Policy(modeling.apply_lora(base, r=4, alpha=8))
    ref = Reference(policy, use_adapter_disable=True)
    assert ref.lm is None  # no second copy of the weights
    ids = torch.tensor([tok("The movie was great and the")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = frozen(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(ref.logits(ids, mask), expected)
        assert torch.equal(policy(ids, mask)[0], expected)  # B = 0: the adapter adds exactly 0
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        assert not torch.allclose(policy(ids, mask)[0], expected, atol=1e-3)
        assert torch.equal(ref.logits(ids, mask), expected)  # still the base model
        assert not torch.allclose(policy(ids, mask)[0], expected, atol=1e-3)  # adapter back on


LORA = ["--set", "model.lora=true", "--set", "model.lora_r=4", "--set", "algo.kl_coef=0.2",
        "--set", "algo.kl_controller=adaptive", "--set", "log.checkpoint_every=1"]


def test_lora_run_kl_starts_at_zero_and_resume_and_export_work(tiny_model_dir, tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["train", "sentiment", "--model", str(tiny_model_dir), "--steps", "3", *RUN, *LORA]
    assert main([*args, "--out", str(full)]) == 0
    rows = train_rows(full)
    # the adapter starts as a no-op: the policy IS the reference at step 1 (up to the float
    # difference between cached sampling and a full forward pass); later it moves away
    assert abs(rows[0]["kl"]) < 1e-5
    assert rows[0]["kl_coef"] == 0.2
    assert any(abs(r["kl"]) > 1e-5 for r in rows[1:])
    assert not (full / "checkpoints" / "reference.pt").exists()  # no frozen copy for LoRA

    from progrl.trainer import Trainer

    original = Trainer.rl_step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "rl_step", interrupted)
    assert main([*args, "--out", str(cut)]) == 130
    monkeypatch.setattr(Trainer, "rl_step", original)
    assert main(["train", "sentiment", "--resume", str(cut)]) == 0
    a, b = train_rows(full), train_rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ra:
            va, vb = ra[k], rb[k]
            assert va == vb or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)), (ra["step"], k)

    # export: final/ is a plain model (adapter merged) that loads anywhere; `progrl eval` agrees
    final = full / "final"
    assert (final / "config.json").exists() and (final / "adapter" / "adapter_config.json").exists()
    capsys.readouterr()
    assert main(["eval", str(full), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last = [r for r in read_jsonl(full / "metrics.jsonl") if r["phase"] == "eval"][-1]
    assert metrics["mean_reward"] == pytest.approx(last["mean_reward"], abs=1e-6)


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).resolve().parent.parent
                                        .glob("configs/sentiment-*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from progrl.cli import load_run_config, make_parser

    args = make_parser().parse_args(["train", "sentiment", "--config", str(path)])
    cfg = load_run_config(args)
    assert cfg.task == "sentiment" and cfg.rollout.max_new_tokens == 16 and cfg.rollout.top_k == 0
    get_task("sentiment", cfg.task_options)


def test_cpu_config_equals_the_task_defaults():
    from progrl.cli import load_run_config, make_parser
    from progrl.config import config_to_dict

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    with_file = load_run_config(make_parser().parse_args(
        ["train", "sentiment", "--config", str(root / "configs" / "sentiment-cpu.toml")]))
    plain = load_run_config(make_parser().parse_args(["train", "sentiment"]))
    a, b = config_to_dict(with_file), config_to_dict(plain)
    assert get_task("sentiment", a.pop("task_options")).options == get_task("sentiment", b.pop("task_options")).options
    assert a == b
