"""Supervised warm start with the loss on the completion only (after the task's response template)."""

import types

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from progrl.sft import completion_starts, supervised_warm_start


def tiny_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["### PRE: (game ### SUF: ) ### MID: (players 2)"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


class Spy(torch.nn.Module):
    """Records the labels it is trained with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.labels = []

    def forward(self, input_ids, attention_mask, position_ids, labels):
        self.labels.append(labels.clone())
        return types.SimpleNamespace(loss=self.w * 0 + 1.0)


def test_completion_starts_after_the_template():
    tok = tiny_tokenizer()
    texts = ["### PRE: (game ### SUF: ) ### MID: (players 2)<|endoftext|>", "no template at all"]
    starts = completion_starts(tok, texts, "### MID:")
    ids = tok(texts[0])["input_ids"]
    assert tok.decode(ids[:starts[0]]) == "### PRE: (game ### SUF: ) ### MID:"
    assert tok.decode(ids[starts[0]:]) == " (players 2)<|endoftext|>"
    assert starts[1] == len(tok(texts[1])["input_ids"])  # no template: no loss


def test_warm_start_masks_the_prompt_and_the_padding():
    tok = tiny_tokenizer()
    texts = ["### PRE: (game ### SUF: ) ### MID: (players 2)<|endoftext|>",
             "### PRE: ( ### SUF: ) ### MID: (players 2)<|endoftext|>"]
    spy = Spy()
    supervised_warm_start(spy, tok, texts, epochs=1, lr=1e-3, batch_size=2, seed=0, device=torch.device("cpu"),
                          completion_template="### MID:")
    [labels] = spy.labels
    completion = tok(" (players 2)<|endoftext|>")["input_ids"]
    for row in labels:
        kept = [int(x) for x in row if x != -100]
        assert kept == completion  # the same completion tokens in both rows; prompt and padding masked
    spy_all = Spy()
    supervised_warm_start(spy_all, tok, texts, epochs=1, lr=1e-3, batch_size=2, seed=0, device=torch.device("cpu"))
    assert (spy_all.labels[0] != -100).sum() > (labels != -100).sum()
