"""Design-space exploration: per-layer ``cg``/``co`` under a MACs, parameter or latency budget.

* :mod:`.statistics` — per-fold second moments of a layer at sampled pixels;
* :mod:`.sensitivity` — each choice's cross-validated least-squares error;
* :mod:`.context` — the capture pass and the in-context fitting pass;
* :mod:`.allocate` — the multiple-choice knapsack;
* :mod:`.costs` — budgets and per-layer costs (MACs, parameters, latency);
* :mod:`.result` — :class:`SearchResult`;
* :mod:`.space` — the searched layers, their choices and costs, the data split, measuring;
* :mod:`.uniform` — uniform settings: the comparison and :func:`uniform_points`;
* :mod:`.api` — :func:`search`;
* :mod:`.plot` — the Pareto chart.
"""

from .api import search
from .uniform import uniform_points
from .costs import Budget
from .result import LayerChoice, Point, SearchResult
from .sensitivity import Choice

__all__ = ["search", "uniform_points", "SearchResult", "LayerChoice", "Point", "Budget", "Choice"]
