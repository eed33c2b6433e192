"""Writes a `helixflow gen-model` Llama directory as a GGUF file, so llama.cpp's `llama-bench`
runs the same model as `helixflow bench-engine` (docs/BENCHMARKS.md, "llama.cpp on the same
machine"). Only what gen-model writes is handled: Llama, one `model.safetensors`, f32 or f16
weights, a byte-level BPE tokenizer. llama.cpp's own `convert_hf_to_gguf.py` needs torch and
transformers, which this does not: numpy and llama.cpp's `gguf-py` only.

    # llama.cpp as vendored by llama-cpp-python (PyPI's sdist carries the whole tree):
    curl -sLO https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    pip install cmake ninja numpy pyyaml tqdm
    cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build build --target llama-bench -j2
    GGUF_PY=$PWD/gguf-py python3 /path/to/helixflow/benches/peers/hf_to_gguf.py /tmp/models/bench-f16 /tmp/bench-f16.gguf

The tensors are those of the checkpoint, renamed as llama.cpp names them; q and k rows are
permuted the way `convert_hf_to_gguf.py` permutes Llama's (llama.cpp's RoPE pairs dimensions
`2i, 2i + 1` where HuggingFace pairs `i, i + d/2`), norms are stored as f32 as llama.cpp wants.
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.environ.get("GGUF_PY", "gguf-py"))
import gguf  # noqa: E402

DTYPES = {"F16": np.float16, "F32": np.float32}


def read_safetensors(path):
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in DTYPES:
            sys.exit(f"{name}: dtype {meta['dtype']} not handled (f16 and f32 only)")
        start, end = meta["data_offsets"]
        tensors[name] = data[start:end].view(DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def permute(w, heads):
    """HuggingFace's rotate-half q/k rows to llama.cpp's interleaved pairs (per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(model_dir, out):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if cfg.get("model_type") != "llama":
        sys.exit(f"model_type {cfg.get('model_type')!r}: only llama is handled")
    t = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // heads
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    f16 = t["model.embed_tokens.weight"].dtype == np.float16

    w = gguf.GGUFWriter(out, "llama")
    w.add_name(os.path.basename(os.path.normpath(model_dir)))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    tokens = [None] * cfg["vocab_size"]
    types = [gguf.TokenType.NORMAL] * cfg["vocab_size"]
    for piece, i in tok["model"]["vocab"].items():
        tokens[i] = piece
    for added in tok["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL
    for i, piece in enumerate(tokens):
        if piece is None:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)

    def put(name, array):
        w.add_tensor(name, np.ascontiguousarray(array))

    def norm(name):
        return t[name].astype(np.float32)

    put("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(layers):
        p = f"model.layers.{i}"
        put(f"blk.{i}.attn_norm.weight", norm(f"{p}.input_layernorm.weight"))
        put(f"blk.{i}.attn_q.weight", permute(t[f"{p}.self_attn.q_proj.weight"], heads))
        put(f"blk.{i}.attn_k.weight", permute(t[f"{p}.self_attn.k_proj.weight"], kv_heads))
        put(f"blk.{i}.attn_v.weight", t[f"{p}.self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", t[f"{p}.self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", norm(f"{p}.post_attention_layernorm.weight"))
        put(f"blk.{i}.ffn_gate.weight", t[f"{p}.mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", t[f"{p}.mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", t[f"{p}.mlp.down_proj.weight"])
    put("output_norm.weight", norm("model.norm.weight"))
    if "lm_head.weight" in t:
        put("output.weight", t["lm_head.weight"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: hf_to_gguf.py MODEL_DIR OUT.gguf")
    main(sys.argv[1], sys.argv[2])
