"""What a transfer did to every student tensor: the audit trail (nanoGPT's from_pretrained, done as a table)."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = (
    "student",  # state_dict key
    "shape",
    "kind",
    "method",  # copy | grow | combo | mix | zeroed | init
    "source",  # teacher key(s), "+"-joined for a mix
    "source_shape",
    "teacher",  # index of the teacher (several teachers)
    "score",  # match score of the best source, in [0, 1]
    "weights",  # mixing weights, "+"-joined
    "fraction",  # share of this tensor's elements the teacher alone determines (copied, grown, cropped, zeroed)
    "blended",  # share that blends teacher values with the student's own init (ComboInjection's crop margin)
    "numel",
    "reason",  # why a tensor was left at init or zeroed
)


@dataclass
class TransferReport:
    """One row per student tensor, plus the overall TLI score and coverage.

    `coverage` is the share of the student's parameter elements that the teacher(s) alone determine: unchanged
    whatever the student's own init was (copied, grown, cropped, or zeroed on purpose: the last layer of an extra
    block that starts as an identity). `blended` is the share that mixes teacher values with the student's init
    (ComboInjection's margin); the rest is left at init. Buffers (BatchNorm running statistics) are reported but
    not counted.
    """

    rows: list[dict]
    score: float
    coverage: float
    settings: dict = field(default_factory=dict)
    blended: float = 0.0
    unreached_student: list[str] = field(default_factory=list)
    unreached_teacher: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV text; also written to `path` when given."""
        buf = io.StringIO()
        self.to_frame().to_csv(buf, index=False)
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_csv(cls, path: str | Path, *, score: float, coverage: float, settings: dict | None = None
                 ) -> TransferReport:
        """A report read back from `to_csv` output (the score and coverage are stored beside it, in run.json)."""
        frame = pd.read_csv(path, keep_default_na=False)
        if "blended" not in frame:  # written before the column existed
            frame.insert(list(frame.columns).index("fraction") + 1, "blended", 0.0)
        return cls(rows=frame.to_dict("records"), score=score, coverage=coverage, settings=dict(settings or {}))

    def methods(self) -> Counter:
        return Counter(r["method"] for r in self.rows)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.methods().items()))
        at_init = max(0.0, 1.0 - self.coverage - self.blended)
        lines = [
            f"TLI score {self.score:.3f}, coverage {self.coverage:.1%} (parameters the teacher alone determines), "
            f"blended {self.blended:.1%} (teacher mixed with the student's init), at init {at_init:.1%} "
            f"({len(self.rows)} tensors: {counts}) in {self.seconds:.2f} s",
            "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
        ]
        if self.unreached_student:
            lines.append(f"student tensors the forward pass never used ({len(self.unreached_student)}): "
                         + ", ".join(self.unreached_student[:8]) + (" ..." if len(self.unreached_student) > 8 else ""))
        if self.unreached_teacher:
            lines.append(f"teacher tensors the forward pass never used ({len(self.unreached_teacher)}): "
                         + ", ".join(self.unreached_teacher[:8]) + (" ..." if len(self.unreached_teacher) > 8 else ""))
        reasons = Counter(r["reason"] for r in self.rows if r["reason"])
        lines += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"TransferReport(score={self.score:.3f}, coverage={self.coverage:.3f}, blended={self.blended:.3f}, "
                f"tensors={len(self.rows)})")

    def _repr_html_(self) -> str:
        head = f"<p><b>{self.summary().splitlines()[0]}</b></p>"
        return head + self.to_frame().to_html(index=False, max_rows=400)
