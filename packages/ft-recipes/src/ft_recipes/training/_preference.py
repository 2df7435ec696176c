"""Preference losses (DPO and its variants) and their metrics, computed as TRL's ``DPOTrainer`` computes them.

Losses, with ``d = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r))`` per pair (log-probs summed over
the answer's trained tokens, ``c`` chosen and ``r`` rejected answer):

* ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta d)``;
* ``hinge`` (RSO, Liu et al. 2023): ``relu(1 - beta d)``;
* ``ipo`` (Azar et al. 2023): ``(d' - 1 / (2 beta))^2`` with ``d'`` the log-ratios divided by each answer's
  token count (the length normalisation TRL applies, confirmed with the IPO authors);
* ``robust`` (Chowdhury et al. 2024): ``((1 - e) l(d) - e l(-d)) / (1 - 2e)``, ``l(x) = -log sigmoid(beta x)``,
  ``e = label_smoothing``;
* ``simpo`` (Meng et al. 2024), reference-free: ``-log sigmoid(beta (a(c) - a(r)) - gamma)`` with ``a`` the
  per-token mean log-prob (label smoothing as TRL's ``CPOTrainer``); it cannot be mixed with the others,
  whose rewards are measured against a reference.

``loss_type`` may list several with ``loss_weights`` (default 1 each), summed as TRL does. The loss is the
sum over pairs divided by ``num_pairs``, the pairs of the whole accumulation window (all ranks when
distributed), so accumulation and world size do not change it.

Metrics under TRL's names: ``rewards/chosen`` / ``rewards/rejected`` (``beta`` times the log-ratio; for
SimPO ``beta`` times the mean log-prob, as ``CPOTrainer``), ``rewards/accuracies`` (chosen reward strictly
above rejected), ``rewards/margins``, ``logps/chosen`` / ``logps/rejected`` (summed; SimPO: per-token
mean, as ``CPOTrainer``), all means over pairs; ``logits/chosen`` / ``logits/rejected``: the mean over the
answers' trained positions of the vocabulary-mean logit (TRL's fused head ``mean_logits``), token-weighted.

Log-probs come from the chunked output projection, never ``[b, s, v]`` fp32 logits. When the projection has
no trainable parameter (LoRA, QLoRA), each chunk's gradient with respect to its hidden states is taken in
the forward while its logits exist (``onehot - softmax`` through the projection), and the backward only
scales it by the per-token upstream gradient: the projection runs once per step. Otherwise each chunk is
recomputed in the backward (``torch.utils.checkpoint``).

Legend: b rows (2n: n chosen then n rejected), s sequence, d hidden, v vocabulary, t trained positions,
c chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ft_recipes.training._loss import IGNORE_INDEX, _projection_leaves
from ft_recipes.training.errors import LossError

__all__ = [
    "LOSS_TYPES",
    "METRIC_NAMES",
    "PreferenceLoss",
    "PreferenceStats",
    "SequenceLogps",
    "completion_logps",
    "preference_loss",
    "sequence_logps",
]

LossType = Literal["sigmoid", "hinge", "ipo", "robust", "simpo"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "robust", "simpo")
METRIC_NAMES: tuple[str, ...] = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)
"""TRL's metric names, in the order they are logged."""


@dataclass(frozen=True)
class PreferenceLoss:
    """Which preference loss, with TRL's parameter names (``DPOConfig``; ``simpo_gamma`` from ``CPOConfig``).

    Attributes:
        loss_type: One or several of :data:`LOSS_TYPES`.
        loss_weights: One weight per loss type (default 1 each).
        beta: The deviation from the reference (DPO's beta, IPO's tau, SimPO's beta), > 0.
        label_smoothing: Probability that a label is flipped, in [0, 0.5) (``robust``, ``simpo``).
        simpo_gamma: SimPO's target reward margin.

    Raises:
        LossError: An unknown type, mismatched weights, ``beta <= 0``, a smoothing outside [0, 0.5), or
            ``simpo`` mixed with the reference-based losses.
    """

    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5

    def __post_init__(self) -> None:
        types = (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)
        object.__setattr__(self, "loss_type", types)
        if not types:
            raise LossError("loss_type: at least one loss type is needed")
        for name in types:
            if name not in LOSS_TYPES:
                raise LossError(f"loss_type: unknown {name!r} (expected one of {', '.join(LOSS_TYPES)})")
        if "simpo" in types and len(set(types)) > 1:
            raise LossError(
                "loss_type: 'simpo' is reference-free and cannot be mixed with reference-based losses"
            )
        if self.loss_weights is not None:
            weights = tuple(float(w) for w in self.loss_weights)
            if len(weights) != len(types):
                raise LossError(f"loss_weights: {len(weights)} weights for {len(types)} loss types")
            object.__setattr__(self, "loss_weights", weights)
        if not self.beta > 0:
            raise LossError(f"beta: must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise LossError(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")

    @property
    def weights(self) -> tuple[float, ...]:
        """One weight per loss type."""
        return self.loss_weights or (1.0,) * len(self.loss_type)

    @property
    def reference_free(self) -> bool:
        """Whether no reference model is needed (SimPO)."""
        return self.loss_type == ("simpo",)


@dataclass
class SequenceLogps:
    """Per-row sums over the trained (answer) positions of a preference batch.

    Attributes:
        logps: Summed log-probabilities of the labels ``[b]`` fp32, differentiable.
        tokens: Trained positions per row ``[b]`` int64.
        logits: Sum over those positions of the vocabulary-mean logit ``[b]`` fp32, without gradient.
    """

    logps: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor


def _chunk_stats(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 ``log p(target)`` ``[c]``, vocabulary-mean logit ``[c]`` and ``d logp / d logits`` ``[c, v]``."""
    work = logits.float()  # [c, v] fp32
    rows = torch.arange(work.shape[0], device=work.device)
    lse = torch.logsumexp(work, dim=-1)  # [c]
    logp = work[rows, targets] - lse
    mean = work.mean(-1)
    grad = torch.exp(work - lse.unsqueeze(1)).neg_()  # -softmax
    grad[rows, targets] += 1.0  # onehot - softmax
    return logp, mean, grad.to(logits.dtype)


class _LogpsGradInForward(torch.autograd.Function):
    """Per-token log-probs whose gradient to the hidden states is taken in the forward (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        projection: Callable[[torch.Tensor], torch.Tensor],
        chunk_size: int,
        trained: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_hidden = torch.empty_like(trained)  # [t, d]
        logps = torch.empty(trained.shape[0], dtype=torch.float32, device=trained.device)  # [t]
        means = torch.empty_like(logps)  # [t]
        for start in range(0, trained.shape[0], chunk_size):
            stop = start + chunk_size
            with torch.enable_grad():
                hidden = trained[start:stop].detach().requires_grad_(True)  # [c, d]
                logits = projection(hidden)  # [c, v], freed with the chunk
            logp, mean, grad_logits = _chunk_stats(logits.detach(), targets[start:stop])
            (grad_hidden[start:stop],) = torch.autograd.grad(logits, hidden, grad_logits)
            logps[start:stop], means[start:stop] = logp, mean
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(means)
        return logps, means

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_logps: torch.Tensor, _grad_means: torch.Tensor
    ) -> tuple[object, ...]:
        (grad_hidden,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return None, None, grad_hidden * grad_logps.unsqueeze(1).to(grad_hidden.dtype), None


def _chunk_logps(
    projection: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = projection(hidden).float()  # [c, v] fp32
    logp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return logp, logits.detach().mean(-1)


def completion_logps(
    hidden: torch.Tensor,
    output_projection: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    chunk_size: int = 128,
) -> SequenceLogps:
    """Per-row summed log-probs of the labels (and mean logits) through the chunked output projection.

    Args:
        hidden: Final-normed hidden states ``[b, s, d]``.
        output_projection: hidden ``[..., d]`` -> logits ``[..., v]`` (with any soft-cap).
        labels: Shifted targets ``[b, s]``, -100 where not trained (the prompt, padding).
        chunk_size: Trained positions per projection chunk (bounds the logits held to ``[chunk, v]``).

    Raises:
        LossError: Shapes that do not match or a non-positive ``chunk_size``.
    """
    if hidden.shape[:-1] != labels.shape:
        raise LossError(
            f"completion_logps: hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)}"
        )
    if chunk_size < 1:
        raise LossError(f"completion_logps: chunk_size must be >= 1, got {chunk_size}")
    b = labels.shape[0]
    flat = labels.reshape(-1)  # [b*s]
    index = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # [t]
    rows = torch.div(index, labels.shape[1], rounding_mode="floor")  # [t]
    trained = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # [t, d]
    targets = flat.index_select(0, index)  # [t]
    grad = torch.is_grad_enabled() and trained.requires_grad
    if grad and not _projection_leaves(output_projection, trained):
        token_logps, token_means = _LogpsGradInForward.apply(output_projection, chunk_size, trained, targets)
    elif trained.shape[0] == 0:
        token_logps = trained.sum(-1).float() * 0.0  # [0], keeps the graph
        token_means = token_logps.detach()
    else:
        parts = [
            checkpoint(_chunk_logps, output_projection, h, t, use_reentrant=False)
            if grad
            else _chunk_logps(output_projection, h, t)
            for h, t in zip(trained.split(chunk_size), targets.split(chunk_size), strict=True)
        ]
        token_logps = torch.cat([p[0] for p in parts])
        token_means = torch.cat([p[1] for p in parts])
    zeros = torch.zeros(b, dtype=torch.float32, device=hidden.device)
    return SequenceLogps(
        logps=zeros.index_add(0, rows, token_logps),  # [b]
        tokens=torch.bincount(rows, minlength=b),  # [b]
        logits=zeros.index_add(0, rows, token_means.detach()),  # [b]
    )


def sequence_logps(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, chunk_size: int = 128
) -> SequenceLogps:
    """One forward of a preference batch (chosen and rejected rows together) and its per-row log-probs.

    Args:
        model: An ft ``CausalLM`` (``return_hidden=True`` and ``output_projection``).
        batch: ``input_ids``, ``labels``, ``position_ids``, ``document_ids`` ``[2n, s]`` on the model's device.
        chunk_size: See :func:`completion_logps`.
    """
    hidden = model(
        batch["input_ids"],
        position_ids=batch["position_ids"],
        document_ids=batch["document_ids"],
        return_hidden=True,
    )  # [2n, s, d]
    return completion_logps(hidden, model.output_projection, batch["labels"], chunk_size=chunk_size)  # type: ignore[arg-type]


_STATS = (
    "pairs",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "tokens/chosen",
    "logits/rejected",
    "tokens/rejected",
)


@dataclass
class PreferenceStats:
    """Sums behind the metrics (per pair, or per token for ``logits/*``), so windows and ranks add up.

    Attributes:
        sums: ``[11]`` float64 in the order pairs, the four ``rewards/*``, the two ``logps/*``, then the
            logit sum and token count of the chosen answers and of the rejected ones. All-reduce it (sum)
            to combine ranks.
    """

    sums: torch.Tensor

    def __add__(self, other: PreferenceStats) -> PreferenceStats:
        return PreferenceStats(self.sums + other.sums.to(self.sums.device))

    @staticmethod
    def zero(device: torch.device | str = "cpu") -> PreferenceStats:
        """No pairs yet."""
        return PreferenceStats(torch.zeros(len(_STATS), dtype=torch.float64, device=device))

    def to_cpu(self) -> PreferenceStats:
        """The same sums on the CPU (accumulated there, so a window never syncs per metric)."""
        return PreferenceStats(self.sums.detach().cpu())

    def metrics_pairs(self) -> int:
        """Pairs counted."""
        return int(self.sums[0])

    def metrics(self) -> dict[str, float]:
        """TRL's metrics: means over pairs, and token-weighted means for ``logits/*``."""
        s = dict(zip(_STATS, self.sums.tolist(), strict=True))
        pairs = max(s["pairs"], 1.0)
        out = {name: s[name] / pairs for name in METRIC_NAMES if not name.startswith("logits/")}
        for side in ("chosen", "rejected"):
            tokens = s[f"tokens/{side}"]
            out[f"logits/{side}"] = s[f"logits/{side}"] / tokens if tokens > 0 else 0.0
        return {name: out[name] for name in METRIC_NAMES}


def _pair_losses(
    cfg: PreferenceLoss, chosen: torch.Tensor, rejected: torch.Tensor, counts: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Weighted per-pair loss ``[n]`` from chosen / rejected scores (log-ratios, or log-probs for SimPO)."""
    beta, eps = cfg.beta, cfg.label_smoothing
    delta = chosen - rejected  # [n]
    total = torch.zeros_like(delta)
    for name, weight in zip(cfg.loss_type, cfg.weights, strict=True):
        if name == "sigmoid":
            loss = -F.logsigmoid(beta * delta)
        elif name == "hinge":
            loss = torch.relu(1 - beta * delta)
        elif name == "ipo":
            per_token = chosen / counts[0].clamp(min=1) - rejected / counts[1].clamp(min=1)
            loss = (per_token - 1 / (2 * beta)) ** 2
        elif name == "robust":
            loss = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (
                1 - 2 * eps
            )
        else:  # simpo: chosen / rejected are per-token mean log-probs
            margin = beta * (delta - cfg.simpo_gamma / beta)
            loss = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
        total = total + weight * loss
    return total


def preference_loss(
    cfg: PreferenceLoss,
    policy: SequenceLogps,
    reference_logps: torch.Tensor | None,
    *,
    num_pairs: int | float | torch.Tensor,
) -> tuple[torch.Tensor, PreferenceStats]:
    """The preference loss of one micro-batch, normalised by the window's pair count, and its metric sums.

    Args:
        cfg: Which loss.
        policy: The policy's :class:`SequenceLogps` of ``2n`` rows (``n`` chosen then ``n`` rejected).
        reference_logps: The reference's summed log-probs ``[2n]`` (None for SimPO).
        num_pairs: Pairs in the whole accumulation window (all ranks), > 0.

    Returns:
        ``(loss, stats)``: the fp32 scalar (sum over pairs / ``num_pairs``) and the detached metric sums.

    Raises:
        LossError: A missing reference, rows that do not pair up, or a non-positive ``num_pairs``.
    """
    b = policy.logps.shape[0]
    if b % 2:
        raise LossError(f"preference_loss: {b} rows do not split into chosen and rejected halves")
    if not isinstance(num_pairs, torch.Tensor) and num_pairs <= 0:
        raise LossError(f"preference_loss: num_pairs must be > 0, got {num_pairs}")
    logps_c, logps_r = policy.logps.chunk(2)  # [n] each
    tokens = policy.tokens.chunk(2)
    if cfg.reference_free:
        score_c = logps_c / tokens[0].clamp(min=1)
        score_r = logps_r / tokens[1].clamp(min=1)
        shown_c, shown_r = score_c, score_r  # CPOTrainer logs SimPO's mean log-probs
    else:
        if reference_logps is None:
            raise LossError(f"preference_loss: loss_type {list(cfg.loss_type)} needs reference log-probs")
        ref_c, ref_r = reference_logps.to(logps_c.dtype).chunk(2)
        score_c, score_r = logps_c - ref_c, logps_r - ref_r
        shown_c, shown_r = logps_c, logps_r
    loss = _pair_losses(cfg, score_c, score_r, tokens).sum() / num_pairs
    with torch.no_grad():
        reward_c, reward_r = cfg.beta * score_c, cfg.beta * score_r
        logits_c, logits_r = policy.logits.chunk(2)
        sums = torch.stack(
            [
                torch.tensor(float(b // 2), dtype=torch.float64, device=reward_c.device),
                reward_c.double().sum(),
                reward_r.double().sum(),
                (reward_c > reward_r).double().sum(),
                (reward_c - reward_r).double().sum(),
                shown_c.double().sum(),
                shown_r.double().sum(),
                logits_c.double().sum(),
                tokens[0].double().sum(),
                logits_r.double().sum(),
                tokens[1].double().sum(),
            ]
        )
    return loss, PreferenceStats(sums)
