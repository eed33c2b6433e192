"""Checks directories written by `helixflow gen-model` with the real HuggingFace libraries.

Test-time only (the Rust tests do not need Python). Usage:

    python3 -m venv venv && venv/bin/pip install transformers safetensors numpy
    venv/bin/python hf_check.py DIR [DIR ...]

For each directory: AutoConfig loads and agrees with the sizes; AutoTokenizer loads, has exactly
vocab_size ids, round-trips text, renders the ChatML template; every safetensors file has exactly
the HuggingFace tensor names, shapes and dtype (bf16 through safe_open metadata, numpy has no
bf16), with metadata {"format": "pt"}, and a sharded checkpoint's index maps every tensor to the
file that holds it. Exits non-zero on the first failure.
"""

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from transformers import AutoConfig, AutoTokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnewlines  ",
    "Accents: café, naïve; CJK: 你好世界; emoji: 🦀🚀; math: ∑∫√",
    "def main():\n    print('hello, world', 42)\n",
    "",
]
ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
NP_DTYPE = {"float32": np.float32, "float16": np.float16}


def expected_tensors(cfg):
    h, v, i = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    hd = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (q, h)
        out[p + "self_attn.k_proj.weight"] = (kv, h)
        out[p + "self_attn.v_proj.weight"] = (kv, h)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        if cfg.model_type == "qwen2":
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
    return out


def check_config(d):
    cfg = AutoConfig.from_pretrained(d)
    raw = json.load(open(os.path.join(d, "config.json")))
    assert cfg.model_type == raw["model_type"], cfg.model_type
    assert type(cfg).__name__ == {"llama": "LlamaConfig", "mistral": "MistralConfig",
                                  "qwen2": "Qwen2Config"}[cfg.model_type]
    for key in ["hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings"]:
        assert getattr(cfg, key) == raw[key], (key, getattr(cfg, key), raw[key])
    rope = cfg.rope_parameters
    assert rope["rope_theta"] == raw["rope_theta"], rope
    assert rope["rope_type"] == raw["rope_parameters"]["rope_type"], rope
    if raw["rope_scaling"]:
        for k, val in raw["rope_scaling"].items():
            assert rope[k] == val, (k, rope)
    if cfg.model_type == "mistral":
        assert cfg.sliding_window == raw["sliding_window"]
    if cfg.model_type == "qwen2":
        assert cfg.use_sliding_window is False and cfg.sliding_window is None
    assert str(cfg.dtype).replace("torch.", "") == raw["dtype"], cfg.dtype
    return cfg, f"{cfg.model_type} rope={rope['rope_type']} dtype={raw['dtype']}"


def check_tokenizer(d, cfg):
    tok = AutoTokenizer.from_pretrained(d)
    v = cfg.vocab_size
    assert len(tok) == v, (len(tok), v)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == \
        [v - 3, v - 2, v - 1]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (v - 3, v - 1, v - 3)
    assert all(tok.convert_ids_to_tokens(i) is not None for i in range(v))
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == tok(text, add_special_tokens=False)["input_ids"], "tokens were added"
        assert all(0 <= i < v for i in ids)
        assert tok.decode(ids) == text, (text, tok.decode(ids))
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello, café 🦀?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                "<|im_start|>user\nHello, café 🦀?<|im_end|>\n<|im_start|>assistant\n")
    assert rendered == expected, repr(rendered)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == v - 2 and ids.count(v - 1) == 2, ids
    assert tok.decode(ids) == rendered
    gen = json.load(open(os.path.join(d, "generation_config.json")))
    assert gen["eos_token_id"] == [v - 1, v - 3], gen
    return f"tokenizer {v} ids, chat ids {len(ids)}"


def check_weights(d, cfg):
    raw = json.load(open(os.path.join(d, "config.json")))
    want = expected_tensors(cfg)
    index_path = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index_path):
        index = json.load(open(index_path))
        files = sorted(set(index["weight_map"].values()))
        assert set(index["weight_map"]) == set(want), set(index["weight_map"]) ^ set(want)
        assert not os.path.exists(os.path.join(d, "model.safetensors"))
    else:
        index, files = None, ["model.safetensors"]
    seen, total = {}, 0
    for name in files:
        path = os.path.join(d, name)
        with safe_open(path, framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}, f.metadata()
            for key in f.keys():
                s = f.get_slice(key)
                assert s.get_dtype() == ST_DTYPE[raw["dtype"]], (key, s.get_dtype())
                seen[key] = tuple(s.get_shape())
                total += int(np.prod(s.get_shape()))
                if index:
                    assert index["weight_map"][key] == name, key
        if raw["dtype"] in NP_DTYPE:
            arrays = load_file(path)
            for key, a in arrays.items():
                assert a.dtype == NP_DTYPE[raw["dtype"]] and a.shape == seen[key], key
                assert np.isfinite(a).all(), key
            if "model.embed_tokens.weight" in arrays:
                std = arrays["model.embed_tokens.weight"].astype(np.float64).std()
                assert abs(std - 1) < 0.05, std
    assert seen == want, {k: (seen.get(k), want.get(k)) for k in set(seen) | set(want)
                          if seen.get(k) != want.get(k)}
    if index:
        size = {"float32": 4, "float16": 2, "bfloat16": 2}[raw["dtype"]]
        assert index["metadata"]["total_size"] == total * size
    return f"{len(seen)} tensors in {len(files)} file(s), {total} params"


def main():
    for d in sys.argv[1:]:
        cfg, c = check_config(d)
        t = check_tokenizer(d, cfg)
        w = check_weights(d, cfg)
        print(f"OK {d}: {c}; {t}; {w}")


if __name__ == "__main__":
    main()
