"""What the transfer benchmark times next to kaggle_tli: iatransfer 1.0.3 and an earlier kaggle_tli engine.

iatransfer (the paper authors' follow-up toolkit) is not a dependency: it runs where it is importable, through the
convergence benchmark's hook (`methods.baseline_methods`), e.g. from a scratch virtual environment laid over the
project's (docs/benchmarks.md says how). An earlier engine is a folder holding an older `kaggle_tli` package (`git
archive <commit> kaggle_tli | tar -x -C DIR`); it runs in its own Python process, which times one transfer per
request, so its calls interleave with ours on the same pairs and see the same load.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .methods import baseline_methods

Init = Callable[[nn.Module, nn.Module], object]  # (student, teacher) -> anything; writes the student in place


def iatransfer_init() -> Init | None:
    """iatransfer's transfer as an init function, or None where iatransfer is not importable."""
    method = baseline_methods().get("iatransfer")
    return method.init if method is not None else None


def determined_share(init: Init, teacher: nn.Module, student: nn.Module) -> float:
    """Share of the student's parameter elements that `init` sets from the teacher alone: it runs on two copies of
    the student whose parameters were shifted apart, and the elements that come out equal are counted (the probe
    that checks kaggle_tli's own coverage figure, tests/test_tli_coverage.py). `student` is left as it was."""
    copies = [copy.deepcopy(student), copy.deepcopy(student)]
    with torch.no_grad():
        for p in copies[1].parameters():
            p.add_(0.5)  # every element the transfer leaves to the student's init now differs
    for c in copies:
        init(c, teacher)
    pairs = list(zip(copies[0].parameters(), copies[1].parameters(), strict=True))
    total = sum(a.numel() for a, _ in pairs)
    return sum(int((a == b).sum()) for a, b in pairs) / total if total else 0.0


# The earlier engine's side: builds each pair once (timm names, pretrained=False) and answers every request
# "teacher student classes" with the seconds of one `transfer()` on a fresh student. Its first line names the
# package it imported, so a folder without one cannot pass for an earlier engine.
_WORKER = r"""
import json, sys, time
import timm, torch
import kaggle_tli
from kaggle_tli.tli import transfer
torch.set_num_threads(int(sys.argv[1]))
print(json.dumps(kaggle_tli.__file__), flush=True)
built = {}
for line in sys.stdin:
    teacher, student, classes = json.loads(line)
    if (teacher, student) not in built:
        t = timm.create_model(teacher, pretrained=False, num_classes=classes)
        s = timm.create_model(student, pretrained=False, num_classes=classes)
        built = {(teacher, student): (t, s, {k: v.clone() for k, v in s.state_dict().items()})}
    t, s, initial = built[(teacher, student)]
    s.load_state_dict(initial)
    start = time.perf_counter()
    transfer(t, s)
    print(json.dumps(time.perf_counter() - start), flush=True)
"""


class EngineProcess:
    """An earlier kaggle_tli engine in its own process: `seconds(teacher, student)` times one transfer there."""

    def __init__(self, folder: str | Path, threads: int):
        self.folder = Path(folder).resolve()
        if not (self.folder / "kaggle_tli" / "tli").is_dir():
            raise ValueError(f"{self.folder} holds no kaggle_tli package with an engine (kaggle_tli/tli/); make one "
                             f"with: git archive <commit> kaggle_tli | tar -x -C {self.folder}")
        env = {**os.environ, "PYTHONPATH": str(self.folder)}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(threads)], cwd=self.folder, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        imported = Path(self._answer())
        if self.folder not in imported.parents:
            self.close()
            raise ValueError(f"the engine process imported {imported}, not the package in {self.folder}")

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(f"the earlier engine in {self.folder} stopped: {err[-1] if err else 'no message'}")
        return json.loads(line)

    def seconds(self, teacher: str, student: str, num_classes: int) -> float:
        self.proc.stdin.write(json.dumps([teacher, student, num_classes]) + "\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        """End the process: its input closed, it finishes its loop; killed if it has not within 30 s."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
