"""The paper's Fig. 7: pairwise TLI scores of small timm models, ordered by clustering and drawn as a heatmap.

Part of `kaggle-tli bench transfer` (bench/transfer.py runs it after the pairs); `run_similarity` writes
`similarity.csv`, `similarity.md` and `similarity.png`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from tqdm.auto import tqdm

from ..models import create_model
from ..tli import similarity_matrix
from ._report import save_figure, write_table
from .timing import check_names, check_positive, environment, params_m, torch_threads

# Paper Fig. 7: small timm models (<= ~5.5 M parameters), the paper's ten first, then a few cheap extras.
FIG7_MODELS: tuple[str, ...] = (
    "mnasnet_100", "spnasnet_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100",
    "efficientnet_lite0", "tf_efficientnet_b0", "mixnet_s", "regnetx_002", "ghostnet_100",
    "efficientnet_b0", "semnasnet_100", "mnasnet_small", "mobilenetv2_050", "lcnet_100", "regnety_002",
)
QUICK_FIG7_MODELS: tuple[str, ...] = (
    "mnasnet_100", "spnasnet_100", "tf_efficientnet_b0", "mobilenetv2_100", "mobilenetv3_small_100", "regnetx_002",
)


def check_models(models: Sequence[str]) -> list[str]:
    """The models of a matrix: at least two, each once, every name known (before anything is built)."""
    names = [models] if isinstance(models, str) else list(models)
    if len(names) < 2:
        raise ValueError(f"a similarity matrix needs at least 2 models, got {names}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"models listed twice: {dupes}; list each model once")
    check_names(names)
    return names


def run_similarity(models: Sequence[str] = FIG7_MODELS, *, out_dir: str | Path | None = None,
                   num_classes: int = 1000, threads: int = 2, progress: bool = True) -> pd.DataFrame:
    """The paper's Fig. 7: pairwise TLI scores of `models`, rows and columns in hierarchical-clustering order.

    `frame.attrs` holds `seconds` (tracing + scoring, the timed part), `build_seconds` (model creation) and
    `params_m`. With `out_dir`, also writes `similarity.csv`, `similarity.md` and the heatmap `similarity.png`.
    """
    names = check_models(models)
    check_positive(num_classes=num_classes, threads=threads)
    with torch_threads(threads):
        start = time.perf_counter()
        built = {n: create_model(n, num_classes) for n in tqdm(names, desc="build", disable=not progress)}
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        matrix = similarity_matrix(built, progress=progress)
        seconds = time.perf_counter() - start
    order = cluster_order(matrix)
    matrix = matrix.iloc[order, order].copy()
    matrix.attrs.update(seconds=seconds, build_seconds=build_seconds, threads=threads,
                        params_m={n: params_m(m) for n, m in built.items()})
    if out_dir is not None:
        write_similarity(matrix, out_dir)
    return matrix


def cluster_order(matrix: pd.DataFrame) -> list[int]:
    """Row order that puts similar architectures next to each other: average-linkage clustering on 1 - score,
    leaves in optimal order (so the heatmap shows families as blocks on the diagonal)."""
    dist = 1.0 - matrix.to_numpy(float)
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    if len(dist) < 3:
        return list(range(len(dist)))
    return leaves_list(linkage(squareform(dist, checks=False), method="average", optimal_ordering=True)).tolist()


def write_similarity(matrix: pd.DataFrame, out_dir: str | Path) -> None:
    """`similarity.csv` (the matrix, model names in the first column), `similarity.md`, `similarity.png`."""
    seconds, threads = matrix.attrs.get("seconds", float("nan")), matrix.attrs.get("threads", "?")
    notes = [f"{len(matrix)} timm models (pretrained=False), rows in clustering order; tracing + scoring took "
             f"{seconds:.1f} s on {threads} threads (model creation {matrix.attrs.get('build_seconds', 0):.1f} s "
             f"more). {environment(threads) + '.' if isinstance(threads, int) else ''}"]
    write_table(matrix.rename_axis("model").reset_index(), out_dir, "similarity",
                title="TLI score matrix (paper Fig. 7)", notes=notes,
                formats={c: ".2f" for c in matrix.columns})
    save_figure(heatmap(matrix), Path(out_dir) / "similarity.png")


def heatmap(matrix: pd.DataFrame, title: str = "TLI score between small timm models (paper Fig. 7)") -> Figure:
    n = len(matrix)
    values = matrix.to_numpy(float)
    params = matrix.attrs.get("params_m", {})
    labels = [f"{m} ({params[m]:.1f}M)" if m in params else m for m in matrix.index]
    fig = Figure(figsize=(2.5 + 0.6 * n, 1.5 + 0.55 * n))
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    size = max(5.0, min(9.0, 110 / n))
    for i in range(n):
        for j in range(n):
            # viridis is dark below ~0.6: white text there, black above
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size,
                    color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(range(n), list(matrix.columns), rotation=60, ha="right")
    ax.set_yticks(range(n), labels)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="TLI score")
    seconds = matrix.attrs.get("seconds")
    timing = f", {seconds:.1f} s on {matrix.attrs.get('threads')} threads" if seconds is not None else ""
    ax.set_title(f"{title}{timing}", fontsize="medium")
    return fig
