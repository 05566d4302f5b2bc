"""TLI score: how similar two architectures are, in [0, 1] (paper, Fig. 7). Never touches either model's weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from .graph import trace
from .match import match_graphs
from .units import Graph


def graph_score(a: Graph, b: Graph) -> float:
    """Summed score of the one-to-one order-preserving alignment, over the larger unit count.

    Identical architectures align on the diagonal with every pair scoring exactly 1.0, hence exactly 1.0.
    """
    if not a.units and not b.units:
        return 0.0
    return score_from_total(a, b, match_graphs(a, b, allow_repeat=False).total)


def score_from_total(a: Graph, b: Graph, total: float) -> float:
    """The TLI score from the summed score of the one-to-one alignment (`Alignment.one_to_one`)."""
    n = max(len(a.units), len(b.units))
    return float(min(1.0, total / n)) if n else 0.0


def tli_score(a: nn.Module, b: nn.Module, *, input_size: tuple[int, ...] | None = None) -> float:
    """Similarity of two architectures in [0, 1]: 1.0 for the same architecture, whatever the weights."""
    return graph_score(trace(a, input_size), trace(b, input_size))


def similarity_matrix(models: Mapping[str, nn.Module], *, input_size: tuple[int, ...] | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Pairwise TLI scores as a labelled, symmetric DataFrame (each model is traced once)."""
    names = list(models)
    graphs = {n: trace(models[n], input_size) for n in tqdm(names, desc="trace", disable=not progress)}
    out = np.eye(len(names))
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for i, j in tqdm(pairs, desc="score", disable=not progress):
        out[i, j] = out[j, i] = graph_score(graphs[names[i]], graphs[names[j]])
    return pd.DataFrame(out, index=names, columns=names)
