"""Weight-statistics baselines: the trivial floor every weight-space method must clear.

Unterthiner et al. (2020, "Predicting Neural Network Accuracy from Weights") describe each network by seven
statistics of every parameter tensor -- mean, variance and the 0/25/50/75/100 % quantiles -- and fit a
regressor on them ("StatNN": gradient-boosted trees). NFN's paper reports it beside its own models. We use the
same features with three fitters: ridge regression (``RIDGE``), gradient-boosted trees (``GBT``, StatNN) for
accuracy prediction, and logistic regression (``LOGISTIC``) for classification (the INR tables' floor).

Features come from a :class:`~dng_tgn.data.StateDictSet`'s stacked parameters, so every network of the set
must share one layout; each feature is standardised on the training split only.
"""
from __future__ import annotations

from enum import Enum
from typing import Mapping

import numpy as np
import torch

from ..choices import parse_choice

__all__ = ["STATISTICS", "weight_statistics", "StatsModel", "WeightStatsBaseline"]

STATISTICS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")


def weight_statistics(params: Mapping[str, torch.Tensor]) -> np.ndarray:
    """(n, 7 · #tensors): the seven statistics of every parameter tensor of each of the n stacked networks.

    ``params[k]`` has one row per network (``StateDictSet.params``); tensors are taken in key order, so two
    sets of the same layout give aligned columns.
    """
    cols = []
    for key in params:
        flat = params[key].reshape(params[key].shape[0], -1).double()
        if flat.shape[1] == 0:
            continue
        q = torch.quantile(flat, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=flat.dtype), dim=1).T
        var = flat.var(dim=1, unbiased=False)
        cols.append(torch.cat([flat.mean(1, keepdim=True), var.unsqueeze(1), q], dim=1))
    if not cols:
        raise ValueError("no parameter tensors to describe")
    out = torch.cat(cols, dim=1).numpy()
    if not np.isfinite(out).all():
        bad = [k for k in params if not torch.isfinite(params[k]).all()]
        raise ValueError(f"non-finite weights in {bad[:5]}: weight statistics would be meaningless")
    return out


class StatsModel(Enum):
    """Which model is fitted on the statistics."""

    RIDGE = "ridge"  # accuracy regression, the linear floor
    GBT = "gbt"  # accuracy regression with gradient-boosted trees: StatNN (Unterthiner et al., 2020)
    LOGISTIC = "logistic"  # classification (e.g. which image an INR represents)

    @classmethod
    def parse(cls, value: "str | StatsModel") -> "StatsModel":
        return parse_choice(cls, value, "weight-statistics model")


# The configurations fit_tuned chooses from on validation, per model: the regularisation ``alpha`` of ridge and
# logistic regression, the trees' learning rate (sklearn's default 0.1 in the middle). The generalization table
# and the INR table give every method the same budget, 3 configurations (experiments/tables.py: learned rows get
# a learning-rate grid), so each of these gets three, the regularisations spanning 4 decades.
TUNING_GRIDS = {
    StatsModel.RIDGE: (0.1, 10.0, 1000.0),
    StatsModel.GBT: (0.03, 0.1, 0.3),
    StatsModel.LOGISTIC: (0.01, 1.0, 100.0),
}


class WeightStatsBaseline:
    """Standardise the statistics on the training set, fit ``model`` on them, predict other sets.

    ``hparam`` is the model's one tuned hyperparameter (:data:`TUNING_GRIDS`, chosen on validation by
    :meth:`fit_tuned`): the ridge / inverse-logistic regularisation, or the trees' learning rate (otherwise
    sklearn's defaults, with ``seed``).
    """

    def __init__(self, model: StatsModel | str, hparam: float | None = None, seed: int = 0):
        self.model, self.seed = StatsModel.parse(model), seed
        self.hparam = float(hparam) if hparam is not None else (0.1 if self.model is StatsModel.GBT else 1.0)
        self._fitted = None

    def _make(self):
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import LogisticRegression, Ridge

        if self.model is StatsModel.RIDGE:
            return Ridge(alpha=self.hparam)
        if self.model is StatsModel.GBT:
            return HistGradientBoostingRegressor(learning_rate=self.hparam, random_state=self.seed)
        return LogisticRegression(C=1.0 / self.hparam, max_iter=2000)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "WeightStatsBaseline":
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-12
        self._fitted = self._make().fit((x - self.mu) / self.sd, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._fitted is None:
            raise RuntimeError("fit the baseline before predicting")
        return self._fitted.predict((x - self.mu) / self.sd)

    @classmethod
    def fit_tuned(cls, model: StatsModel | str, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  score, grid: tuple[float, ...] | None = None, seed: int = 0) -> "WeightStatsBaseline":
        """The configuration of ``grid`` (default: the model's :data:`TUNING_GRIDS`) with the best
        ``score(pred, target)`` on validation (higher is better). Sets ``val_score`` and ``val_scores``
        (hparam -> validation score, every configuration tried)."""
        model = StatsModel.parse(model)
        best, best_score, scores = None, -np.inf, {}
        for h in (TUNING_GRIDS[model] if grid is None else grid):
            m = cls(model, h, seed).fit(*train)
            s = scores[float(h)] = float(score(m.predict(val[0]), val[1]))
            if np.isfinite(s) and s > best_score:
                best, best_score = m, s
        if best is None:
            raise RuntimeError(f"no {model.value} fit gave a finite validation score: {scores}")
        best.val_score, best.val_scores = best_score, scores
        return best

    def tuning_record(self) -> dict:
        """What :meth:`fit_tuned` chose from and chose (the tables' ``tuned`` field)."""
        return {"key": "learning_rate" if self.model is StatsModel.GBT else "alpha", "grid": list(self.val_scores),
                "val": list(self.val_scores.values()), "chosen": self.hparam, "seed": self.seed}
