"""Stage 1: fine-tune a baseline (the future TLI teacher) on the competition data.

    run0 = finetune("efficientnet_b0", data, epochs=3, runs="/kaggle/working/runs")

The model is built through the registry (the one build path), so run.json["arch"] can rebuild it in
any later process; it starts from a seeded random init (ledger init "kaiming") or, with
`pretrained=True, pretrained_file=...`, from a local timm weights file (ledger init "pretrained").
kaggle-tli never downloads weights (code competitions run offline): attach the weights as a Kaggle
dataset and point `pretrained_file` at the file. Everything is checked (the config keys, the
architecture name, the folds, the weights file, the input size and channels, one logit per class) before
the run directory and ledger row exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kaggle_tli.data import KaggleData
from kaggle_tli.models import create_model, create_model_from_spec
from kaggle_tli.runs import Run
from kaggle_tli.train import StageRequest, TrainConfig, fold_plan, seed_everything, start_run
from kaggle_tli.train.checks import check_data, check_spec_classes, data_for_metric, spec_for_data


def finetune(
    arch: str | dict,
    data: KaggleData,
    *,
    runs: str | Path = "runs",
    pretrained_file: str | Path | None = None,
    **cfg: Any,
) -> Run:
    """Train `arch` (a registry / timm name, or an `arch_spec` dict) on `data`; returns the finished Run.

    `cfg` are `TrainConfig` fields (epochs, batch_size, lr, train_folds, ...). With `pretrained=True`,
    `pretrained_file` is a local timm weights file (.safetensors / .bin / .pth, e.g. under
    /kaggle/input) loaded as timm does with `pretrained_cfg_overlay=dict(file=...)`; a classifier of
    another class count is re-initialised by timm. The file is not part of the architecture spec: the
    run's own weights are what later runs start from. The ledger row (stage "finetune") goes to
    `<runs>/ledger.csv`.
    """
    config = TrainConfig.from_kwargs(**cfg)
    check_data(data)
    data = data_for_metric(data, config.metric)
    fold_plan(config, data.folds)
    weights = _pretrained_file(arch, config.pretrained, pretrained_file)
    spec, model = _build(arch, data, config.seed, weights)
    request = StageRequest(
        stage="finetune", init="pretrained" if weights is not None else "kaiming", spec=spec, data=data,
        cfg=config, runs=Path(runs).expanduser(), init_state=model.state_dict(), model=model,
    )
    return start_run(request)


def _pretrained_file(arch: str | dict, pretrained: bool, given: str | Path | None) -> Path | None:
    """The checked weights file when pretrained=True, else None (and no file may be given)."""
    name = arch.get("name") if isinstance(arch, dict) else arch
    if not pretrained:
        if given is not None:
            raise ValueError(
                f"pretrained_file={str(given)!r} is given but pretrained=False; pass pretrained=True to start "
                "from those weights, or drop pretrained_file"
            )
        return None
    if given is None:
        raise ValueError(
            f"pretrained=True for {name!r} needs local weights: kaggle-tli never downloads them (Kaggle code "
            "competitions run offline). Attach the timm weights as a Kaggle dataset (Add Input -> Datasets or "
            f"Models, e.g. a {name} checkpoint, or upload the model.safetensors that timm saves in the Hugging Face "
            "cache) and pass pretrained_file='/kaggle/input/<dataset>/model.safetensors'; or leave pretrained "
            "off and move the weights of an earlier run in with TLI (kaggle_tli.iterate)"
        )
    path = Path(given).expanduser()
    if not path.is_file():
        near = sorted(p.name for p in path.parent.iterdir() if p.is_file())[:10] if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"pretrained_file={str(given)!r} does not exist; files in {str(path.parent)!r}: {near or 'none'}. "
            "Check the path of the attached dataset (ls /kaggle/input)"
        )
    return path


def _build(arch: str | dict, data: KaggleData, seed: int, weights: Path | None) -> tuple[dict, nn.Module]:
    """The arch spec (weights never in it) and the step-0 model, built through the registry."""
    if isinstance(arch, dict):
        spec = arch
        check_spec_classes(spec, data)
    else:
        spec = spec_for_data(arch, data)
    seed_everything(seed)
    if weights is None:
        return spec, create_model_from_spec(spec)
    # the registry's one build path, with timm's local-file route for pretrained weights
    kwargs = dict(spec.get("kwargs") or {})
    kwargs.pop("in_chans", None)
    model = create_model(
        spec["name"], spec["num_classes"], in_chans=spec.get("in_chans"), pretrained=True,
        pretrained_cfg_overlay=dict(file=str(weights)), **kwargs,
    )
    return spec, model
