"""Stage 1: fine-tune a baseline (the future TLI teacher) on the competition data.

    run0 = finetune("efficientnet_b0", data, epochs=3, runs="/kaggle/working/runs")

The model is built through the registry (the one build path), so run.json["arch"] can rebuild it in
any later process; it starts from a seeded random init (ledger init "kaiming") or, with
pretrained=True, from the registry's pretrained weights ("pretrained"). Everything is checked (the
config keys, the architecture name, the folds) before the run directory and ledger row exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kaggle_tli.checkpoint import Run
from kaggle_tli.data import KaggleData
from kaggle_tli.trainer import StageRequest, TrainConfig, fold_plan, seed_everything, start_run


def finetune(arch: str | dict, data: KaggleData, *, runs: str | Path = "runs", **cfg: Any) -> Run:
    """Train `arch` (a registry / timm name, or an `arch_spec` dict) on `data`; returns the finished Run.

    `cfg` are `TrainConfig` fields (epochs, batch_size, lr, train_folds, ...). The ledger row
    (stage "finetune") goes to `<runs>/ledger.csv`.
    """
    from kaggle_tli.registry import arch_spec, create_model, create_model_from_spec

    config = TrainConfig.from_kwargs(**cfg)
    check_data(data)
    fold_plan(config, data.folds)
    if isinstance(arch, dict):
        spec = arch
        check_spec_classes(spec, data)
        seed_everything(config.seed)
        model = create_model_from_spec(spec)
    else:
        spec = arch_spec(arch, data.num_classes, in_chans=data.in_chans)
        seed_everything(config.seed)
        extra = {"pretrained": True} if config.pretrained else {}
        model = create_model(arch, data.num_classes, in_chans=data.in_chans, **extra)
    request = StageRequest(
        stage="finetune", init="pretrained" if config.pretrained else "kaiming", spec=spec, data=data, cfg=config,
        runs=Path(runs).expanduser(), init_state=model.state_dict(),
    )
    return start_run(request)


def check_data(data: Any) -> None:
    """Stages take a data object (`ImageCsvData`, `PixelCsvData`), not a path."""
    if not isinstance(data, KaggleData):
        raise TypeError(
            f"data must be a kaggle_tli data object, got {type(data).__name__}; "
            "make one with ImageCsvData(folder) or PixelCsvData(folder)"
        )


def check_spec_classes(spec: dict, data: KaggleData) -> None:
    """An architecture spec must have the data's number of classes and input channels."""
    if int(spec.get("num_classes", -1)) != data.num_classes:
        raise ValueError(
            f"the architecture spec has num_classes={spec.get('num_classes')} but the data has {data.num_classes} "
            "classes; make the spec with arch_spec(name, data.num_classes)"
        )
    if spec.get("in_chans") is not None and int(spec["in_chans"]) != data.in_chans:
        raise ValueError(f"the architecture spec has in_chans={spec['in_chans']} but the data has {data.in_chans}")
