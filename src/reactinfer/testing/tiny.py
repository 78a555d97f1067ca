"""Tiny models built in-process (no download) for tests and examples: a word-level
tokenizer and 2-layer, 32-wide BERT / Llama / BERT classifier."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]

SENTENCES = [
    "Return a new list containing all items from the iterable in ascending order.",
    "The default value is used when the key is not present in the mapping.",
    "Raise an exception if the file cannot be opened for reading or writing.",
    "This function is called when the object is about to be destroyed.",
    "Convert the string to an integer using the given base and return the result.",
    "A queue that blocks until an item is available or the timeout expires.",
    "Create a socket connection to the server and send the request headers.",
    "Compute the hash of the data and compare it with the expected digest.",
    "The thread waits for the event to be set before it continues with work.",
    "Open the archive, extract every member and close it when done.",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = list(dict.fromkeys(SPECIALS + words + letters))  # unique, in order
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]",
                                   model_max_length=64)


def tiny_model(task: str, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4,
               intermediate: int = 64, labels: int = 3, tied: bool = True) -> Any:
    import torch
    import transformers

    torch.manual_seed(seed)
    vocab = len(tiny_tokenizer())
    if task == "causal-lm":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 2),
                                       intermediate_size=intermediate, max_position_embeddings=128,
                                       pad_token_id=0, bos_token_id=2, eos_token_id=4,
                                       tie_word_embeddings=tied)
        return transformers.LlamaForCausalLM(cfg).eval()
    bert = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=intermediate,
                                   max_position_embeddings=128)
    bert.num_labels = labels
    if task == "classification":
        return transformers.BertForSequenceClassification(bert).eval()
    if task == "embedding":
        return transformers.BertModel(bert).eval()
    raise ValueError(f"unknown task {task!r}")


def tiny_handle(task: str = "embedding", **kw: Any) -> Any:
    from ..models import load

    return load(tiny_model(task, **kw), task=task, tokenizer=tiny_tokenizer(),
                name=f"tiny-{task}", max_length=64)


def save_tiny_hf(directory: str | Path, task: str = "embedding", **kw: Any) -> Path:
    """Write a tiny model as a Hugging Face directory (safetensors + tokenizer)."""
    d = Path(directory)
    tiny_model(task, **kw).save_pretrained(d, safe_serialization=True)
    tiny_tokenizer().save_pretrained(d)
    return d


def save_outlier_hf(directory: str | Path, layers: int = 2,
                    outliers: tuple[int, ...] = (1,)) -> Path:
    """A tiny encoder in which the given layers are extremely sensitive to int8 on every
    CPU: one FFN neuron always outputs 1000 (its output weights are zero, so the float model
    does not see it), which makes the per-tensor int8 step of the FFN output layer's input
    so coarse that its other activations round to nothing, while that layer's output
    carries most of the embedding. Every other layer quantizes well."""
    import torch

    model = tiny_model("embedding", layers=layers)
    for i in outliers:
        ffn = model.encoder.layer[i]
        with torch.no_grad():
            ffn.intermediate.dense.weight[0].zero_()
            ffn.intermediate.dense.bias[0] = 1000.0  # GELU(1000) = 1000, for every token
            ffn.output.dense.weight.mul_(500.0)  # the layer's output dominates the residual
            ffn.output.dense.weight[:, 0] = 0.0  # the float model never sees the outlier
    d = Path(directory)
    model.save_pretrained(d, safe_serialization=True)
    tiny_tokenizer().save_pretrained(d)
    return d


def tiny_texts(n: int = 24) -> list[str]:
    """Deterministic texts of varied length from the tiny vocabulary."""
    out = []
    for i in range(n):
        a, b = SENTENCES[i % len(SENTENCES)], SENTENCES[(i * 3 + 1) % len(SENTENCES)]
        out.append(a if i % 3 == 0 else a + " " + b if i % 3 == 1 else a.split(",")[0][:40])
    return out


def tiny_cnn(seed: int = 0, classes: int = 10, width: int = 8, channels: int = 3) -> Any:
    """A 2-block ResNet (BatchNorm, residuals) of width 8: an image classifier in ms."""
    import torch

    from ..models.cnn import ResNet, ResNetConfig

    torch.manual_seed(seed)
    model = ResNet(ResNetConfig(in_channels=channels, num_classes=classes, width=width,
                                blocks=(1, 1)))
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_images(n: int = 12, size: int = 20, seed: int = 0) -> list[Any]:
    """Deterministic uint8 RGB images (H, W, 3) of varied shapes, with smooth content."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = size + (i % 3) * 4, size + (i % 2) * 6
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (2 + i % 5)), np.cos(yy / (3 + i % 4)),
                         np.sin((xx + yy) / 4)], -1)
        img = 127.5 * (base + 1) + rng.normal(0, 8, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def tiny_image_handle(seed: int = 0, size: int = 16) -> Any:
    from ..core.images import ImagePreprocess
    from ..models import load

    pre = ImagePreprocess(size=size, resize=size + 2, mean=(120.0,) * 3, std=(60.0,) * 3)
    return load(tiny_cnn(seed), task="image-classification", preprocess=pre, name="tiny-cnn")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width × height grey pixels (the
    pixel data is a tiny zlib stream: decoding it would have to inflate to w × h bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


TINY_CNN = "tiny-cnn-digits"


def tiny_cnn_builtin() -> tuple[Any, Any]:
    """A tiny ResNet on the built-in 8×8 digits as a built-in model, for what loads models
    by name (the planner, `react optimize`): the zoo entry and the CNN entry, to register
    under TINY_CNN in `models.zoo.BUILTINS` and `models.vision.CNN_BUILTINS` (tests use
    monkeypatch.setitem). Its weights are `tiny_cnn(seed=0, channels=1)`'s."""
    from ..models.vision import DIGITS_PREPROCESS, CnnBuiltin
    from ..models.zoo import BuiltinModel

    def arch() -> Any:
        return tiny_cnn(seed=1, channels=1)  # other weights: only its layout counts

    entry = BuiltinModel(TINY_CNN, "image-classification", "reactinfer", "reactinfer",
                         "testing/tiny.py", "a 2-block ResNet of width 8 on 8x8 digits (tests)",
                         "0.01M")
    cnn = CnnBuiltin(arch, lambda _: tiny_cnn(seed=0, channels=1).state_dict(),
                     DIGITS_PREPROCESS)
    return entry, cnn
