"""Allocation under a budget: one choice per layer, the least total error, cost within budget.

A multiple-choice knapsack solved by dynamic programming over the budget. Costs are put on
a grid of ``resolution`` steps spanning the room above the cheapest allocation, and each
cost is rounded *up* to the grid, so whatever the DP picks really fits the budget; the
rounding only ever leaves some budget unspent (at most one step per layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["cheapest_cost", "knapsack"]


def cheapest_cost(costs: Sequence[Sequence[float]]) -> float:
    """The cost of taking every layer's cheapest choice."""
    return float(sum(min(c) for c in costs))


def knapsack(costs: Sequence[Sequence[float]], values: Sequence[Sequence[float]], budget: float,
             resolution: int = 2000) -> list[int] | None:
    """Indices, one per layer, minimising ``sum(values)`` subject to ``sum(costs) <= budget``.

    Returns ``None`` when even the cheapest choices exceed ``budget``. Ties go to the
    cheaper choice.

    Example:
        >>> knapsack([[4, 2, 1], [4, 2, 1]], [[0, 1, 3], [0, 2, 5]], budget=6)
        [1, 0]
    """
    if len(costs) != len(values) or any(len(c) != len(v) or not c for c, v in zip(costs, values)):
        raise ValueError("knapsack: every layer needs as many costs as values, and at least one")
    base = cheapest_cost(costs)
    room = budget - base
    if room < -1e-9 * max(abs(budget), 1.0):
        return None
    spans = [max(c) - min(c) for c in costs]
    if room >= sum(spans):  # everything fits: the best choice of each layer
        return [min(range(len(v)), key=lambda j: (v[j], c[j])) for c, v in zip(costs, values)]
    unit = room / resolution if room > 0 else 1.0
    steps = [[math.ceil((x - min(c)) / unit - 1e-9) if room > 0 else (0 if x == min(c) else resolution + 1)
              for x in c] for c in costs]
    size = resolution + 1
    best = torch.zeros(size, dtype=torch.float64)
    picks = []
    for layer_steps, layer_values in zip(steps, values):
        new = torch.full((size,), math.inf, dtype=torch.float64)
        arg = torch.full((size,), -1, dtype=torch.int64)
        order = sorted(range(len(layer_values)), key=lambda j: layer_steps[j])  # cheaper first wins ties
        for j in order:
            s = layer_steps[j]
            if s >= size:
                continue
            cand = torch.full((size,), math.inf, dtype=torch.float64)
            cand[s:] = best[: size - s] + float(layer_values[j])
            better = cand < new
            new = torch.where(better, cand, new)
            arg[better] = j
        picks.append(arg)
        best = new
    capacity = int(torch.argmin(best))  # the cheapest capacity reaching the optimum
    chosen = []
    for arg, layer_steps in zip(reversed(picks), reversed(steps)):
        j = int(arg[capacity])
        chosen.append(j)
        capacity -= layer_steps[j]
    return chosen[::-1]
