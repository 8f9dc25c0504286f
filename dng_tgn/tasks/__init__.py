"""Task pipelines: the paper's experiments as plain functions of a config, with no Sacred in them.

Each ``run_*`` function takes the config an experiment declares (``experiments/*.py`` are Sacred wiring
only) and a Sacred run (or ``None``) to log to, trains, evaluates, and returns a JSON-serialisable summary.

* :func:`~.generalization.run_generalization`: §8.2 / App. E.2, a network's weights -> its test accuracy.
* :func:`~.inr2jls.run_inr2jls`: §6 / §8.1, INR2JLS reconstruction, then classification from its features.
* :func:`~.static_vs_dynamic.run_static_vs_dynamic`: §7, static vs dynamic MPNNs fitting MLP activations.
* :func:`~.inr_editing.run_inr_editing`: INR editing (NFN's SIREN stylization), a weight-space edit or an image decoder.
"""
from .generalization import run_generalization
from .inr2jls import run_inr2jls
from .inr_editing import run_inr_editing
from .static_vs_dynamic import run_static_vs_dynamic

__all__ = ["run_generalization", "run_inr2jls", "run_inr_editing", "run_static_vs_dynamic"]
