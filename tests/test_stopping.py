"""Stop strings, stop tokens written as text, and truncated responses (DAPO's overlong filtering)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from progrl.cli import main
from progrl.config import ConfigError
from progrl.policy import Policy
from progrl.rollout import SamplingParams, left_pad, sample
from progrl.stopping import StopStrings
from progrl.tracking import read_jsonl
from progrl.trainer import token_ids

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir, make_tokenizer  # noqa: E402


def test_cut_at_the_first_stop_string():
    tok = make_tokenizer()
    s = StopStrings(tok, ["\n", "end"])
    assert s.cut("abc\ndef end") == ("abc", True)
    assert s.cut("the end\nx") == ("the ", True)
    assert s.cut("nothing") == ("nothing", False)
    assert StopStrings(tok, ["\n", "end"], keep=True).cut("the end\nx") == ("the end", True)
    assert not StopStrings(tok, [])


def test_sampler_stops_at_a_stop_string_spanning_tokens():
    tok = make_tokenizer(chars="ab")
    from progrl.modeling import build_causal_lm_from_config

    lm = build_causal_lm_from_config("gpt2", len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64,
                                     bos_token_id=2, eos_token_id=1, pad_token_id=0, seed=0)
    policy = Policy(lm, value_head=False).eval()
    stop = StopStrings(tok, ["ab"])  # two tokens of this character-level tokenizer
    ids, mask = left_pad([tok("ab")["input_ids"], tok("ba")["input_ids"]] * 8, 0)
    params = SamplingParams(max_new_tokens=12, banned_ids=(0, 1, 2, 3), stop_check=stop.hits, pad_id=0)
    ro = sample(policy, ids, mask, params, torch.Generator().manual_seed(0))
    texts = tok.batch_decode(ro.response_ids.masked_fill(ro.response_mask == 0, 0).tolist(), skip_special_tokens=True)
    stopped = 0
    for text, trunc, m in zip(texts, ro.truncated.tolist(), ro.response_mask.tolist()):
        assert len(text) == sum(m)
        if trunc:
            assert "ab" not in text and len(text) == 12
        else:
            stopped += 1
            assert text.endswith("ab") and "ab" not in text[:-1]  # ended on the token completing it
    assert stopped >= 8
    # min_new_tokens holds for stop strings too
    params.min_new_tokens = 6
    ro = sample(policy, ids, mask, params, torch.Generator().manual_seed(0))
    assert int(ro.response_mask.sum(-1).min()) >= 6


def test_stop_tokens_given_as_text():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["hello world\nhello there\n"] * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>")
    newline = tok.get_vocab()["Ċ"]  # GPT-2 byte-level spelling of "\n"
    assert token_ids(tok, ["\n"], "rollout.stop_tokens") == (newline,)
    assert token_ids(tok, ["Ċ"], "rollout.stop_tokens") == (newline,)
    with pytest.raises(ConfigError, match=r"rollout.stop_tokens: 'hello world' is not one token .*rollout.stop"):
        token_ids(tok, ["hello world"], "rollout.stop_tokens")


REWARD = "def one(completions, **kwargs):\n    return [1.0] * len(completions)\n"


def run_tiny(tmp_path, name, *sets):
    (tmp_path / "r.py").write_text(REWARD)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {c}"}) + "\n" for c in "abcdefgh"))
    model = make_model_dir(tmp_path / "model")
    out = tmp_path / name
    args = ["train", "dataset", "--model", str(model), "--out", str(out), "--steps", "1",
            "--set", f"task_options.path={data}", "--set", f'reward.functions=["{tmp_path}/r.py:one"]',
            "--set", "reward.backend=inline", "--set", "rollout.batch_size=4", "--set", "rollout.num_generations=2",
            "--set", "rollout.banned_tokens=['<eos>']", "--set", "log.progress=false", "--set", "log.report_to=[]",
            "--set", "log.plot=false", "--set", "log.checkpoint_every=0", "--set", "threads=1"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["phase"] == "train"][0], read_jsonl(
        out / "samples.jsonl")


def test_truncated_responses_counted_masked_or_given_a_reward(tmp_path):
    # EOS banned and no stop string: every response runs to max_new_tokens
    row, _ = run_tiny(tmp_path, "keep", "rollout.max_new_tokens=3")
    assert row["truncated_fraction"] == 1.0 and row["reward_mean"] == 1.0 and row["dropped"] == 0
    row, _ = run_tiny(tmp_path, "value", "rollout.max_new_tokens=3", "rollout.on_truncated=-0.5")
    assert row["truncated_fraction"] == 1.0 and row["reward_mean"] == -0.5
    row, _ = run_tiny(tmp_path, "mask", "rollout.max_new_tokens=3", "rollout.on_truncated='mask'")
    assert row["dropped"] == 8  # all of them out of the loss
    # a stop string every response meets: none truncated, and the reward sees the text cut before it
    row, samples = run_tiny(tmp_path, "stop", "rollout.max_new_tokens=40", "rollout.stop=['a','b','c','d','e','f',"
                            "'g','h','i','j','k','l','m','n','o','p','q','r','s','t','u','v','w','x','y','z',' ']")
    assert row["truncated_fraction"] < 1.0
    assert all(not any(ch.isalpha() or ch == " " for ch in s["completion"]) for s in samples)
