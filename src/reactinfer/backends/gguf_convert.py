"""Hugging Face Llama causal LM → GGUF, written with the `gguf` package, at f32 / f16 /
bf16 / q8_0 / q4_0 / q4_1 / q5_0 / q5_1 (the types gguf-py can quantize in numpy; its
k-quants only de-quantize). Pruned models keep their per-layer head and FFN sizes,
written as llama.cpp's "deci" architecture when they differ between layers.

The tokenizer section is copied from the source GGUF when the model came from one (the
built-in smollm2), else built from the Hugging Face tokenizer: byte-level BPE → "gpt2"
with merges, anything else → a plain "llama" token list (ReAct always feeds token ids,
so llama.cpp's own tokenizer is only needed to load the file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import UserError
from ..models.arch import GGUFLayout, find_adapter, model_kind

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def gguf_layout_of(model: Any) -> GGUFLayout | None:
    """The GGUF layout of `model`'s family, if it has one (asked at call time, so a family
    registered later counts)."""
    adapter = find_adapter(model)
    return adapter.gguf_layout(model) if adapter is not None else None


def _file_type(outtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
            "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
            "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1}[outtype]


def source_gguf(source: dict[str, Any]) -> Path | None:
    """The GGUF file a model was loaded from, following artifact origins."""
    from ..models.zoo import BUILTINS

    kind, ref = source.get("kind"), source.get("ref")
    if kind == "artifact":
        return source_gguf(source.get("origin", {}))
    if kind == "gguf" and ref and Path(ref).is_file():
        return Path(ref)
    if kind == "builtin" and ref in BUILTINS:
        p = BUILTINS[ref].path()
        return p if p.suffix == ".gguf" else None
    return None


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k rows in rotate-half order; GGUF llama expects interleaved pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _encode(name: str, w: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for the writer. 1-D tensors stay f32 (llama.cpp wants that); a
    row length the block size does not divide falls back to f16; in 4/5-bit files the
    embedding (also the output matrix when tied) stays q8_0, as llama.cpp's quantizer does."""
    import gguf
    from gguf.quants import quantize

    if w.ndim == 1 or outtype == "f32":
        return w.astype(np.float32), None
    if outtype.startswith(("q4", "q5")) and name in ("token_embd.weight", "output.weight"):
        outtype = "q8_0"
    if outtype == "f16":
        return w.astype(np.float16), None
    qtype = getattr(gguf.GGMLQuantizationType, outtype.upper())
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        return w.astype(np.float16), None
    return quantize(w.astype(np.float32), qtype), qtype


# llama.cpp splits text before BPE by the regexes its `tokenizer.ggml.pre` names; a name
# whose split differs from the Hugging Face tokenizer's makes llama.cpp (run on the file
# alone) tokenize a prompt otherwise ("default" splits "I'm" into "I", "'", "m").
_GPT2 = {"type": "ByteLevel", "use_regex": True}
_SPLIT_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_LLAMA3 = _SPLIT_QWEN2.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
PRE_TOKENIZERS: dict[str, str] = {  # the pre-tokenizer's signature (below) → llama.cpp's name
    "ByteLevel:regex": "gpt-2",
    "Digits:individual+ByteLevel:regex": "smollm",
    f"Split:{_SPLIT_QWEN2}+ByteLevel": "qwen2",
    f"Split:{_SPLIT_LLAMA3}+ByteLevel": "llama-bpe",
}


def _pre_signature(pre: dict[str, Any]) -> str:
    kind = pre.get("type")
    if kind == "Sequence":
        return "+".join(_pre_signature(p) for p in pre.get("pretokenizers", []))
    if kind == "ByteLevel":
        return "ByteLevel:regex" if pre.get("use_regex", True) else "ByteLevel"
    if kind == "Digits":
        return "Digits:individual" if pre.get("individual_digits") else "Digits"
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return f"Split:{pattern.get('Regex', pattern.get('String'))}"
    return str(kind)


def llama_cpp_pre(pre: dict[str, Any] | None) -> str:
    """llama.cpp's pre-tokenizer name for a Hugging Face byte-level BPE pre-tokenizer;
    "default" (llama.cpp's own split) for one it does not know."""
    return PRE_TOKENIZERS.get(_pre_signature(pre), "default") if pre else "default"


def _tokenizer_meta(writer: Any, handle: ModelHandle, n_vocab: int) -> None:
    import gguf

    src = source_gguf(handle.source)
    if src is not None:
        reader = gguf.GGUFReader(str(src))
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                vtype = field.types[0]
                sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        return
    tok = handle.tokenizer
    vocab = tok.get_vocab()
    tokens = [f"[unused{i}]" for i in range(n_vocab)]
    for text, i in vocab.items():
        if i < n_vocab:
            tokens[i] = text
    special = set(getattr(tok, "all_special_ids", []))
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
             for i in range(n_vocab)]
    backend = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") \
        else {}
    model = backend.get("model", {})
    if model.get("type") == "BPE" and model.get("merges") is not None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(llama_cpp_pre(backend.get("pre_tokenizer")))
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                                 for m in model["merges"]])
    else:
        writer.add_tokenizer_model("llama")
        writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for setter, value in (("add_bos_token_id", tok.bos_token_id or tok.cls_token_id),
                          ("add_eos_token_id", tok.eos_token_id),
                          ("add_unk_token_id", tok.unk_token_id),
                          ("add_pad_token_id", tok.pad_token_id)):
        if value is not None:
            getattr(writer, setter)(int(value))
    writer.add_add_bos_token(False)
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # named templates: the one used without a name
        template = template.get("default")
    if isinstance(template, str):  # else llama.cpp and a server reading the file chat raw
        writer.add_chat_template(template)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or "default"
    if rope_type != "default":
        raise UserError(f"GGUF conversion supports plain RoPE only, this model uses "
                        f"{rope_type!r} scaling")
    theta: Any = params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    return float(theta)


def _tensors(sd: dict[str, np.ndarray], layout: GGUFLayout, config: Any, heads: list[int],
             heads_kv: list[int]) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, array) in writing order: embedding, blocks, final norm, lm head."""
    counts = {"attn_q": heads, "attn_k": heads_kv}  # the head count each permute needs
    tensors = [("token_embd.weight", sd[layout.embed])]
    for i in range(len(heads)):
        for _, gg in layout.blocks:
            w = sd[layout.key(i, gg)]
            if gg in layout.rotate_half:
                w = _permute(w, counts[gg][i])
            tensors.append((f"blk.{i}.{gg}.weight", w))
    tensors.append(("output_norm.weight", sd[layout.norm]))
    if not getattr(config, "tie_word_embeddings", False) and layout.lm_head in sd:
        tensors.append(("output.weight", sd[layout.lm_head]))
    return tensors


def convert_to_gguf(handle: ModelHandle, path: str | Path, outtype: str = "q8_0") -> Path:
    """Write `handle`'s torch Llama model to a GGUF file llama.cpp can run."""
    import gguf

    if outtype not in OUTTYPES:
        raise UserError(f"GGUF type {outtype!r} is not one of {', '.join(OUTTYPES)} "
                        "(k-quants: run llama.cpp's llama-quantize on an f16 file)")
    model = handle.model
    layout = gguf_layout_of(model) if model is not None else None
    if model is None or layout is None:
        raise UserError("GGUF conversion supports Hugging Face Llama causal LMs; this model is "
                        f"{model_kind(model)!r}")
    config: Any = model.config
    if handle.replay_from is not None:
        raise UserError("this model holds torch int8 modules; convert the float model and "
                        "pick the GGUF type (outtype='q8_0', 'q4_0', ...) instead")
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if any(k.endswith(".bias") for k in sd):
        raise UserError("GGUF conversion supports Llama without biases; this model has bias "
                        "tensors (attention_bias / mlp_bias)")
    n_layer = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // \
        config.num_attention_heads
    n_vocab, hidden = sd[layout.embed].shape
    heads, heads_kv, ffn = [], [], []
    for i in range(n_layer):  # per-layer sizes from the tensors: pruning may change them
        heads.append(sd[layout.key(i, "attn_q")].shape[0] // head_dim)
        heads_kv.append(sd[layout.key(i, "attn_k")].shape[0] // head_dim)
        ffn.append(sd[layout.key(i, "ffn_gate")].shape[0])
    if min(heads) < 1 or min(heads_kv) < 1 or min(ffn) < 1:
        raise UserError("a layer with no attention heads or no FFN neurons cannot be written "
                        "to GGUF; remove the layer instead")

    def one_or_list(v: list[int]) -> int | list[int]:
        return v[0] if len(set(v)) == 1 else v

    path = Path(path)
    # llama.cpp's llama graph takes layer 0's sizes for every layer; the layout's uneven
    # architecture reads per-layer head and FFN counts.
    uneven = any(len(set(v)) > 1 for v in (heads, heads_kv, ffn))
    if uneven and layout.arch_uneven is None:
        raise UserError(f"GGUF {layout.arch} needs the same head and FFN counts in every "
                        "layer; this model's differ (prune every layer alike)")
    writer = gguf.GGUFWriter(str(path), layout.arch_uneven or layout.arch if uneven
                             else layout.arch)
    writer.add_name(handle.name)
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(one_or_list(ffn))
    writer.add_head_count(one_or_list(heads))
    writer.add_head_count_kv(one_or_list(heads_kv))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_meta(writer, handle, n_vocab)
    for name, w in _tensors(sd, layout, config, heads, heads_kv):
        data, qtype = _encode(name, w, outtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
