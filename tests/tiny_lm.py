"""A tiny pretrained-style model folder for tests: a character-level tokenizer with a chat
template and a 1-layer GPT-2, saved with ``save_pretrained`` so ``--model FOLDER`` loads it
like any Hugging Face model (no network, no download)."""

from __future__ import annotations

import string
from pathlib import Path

CHARS = string.ascii_lowercase + string.digits + " .,:?!<>=+-\n"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")


def make_tokenizer(chat: bool = True, chars: str = CHARS):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model_dir(path: Path, chat: bool = True, n_embd: int = 32, seed: int = 0, chars: str = CHARS) -> Path:
    """Write a tiny model + tokenizer to ``path`` (once) and return it."""
    from progrl.modeling import build_causal_lm_from_config

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tok = make_tokenizer(chat, chars)
    lm = build_causal_lm_from_config("gpt2", len(tok), n_layer=1, n_embd=n_embd, n_head=2, n_positions=128,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, seed=seed)
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path
