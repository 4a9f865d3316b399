"""Pure building blocks of the arithmetic task (Padula & Soemers 2024, "Task 2").

Everything here is deterministic given its inputs and has no side effects:

* expression generation (:func:`generate_expression`, :func:`sample_expressions`);
* a safe evaluator for ``+``/``*`` expressions (:func:`safe_eval`) -- no ``eval``;
* the worked solution chain (:func:`worked_chain`, :func:`chain_text`);
* the paper's programmed reward (:func:`chain_error`, :func:`reward_from_error`,
  :func:`arithmetic_reward`, :func:`exact_answer`);
* the word-level tokenizer (:func:`build_tokenizer`);
* data formatting helpers (:func:`one_token_example`, :func:`chain_example`,
  :func:`sft_text`).

A *worked chain* combines exactly one pair of adjacent numbers per step, so every step
has one operator fewer than the previous one: products first (leftmost ``*`` first),
then the leftmost ``+``::

    "3+7+2"  -> "3+7+2=10+2=12"
    "2+3*4"  -> "2+3*4=2+12=14"
"""

from __future__ import annotations

import ast
import math
import random
import re
from typing import Any, Sequence

__all__ = [
    "SPECIAL_TOKENS",
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "MAX_EXPR_CHARS",
    "MAX_MAGNITUDE",
    "DEFAULT_CAP",
    "generate_expression",
    "sample_expressions",
    "safe_eval",
    "worked_chain",
    "chain_text",
    "chain_error",
    "reward_from_error",
    "arithmetic_reward",
    "exact_answer",
    "exact_chain",
    "verified_chain_prefix",
    "build_tokenizer",
    "one_token_example",
    "chain_example",
    "sft_text",
]

PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
UNK = "<unk>"
#: Special tokens, in vocabulary order (``<pad>`` has id 0).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)

#: Longest expression (characters) :func:`safe_eval` accepts.
MAX_EXPR_CHARS = 200
#: Largest magnitude of any literal or intermediate result :func:`safe_eval` accepts.
MAX_MAGNITUDE = 10**12
#: The paper's cap on the chain error ("infinite" error).
DEFAULT_CAP = 500.0

_OPS = "+*"
_ALLOWED_CHARS = frozenset("0123456789+* \t")
_LEADING_ZERO = re.compile(r"(?<!\d)0\d")
_CANONICAL = re.compile(r"\d+(?:[+*]\d+)*")
_WS = re.compile(r"\s+")


# ---------------------------------------------------------------------------
# Internal helpers: token lists and the chain computation
# ---------------------------------------------------------------------------


def _split(expr: str) -> tuple[list[int], list[str]]:
    """Split a canonical expression (no whitespace) into numbers and operators."""
    nums = [int(tok) for tok in re.split(r"[+*]", expr)]
    ops = [ch for ch in expr if ch in _OPS]
    return nums, ops


def _join(nums: Sequence[int], ops: Sequence[str]) -> str:
    """Inverse of :func:`_split`."""
    parts = [str(nums[0])]
    for op, num in zip(ops, nums[1:]):
        parts.append(op)
        parts.append(str(num))
    return "".join(parts)


def _chain_from_tokens(nums: list[int], ops: list[str]) -> list[tuple[list[int], list[str]]]:
    """Worked chain as (numbers, operators) pairs, starting with the input itself."""
    nums, ops = list(nums), list(ops)
    steps = [(list(nums), list(ops))]
    while ops:
        i = ops.index("*") if "*" in ops else 0
        a, b = nums[i], nums[i + 1]
        nums[i : i + 2] = [a * b if ops[i] == "*" else a + b]
        del ops[i]
        steps.append((list(nums), list(ops)))
    return steps


def _canonical(expr: str) -> str:
    """Validate ``expr`` (via :func:`safe_eval`) and return it without whitespace."""
    safe_eval(expr)  # raises ValueError on anything malformed, too long or too large
    canon = _WS.sub("", expr)
    if not _CANONICAL.fullmatch(canon):  # pragma: no cover - implied by safe_eval
        raise ValueError(f"not a +/* expression: {expr!r}")
    return canon


def _n_ops(step: str) -> int:
    return sum(1 for ch in step if ch in _OPS)


# ---------------------------------------------------------------------------
# Expression generation
# ---------------------------------------------------------------------------


def generate_expression(
    rng: random.Random,
    ops: str = "+*",
    max_chars: int = 10,
    max_operand: int = 10,
    max_value: int = 100,
    min_terms: int = 2,
) -> str:
    """Draw a random arithmetic expression, as in the paper's arithmetic task.

    Integers drawn uniformly from ``0..max_operand`` are joined by operators drawn
    uniformly from ``ops``. The expression is grown term by term and stops before the
    first term that would make it longer than ``max_chars`` characters -- the same
    result as truncating an endless expression to ``max_chars`` characters and then
    dropping a cut number and a dangling operator. Draws with fewer than ``min_terms``
    terms, a value ``>= max_value``, or any number of the worked chain (operands and
    intermediate results) ``>= max_value`` are rejected and redrawn.

    Args:
        rng: source of randomness (the only state used).
        ops: operator alphabet, any non-empty combination of ``'+'`` and ``'*'``
            (the paper used ``'+'`` originally, and also ``'+*'``).
        max_chars: maximum length of the expression in characters.
        max_operand: operands are drawn from ``0..max_operand``.
        max_value: exclusive bound on the value and on every chain intermediate.
        min_terms: minimum number of operands.

    Returns:
        An expression such as ``"3+7*2+10"`` (no whitespace).

    Raises:
        ValueError: for invalid or unsatisfiable parameters.
        RuntimeError: if no acceptable expression is found after many draws.
    """
    if not ops or any(ch not in _OPS for ch in ops):
        raise ValueError(f"ops must be a non-empty string over '+*', got {ops!r}")
    if max_operand < 0:
        raise ValueError("max_operand must be >= 0")
    if max_value <= 0:
        raise ValueError("max_value must be > 0 (values are non-negative)")
    if min_terms < 1:
        raise ValueError("min_terms must be >= 1")
    if 2 * min_terms - 1 > max_chars:
        raise ValueError(
            f"max_chars={max_chars} cannot hold min_terms={min_terms} terms"
        )

    for _ in range(100_000):
        nums = [rng.randint(0, max_operand)]
        opl: list[str] = []
        length = len(str(nums[0]))
        if length > max_chars:
            continue
        while True:
            op = rng.choice(ops)
            num = rng.randint(0, max_operand)
            add = 1 + len(str(num))
            if length + add > max_chars:
                break
            opl.append(op)
            nums.append(num)
            length += add
        if len(nums) < min_terms:
            continue
        chain = _chain_from_tokens(nums, opl)
        if all(n < max_value for step_nums, _ in chain for n in step_nums):
            return _join(nums, opl)
    raise RuntimeError(
        "could not generate an expression satisfying the constraints "
        f"(ops={ops!r}, max_chars={max_chars}, max_operand={max_operand}, "
        f"max_value={max_value}, min_terms={min_terms})"
    )


def sample_expressions(n: int, seed: int, **gen_kwargs: Any) -> list[str]:
    """Return ``n`` expressions from :func:`generate_expression` with ``random.Random(seed)``.

    ``gen_kwargs`` are passed on to :func:`generate_expression`. Deterministic in
    ``(n, seed, gen_kwargs)``; a smaller ``n`` gives a prefix of a larger one.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    return [generate_expression(rng, **gen_kwargs) for _ in range(n)]


# ---------------------------------------------------------------------------
# Safe evaluation and the worked chain
# ---------------------------------------------------------------------------


def _check_magnitude(value: int) -> int:
    if value > MAX_MAGNITUDE:
        raise ValueError(f"intermediate value exceeds {MAX_MAGNITUDE}")
    return value


def _eval_node(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _check_magnitude(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left = _eval_node(node.left)
        right = _eval_node(node.right)
        # Both operands are <= MAX_MAGNITUDE, so this product is cheap to compute.
        result = left + right if isinstance(node.op, ast.Add) else left * right
        return _check_magnitude(result)
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def safe_eval(expr: str) -> int:
    """Evaluate an expression of non-negative integers with ``+`` and ``*``.

    Standard precedence (``*`` binds tighter). Parsed with :mod:`ast`; only
    ``Expression``, ``BinOp(Add | Mult)`` and integer ``Constant`` nodes are accepted.
    Surrounding whitespace and spaces between tokens are allowed.

    Raises:
        ValueError: if ``expr`` is not a string, is empty, longer than
            :data:`MAX_EXPR_CHARS` characters, contains any character other than
            digits, ``+``, ``*`` and spaces/tabs (so no parentheses, signs, floats,
            ``0x``/``_`` literals), has a number with a leading zero (``"03"``), does not
            parse, or has a literal or intermediate result above :data:`MAX_MAGNITUDE`.
    """
    if not isinstance(expr, str):
        raise ValueError(f"expression must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    if any(ch not in _ALLOWED_CHARS for ch in expr):
        raise ValueError(f"invalid characters in expression: {expr!r}")
    text = expr.strip()
    if not text:
        raise ValueError("empty expression")
    if _LEADING_ZERO.search(text):
        raise ValueError(f"number with a leading zero in {expr!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ValueError(f"cannot parse expression {expr!r}: {exc}") from None
    if not isinstance(tree, ast.Expression):  # pragma: no cover - mode="eval"
        raise ValueError("not an expression")
    try:
        return _eval_node(tree.body)
    except RecursionError:  # pragma: no cover - depth is bounded by MAX_EXPR_CHARS
        raise ValueError("expression nested too deeply") from None


def worked_chain(expr: str) -> list[str]:
    """Return the worked solution of ``expr`` as a list of steps.

    The first step is the expression itself (whitespace removed), the last is its value;
    each step combines exactly one pair of adjacent numbers: the leftmost ``*`` while
    any remains, then the leftmost ``+``.

    >>> worked_chain("3+7+2")
    ['3+7+2', '10+2', '12']
    >>> worked_chain("2+3*4")
    ['2+3*4', '2+12', '14']

    Raises:
        ValueError: if ``expr`` is rejected by :func:`safe_eval`.
    """
    nums, ops = _split(_canonical(expr))
    return [_join(n, o) for n, o in _chain_from_tokens(nums, ops)]


def chain_text(expr: str) -> str:
    """The worked chain joined by ``'='``, e.g. ``"3+7+2=10+2=12"``."""
    return "=".join(worked_chain(expr))


# ---------------------------------------------------------------------------
# The paper's reward
# ---------------------------------------------------------------------------


def _well_formed_steps(steps: Sequence[str], prev_ops: int | None = None) -> list[tuple[int, int]]:
    """``(value, operator count)`` of the leading well-formed ``steps``, up to the first that is not.

    A step is well formed when it is non-empty, parses with :func:`safe_eval` and has exactly
    one operator fewer than the step before it (``prev_ops``: the operator count before the
    first step; None accepts any count for it). The one rule of what a step is, shared by the
    paper's checker (:func:`chain_error`) and the step verifier (:func:`verified_chain_prefix`).
    """
    out: list[tuple[int, int]] = []
    for step in steps:
        n_ops = _n_ops(step)
        if not step or (prev_ops is not None and n_ops != prev_ops - 1):
            break
        try:
            out.append((safe_eval(step), n_ops))
        except ValueError:
            break
        prev_ops = n_ops
    return out


def _chain_values(text: str) -> list[int] | None:
    """Values of the steps of a chain ``"e0=e1=...=ek"`` or ``None`` if it is invalid.

    Valid means: at least one ``'='``, every step parses with :func:`safe_eval`, and each
    step has exactly one operator fewer than the previous one, ending in a single number.
    Whitespace is ignored.
    """
    if not isinstance(text, str):
        return None
    text = _WS.sub("", text)
    if "=" not in text:
        return None
    steps = text.split("=")
    done = _well_formed_steps(steps)
    if len(done) != len(steps) or done[-1][1] != 0:
        return None
    return [value for value, _ops in done]


def chain_error(text: str, expected: int | None = None, cap: float = DEFAULT_CAP) -> float:
    """The paper's chain error of ``text`` = ``"e0=e1=...=ek"`` (whitespace ignored).

    With ``v`` the value of ``e0`` (or ``expected`` when given), the error is
    ``sum(|value(e_i) - v| for i in 1..k)``, capped at ``cap``. The error is infinite
    (returns ``cap``) when there is no ``'='``, any step is empty or malformed (see
    :func:`safe_eval`; this includes numbers above :data:`MAX_MAGNITUDE`), or the
    operator count does not drop by exactly one from each step to the next, ending in a
    single number (so a skipped step or an unfinished chain are infinite errors).

    Only the operator count of a step is checked, not which pair was combined.
    """
    values = _chain_values(text)
    if values is None:
        return float(cap)
    target = values[0] if expected is None else expected
    error = sum(abs(v - target) for v in values[1:])
    return float(min(error, cap))


def reward_from_error(error: float, scale: float = 10.0) -> float:
    """The paper's reward ``2 / (1 + exp(error / scale))``: 1.0 at error 0, ~0 at the cap.

    Computed without overflow for any error (including ``inf``); ``NaN`` gives 0.0.

    Raises:
        ValueError: if ``scale`` is not a positive finite number.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    x = error / scale
    if math.isnan(x):
        return 0.0
    if x > 700.0:  # exp would overflow; 2 / (1 + e^x) ~= 2 e^-x
        return 2.0 * math.exp(-x)
    return 2.0 / (1.0 + math.exp(x))


def _as_text(value: Any) -> str:
    """Best-effort text of a prompt/completion (plain string or chat messages)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, dict):
        return _as_text(value.get("content", ""))
    if isinstance(value, (list, tuple)):
        return "".join(_as_text(v) for v in value)
    return str(value)


def _full_chain(prompt: Any, completion: Any) -> str:
    """``prompt + completion`` with special tokens handled for scoring.

    Text after the first ``<eos>`` of the completion is ignored (generation ends there);
    ``<bos>``/``<pad>``/``<eos>`` strings are removed. ``<unk>`` is kept, which makes its
    step malformed: it stands for a number the vocabulary cannot express.
    """
    p = _as_text(prompt)
    c = _as_text(completion)
    cut = c.find(EOS)
    if cut >= 0:
        c = c[:cut]
    text = p + c
    for tok in (BOS, EOS, PAD):
        text = text.replace(tok, "")
    return text


def arithmetic_reward(
    prompts: list[str],
    completions: list[str],
    scale: float = 10.0,
    exact_bonus: float = 0.0,
    **columns: Any,
) -> list[float]:
    """Batched programmed reward in the TRL GRPO reward-function shape.

    For each pair the chain is ``prompt + completion`` (the prompt ends with ``'='``;
    special-token strings and whitespace are removed, text after the first ``<eos>`` in
    the completion is ignored). Reward = ``reward_from_error(chain_error(chain), scale)``
    plus ``exact_bonus`` when the error is exactly 0. Extra keyword ``columns`` (dataset
    columns, ``completion_ids``, ``trainer_state``...) are accepted and ignored. Chat-style
    prompts/completions (lists of ``{"content": ...}`` messages) are concatenated.

    Never raises for any prompt/completion contents; invalid chains get the reward of the
    capped error (~0).

    Raises:
        ValueError: if the two lists differ in length or ``scale`` is invalid.
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions"
        )
    floor = reward_from_error(DEFAULT_CAP, scale)  # also validates scale
    rewards: list[float] = []
    for prompt, completion in zip(prompts, completions):
        try:
            err = chain_error(_full_chain(prompt, completion))
            reward = reward_from_error(err, scale)
            if err == 0.0:
                reward += exact_bonus
        except Exception:  # pragma: no cover - defensive: a reward must never crash
            reward = floor
        rewards.append(float(reward))
    return rewards


def exact_answer(prompt: str, completion: str) -> bool:
    """True when ``prompt + completion`` is a valid chain whose final number is right.

    Valid as in :func:`chain_error` (well-formed steps, one operator fewer per step,
    ending in a single number); the final stated number must equal the value of the
    first step. Intermediate steps are not required to be correct. Never raises.
    """
    try:
        values = _chain_values(_full_chain(prompt, completion))
    except Exception:  # pragma: no cover - defensive
        return False
    return values is not None and values[-1] == values[0]


def exact_chain(prompt: str, completion: str) -> bool:
    """True when ``prompt + completion`` is a chain with every step right (chain error 0). Never raises."""
    try:
        return chain_error(_full_chain(prompt, completion)) == 0.0
    except Exception:  # pragma: no cover - defensive
        return False


def verified_chain_prefix(prompt: Any, completion: Any) -> str:
    """The longest start of ``completion`` whose every step the paper's checker accepts.

    The prompt ends with ``"e0="``; the completion states ``"e1=e2=...=ek"``. Step ``e_i`` is
    accepted when it parses (:func:`safe_eval`), has exactly one operator fewer than the step
    before it and has the value of ``e0`` -- a zero term in :func:`chain_error`. The returned
    prefix is the completion's text up to and including the ``'='`` after the last accepted
    step (``""`` when the first stated step is wrong), or the whole completion (as cut by
    :func:`_full_chain`, without special tokens) when every step through the final single
    number is accepted, i.e. when :func:`chain_error` is 0. Never raises.

    >>> verified_chain_prefix("<bos>2+3*4=", "2+12=15")
    '2+12='
    """
    try:
        p = _WS.sub("", _full_chain(prompt, ""))
        c = _WS.sub("", _full_chain("", completion))
        if not p.endswith("="):
            return ""
        first = p.split("=")[-2]
        target, prev_ops = safe_eval(first), _n_ops(first)
    except Exception:
        return ""
    steps = c.split("=")
    end = 0  # characters of c verified so far
    for i, (value, n_ops) in enumerate(_well_formed_steps(steps, prev_ops)):
        last = i == len(steps) - 1
        # a right value, and a single number only as the last stated step (the chain ends there)
        if value != target or (n_ops == 0) != last:
            break
        end += len(steps[i]) + (0 if last else 1)
    return c[:end]


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def build_tokenizer(max_number: int = 99):
    """Build the paper's word-level tokenizer as a ``transformers`` fast tokenizer.

    Vocabulary: ``<pad>`` (id 0), ``<bos>``, ``<eos>``, ``<unk>``, then ``"0"`` ..
    ``str(max_number)``, then ``"+"``, ``"*"``, ``"="``. Text is split on whitespace
    (which is dropped), then into maximal digit runs and single other characters;
    numbers above ``max_number`` (or with leading zeros) and unknown characters map to
    ``<unk>``. Decoding fuses tokens without spaces (``"3+7=10"``). The post-processor
    adds no special tokens: put ``"<bos>"`` in the text explicitly. Padding is on the
    left (for generation).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    if max_number < 0:
        raise ValueError("max_number must be >= 0")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for n in range(max_number + 1):
        vocab[str(n)] = len(vocab)
    for tok in ("+", "*", "="):
        vocab[tok] = len(vocab)

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\d+|\S"), behavior="isolated"),
        ]
    )
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="$A", pair="$A $B:1", special_tokens=[]
    )
    core.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------


def _steps_for_example(expr: str) -> list[str]:
    steps = worked_chain(expr)
    if len(steps) < 2:
        raise ValueError(f"expression needs at least one operator: {expr!r}")
    return steps


def one_token_example(expr: str) -> tuple[str, str]:
    """The paper's one-token RL example: ``(prompt, answer)``.

    The prompt is ``"<bos>"`` + the whole worked chain up to and including the last
    ``'='``; the answer is the final number, e.g. ``"3+7+2"`` ->
    ``("<bos>3+7+2=10+2=", "12")``.
    """
    steps = _steps_for_example(expr)
    return BOS + "=".join(steps[:-1]) + "=", steps[-1]


def chain_example(expr: str) -> tuple[str, str]:
    """Full-chain example: ``(prompt, completion)``.

    ``"3+7+2"`` -> ``("<bos>3+7+2=", "10+2=12<eos>")``.
    """
    steps = _steps_for_example(expr)
    return BOS + steps[0] + "=", "=".join(steps[1:]) + EOS


def sft_text(expr: str) -> str:
    """Supervised warm-start text: ``"<bos>" + chain_text(expr) + "<eos>"``."""
    return BOS + chain_text(expr) + EOS
