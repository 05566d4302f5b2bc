"""Which teacher to inject from: by architecture alone (TLI score), or by how well the injected student starts.

The paper picks the teacher with the highest TLI score. In the teachers benchmark (docs/benchmarks.md: mnasnet_100
from 17 teachers trained to the same accuracy) that score did not predict which teacher made the student learn
fastest: Spearman rho -0.22 with the student's mean accuracy over training steps 25-100. The accuracy the
student starts at after the injection and the two refits `iterate` does did: a ranking from one set of 8 batches
agreed with rho 0.56, and 0.67 on ten other teachers trained further (TLI score there: 0.26). It costs one
injection and a few forward passes per candidate, on batches a pipeline has anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from itertools import islice

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from .api import transfer
from .graph import trace_as
from .head import refit_head
from .norm import recalibrate_norms
from .score import graph_score


def rank_teachers(student: nn.Module, candidates: Mapping[str, nn.Module] | list[nn.Module], *,
                  input_size: tuple[int, ...] | None = None, batches: Iterable | None = None, max_batches: int = 8,
                  progress: bool = True) -> pd.DataFrame:
    """Candidate teachers, best first, with their TLI score against `student`.

    Without `batches`: ordered by TLI score (architecture only; `student`'s and the candidates' weights are ignored).
    With `batches` of (images, class indices) from the training data: each candidate is injected into a copy of
    `student` with `transfer()`'s defaults, BatchNorm statistics and the classifier are refitted on up to
    `max_batches` of them as `kaggle_tli.iterate` does, and the candidates are ordered by `start_accuracy`, the copy's
    accuracy on the half of the images the classifier was not fitted on. `student` itself is never changed.
    """
    if not isinstance(candidates, Mapping):
        candidates = {f"{i}:{type(m).__name__}": m for i, m in enumerate(candidates)}
    s_graph = trace_as(student, input_size, "student")
    scores = {name: graph_score(s_graph, trace_as(m, input_size, f"candidate {name!r}"))
              for name, m in candidates.items()}
    frame = pd.DataFrame({"teacher": list(scores), "tli_score": list(scores.values())})
    order = "tli_score"
    if batches is not None:
        kept = list(islice(batches, max_batches))  # every candidate sees the same images
        frame["start_accuracy"] = [
            _start_accuracy(student, candidates[name], kept, input_size)
            for name in tqdm(frame["teacher"], desc="inject and probe", disable=not progress)
        ]
        order = "start_accuracy"
    return frame.sort_values(order, ascending=False, kind="stable").reset_index(drop=True)


def _start_accuracy(student: nn.Module, teacher: nn.Module, batches: list, input_size: tuple[int, ...] | None) -> float:
    """Inject into a copy, refit BatchNorm and (where a probe helps) the classifier; held-out accuracy at step 0."""
    trial = copy.deepcopy(student)
    transfer(teacher, trial, input_size=input_size)
    recalibrate_norms(trial, batches, max_batches=len(batches))  # it reads the images of (images, labels) pairs
    head = refit_head(trial, batches, max_batches=len(batches))
    return head.accuracy_probe if head.refitted else head.accuracy_before
