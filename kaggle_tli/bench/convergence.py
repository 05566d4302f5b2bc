"""Convergence benchmark (paper, Fig. 4): how fast does a student trained from each initialisation learn?

Protocol (defaults, issue 6): Fashion-MNIST, 12,000 training / 2,000 held-out images at 32x32x3; a resnet18 teacher
trained 600 steps; each student trained 200 steps with Adam (lr 1e-3, batch 64), held-out accuracy measured every 25
steps from step 0, twice: in plain eval mode, and with BatchNorm statistics first refitted on 512 fixed training
images ("precise BN", the tables' headline; see `evaluate_precise` for why). Every method sees the same batches in
the same order for a given seed, so the methods differ only in how the student starts; runs are spread over worker
processes (`--workers`) and do not depend on how many there are.

Methods (all side by side in one run):
    kaiming      timm's default initialisation (what "training from scratch" means)
    xavier       Xavier-uniform weights, zero biases
    same_name    copy tensors whose name and shape agree (timm's `strict=False`, Hugging Face's
                 `ignore_mismatched_sizes`)
    tli          kaggle_tli's transfer with its defaults, plus variants over lam, top_k and norm transfer
    +recal       any of the above followed by re-estimating BatchNorm statistics on a few training batches
    +probe       +recal, then the classifier refitted on the same batches where a linear probe predicts clearly
                 better (`kaggle_tli.tli.refit_head`); `tli` does both, as `kaggle_tli.iterate` does
"""

from __future__ import annotations

import argparse
import gzip
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._pool import run_jobs, split_cores
from ._report import float_formats, prepare_dir, write_table

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_MISSING_DATA = (
    "Fashion-MNIST was not found in {path}. Install it with\n"
    "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
    "or point the benchmark at any Kaggle-shaped image folder with --data DIR (train.csv + images)."
)


# --------------------------------------------------------------------------------------------------- data


@dataclass
class ArrayData:
    """Normalised images and labels held in memory: the benchmark's data, whatever its source."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    num_classes: int
    name: str = ""

    def batches(self, steps: int, batch_size: int, seed: int):
        """`steps` batches of training data in an order fixed by `seed` (the same for every method)."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.x_train)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch_size / n) + 1)])
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            yield self.x_train[idx], self.y_train[idx]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _to_rgb32(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if x.dim() == 3:
        x = x[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x - 0.5) / 0.25).contiguous()


def load_fashion_mnist(n_train: int = 12_000, n_valid: int = 2_000, size: int = 32, seed: int = 0,
                       root: Path = FASHION_DIR) -> ArrayData:
    """A fixed random subset of Fashion-MNIST (Debian's dataset-fashion-mnist) as 3-channel tensors."""
    files = {k: root / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(_MISSING_DATA.format(path=root))
    rng = np.random.default_rng(seed)
    tr = rng.permutation(60_000)[:n_train]
    te = rng.permutation(10_000)[:n_valid]
    return ArrayData(
        x_train=_to_rgb32(_read_idx(files["train-images"])[tr], size),
        y_train=torch.from_numpy(_read_idx(files["train-labels"])[tr].astype(np.int64)),
        x_valid=_to_rgb32(_read_idx(files["t10k-images"])[te], size),
        y_valid=torch.from_numpy(_read_idx(files["t10k-labels"])[te].astype(np.int64)),
        num_classes=10,
        name="fashion-mnist",
    )


def load_folder(root: str | Path, size: int = 32, n_valid: int = 2_000, seed: int = 0) -> ArrayData:
    """A Kaggle-shaped competition folder (train.csv + images, or a pixel CSV) loaded into memory at `size` px,
    with its validation transform; a random `n_valid` (at most a fifth) held out."""
    from kaggle_tli.data import open_competition  # above the bench's own loader: only needed for --data

    data = open_competition(root, image_size=size)
    dataset = data.dataset(np.arange(len(data)), train=False)
    images, labels = zip(*(dataset[i] for i in tqdm(range(len(dataset)), desc=f"load {Path(root).name}")),
                         strict=True)
    x = torch.stack(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()  # the benchmark's models take 3 channels
    y = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_valid = min(n_valid, len(x) // 5)
    valid, train = order[:n_valid], order[n_valid:]
    return ArrayData(x[train], y[train], x[valid], y[valid], data.num_classes, name=Path(root).name)


# --------------------------------------------------------------------------------------------------- training


PRECISE_BATCHES = 8  # 512 training images refit BatchNorm before each "precise" evaluation
PRECISE_SEED = 12_345  # the same images for every method, step and seed


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's convolutions were converted to it (`train(channels_last=True)`)."""
    convs = (p for p in model.parameters() if p.dim() == 4)
    first = next(convs, None)
    if first is not None and first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, batch_size: int = 500) -> float:
    """Held-out accuracy in eval mode, with the BatchNorm running statistics the model carries."""
    was = model.training
    model.eval()
    correct = 0
    fmt = _memory_format(model)
    for i in range(0, len(data.x_valid), batch_size):
        logits = model(data.x_valid[i:i + batch_size].contiguous(memory_format=fmt))
        correct += (logits.argmax(1) == data.y_valid[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / len(data.x_valid)


@torch.no_grad()
def evaluate_precise(model: nn.Module, data: ArrayData, *, batches: int = PRECISE_BATCHES,
                     batch_size: int = 64) -> float:
    """Held-out accuracy after refitting BatchNorm statistics on fixed training batches ("precise BN"); the model's
    own statistics are put back afterwards, so training is not affected.

    Under Adam at lr 1e-3 without warmup the running statistics lag the weights so far that eval-mode accuracy of
    one and the same run jumps between 0.25 and 0.85 from one evaluation to the next, while accuracy with refitted
    statistics moves by a few points: this measures the weights, eval mode measures the weights and the lag.
    """
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=[]):  # a train-mode forward may draw (dropout): leave training's stream be
            recalibrate(model, data, batches=batches, batch_size=batch_size, seed=PRECISE_SEED)
        return evaluate(model, data)
    finally:
        for name, buf in model.named_buffers():
            buf.copy_(saved[name])


METRICS = {  # column -> how it is described in tables and plots
    "accuracy_precise": "held-out accuracy, BatchNorm refitted on 512 training images",
    "accuracy": "held-out accuracy, eval mode (running statistics)",
}


def accuracies(model: nn.Module, data: ArrayData) -> dict[str, float]:
    """Both METRICS of `model` now."""
    return {"accuracy": evaluate(model, data), "accuracy_precise": evaluate_precise(model, data)}


def measure(model: nn.Module, data: ArrayData, step: int) -> dict:
    return {"step": step, **accuracies(model, data)}


def train(model: nn.Module, data: ArrayData, *, steps: int, seed: int, lr: float = 1e-3, batch_size: int = 64,
          eval_every: int = 25, stop_at: float | None = None, channels_last: bool = False, warmup: int = 0,
          progress: bool = False, desc: str = "") -> list[dict]:
    """Adam on cross-entropy; returns one `measure` per evaluation (step, accuracy, accuracy_precise) from step 0, or
    none with `eval_every=0` (evaluations never change the training itself).

    stop_at: end early at the first evaluation whose precise accuracy reaches this (`steps` is then a maximum).
    channels_last: convert the model (in place) and its inputs to NHWC first; on CPU, depthwise convolutions run
    2-4x faster that way (mobilenetv3_small_100 at 1 thread: a step 97 -> 44 ms), plain resnets no faster.
    warmup: the learning rate grows linearly to `lr` over this many steps (kaggle-tli's trainer warms up 5% of a run).
    """
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda done: min(1.0, (done + 1) / (warmup + 1)))
    curve = [measure(model, data, 0)] if eval_every else []
    model.train()
    batches = data.batches(steps, batch_size, seed)
    for step, (x, y) in enumerate(tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False), 1):
        loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if eval_every and (step % eval_every == 0 or step == steps):
            curve.append(measure(model, data, step))
            if stop_at is not None and curve[-1]["accuracy_precise"] >= stop_at:
                break
    return curve


# --------------------------------------------------------------------------------------------------- inits


def _xavier(student: nn.Module, _teacher: nn.Module) -> dict:
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return {}


def _same_name(student: nn.Module, teacher: nn.Module) -> dict:
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    kept = {k: v for k, v in t_state.items() if k in s_state and s_state[k].shape == v.shape}
    student.load_state_dict(kept, strict=False)
    n_s = sum(p.numel() for p in student.parameters())
    n_kept = sum(v.numel() for k, v in kept.items() if k in dict(student.named_parameters()))
    return {"coverage": n_kept / n_s}


def _tli(**kw) -> Callable[[nn.Module, nn.Module], dict]:
    def init(student: nn.Module, teacher: nn.Module) -> dict:
        from kaggle_tli.tli import transfer

        report = transfer(teacher, student, input_size=(3, 32, 32), **kw)
        return {"coverage": report.coverage, "tli_score": report.score}

    return init


@dataclass(frozen=True)
class Method:
    """How a student starts: an init function (student, teacher) -> info, then optionally refitted BatchNorm
    statistics and then a refitted classifier, both on the same few training batches."""

    init: Callable[[nn.Module, nn.Module], dict]
    recal: bool = False
    probe: bool = False


# `tli` is what `kaggle_tli.iterate` does by default: transfer() with its defaults, then BatchNorm statistics and
# (where a probe predicts clearly better) the classifier refitted on a few training batches. The variants change one
# thing each; `tli no refit` is transfer() alone, with no data at all.
METHODS: dict[str, Method] = {
    "kaiming": Method(lambda s, t: {}),
    "kaiming+recal": Method(lambda s, t: {}, recal=True),
    "kaiming+probe": Method(lambda s, t: {}, recal=True, probe=True),
    "xavier": Method(_xavier),
    "same_name": Method(_same_name),
    "same_name+recal": Method(_same_name, recal=True),
    "tli": Method(_tli(), recal=True, probe=True),
    "tli no probe": Method(_tli(), recal=True),
    "tli no refit": Method(_tli()),
    "tli top_k=1": Method(_tli(top_k=1), recal=True, probe=True),
    "tli lam=0": Method(_tli(lam=0.0), recal=True, probe=True),
    "tli lam=1": Method(_tli(lam=1.0), recal=True, probe=True),
    "tli no norm": Method(_tli(transfer_norm=False), recal=True, probe=True),
    "tli extra_blocks=copy": Method(_tli(extra_blocks="copy"), recal=True, probe=True),
}
QUICK_METHODS = ("kaiming", "same_name", "tli")


def _iatransfer(student: nn.Module, teacher: nn.Module) -> dict:
    """The authors' follow-up toolkit as a baseline, when it is importable (it is not a dependency)."""
    from iatransfer.toolkit import IAT

    IAT()(teacher, student)
    return {}


def baseline_methods() -> dict[str, Method]:
    """External baselines found in this environment (pip install iatransfer==1.0.3 in a scratch venv)."""
    try:
        import iatransfer.toolkit  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means the baseline is not available
        return {}
    return {"iatransfer": Method(_iatransfer), "iatransfer+recal": Method(_iatransfer, recal=True),
            "iatransfer+probe": Method(_iatransfer, recal=True, probe=True)}


def all_methods() -> dict[str, Method]:
    """Every method this environment can run, by name (worker processes look methods up here)."""
    return {**METHODS, **baseline_methods()}


def _refit_batches(data: ArrayData, batches: int, batch_size: int, seed: int):
    """The few training batches both refits use, the same ones for every method of a seed."""
    return data.batches(batches, batch_size, seed + 10_000)


def recalibrate(model: nn.Module, data: ArrayData, *, batches: int = 8, batch_size: int = 64, seed: int = 0) -> None:
    from kaggle_tli.tli import recalibrate_norms

    recalibrate_norms(model, _refit_batches(data, batches, batch_size, seed), max_batches=batches)


def probe_head(model: nn.Module, data: ArrayData, *, batches: int = 8, batch_size: int = 64, seed: int = 0) -> dict:
    """`refit_head` on the batches `recalibrate` used (what `iterate` does); returns its verdict as row fields."""
    from kaggle_tli.tli import refit_head

    result = refit_head(model, _refit_batches(data, batches, batch_size, seed), max_batches=batches)
    return {"head_refitted": result.refitted, "head_acc_before": result.accuracy_before,
            "head_acc_probe": result.accuracy_probe}


# --------------------------------------------------------------------------------------------------- runs


@dataclass
class Student:
    """One row of the benchmark: a student architecture, the teacher it learns from, and the methods compared on
    it (None: all). The ablations run where they matter (another family); the same-family rows compare the
    baselines each target names, which keeps a full run near half an hour on 2 cores."""

    name: str  # label in the tables
    arch: str  # registry / timm name
    teacher: str = "resnet18"
    methods: tuple[str, ...] | None = None


DEFAULT_STUDENTS = (
    Student("other family: mobilenetv3_small_100", "mobilenetv3_small_100"),
    Student("same family, deeper: resnet34", "resnet34",
            methods=("kaiming", "same_name", "tli", "tli extra_blocks=copy", "iatransfer", "iatransfer+recal")),
    Student("edit: resnet18 with SiLU", "resnet18_silu", methods=("kaiming", "same_name", "tli")),
    Student("edit: resnet18 with 5x5 kernels", "resnet18_k5", methods=("kaiming", "same_name", "tli")),
)


def register_edits() -> None:
    """The same-family edits the benchmark uses, made with the registry like a user would."""
    from kaggle_tli import registry

    if not registry.is_arch("resnet18_silu"):
        registry.register_edit("resnet18_silu", base="resnet18", edits=[registry.swap_activation("silu")],
                               description="resnet18, ReLU swapped for SiLU")
    if not registry.is_arch("resnet18_k5"):
        registry.register_edit("resnet18_k5", base="resnet18",
                               edits=[registry.change_kernel_size(5, pattern="layer*.conv*")],
                               description="resnet18, 5x5 kernels in every residual block")


def build(arch: str, num_classes: int, seed: int) -> nn.Module:
    from kaggle_tli.registry import create_model

    torch.manual_seed(seed)
    return create_model(arch, num_classes=num_classes)


def get_teacher(arch: str, data: ArrayData, *, steps: int, seed: int, cache: Path, target: float | None = None,
                check_every: int = 10, channels_last: bool = False, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train (or load from the cache folder) the teacher; returns it with its held-out accuracies, measured as the
    students' are, and the steps it trained ({"accuracy": ..., "accuracy_precise": ..., "steps": ...}).

    target: train until the precise held-out accuracy reaches this, checked every `check_every` steps, for at most
    `steps` (teachers of equal accuracy, so that what a student gets from them is not just how good they are).

    The first process to need a teacher trains it while holding a lock on its cache file; others needing the same
    one wait and load it, so parallel workers never train a teacher twice. Its BatchNorm statistics are then refitted
    on training batches (precise BN, as a training run that ends well does): the teacher is judged, and copied, by
    its weights rather than by statistics that lag them.
    """
    from filelock import FileLock
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    teacher = build(arch, data.num_classes, seed)
    # "-refit": the file holds the refitted statistics and, as metadata, the accuracies (measured once, not per job)
    tags = (f"-to{target:g}by{check_every}" if target is not None else "") + ("-cl" if channels_last else "")
    path = cache / f"teacher-{arch}-{data.name}-{steps}-s{seed}{tags}-refit.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if not path.exists():
            curve = train(teacher, data, steps=steps, seed=seed, eval_every=check_every if target is not None else 0,
                          stop_at=target, channels_last=channels_last, progress=progress, desc=f"teacher {arch} s{seed}")
            recalibrate(teacher, data, seed=seed)
            tmp = path.with_suffix(".tmp")
            measured = {**accuracies(teacher, data), "steps": curve[-1]["step"] if curve else steps}
            save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp),
                      metadata={k: repr(v) for k, v in measured.items()})
            tmp.replace(path)  # a process killed mid-write leaves no half file for the next run to load
    teacher.load_state_dict(load_file(path))
    with safe_open(str(path), framework="pt") as f:
        measured = {k: float(v) for k, v in f.metadata().items()}
    measured.setdefault("steps", float(steps))
    return teacher.to(memory_format=torch.contiguous_format).eval(), measured


@dataclass
class Config:
    steps: int = 200
    teacher_steps: int = 600
    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = tuple(METHODS)
    students: Sequence[Student] = DEFAULT_STUDENTS
    eval_every: int = 25
    lr: float = 1e-3
    batch_size: int = 64
    recal_batches: int = 8
    warmup: int = 0  # steps of linear learning-rate warmup (the protocol has none)
    channels_last: bool = True  # students train NHWC (faster for depthwise convs); teachers stay NCHW, as cached
    workers: int = 1  # processes; each runs `threads` torch threads (see _pool)
    threads: int = 2
    cache: Path | None = Path("bench_out/cache")  # trained teachers; None: a temporary folder
    baselines: bool = True  # add iatransfer when it is importable


def run(data: ArrayData, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All students x methods x seeds; returns (curves, teachers) as long-format frames.

    Every student run is a job; the first job of a seed trains that seed's teacher. Seeds alternate in the job list,
    so while one worker trains a teacher the others train other seeds' teachers or students. Results do not depend
    on how many workers run the jobs.
    """
    register_edits()
    names = list(cfg.methods) + (list(baseline_methods()) if cfg.baselines else [])
    progress = cfg.workers <= 1  # per-step bars from parallel workers would garble each other
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(_student_job, (cfg, st, name, seed, cfg.cache or Path(tmp), progress))
                for st in cfg.students for name in names if st.methods is None or name in st.methods
                for seed in cfg.seeds]
        results = run_jobs(jobs, data, workers=cfg.workers, threads=cfg.threads, setup=register_edits,
                           desc="training runs")
    curves = pd.DataFrame([row for rows in results for row in rows])
    teachers = (curves.groupby(["teacher", "seed"], sort=False)[[f"teacher_{m}" for m in METRICS]].first()
                .reset_index())
    return curves, teachers


def _student_job(data: ArrayData, cfg: Config, st: Student, name: str, seed: int, cache: Path,
                 progress: bool) -> list[dict]:
    teacher, t_accs = get_teacher(st.teacher, data, steps=cfg.teacher_steps, seed=seed, cache=cache,
                                 progress=progress)
    method = all_methods()[name]
    student = build(st.arch, data.num_classes, seed + 1000)
    start = time.perf_counter()
    info = method.init(student, teacher)
    if method.recal:
        recalibrate(student, data, batches=cfg.recal_batches, batch_size=cfg.batch_size, seed=seed)
    if method.probe:
        info |= probe_head(student, data, batches=cfg.recal_batches, batch_size=cfg.batch_size, seed=seed)
    init_s = time.perf_counter() - start
    curve = train(student, data, steps=cfg.steps, seed=seed, lr=cfg.lr, batch_size=cfg.batch_size,
                  eval_every=cfg.eval_every, channels_last=cfg.channels_last, warmup=cfg.warmup, progress=progress,
                  desc=f"{st.arch} {name} s{seed}")
    return [dict(student=st.name, arch=st.arch, teacher=st.teacher, **{f"teacher_{m}": a for m, a in t_accs.items()},
                 method=name, seed=seed, init_s=init_s, **point, **info) for point in curve]


# --------------------------------------------------------------------------------------------------- analysis


def steps_to_reach(curve: pd.DataFrame, target: float, metric: str = "accuracy_precise") -> float:
    """First measured step whose mean accuracy (over seeds) reaches `target`; inf when never."""
    mean = curve.groupby("step")[metric].mean()
    hit = mean[mean >= target - 1e-9]  # means of equal accuracies, summed in another order, may differ in the last bit
    return float(hit.index.min()) if len(hit) else math.inf


def summarise(curves: pd.DataFrame, metric: str = "accuracy_precise") -> pd.DataFrame:
    """Per student and method: accuracy at step 0, N/4, N/2 and N (mean over seeds), the largest std over seeds
    along the curve, and the steps needed to reach the Kaiming student's final accuracy and the teacher's."""
    out = []
    for student, group in curves.groupby("student", sort=False):
        last = group["step"].max()
        kaiming = group[group.method == "kaiming"]
        target = kaiming[kaiming.step == last][metric].mean() if len(kaiming) else math.nan
        teacher_acc = group[f"teacher_{metric}"].mean()
        for method, g in group.groupby("method", sort=False):
            stats = g.groupby("step")[metric].agg(["mean", "std"])
            row = {"student": student, "method": method}
            for frac, name in ((0, "step0"), (0.25, "quarter"), (0.5, "half"), (1, "final")):
                s = stats.index[np.abs(stats.index - frac * last).argmin()]
                row[f"acc_{name}"] = stats.loc[s, "mean"]
            row["max_std"] = stats["std"].max()
            row["steps_to_kaiming_final"] = steps_to_reach(g, target, metric)
            row["steps_to_teacher"] = steps_to_reach(g, teacher_acc, metric)
            row["coverage"] = g["coverage"].mean() if "coverage" in g else math.nan
            out.append(row)
    return pd.DataFrame(out)


def paired_differences(curves: pd.DataFrame, metric: str = "accuracy_precise", method: str = "tli") -> pd.DataFrame:
    """`method` minus every other method at each measured step, seed by seed (same seed, same batches), as the mean,
    smallest and largest difference over seeds: a comparison that the spread between seeds does not drown."""
    out = []
    for student, group in curves.groupby("student", sort=False):
        wide = group.pivot_table(index=["seed", "step"], columns="method", values=metric)
        if method not in wide:
            continue
        for other in (m for m in dict.fromkeys(group["method"]) if m != method):
            diff = (wide[method] - wide[other]).dropna().groupby("step")
            for stat, values in (("mean", diff.mean()), ("min", diff.min()), ("max", diff.max())):
                out.append({"student": student, "versus": other, "over seeds": stat,
                            **{f"step {s}": v for s, v in values.items()}})
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per student and metric: mean accuracy per method with a band of +-1 std over seeds (paper Fig. 4
    style); top row with BatchNorm refitted before each evaluation, bottom row in plain eval mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(dict.fromkeys(curves["student"]))
    metrics = [m for m in METRICS if m in curves]
    palette = plt.get_cmap("tab20").colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(curves["method"]))}
    colors["tli"] = "black"  # the default method stands out from its ablations
    fig, axes = plt.subplots(len(metrics), len(students), figsize=(5.2 * len(students), 4.4 * len(metrics)),
                             squeeze=False)
    for row, metric in zip(axes, metrics, strict=True):
        for ax, student in zip(row, students, strict=True):
            group = curves[curves.student == student]
            for method, g in group.groupby("method", sort=False):
                stats = g.groupby("step")[metric].agg(["mean", "std"]).fillna(0)
                style = "-" if method.startswith("tli") else "--"
                width = 2.6 if method == "tli" else 1.2
                ax.plot(stats.index, stats["mean"], style, lw=width, color=colors[method], label=method)
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colors[method], alpha=0.08)
            ax.axhline(group[f"teacher_{metric}"].mean(), color="grey", lw=1.0, ls=":", label="teacher")
            ax.set(title=student, xlabel="training step", ylabel=METRICS[metric].split(",")[0], ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, loc="lower right", ncol=2)
        row[0].annotate(METRICS[metric], (0, 1.08), xycoords="axes fraction", fontsize=10, weight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bench_parser(name: str, doc: str | None, out: str) -> argparse.ArgumentParser:
    """The options every training benchmark shares: --data, --out, --workers, --threads."""
    parser = argparse.ArgumentParser(prog=f"kaggle-tli bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a Kaggle-shaped competition folder instead of Fashion-MNIST")
    parser.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="processes running independent training runs side by side "
                        "(default: one per core, divided by --threads)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: cores / workers)")
    return parser


def prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, ArrayData]:
    """The output folder (created) and the data; a missing dataset ends the command with the fix."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = load_folder(args.data) if args.data else load_fashion_mnist()
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    return out, data


def write_results(curves: pd.DataFrame, out: Path) -> Path:
    """curves.csv, two tables per metric (convergence.md/.csv: BatchNorm refitted, convergence_evalmode.*: plain
    eval mode; each with a `_paired` table of tli minus every other method) and the plot; returns the main table's
    markdown file."""
    out = prepare_dir(out)
    curves.to_csv(out / "curves.csv", index=False)
    paths = {}
    last = int(curves["step"].max())
    for metric, stem in (("accuracy_precise", "convergence"), ("accuracy", "convergence_evalmode")):
        table = summarise(curves, metric)
        steps = [c for c in table if c.startswith("steps_to")]
        view = table.assign(**{c: table[c].map(lambda v: f">{last}" if math.isinf(v) else f"{v:.0f}") for c in steps})
        paths[metric] = write_table(table, out, stem, title=METRICS[metric], view=view,
                                    formats=float_formats(table.drop(columns=steps)))[1]
        diffs = paired_differences(curves, metric)
        write_table(diffs, out, f"{stem}_paired", title=f"tli minus each method, seed by seed: {METRICS[metric]}",
                    formats=float_formats(diffs, "+.3f"))
    plot(curves, out / "convergence.png")
    return paths["accuracy_precise"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("convergence", __doc__, "bench_out/convergence")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 methods, 2 students, shorter runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warmup for the students "
                        "(default: 0, the protocol's; kaggle-tli's trainer warms up 5%% of a run)")
    args = parser.parse_args(argv)
    out, data = prepare(parser, args)
    workers, threads = split_cores(args.workers, args.threads)
    cfg = Config(steps=args.steps, teacher_steps=args.teacher_steps, seeds=tuple(range(args.seeds)),
                 methods=args.methods, warmup=args.warmup, workers=workers, threads=threads, cache=out.parent / "cache")
    if args.quick:
        cfg = Config(steps=100, teacher_steps=300, seeds=(0,), methods=QUICK_METHODS, students=DEFAULT_STUDENTS[:2],
                     workers=workers, threads=threads, cache=out.parent / "cache", baselines=False)
    start = time.perf_counter()
    curves, teachers = run(data, cfg)
    md = write_results(curves, out)
    print(teachers.to_string(index=False))
    print(md.read_text())
    print(f"\n{time.perf_counter() - start:.0f} s on {workers} worker(s) x {threads} thread(s); results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
