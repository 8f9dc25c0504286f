"""The metrics of the paper's tables: Kendall's τ (Tables 3, 7) and R² (reported beside it by NFN)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["kendall_tau", "r2_score"]


def kendall_tau(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Kendall's rank correlation τ (Kendall, 1938), the metric of Tables 3 and 7 (τ-b, handles ties)."""
    from scipy.stats import kendalltau

    pred, target = _np(pred), _np(target)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return float("nan")  # τ is undefined for constant inputs; say so rather than report 0
    return float(kendalltau(pred, target).statistic)


def r2_score(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (NFN reports it beside τ)."""
    pred, target = _np(pred), _np(target)
    ss_tot = float(((target - target.mean()) ** 2).sum())
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(((target - pred) ** 2).sum()) / ss_tot


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy().ravel() if isinstance(x, torch.Tensor) else np.asarray(x, float).ravel()
