"""`iterate(prev_run, new_arch)`: stages 3 and 4 in one call, the loop a Kaggle competitor runs all day.

Take the last good run, build the edited architecture from the registry, inject the run's weights with TLI, refit the
BatchNorm statistics and (where it helps) the classifier on a few training batches, train, and record the new run in
the ledger with its parent, TLI score and coverage. `init="kaiming"` does the same without the injection, for a
side-by-side comparison.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kaggle_tli.data import KaggleData, read_csv, rebuild_data
from kaggle_tli.ledger import Ledger
from kaggle_tli.models import create_model_from_spec
from kaggle_tli.runs import Run, load_run
from kaggle_tli.stages.inject import student_spec, transfer
from kaggle_tli.stages.resume import runs_dir_for, start_child
from kaggle_tli.tli import TransferOptions, classifier_of, recalibrate_norms
from kaggle_tli.tli import refit_head as fit_head
from kaggle_tli.tli.options import DEFAULTS
from kaggle_tli.train import TrainConfig
from kaggle_tli.train.checks import check_data, check_input_size, check_teacher_classes
from kaggle_tli.train.distill import TEACHER_FILE

_ITERATE_INITS = ("tli", "kaiming")  # how an iterate student starts (a subset of the ledger's INITS)


def split_options(options: dict[str, Any]) -> tuple[TransferOptions, dict[str, Any]]:
    """The TLI options (checked) and the training options among `options`; a name that is neither is refused with
    both lists, before anything is built."""
    tli_names = set(TransferOptions.names())
    unknown = sorted(set(options) - tli_names - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}: iterate takes the TLI options "
                        f"{', '.join(sorted(tli_names))} and any TrainConfig field")
    tli = DEFAULTS.with_overrides(**{k: v for k, v in options.items() if k in tli_names})
    return tli, {k: v for k, v in options.items() if k not in tli_names}


def iterate(
    prev_run: Run | str | Path,
    new_arch: str,
    data: KaggleData | None = None,
    *,
    init: str = "tli",
    which: str = "last",
    recalibrate: bool = True,
    recalibrate_batches: int = 8,
    refit_head: bool = True,
    runs: str | Path | None = None,
    notes: str = "",
    distill_from: Run | str | Path | None = None,
    **options: Any,
) -> Run:
    """Train `new_arch` starting from what `prev_run` learned; returns the new run (`run.report`: what TLI did).

    prev_run: a `Run`, a run id (looked up in `runs`), or a run directory, read-only ones (Kaggle inputs) included.
    data: the competition data; default: rebuilt from the description in prev_run's run.json. Data of another task
        shape or other classes (another competition) is a new task: the body moves by TLI, the classifier starts at
        init (refitted by the probe for class targets), the metric is that task's own unless given, and the data
        keeps its own folds (the parent's folds.csv applies only to the parent's rows).
    init: "tli" (inject prev_run's `which` weights: "last", "best" or "ema") or "kaiming" (timm's default init).
    recalibrate: refit BatchNorm running statistics on `recalibrate_batches` training batches (un-augmented, never
        the validation fold) before training, so the student's evaluation is meaningful from step 0.
    refit_head: after a TLI injection, fit a linear probe on the same batches and keep it as the classifier if it
        predicts clearly better than the injected head on the half of them it was not fitted on (across families the
        injected head reads scrambled features: chance at step 0, see docs/benchmarks.md for the probe's gain; a
        same-family head is kept). A Kaiming student keeps timm's init.
    distill_from: the distillation teacher when `distill` > 0 (a run, id or directory; its `which` weights), default
        prev_run. `distill=a` trains on `(1 - a) task loss + a KD` against the teacher's outputs on the same batches,
        `distill_temperature=T`, `distill_steps=k` drops the term after k steps; it works with init="kaiming" too.
    options: any TLI option (a `TransferOptions` field: `lam`, `method`, ...) and any `TrainConfig` field (`epochs`,
        `lr`, `eval_norms`, `lr_transferred`, `distill`, ...); training options not given are inherited from
        prev_run's config, except `distill` and `distill_steps` (a run distills only when asked).
    """
    tli_options, train_cfg = split_options(options)
    if init not in _ITERATE_INITS:
        raise ValueError(f"init={init!r}: use 'tli' (inject the previous run's weights) or 'kaiming' (from scratch)")
    _check_arch_name(new_arch)
    prev = load_run(prev_run, runs=runs)
    data, same_rows = _data_for(prev, data)
    same_task = _same_task(prev, data)
    spec = student_spec(prev, new_arch, num_classes=data.num_classes)
    student = create_model_from_spec(spec)
    # before any weight moves or any statistic is refit: a student that cannot take the data's images, or
    # has another class count, fails with the stages' own message rather than inside the refits
    check_input_size(student, data, new_arch)
    teacher = prev.build_model(which) if init == "tli" else None  # a missing weights file fails here too
    files, extra = _distill_setup(prev, which, train_cfg, distill_from, data, runs)
    out_dir = runs_dir_for(prev, runs)
    Ledger(out_dir).import_lineage(prev.id, near=prev.path)  # a prev_run from a bundle brings its ancestors

    report = None
    if teacher is not None:
        report = transfer(teacher, student, options=tli_options)
        if not same_task:
            _head_at_init(student, spec, int(train_cfg.get("seed", prev.config.get("seed", 42))))
    if not same_task and "metric" not in train_cfg:
        train_cfg["metric"] = "auto"  # the parent's metric scored the parent's task
    # on the parent's rows the student validates where the parent did; other data starts at its own fold 0
    fold = int(train_cfg.get("fold", prev.config.get("fold", prev.primary_fold) if same_rows else 0))
    if not same_rows:
        train_cfg.setdefault("fold", fold)
    if recalibrate:
        recalibrate_norms(student, _training_batches(data, fold), max_batches=recalibrate_batches)
    extra.update(notes=notes, recalibrated=recalibrate, which=which)
    if init == "tli":  # a Kaiming student stays what "from scratch" means: timm's init
        extra.update(_refit(student, data, fold, refit_head, recalibrate_batches, prev, same_task))
    if report is not None:
        extra.update(tli_score=round(report.score, 4), coverage=round(report.coverage, 4), tli=report.settings)
        files["transfer.csv"] = report.to_csv()
    # the student was built from `spec` and checked against `data` above: start the run from it as it is
    return start_child(student, spec, data, prev, stage="inject", init=init, extra=extra, files=files,
                       runs=out_dir, cfg=train_cfg)


def _distill_setup(prev: Run, which: str, train_cfg: dict, distill_from: Any, data: KaggleData,
                   runs: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The teacher's weights file and run.json record of a run that distills (none when `distill` is off), checked:
    the teacher must have weights and output one logit per class of the data."""
    alpha = train_cfg.get("distill", 0.0)
    if not alpha:
        if distill_from is not None:
            raise ValueError("distill_from=... names a distillation teacher, but distill is 0: pass distill=<weight in "
                             "(0, 1]> as well, e.g. distill=0.5")
        return {}, {}
    source = prev if distill_from is None else load_run(distill_from, runs=runs)
    try:
        path = source.weights_path(which)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"distill={alpha} uses run {source.id!r} (status {source.status!r}) as the teacher, but it has no "
            f"{which} weights: {e}. Distill from a run that trained (which='last', 'best' or 'ema' as it has them), "
            "or pass distill_from=<another run>"
        ) from e
    teacher = source.build_model(which)
    check_teacher_classes(teacher, data, source.arch.get("name", source.id))
    record = {"arch": source.arch, "run_id": source.id, "which": which}
    return {TEACHER_FILE: path.read_bytes()}, {"teacher": record}


def _check_arch_name(new_arch: Any) -> None:
    """iterate builds the student from a name, its class count and channels from prev_run."""
    if isinstance(new_arch, dict):
        raise TypeError(
            f"iterate takes an architecture name, not a spec dict ({new_arch.get('name')!r}): the student's class "
            "count and channels come from prev_run. For other build options, register a variant and pass its "
            "name: kt.register_edit('my_arch', base='<name>', edits=[], kwargs={'img_size': 32})"
        )


def _training_batches(data: KaggleData, fold: int):
    """Un-augmented (images, targets) of `fold`'s training rows (never its validation rows), always in the same order,
    for refitting BatchNorm statistics and the classifier."""
    for x, y in data.train_loader(fold, batch_size=64, augment=False):
        if len(x) > 1:  # a BatchNorm in train mode cannot normalise a batch of one
            yield x, y


def _same_task(prev: Run, data: KaggleData) -> bool:
    """Whether `data` asks for what prev_run predicts: the same task shape and the same outputs, in order."""
    prev_task = (prev.info.get("task") or {}).get("name", "single_label")
    return prev_task == data.task and list(data.class_names) == list(prev.class_names)


def _head_at_init(student: nn.Module, spec: dict, seed: int) -> None:
    """Put the classifier back to the architecture's own (seeded) init: the teacher's head answered another
    question."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(seed)
        fresh = classifier_of(create_model_from_spec(spec))
    head = classifier_of(student)
    with torch.no_grad():
        head.weight.copy_(fresh.weight)
        if head.bias is not None and fresh.bias is not None:
            head.bias.copy_(fresh.bias)


def _refit(student: nn.Module, data: KaggleData, fold: int, refit: bool, batches: int, prev: Run,
           same_task: bool) -> dict[str, Any]:
    """Refit the classifier with a linear probe where that is meaningful (class targets), say what became of the
    head, and return what the run records about it."""
    probe = refit and data.task in ("single_label", "binary")
    out: dict[str, Any] = {}
    if probe:
        head = fit_head(student, _training_batches(data, fold), max_batches=batches)
        print(f"kaggle-tli: {head}")
        out["head_refit"] = asdict(head)
    if not same_task:
        prev_task = (prev.info.get("task") or {}).get("name", "single_label")
        after = "and is then refitted by a linear probe on training batches" if out.get("head_refit", {}).get("refitted") \
            else "and is trained from there"
        out["head"] = (
            f"run {prev.id!r} predicts {prev_task} ({prev.num_classes} outputs: {prev.class_names[:6]}), this data is "
            f"{data.task} ({data.num_classes} outputs: {list(data.class_names)[:6]}): the student's body comes from "
            f"the teacher by TLI, its classifier starts at the architecture's init {after}"
        )
        print(f"kaggle-tli: {out['head']}")
    return out


def _data_for(prev: Run, data: KaggleData | None) -> tuple[KaggleData, bool]:
    """The competition data, on prev_run's fold split when it is the same competition (the same ids: the student
    never validates on rows its teacher trained on); other data keeps its own folds. Also whether it is the same
    competition's rows."""
    if data is None:
        spec = prev.info.get("data")
        if not spec:
            raise ValueError(f"run {prev.id!r} does not describe its data; pass data=kt.ImageCsvData(...) to iterate")
        try:
            data = rebuild_data(spec)
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(
                f"run {prev.id!r} trained on {spec.get('root')!r}, which is not here ({e}). Pass the competition "
                "data: iterate(prev_run, arch, data=kt.ImageCsvData('/kaggle/input/<competition>', ...))"
            ) from e
    check_data(data)
    folds = prev.path / "folds.csv"
    if not folds.is_file():
        return data, True
    saved = read_csv(folds, what="folds table", str_cols=("id", "label"))
    same_rows = "id" in saved.columns and set(saved["id"].astype(str)) == set(data.frame["id"].astype(str))
    return (data.with_folds(saved) if same_rows else data), same_rows
