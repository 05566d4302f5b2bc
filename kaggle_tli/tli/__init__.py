"""The TLI engine: two `nn.Module`s in, a report out. Knows nothing about Kaggle, runs or files.

    trace      graph.py   execution graph -> ordered layers with block, depth, branch, activation
               forward.py the one forward pass on meta copies that records it; units.py the layers themselves
    match      match.py   score every pair as arrays; order-preserving block and layer alignment
    inject     inject.py  ComboInjection (centre crop + resize) for any rank, top-k mixing
    sharpen    activation.py  a smooth activation replacing the teacher's ReLU made to act like it (norms x s)
    score      score.py   tli_score, similarity_matrix
    rank       rank.py    rank_teachers: by TLI score, or by how well the injected student starts (needs data)
    refit      norm.py, head.py   BatchNorm statistics and the classifier fitted on a few batches (needs data)
    report     report.py  TransferReport: one row per student tensor
    options    options.py TransferOptions: every option of a transfer, its default and its check
    guard      guard.py   after a transfer: no meta tensor, the teacher untouched, the student finite
"""

from .api import transfer
from .forward import TraceError
from .graph import trace
from .guard import TransferIntegrityError
from .head import HeadRefit, classifier_of, refit_head
from .inject import center_crop, combo_injection, resize
from .norm import recalibrate_norms
from .options import TransferOptions
from .rank import rank_teachers
from .report import TransferReport
from .score import similarity_matrix, tli_score
from .units import Graph, Unit

__all__ = [
    "Graph",
    "HeadRefit",
    "TraceError",
    "TransferIntegrityError",
    "TransferOptions",
    "TransferReport",
    "Unit",
    "center_crop",
    "combo_injection",
    "rank_teachers",
    "recalibrate_norms",
    "classifier_of",
    "refit_head",
    "resize",
    "similarity_matrix",
    "tli_score",
    "trace",
    "transfer",
]
