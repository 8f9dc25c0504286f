"""The metrics of the paper's tables: Kendall's τ (Tables 3, 7) and R² (reported beside it by NFN)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["kendall_tau", "r2_score", "spread_ratio", "collapse_check", "COLLAPSE_RATIO", "paired_bootstrap_tau"]


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


COLLAPSE_RATIO = 0.1  # std(pred) / std(target) below this: the regressor predicts (nearly) a constant


def spread_ratio(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """std(pred) / std(target): 1 for a predictor as spread as the targets, ~0 for a collapsed one.

    R² alone does not tell a collapsed regressor (constant output, R² ≈ 0) from a noisy one; τ of a
    near-constant prediction is decided by float noise. NaN when the targets are constant.
    """
    pred, target = _np(pred), _np(target)
    sd = float(target.std())
    return float(pred.std()) / sd if sd > 0 else float("nan")


def collapse_check(pred, target, what: str, threshold: float = COLLAPSE_RATIO, log=None) -> dict:
    """Validation R² and std(pred)/std(target) of a regression run; warns loudly when the ratio < ``threshold``.

    Returns ``{"r2", "std_ratio", "collapsed"}`` for the run's result. A collapse is reported three ways, so it
    cannot go unnoticed: ``warnings.warn`` (RuntimeWarning), a line through ``log`` (default: stderr), and
    ``collapsed=True`` in the returned fields (the tables show it).
    """
    import sys
    import warnings

    r2, ratio = r2_score(pred, target), spread_ratio(pred, target)
    collapsed = bool(np.isfinite(ratio) and ratio < threshold)
    line = f"{what}: validation R²={r2:.4f}, std(pred)/std(target)={ratio:.4f}"
    if collapsed:
        line = (f"COLLAPSE WARNING: {line} < {threshold}: the predictor outputs a near-constant value; its τ is "
                f"not meaningful (try another lr / seed, or check the targets)")
        warnings.warn(line, RuntimeWarning, stacklevel=2)
    (log or (lambda s: print(s, file=sys.stderr, flush=True)))(line)
    return {"r2": r2, "std_ratio": ratio, "collapsed": collapsed}


def paired_bootstrap_tau(pred_a, pred_b, target, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap over test networks of τ(a) − τ(b): is method a better than method b on the same nets?

    ``pred_a`` / ``pred_b``: (S, N) predictions of S seed-matched runs (seed s of a paired with seed s of b; one run
    is (N,)) on the same N test networks, ``target`` (N,). Each resample draws N networks with replacement; on it the
    statistic is the mean over seeds of τ(a_s) − τ(b_s), all on the *same* resampled networks, so the networks'
    difficulty cancels out of the difference. Returns ``{"delta_tau"`` (the statistic on the full test set),
    ``"ci95": [lo, hi]`` (percentile interval at ``level``), ``"n_boot", "n_nets", "n_seeds"}``.
    """
    from scipy.stats import kendalltau

    a, b, y = np.atleast_2d(np.asarray(pred_a, float)), np.atleast_2d(np.asarray(pred_b, float)), _np(target)
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"paired bootstrap needs seed-matched predictions on the same nets: a {a.shape}, b {b.shape}, "
                         f"target ({len(y)},)")
    if len(y) < 3:
        raise ValueError(f"paired bootstrap needs at least 3 test networks, got {len(y)}")

    def tau(p, t):
        v = kendalltau(p, t).statistic
        return 0.0 if not np.isfinite(v) else float(v)  # a constant prediction on a resample ranks nothing

    def stat(idx):
        return float(np.mean([tau(a[s, idx], y[idx]) - tau(b[s, idx], y[idx]) for s in range(len(a))]))

    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, len(y), len(y))) for _ in range(int(n_boot))])
    q = (1 - level) / 2
    lo, hi = np.quantile(boots, [q, 1 - q])
    return {"delta_tau": stat(np.arange(len(y))), "ci95": [float(lo), float(hi)], "n_boot": int(n_boot),
            "n_nets": int(len(y)), "n_seeds": int(len(a))}
