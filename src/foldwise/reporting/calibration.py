"""Calibration of classifiers' probabilities.

- expected calibration error (ECE) over equal-width confidence bins, and the
  reliability table behind the diagram;
- temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the
  log-probabilities, fitted by LBFGS on the negative log-likelihood of a
  held-out split; it never changes a prediction, only how sure it is.

Inputs are per-image probabilities (rows sum to 1) or log-probabilities as
tensors, and integer labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

# torch is imported where a tensor is made: the plots stage needs only ``ece_of``, and importing
# torch would add about 2 s to each of its runs.
if TYPE_CHECKING:
    import torch

ECE_BINS = 15  # equal-width confidence bins (Guo et al.'s choice)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> pd.DataFrame:
    """Per confidence bin ``(lower, upper]`` (the first also holds 0): images, their mean confidence
    (the predicted class's probability) and their accuracy; empty bins have NaN means."""
    import torch

    confidence, predicted = probs.double().max(1)
    correct = (predicted == labels.to(predicted.device)).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence.cpu(), edges[1:-1], right=False)  # (lower, upper]: upper edge inside
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence.cpu(), minlength=bins)
    acc_sum = torch.bincount(index, weights=correct.cpu(), minlength=bins)
    return pd.DataFrame({"bin": range(bins), "lower": edges[:-1].numpy(), "upper": edges[1:].numpy(),
                         "count": count.numpy().astype(int),  # an empty bin's means are NaN (torch: no warning)
                         "confidence": (conf_sum / count).numpy(), "accuracy": (acc_sum / count).numpy()})


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence|: 0 is perfectly calibrated."""
    return ece_of(reliability(probs, labels, bins))


def ece_of(table: pd.DataFrame) -> float:
    """The ECE of a ``reliability`` table (its empty bins weigh nothing)."""
    full = table[table["count"] > 0]
    gaps = (full["accuracy"] - full["confidence"]).abs()
    return float((full["count"] * gaps).sum() / max(int(table["count"].sum()), 1))


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (nats per image) of normalised log-probabilities."""
    import torch.nn.functional as F

    return float(F.nll_loss(log_probs.double(), labels.to(log_probs.device)).item())


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(log_probs / T)`` on these (held-out) images.

    Optimised over log T (so T stays positive) with LBFGS and a strong-Wolfe line search, from
    T = 1, in float64 on the CPU: the same inputs give the same T on any machine.
    """
    import torch
    import torch.nn.functional as F

    z, y = log_probs.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def scale(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities after temperature scaling (normalised again)."""
    import torch.nn.functional as F

    return F.log_softmax(log_probs.double() / temperature, dim=1)
