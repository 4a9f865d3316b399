"""Tests for progrl.tasks.sentiment_core: VADER reward, prompt sources, prompt cutting (offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import csv
import json
import random

import pytest

pytest.importorskip("vaderSentiment")

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from progrl.tasks import sentiment_core as sc
from progrl.tasks.sentiment_core import load_prompt_texts, make_prompts, vader_reward

POSITIVE = "This movie was wonderful and I loved it"
NEGATIVE = "terrible, boring, awful"
NEUTRAL = "The film is set in a town and the story follows a man"


@pytest.fixture(scope="module")
def direct():
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: analyzer.polarity_scores(text)["compound"]


# ------------------------------------------------------------------------------------------
# VADER reward
# ------------------------------------------------------------------------------------------


def test_vader_reward_values(direct):
    prompts = ["", "", ""]
    scores = vader_reward(prompts, [POSITIVE, NEGATIVE, NEUTRAL])
    assert scores[0] > 0.5
    assert scores[1] < -0.5
    assert abs(scores[2]) < 0.05
    assert scores == [direct(POSITIVE), direct(NEGATIVE), direct(NEUTRAL)]
    assert all(isinstance(s, float) for s in scores)


def test_vader_reward_scores_prompt_plus_completion(direct):
    prompts = ["This movie was", "I thought the acting", "The plot"]
    completions = [" wonderful and I loved it", " was terrible and boring", " follows a man in a town"]
    full = vader_reward(prompts, completions)
    assert full == [direct(p + c) for p, c in zip(prompts, completions)]
    only = vader_reward(prompts, completions, response_only=True)
    assert only == [direct(c) for c in completions]
    # the prompt matters unless response_only
    p = ["What a terrible, awful, boring film."]
    c = [" The end."]
    assert vader_reward(p, c)[0] < -0.5
    assert vader_reward(p, c, response_only=True)[0] == 0.0


def test_vader_reward_grpo_shape_and_odd_inputs(direct):
    # TRL passes extra dataset columns as keywords; they are ignored
    out = vader_reward(prompts=["Great"], completions=[" fun!"], completion_ids=[[1, 2]], label=["pos"])
    assert out == [direct("Great fun!")]
    # conversational completions (lists of messages)
    conv = vader_reward(None, [[{"role": "assistant", "content": POSITIVE}]])
    assert conv == [direct(POSITIVE)]
    odd = vader_reward(
        [None, "", 123, "x", "\x00\ufffd"],
        ["", None, 456, "\U0001f600" * 500 + " \u200b\n\t", "<br /> :) :( " * 200],
    )
    assert len(odd) == 5
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in odd)
    assert odd[0] == 0.0 and odd[1] == 0.0
    assert vader_reward([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        vader_reward(["a", "b"], ["c"])


def test_analyzer_is_created_once():
    assert sc.sentiment_analyzer() is sc.sentiment_analyzer()


# ------------------------------------------------------------------------------------------
# prompt sources
# ------------------------------------------------------------------------------------------


def test_builtin_prompts():
    texts = load_prompt_texts(None)
    assert texts == load_prompt_texts("builtin")
    assert len(set(texts)) >= 200 and len(set(texts)) == len(texts)
    for t in texts:
        assert 8 <= len(t.split()) <= 20, t
    scores = vader_reward(None, texts)
    assert sum(s > 0.05 for s in scores) >= 50  # positive
    assert sum(s < -0.05 for s in scores) >= 50  # negative
    assert sum(abs(s) <= 0.05 for s in scores) >= 30  # neutral


def test_csv_with_review_column_and_br_cleanup(tmp_path):
    f = tmp_path / "reviews.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["", "review", "sentiment"])
        w.writerow([0, "A wonderful film.<br /><br />The actors were great, &amp; funny.", "positive"])
        w.writerow([1, "Bad.<br/>Really bad,<BR>truly.", "negative"])
        w.writerow([2, "   ", "negative"])
    assert load_prompt_texts(str(f)) == ["A wonderful film. The actors were great, & funny.", "Bad. Really bad, truly."]


def test_csv_text_column_and_the_text_like_column_fallback(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("label,text\n1,first text\n0,second text\n", encoding="utf-8")
    assert load_prompt_texts(f) == ["first text", "second text"]
    g = tmp_path / "g.csv"
    g.write_text("opening,score\nThe film starts well,3\nIt ends badly,1\n", encoding="utf-8")
    assert load_prompt_texts(g) == ["The film starts well", "It ends badly"]
    h = tmp_path / "h.csv"  # pandas-style unnamed index column first
    h.write_text(",content\n0,hello there\n1,general kenobi\n", encoding="utf-8")
    assert load_prompt_texts(h) == ["hello there", "general kenobi"]


def test_csv_without_a_text_column_is_refused_and_the_column_used_is_named(tmp_path):
    """Issue 9 item 11: ids in the first column were silently used as prompts."""
    from progrl.tasks.sentiment_core import load_prompt_source

    ids = tmp_path / "ids.csv"
    ids.write_text("code,label\nc-1002-beta,1\nc-1003-gamma,0\nc-1004-delta,1\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_prompt_texts(ids)
    msg = str(info.value)
    assert "ids.csv has no text column" in msg and "'code', 'label'" in msg and "text_column" in msg
    assert "\n" not in msg
    # a label column first and the texts under another name: the texts, and the name is said
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("label,body\npositive,What a wonderful film it was\nnegative,A dull and tiring plot\n",
                        encoding="utf-8")
    texts, where = load_prompt_source(labelled)
    assert texts == ["What a wonderful film it was", "A dull and tiring plot"]
    assert where == f"{labelled}, column 'body'"
    # several text-like columns: the one of longest texts
    two = tmp_path / "two.csv"
    two.write_text("title,summary\nGood one,A long summary of a good film here\nBad one,Another long summary\n",
                   encoding="utf-8")
    assert load_prompt_source(two)[1].endswith("column 'summary'")
    # named explicitly: that column, even a short one; a missing name is refused naming the columns
    assert load_prompt_texts(two, text_column="Title") == ["Good one", "Bad one"]
    with pytest.raises(ValueError, match=r"text_column.*no column 'review'.*'title', 'summary'"):
        load_prompt_texts(two, text_column="review")
    assert load_prompt_source("builtin")[1] == "the built-in review openings"
    jl = tmp_path / "k.jsonl"
    jl.write_text('{"body": "one two"}\n{"body": "three four"}\n', encoding="utf-8")
    assert load_prompt_source(jl, text_column="body") == (["one two", "three four"], f"{jl}, key body")


def test_jsonl_keys(tmp_path):
    f = tmp_path / "r.jsonl"
    rows = [{"text": "one<br />two"}, {"review": "three"}, {"prompt": "four", "id": 3}, "five"]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_prompt_texts(str(f)) == ["one two", "three", "four", "five"]


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2"):
        load_prompt_texts(str(f))
    g = tmp_path / "nokey.jsonl"
    g.write_text('{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"nokey\.jsonl line 1.*'text'"):
        load_prompt_texts(str(g))


def test_missing_and_bad_files(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError) as info:
        load_prompt_texts(str(missing))
    assert str(missing) in str(info.value) and "not found" in str(info.value)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl holds no texts"):
        load_prompt_texts(str(empty))
    other = tmp_path / "reviews.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="unsupported"):
        load_prompt_texts(str(other))
    with pytest.raises(ValueError, match="not a file"):
        load_prompt_texts(str(tmp_path))


def test_imdb_offline_is_one_clear_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as info:
        load_prompt_texts("imdb")
    msg = str(info.value)
    assert "\n" not in msg and "stanfordnlp/imdb" in msg and "built-in" in msg


def test_imdb_uses_the_train_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    seen = {}

    def fake(name, split=None, **kwargs):
        seen.update(name=name, split=split)
        return {"text": ["Great film.<br /><br />Loved it.", "Bad."]}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_prompt_texts("imdb") == ["Great film. Loved it.", "Bad."]
    assert seen == {"name": "stanfordnlp/imdb", "split": "train"}


# ------------------------------------------------------------------------------------------
# make_prompts
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """A small GPT-2 style byte-level BPE trained on the built-in openings (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(load_prompt_texts(None), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_make_prompts_token_counts(tokenizer):
    texts = load_prompt_texts(None)
    prompts = make_prompts(texts, tokenizer, random.Random(0))
    assert len(prompts) == len(texts)
    counts = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert all(2 <= c <= 8 for c in counts)
    assert len(set(counts)) == 7  # k is spread over the whole range
    for p, t in zip(prompts, texts):
        assert t.startswith(p)
    # reproducible with the same seed, different with another
    assert make_prompts(texts, tokenizer, random.Random(0)) == prompts
    assert make_prompts(texts, tokenizer, random.Random(1)) != prompts


def test_make_prompts_short_long_and_special_texts(tokenizer):
    long_text = "A wonderful film " * 2000
    texts = ["Hi", "Great fun", long_text, "<|endoftext|> The movie was a delight from start to end"]
    prompts = make_prompts(texts, tokenizer, random.Random(3), min_tokens=3, max_tokens=5)
    # texts shorter than min_tokens are skipped
    kept = [t for t in texts if len(tokenizer(t, add_special_tokens=False).input_ids) >= 3]
    assert len(prompts) == len(kept)
    for p in prompts:
        assert "<|endoftext|>" not in p
        assert 1 <= len(tokenizer(p, add_special_tokens=False).input_ids) <= 5
    assert long_text.startswith(prompts[-2])
    with pytest.raises(ValueError):
        make_prompts(texts, tokenizer, random.Random(0), min_tokens=5, max_tokens=4)
    assert make_prompts([], tokenizer, random.Random(0)) == []


def test_make_prompts_on_shared_imdb_sample(tokenizer):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "imdb_reviews_1000.csv")
    alt = "/work/shared/data/imdb_reviews_1000.csv"
    path = path if os.path.exists(path) else alt
    if not os.path.exists(path):
        pytest.skip("shared IMDB sample not available")
    texts = load_prompt_texts(path)
    assert len(texts) == 1000
    assert not any("<br" in t.lower() for t in texts)
    prompts = make_prompts(texts[:200], tokenizer, random.Random(0))
    assert len(prompts) == 200
    assert all(2 <= len(tokenizer(p, add_special_tokens=False).input_ids) <= 8 for p in prompts)
