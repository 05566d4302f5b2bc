"""Convergence benchmark (paper, Fig. 4): how fast does a student trained from each initialisation learn?

Protocol (defaults, issue 6): Fashion-MNIST, 12,000 training / 2,000 held-out images at 32x32x3; a resnet18 teacher
trained 600 steps; each student trained 200 steps with Adam (lr 1e-3, batch 64), held-out accuracy measured in eval
mode every 25 steps, from step 0. Every method sees the same batches in the same order for a given seed, so the
methods differ only in how the student starts.

Methods (all side by side in one run):
    kaiming      timm's default initialisation (what "training from scratch" means)
    xavier       Xavier-uniform weights, zero biases
    same_name    copy tensors whose name and shape agree (timm's `strict=False`, Hugging Face's
                 `ignore_mismatched_sizes`)
    tli          kaggle_tli's transfer with its defaults, plus variants over lam, top_k and norm transfer
    +recal       any of the above followed by re-estimating BatchNorm statistics on a few training batches
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._report import float_formats, write_table

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


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, batch_size: int = 500) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data.x_valid), batch_size):
        logits = model(data.x_valid[i:i + batch_size])
        correct += (logits.argmax(1) == data.y_valid[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / len(data.x_valid)


def train(model: nn.Module, data: ArrayData, *, steps: int, seed: int, lr: float = 1e-3, batch_size: int = 64,
          eval_every: int = 25, progress: bool = False, desc: str = "") -> list[tuple[int, float]]:
    """Adam on cross-entropy; returns [(step, held-out accuracy)] from step 0."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = [(0, evaluate(model, data))]
    model.train()
    batches = data.batches(steps, batch_size, seed)
    for step, (x, y) in enumerate(tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False), 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate(model, data)))
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
    """How a student starts: an init function (student, teacher) -> info, then optionally refitted BatchNorm."""

    init: Callable[[nn.Module, nn.Module], dict]
    recal: bool = False


# `tli` is what `kaggle_tli.iterate` does by default: transfer() with its defaults, then BatchNorm refitted on a few
# training batches. The variants change one thing each.
METHODS: dict[str, Method] = {
    "kaiming": Method(lambda s, t: {}),
    "kaiming+recal": Method(lambda s, t: {}, recal=True),
    "xavier": Method(_xavier),
    "same_name": Method(_same_name),
    "same_name+recal": Method(_same_name, recal=True),
    "tli": Method(_tli(), recal=True),
    "tli no recal": Method(_tli()),
    "tli top_k=1": Method(_tli(top_k=1), recal=True),
    "tli lam=0": Method(_tli(lam=0.0), recal=True),
    "tli lam=1": Method(_tli(lam=1.0), recal=True),
    "tli no norm": Method(_tli(transfer_norm=False), recal=True),
    "tli extra_blocks=copy": Method(_tli(extra_blocks="copy"), recal=True),
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
    return {"iatransfer": Method(_iatransfer), "iatransfer+recal": Method(_iatransfer, recal=True)}


def recalibrate(model: nn.Module, data: ArrayData, *, batches: int = 8, batch_size: int = 64, seed: int = 0) -> None:
    from kaggle_tli.tli import recalibrate_norms

    recalibrate_norms(model, (x for x, _ in data.batches(batches, batch_size, seed + 10_000)), max_batches=batches)


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


BASELINES = ("kaiming", "same_name", "iatransfer")
DEFAULT_STUDENTS = (
    Student("other family: mobilenetv3_small_100", "mobilenetv3_small_100"),
    Student("same family, deeper: resnet34", "resnet34",
            methods=("kaiming", "same_name", "same_name+recal", "tli", "tli extra_blocks=copy", "iatransfer",
                     "iatransfer+recal")),
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


def get_teacher(arch: str, data: ArrayData, *, steps: int, seed: int, cache: Path | None) -> tuple[nn.Module, float]:
    """Train (or load from the cache folder) the teacher; returns it with its held-out accuracy."""
    from safetensors.torch import load_file, save_file

    teacher = build(arch, data.num_classes, seed)
    path = cache / f"teacher-{arch}-{data.name}-{steps}-s{seed}.safetensors" if cache else None
    if path is not None and path.exists():
        teacher.load_state_dict(load_file(path))
    else:
        train(teacher, data, steps=steps, seed=seed, progress=True, desc=f"teacher {arch}")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    return teacher.eval(), evaluate(teacher, data)


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
    threads: int = 2
    cache: Path | None = Path("bench_out/cache")
    extra_methods: dict[str, Method] = field(default_factory=dict)  # e.g. baseline_methods()


def run(data: ArrayData, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All students x methods x seeds; returns (curves, teachers) as long-format frames."""
    torch.set_num_threads(cfg.threads)
    register_edits()
    methods = {**{m: METHODS[m] for m in cfg.methods}, **cfg.extra_methods}
    rows, teachers = [], {}
    for seed in cfg.seeds:
        for st in cfg.students:
            key = (st.teacher, seed)
            if key not in teachers:
                teachers[key] = get_teacher(st.teacher, data, steps=cfg.teacher_steps, seed=seed, cache=cfg.cache)
            teacher, t_acc = teachers[key]
            for name, method in methods.items():
                if st.methods is None or name in st.methods:
                    rows += _one_run(data, cfg, st, teacher, t_acc, name, method, seed)
    curves = pd.DataFrame(rows)
    t_frame = pd.DataFrame([{"teacher": a, "seed": s, "accuracy": acc} for (a, s), (_, acc) in teachers.items()])
    return curves, t_frame


def _one_run(data, cfg, st: Student, teacher, t_acc, name: str, method: Method, seed: int) -> list[dict]:
    student = build(st.arch, data.num_classes, seed + 1000)
    start = time.perf_counter()
    info = method.init(student, teacher)
    if method.recal:
        recalibrate(student, data, batches=cfg.recal_batches, batch_size=cfg.batch_size, seed=seed)
    init_s = time.perf_counter() - start
    curve = train(student, data, steps=cfg.steps, seed=seed, lr=cfg.lr, batch_size=cfg.batch_size,
                  eval_every=cfg.eval_every, progress=True, desc=f"{st.arch} {name} s{seed}")
    return [dict(student=st.name, arch=st.arch, teacher=st.teacher, teacher_acc=t_acc, method=name, seed=seed,
                 step=step, accuracy=acc, init_s=init_s, **info) for step, acc in curve]


# --------------------------------------------------------------------------------------------------- analysis


def steps_to_reach(curve: pd.DataFrame, target: float) -> float:
    """First measured step whose mean accuracy (over seeds) reaches `target`; inf when never."""
    mean = curve.groupby("step")["accuracy"].mean()
    hit = mean[mean >= target]
    return float(hit.index.min()) if len(hit) else math.inf


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per student and method: accuracy at step 0, N/4, N/2 and N (mean and std over seeds), and the steps needed
    to reach the Kaiming student's final accuracy and the teacher's accuracy."""
    out = []
    for student, group in curves.groupby("student", sort=False):
        last = group["step"].max()
        kaiming = group[group.method == "kaiming"]
        target = kaiming[kaiming.step == last]["accuracy"].mean() if len(kaiming) else math.nan
        teacher_acc = group["teacher_acc"].mean()
        for method, g in group.groupby("method", sort=False):
            stats = g.groupby("step")["accuracy"].agg(["mean", "std"])
            row = {"student": student, "method": method}
            for frac, name in ((0, "step0"), (0.25, "quarter"), (0.5, "half"), (1, "final")):
                s = stats.index[np.abs(stats.index - frac * last).argmin()]
                row[f"acc_{name}"] = stats.loc[s, "mean"]
                row[f"std_{name}"] = stats.loc[s, "std"]
            row["steps_to_kaiming_final"] = steps_to_reach(g, target)
            row["steps_to_teacher"] = steps_to_reach(g, teacher_acc)
            row["coverage"] = g["coverage"].mean() if "coverage" in g else math.nan
            out.append(row)
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per student: mean accuracy per method with a band of +-1 std over seeds (paper Fig. 4 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(dict.fromkeys(curves["student"]))
    palette = plt.get_cmap("tab20").colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(curves["method"]))}
    fig, axes = plt.subplots(1, len(students), figsize=(5.2 * len(students), 4.6), squeeze=False)
    for ax, student in zip(axes[0], students, strict=True):
        group = curves[curves.student == student]
        for method, g in group.groupby("method", sort=False):
            stats = g.groupby("step")["accuracy"].agg(["mean", "std"]).fillna(0)
            style = "-" if method.startswith("tli") else "--"
            width = 2.6 if method == "tli" else 1.2
            ax.plot(stats.index, stats["mean"], style, lw=width, color=colors[method], label=method)
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=colors[method], alpha=0.08)
        ax.axhline(group["teacher_acc"].mean(), color="k", lw=0.8, ls=":", label="teacher")
        ax.set(title=student, xlabel="training step", ylabel="held-out accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_parser(name: str, doc: str | None, out: str) -> argparse.ArgumentParser:
    """The options every training benchmark shares: --data, --out, --threads."""
    parser = argparse.ArgumentParser(prog=f"kaggle-tli bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a Kaggle-shaped competition folder instead of Fashion-MNIST")
    parser.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("convergence", __doc__, "bench_out/convergence")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 methods, 2 students, shorter runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args(argv)
    out, data = prepare(parser, args)
    cfg = Config(steps=args.steps, teacher_steps=args.teacher_steps, seeds=tuple(range(args.seeds)),
                 methods=args.methods, threads=args.threads, cache=out.parent / "cache",
                 extra_methods=baseline_methods())
    if args.quick:
        cfg = Config(steps=100, teacher_steps=300, seeds=(0,), methods=QUICK_METHODS, students=DEFAULT_STUDENTS[:2],
                     threads=args.threads, cache=out.parent / "cache")
    start = time.perf_counter()
    curves, teachers = run(data, cfg)
    curves.to_csv(out / "curves.csv", index=False)
    table = summarise(curves)
    _, md = write_table(table, out, "convergence", formats=float_formats(table))
    plot(curves, out / "convergence.png")
    print(teachers.to_string(index=False))
    print(md.read_text())
    print(f"\n{time.perf_counter() - start:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
