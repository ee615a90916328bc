"""Evaluating explanations: sanity checks, similarity measures, faithfulness metrics, reports.

- :mod:`.randomization` -- model-parameter randomization (Adebayo et al. 2018), cascading and
  independent, and class sensitivity;
- :mod:`.similarity` -- batched SSIM (Wang et al. 2004), Spearman / Pearson correlation, HOG
  correlation, top-k intersection;
- :mod:`.faithfulness` -- pixel flipping / region perturbation with AOPC (Samek et al. 2017),
  sensitivity-n (Ancona et al. 2018), completeness, input invariance (Kindermans et al. 2019),
  continuity (Montavon et al. 2018);
- :mod:`.ranking` -- `benchmark`: one ranking of methods and rules by those metrics;
- :mod:`.report` -- the folders ``relprop sanity`` and ``relprop benchmark`` write (Markdown,
  HTML, CSV, JSON, PNG).

Results come back as :class:`~.table.Table` (numpy structured rows; ``.to_pandas()``).
Submodules are imported on first use.

>>> from relprop import evaluate                                          # doctest: +SKIP
>>> res = evaluate.model_randomization(net, x, ["gradient", "guided_backprop"], seeds=(0, 1))  # doctest: +SKIP
>>> res.table.where(measure="ssim", step=1)                             # doctest: +SKIP
"""
from __future__ import annotations

import importlib

_WHERE = {
    "model_randomization": "randomization", "class_sensitivity": "randomization",
    "randomized_models": "randomization", "reinitialized": "randomization", "prepare_maps": "randomization",
    "weight_layers": "randomization", "RandomizationResult": "randomization",
    "ssim": "similarity", "spearman": "similarity", "pearson": "similarity", "hog_pearson": "similarity",
    "topk_intersection": "similarity", "MEASURES": "similarity", "measure": "similarity",
    "pixel_flipping": "faithfulness", "region_perturbation": "faithfulness", "aopc": "faithfulness",
    "sensitivity_n": "faithfulness", "completeness": "faithfulness", "input_invariance": "faithfulness",
    "continuity": "faithfulness", "shifted_model": "faithfulness",
    "sanity_report": "report", "benchmark_report": "report",
    "benchmark": "ranking", "BenchmarkResult": "ranking", "METRICS": "ranking",
    "Table": "table",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'relprop.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
