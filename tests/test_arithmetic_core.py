"""Tests for progrl.tasks.arithmetic_core (hand-computed expectations; fast)."""

from __future__ import annotations

import math
import random
import re
import sys
import time
from pathlib import Path

import pytest

try:  # allow running from a plain checkout (package not installed)
    import progrl  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progrl.tasks.arithmetic_core import (
    arithmetic_reward,
    build_tokenizer,
    chain_error,
    chain_example,
    chain_text,
    exact_answer,
    generate_expression,
    one_token_example,
    reward_from_error,
    safe_eval,
    sample_expressions,
    sft_text,
    verified_chain_prefix,
    worked_chain,
)

CAP_REWARD = 2.0 / (1.0 + math.exp(50.0))  # reward at the capped error 500, scale 10


# --------------------------------------------------------------------------- chain


@pytest.mark.parametrize(
    "expr, chain",
    [
        ("3+7+2", ["3+7+2", "10+2", "12"]),
        ("2+3*4", ["2+3*4", "2+12", "14"]),
        ("3+4", ["3+4", "7"]),
        ("2*3*4", ["2*3*4", "6*4", "24"]),
        # products first, leftmost '*' first, then leftmost '+'
        ("2*3+4*5+1", ["2*3+4*5+1", "6+4*5+1", "6+20+1", "26+1", "27"]),
        ("1+2*0+3", ["1+2*0+3", "1+0+3", "1+3", "4"]),
        ("10+10*5", ["10+10*5", "10+50", "60"]),
        ("7", ["7"]),
    ],
)
def test_worked_chain(expr, chain):
    assert worked_chain(expr) == chain
    assert chain_text(expr) == "=".join(chain)


def test_chain_steps_drop_one_operator():
    for expr in sample_expressions(200, seed=3):
        steps = worked_chain(expr)
        counts = [len(re.findall(r"[+*]", s)) for s in steps]
        assert counts == list(range(counts[0], -1, -1))
        assert int(steps[-1]) == safe_eval(expr)
        assert all(safe_eval(s) == safe_eval(expr) for s in steps)


def test_chain_text_examples_and_whitespace():
    assert chain_text("3+7+2") == "3+7+2=10+2=12"
    assert chain_text(" 3 + 7 + 2 ") == "3+7+2=10+2=12"
    with pytest.raises(ValueError):
        worked_chain("3++4")
    with pytest.raises(ValueError):
        worked_chain("")


# --------------------------------------------------------------------------- safe_eval


@pytest.mark.parametrize(
    "expr, value",
    [
        ("0", 0),
        ("3+4", 7),
        ("2+3*4", 14),
        ("2*3+4*5", 26),
        ("10*10*0+1", 1),
        (" 3 + 4 * 2 ", 11),
        ("99", 99),
        ("1000000*1000000", 10**12),  # exactly at the magnitude cap
    ],
)
def test_safe_eval_accepts(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "", "   ", "3+", "+3", "3++4", "3*+4", "-3", "3-4", "3/4", "3//4", "3**4",
        "(3+4)", "3.0", "1e3", "0x10", "1_0", "03", "3 4", "True", "a+1",
        "__import__('os')", "3+4=7", "3\n+4", "٣+4",
    ],
)
def test_safe_eval_rejects(expr):
    with pytest.raises(ValueError):
        safe_eval(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "9" * 300,  # too long
        "9" * 150,  # short enough, but the literal is huge
        "99999*99999*99999*99999*99999",  # product above 10**12
        "*".join(["99"] * 66),  # 197 chars, astronomically large
        "+".join(["9"] * 101),  # 201 chars
        "1000000*1000000+1",
    ],
)
def test_safe_eval_huge_inputs_rejected_fast(expr):
    t0 = time.perf_counter()
    with pytest.raises(ValueError):
        safe_eval(expr)
    assert time.perf_counter() - t0 < 0.5


def test_safe_eval_non_string():
    with pytest.raises(ValueError):
        safe_eval(12)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize("ops", ["+", "+*"])
def test_generated_expressions_respect_constraints(ops):
    rng = random.Random(1234)
    seen_ops: set[str] = set()
    seen_numbers: set[int] = set()
    for _ in range(2000):
        expr = generate_expression(rng, ops=ops)
        assert re.fullmatch(r"\d+([+*]\d+)+", expr), expr  # >= 2 terms, no trailing op
        assert len(expr) <= 10
        assert not expr.endswith(("+", "*"))
        numbers = [int(n) for n in re.split(r"[+*]", expr)]
        assert all(0 <= n <= 10 for n in numbers)
        assert set(re.findall(r"[+*]", expr)) <= set(ops)
        seen_ops.update(re.findall(r"[+*]", expr))
        seen_numbers.update(numbers)
        assert safe_eval(expr) < 100
        for step in worked_chain(expr):
            assert all(int(n) < 100 for n in re.split(r"[+*]", step)), (expr, step)
    assert seen_ops == set(ops)
    assert seen_numbers == set(range(11))


def test_generator_truncation_is_maximal():
    # Growth stops only when the next "+d" / "+10" (2 or 3 chars) would exceed 10 chars,
    # so a '+'-only expression (value always < 100) has at least 8 characters.
    rng = random.Random(7)
    for _ in range(500):
        assert len(generate_expression(rng, ops="+")) >= 8


def test_generator_options_and_determinism():
    a = sample_expressions(50, seed=11, ops="*", max_chars=7, max_operand=5, max_value=50)
    b = sample_expressions(50, seed=11, ops="*", max_chars=7, max_operand=5, max_value=50)
    assert a == b
    assert sample_expressions(10, seed=11, ops="*", max_chars=7, max_operand=5,
                              max_value=50) == a[:10]
    for e in a:
        assert len(e) <= 7 and "+" not in e and safe_eval(e) < 50
    assert sample_expressions(20, seed=1) != sample_expressions(20, seed=2)
    many = sample_expressions(30, seed=5, min_terms=4)
    assert all(len(re.findall(r"[+*]", e)) >= 3 for e in many)


@pytest.mark.parametrize(
    "kwargs",
    [{"ops": ""}, {"ops": "-"}, {"max_chars": 2}, {"min_terms": 0}, {"max_value": 0},
     {"max_operand": -1}],
)
def test_generator_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        generate_expression(random.Random(0), **kwargs)


# --------------------------------------------------------------------------- chain_error


@pytest.mark.parametrize(
    "text, error",
    [
        ("3+7+2=10+2=12", 0.0),
        ("2+3*4=2+12=14", 0.0),
        (" 3 + 7 + 2 = 10 + 2 = 12 ", 0.0),  # whitespace ignored
        ("3+7+2=10+2=13", 1.0),  # final answer off by one
        ("3+7+2=11+2=12", 1.0),  # |13-12| + |12-12|
        ("3+7+2=11+2=13", 2.0),
        ("3+7+2=9+2=15", 4.0),  # |11-12| + |15-12|
        ("3+4=7", 0.0),
        ("3+4=0", 7.0),
        ("3+7+2=10*2=12", 8.0),  # operator kind is not checked, only the count
        ("3+7+2=10+2=99", 87.0),
        ("10*10*10=100*10=1000", 0.0),
    ],
)
def test_chain_error_values(text, error):
    assert chain_error(text) == error


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        "12",  # no '='
        "3+7+2",  # no '='
        "=5",  # empty first step
        "3+7+2=",  # nothing after the last '='
        "3+7+2=10+2=",
        "3++4=7",  # malformed step
        "3+4=7+",
        "3+4==7",
        "3+4=x",
        "3+4=<unk>",
        "3+4=07",  # leading zero
        "3+7+2=12",  # skipped step: operator count drops by two
        "3+7+2=10+2",  # unfinished: last step still has an operator
        "3+4=7=7",  # operator count does not drop
        "3+4=3+4=7",
        "5=5",
        "99999*99999*99999*99999*99999=1",  # huge
        "3+4=" + "9" * 300,
        "3+4=" + "9" * 100,
        "=".join(["1+1"] * 10000),
    ],
)
def test_chain_error_infinite_is_capped(text):
    t0 = time.perf_counter()
    assert chain_error(text) == 500.0
    assert time.perf_counter() - t0 < 0.5


def test_chain_error_expected_and_cap():
    assert chain_error("3+7+2=10+2=12", expected=12) == 0.0
    assert chain_error("3+7+2=10+2=12", expected=13) == 2.0  # |12-13| + |12-13|
    assert chain_error("3+4=90", cap=50.0) == 50.0
    assert chain_error("3+4=", cap=20.0) == 20.0
    assert chain_error("3+4=999999") == 500.0  # big but finite error is capped
    assert isinstance(chain_error("3+4=7"), float)


# --------------------------------------------------------------------------- rewards


def test_reward_from_error():
    assert reward_from_error(0.0) == 1.0
    assert reward_from_error(10.0) == pytest.approx(2.0 / (1.0 + 2.718281828459045), rel=1e-12)
    assert reward_from_error(10.0) == pytest.approx(0.5378828427399902, rel=1e-12)
    assert reward_from_error(20.0, scale=20.0) == pytest.approx(0.5378828427399902, rel=1e-12)
    assert 0.0 <= reward_from_error(500.0) < 1e-20
    assert reward_from_error(float("inf")) == 0.0
    assert reward_from_error(1e308) == 0.0
    assert reward_from_error(1.0) > reward_from_error(2.0) > reward_from_error(100.0)
    with pytest.raises(ValueError):
        reward_from_error(1.0, scale=0.0)


def test_arithmetic_reward_batch():
    prompts = [
        "<bos>3+7+2=10+2=",  # one-token prompt
        "<bos>3+7+2=10+2=",
        "<bos>3+7+2=",  # chain prompt
        "<bos>3+7+2=",
        "<bos>3+7+2=",
        "<bos>3+4=",
        "<bos>3+4=",
        "<bos>3+4=",
        "<bos>3+4=",
        "",
    ]
    completions = [
        "12<eos>",
        "13<eos><pad><pad>",
        "10+2=12<eos>",
        " 11 + 2 = 12 <eos>",
        "12<eos>",  # skipped step
        "7<eos>5",  # text after <eos> is ignored
        "garbage!!",
        "<unk><eos>",
        "9" * 1000,
        "",
    ]
    rewards = arithmetic_reward(prompts, completions, completion_ids=[[1]] * 10, trainer_state=None)
    r1 = 2.0 / (1.0 + math.exp(0.1))
    expected = [1.0, r1, 1.0, r1, CAP_REWARD, 1.0, CAP_REWARD, CAP_REWARD, CAP_REWARD, CAP_REWARD]
    assert rewards == pytest.approx(expected, rel=1e-12, abs=1e-30)
    assert all(isinstance(r, float) for r in rewards)


def test_arithmetic_reward_options():
    p, c = ["<bos>3+4=", "<bos>3+4="], ["7<eos>", "8<eos>"]
    assert arithmetic_reward(p, c, exact_bonus=0.5) == pytest.approx([1.5, 2 / (1 + math.exp(0.1))])
    assert arithmetic_reward(p, c, scale=1.0) == pytest.approx([1.0, 2 / (1 + math.e)])
    with pytest.raises(ValueError):
        arithmetic_reward(p, c[:1])


def test_arithmetic_reward_never_raises_on_weird_strings():
    weird = ["", "=", "==", "<bos>", "<eos>", "<pad>" * 5, "\x00", "é", "3" * 10**5,
             "1+" * 5000 + "1=", "((((", "=" * 1000, "1*" * 300 + "1=1", "\n\t ="]
    prompts = [w for w in weird for _ in weird]
    completions = [w for _ in weird for w in weird]
    rewards = arithmetic_reward(prompts, completions)
    assert len(rewards) == len(weird) ** 2
    assert all(0.0 <= r <= 1.0 for r in rewards)
    # chat-style inputs are tolerated too
    chat = arithmetic_reward([[{"role": "user", "content": "3+4="}]],
                             [[{"role": "assistant", "content": "7"}]])
    assert chat == [1.0]


def test_exact_answer():
    assert exact_answer("<bos>3+7+2=10+2=", "12<eos>")
    assert exact_answer("<bos>3+7+2=", "10+2=12<eos>")
    assert exact_answer("<bos>3+7+2=", "11+1=12")  # wrong step, right answer, valid chain
    assert not exact_answer("<bos>3+7+2=10+2=", "13<eos>")
    assert not exact_answer("<bos>3+7+2=", "12<eos>")  # skipped step: invalid
    assert not exact_answer("<bos>3+7+2=", "10+2<eos>")  # unfinished
    assert not exact_answer("<bos>3+4=", "garbage")
    assert not exact_answer("", "")


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tokenizer_vocab(tok):
    vocab = tok.get_vocab()
    assert len(vocab) == 4 + 100 + 3
    assert [vocab[t] for t in ("<pad>", "<bos>", "<eos>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["0"] == 4 and vocab["99"] == 103
    assert [vocab[t] for t in ("+", "*", "=")] == [104, 105, 106]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert len(build_tokenizer(max_number=20)) == 4 + 21 + 3


def test_tokenizer_encode_decode(tok):
    ids = tok.encode("<bos>3+7=")
    assert ids == [1, tok.convert_tokens_to_ids("3"), 104, tok.convert_tokens_to_ids("7"), 106]
    assert ids == [1, 7, 104, 11, 106]
    text = "3+7+2=10+2=12"
    assert tok.encode(text) == [7, 104, 11, 104, 6, 106, 14, 104, 6, 106, 16]
    assert tok.decode(tok.encode(text)) == text
    full = "<bos>3+7+2=10+2=12<eos>"
    assert tok.decode(tok.encode(full)) == full
    assert tok.decode(tok.encode(full), skip_special_tokens=True) == text
    # whitespace ignored; numbers above 99, leading zeros and other characters -> <unk>
    assert tok.encode(" 3 + 7 = 10 ") == tok.encode("3+7=10")
    assert tok.encode("100+07=x") == [3, 104, 3, 106, 3]
    assert tok.encode("3*4") == [7, 105, 8]


def test_tokenizer_padding_left(tok):
    batch = tok(["<bos>3+4=", "<bos>3+7+2=10+2="], padding=True)
    assert batch["input_ids"][0][:6] == [0] * 6
    assert batch["input_ids"][0][6:] == [1, 7, 104, 8, 106]
    assert batch["attention_mask"][0] == [0] * 6 + [1] * 5


def test_tokenizer_save_load_roundtrip(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok.save_pretrained(tmp_path)
    for loaded in (PreTrainedTokenizerFast.from_pretrained(tmp_path),
                   AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.encode("<bos>3+7=") == [1, 7, 104, 11, 106]
        assert loaded.decode(loaded.encode("<bos>3+7+2=10+2=12<eos>"),
                             skip_special_tokens=True) == "3+7+2=10+2=12"
        assert loaded.padding_side == "left"
        assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == (
            "<pad>", "<bos>", "<eos>", "<unk>")


def test_tokenizer_covers_generated_chains(tok):
    for expr in sample_expressions(300, seed=9):
        ids = tok.encode(sft_text(expr))
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == sft_text(expr)


# --------------------------------------------------------------------------- data helpers


def test_data_helpers():
    assert one_token_example("3+7+2") == ("<bos>3+7+2=10+2=", "12")
    assert chain_example("3+7+2") == ("<bos>3+7+2=", "10+2=12<eos>")
    assert sft_text("3+7+2") == "<bos>3+7+2=10+2=12<eos>"
    assert one_token_example("2+3*4") == ("<bos>2+3*4=2+12=", "14")
    assert chain_example("2+3*4") == ("<bos>2+3*4=", "2+12=14<eos>")
    # single-step chain: both prompts coincide
    assert one_token_example("3+4") == ("<bos>3+4=", "7")
    assert chain_example("3+4") == ("<bos>3+4=", "7<eos>")
    with pytest.raises(ValueError):
        one_token_example("7")
    with pytest.raises(ValueError):
        chain_example("3++4")


def test_data_helpers_score_perfectly():
    for expr in sample_expressions(100, seed=21):
        p, a = one_token_example(expr)
        q, c = chain_example(expr)
        assert arithmetic_reward([p, q], [a, c]) == [1.0, 1.0]
        assert exact_answer(p, a) and exact_answer(q, c)


@pytest.mark.parametrize("completion, prefix", [
    ("2+12=14", "2+12=14"),          # every step right: the whole completion
    ("2+12=14<eos>", "2+12=14"),     # the end of the sequence is not text
    ("2 + 12 = 14", "2+12=14"),      # whitespace is ignored, as by the checker
    ("2+12=15", "2+12="),            # the last step wrong: the steps before it
    ("2+12=14=1", "2+12="),          # a number after the final one: not well formed
    ("2+12=", "2+12="),              # unfinished but right so far
    ("2+12", ""),                    # no '=' after the step: nothing verified
    ("3*4=14", ""),                  # wrong value at step 1
    ("14", ""),                      # skips a step (two operators to none)
    ("2*12=14", ""),                 # right operator count, wrong value
    ("5+9=14", "5+9=14"),            # another pair with the right value: the checker accepts it
    ("2+12=1x", "2+12="),            # a malformed step
    ("", ""),
])
def test_verified_chain_prefix(completion, prefix):
    assert verified_chain_prefix("<bos>2+3*4=", completion) == prefix
    # consistent with the checker: a whole verified completion has error 0
    if prefix and not prefix.endswith("="):
        assert chain_error("2+3*4=" + prefix) == 0.0


def test_verified_chain_prefix_never_raises_on_bad_prompts():
    assert verified_chain_prefix("no equals sign", "1") == ""
    assert verified_chain_prefix("<bos>1+(2=", "3") == ""
    assert verified_chain_prefix(None, None) == ""
    assert verified_chain_prefix("<bos>1+2+3=", "3+3=6") == "3+3=6"
