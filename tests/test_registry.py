"""The model registry: names, metadata, edits, specs that rebuild in a fresh interpreter, error messages.

Budget: under 40 s on 2 cores (timm models built with pretrained=False, forward passes at 32 px, one
224 px pass, one subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from kaggle_tli import models as reg
from kaggle_tli.models import registry as names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the registry as imported and leaves nothing behind."""
    monkeypatch.setattr(names, "_REGISTRY", dict(names._REGISTRY))
    monkeypatch.setattr(names, "_HEADS", dict(names._HEADS))


def tiny_net(num_classes: int, width: int = 8, in_chans: int = 3) -> nn.Module:
    """A factory small enough to build in microseconds."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def tiny_net_v2(num_classes: int, width: int = 8, in_chans: int = 3) -> nn.Module:
    """Same signature, different body: a changed definition."""
    return nn.Sequential(nn.Conv2d(in_chans, width, 5, padding=2), nn.Flatten(), nn.LazyLinear(num_classes))


def run32(model: nn.Module, in_chans: int = 3, size: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, in_chans, size, size))


def kinds(model: nn.Module) -> Counter[str]:
    return Counter(type(m).__name__ for m in model.modules())


def shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


# ------------------------------------------------------------------------------------------ registering
def test_register_arch_builds_and_records_metadata() -> None:
    reg.register_arch("tiny", parent="resnet18", description="a tiny net", kwargs={"width": 4})(tiny_net)
    model = reg.create_model("tiny", 5)
    assert run32(model).shape == (2, 5), "the factory's model should come back with 5 outputs"
    assert model[0].out_channels == 4, "registered default kwargs must reach the factory"
    assert reg.create_model("tiny", 5, width=6)[0].out_channels == 6, "the caller's kwargs win over defaults"

    info = reg.arch_info("tiny")
    assert (info.name, info.kind, info.parent, info.description) == (
        "tiny",
        "factory",
        "resnet18",
        "a tiny net",
    )
    assert dict(info.kwargs) == {"width": 4}
    assert info.source_hash and info.source_hash.startswith("src:"), (
        f"source hash missing: {info.source_hash}"
    )
    with pytest.raises(TypeError):
        info.kwargs["width"] = 9  # type: ignore[index]  # the record is read-only
    with pytest.raises(AttributeError):
        info.name = "other"  # type: ignore[misc]
    json.dumps(info.to_dict())


def test_overwrite_warns_but_rerunning_the_same_cell_does_not() -> None:
    reg.register_arch("tiny")(tiny_net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same definition again (a re-run notebook cell): silent
        reg.register_arch("tiny")(tiny_net)
    with pytest.warns(UserWarning, match="already registered"):
        reg.register_arch("tiny")(tiny_net_v2)
    assert reg.arch_info("tiny").qualname == "tiny_net_v2", "the new definition must replace the old"


def test_unknown_name_suggests_close_names_and_how_to_register() -> None:
    reg.register_arch("my_effnet")(tiny_net)
    with pytest.raises(reg.UnknownArchError) as err:
        reg.create_model("resnt18", 3)
    msg = str(err.value)
    assert "resnet18" in msg and "register_arch" in msg, msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(reg.UnknownArchError, match="my_effnet"):
        reg.arch_spec("my_efnet", 3)


def test_list_archs_patterns_and_natural_order() -> None:
    for n in ("zz_net10", "zz_net2", "zz_net1", "yy_other"):
        reg.register_arch(n)(tiny_net)
    assert reg.list_archs("zz_net*") == ["zz_net1", "zz_net2", "zz_net10"], "natural sort: 2 before 10"
    assert reg.list_archs(["zz_net1", "yy_*"]) == ["yy_other", "zz_net1"]
    assert "resnet18" not in reg.list_archs("resnet*"), "timm names only when asked"
    with_timm = reg.list_archs("resnet1*", include_timm=True)
    assert "resnet18" in with_timm and with_timm.index("resnet18") < with_timm.index("resnet101")


def test_timm_names_resolve_without_weights() -> None:
    model = reg.create_model("resnet18", 7, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    with pytest.raises(ValueError, match="pretrained_cfg_overlay"):
        reg.create_model("resnet18", 7, pretrained=True)
    with pytest.raises(ValueError, match="never downloads"):
        reg.create_model("hf-hub:timm/resnet18.a1_in1k", 7)


# ---------------------------------------------------------------------------------------------- failures
def test_factory_that_raises_is_wrapped_with_its_name() -> None:
    @reg.register_arch("broken")
    def broken(num_classes: int, **kw: object) -> nn.Module:
        raise ValueError("depth must be even")

    with pytest.raises(reg.ArchBuildError) as err:
        reg.create_model("broken", 3)
    msg = str(err.value)
    assert "factory for 'broken' failed" in msg and "depth must be even" in msg, msg
    assert "fix the factory or its kwargs" in msg, msg
    assert isinstance(err.value.__cause__, ValueError), "the original error must stay attached"


def test_factory_that_returns_no_module() -> None:
    reg.register_arch("not_a_model")(lambda num_classes, **kw: {"oops": num_classes})
    with pytest.raises(TypeError, match="returned dict, not an nn.Module"):
        reg.create_model("not_a_model", 3)


def test_timm_kwarg_error_is_explained() -> None:
    with pytest.raises(reg.ArchBuildError, match="timm could not build 'resnet18'.*fix the kwargs"):
        reg.create_model("resnet18", 3, no_such_option=1)


def test_edit_errors_say_what_to_fix() -> None:
    with pytest.raises(reg.EditError, match=r"unknown activation 'swishh'.*valid names: .*silu"):
        reg.swap_activation("swishh")
    with pytest.raises(reg.EditError, match=r"matches no spatial conv.*layer1\.0\.conv1"):
        reg.register_edit("bad", base="resnet18", edits=[reg.change_kernel_size(5, pattern="blocks.*")])
    with pytest.raises(reg.EditError, match="even"):
        reg.change_kernel_size(4)
    with pytest.raises(reg.EditError, match="downsample"):  # the shortcut keeps stride 2: the add breaks
        reg.register_edit("bad", base="resnet18", edits=[reg.change_stride(1, pattern="layer2.0.conv1")])
    with pytest.raises(reg.EditError, match="not supported for 'densenet121'.*convnext, vision_transformer"):
        reg.register_edit("bad", base="densenet121", edits=[reg.widen(2.0)])
    with pytest.raises(reg.UnknownArchError):
        reg.register_edit("bad", base="resnet_eighteen", edits=[reg.widen(2.0)])
    assert "bad" not in reg.list_archs(), "a failed registration must not leave a name behind"


# ------------------------------------------------------------------------------------------------- edits
def test_swap_activation_replaces_every_activation_in_resnet() -> None:
    reg.register_edit("r18_silu", base="resnet18", edits=[reg.swap_activation("silu")])
    base, edited = reg.create_model("resnet18", 4), reg.create_model("r18_silu", 4)
    assert kinds(base)["ReLU"] == 17 and kinds(edited)["ReLU"] == 0, f"ReLU left: {kinds(edited)['ReLU']}"
    assert kinds(edited)["SiLU"] == 17
    assert edited.layer1[0].act1.inplace, "an in-place ReLU becomes an in-place SiLU"
    edited.train()
    edited(torch.randn(2, 3, 32, 32)).sum().backward()  # in-place swap must keep autograd valid


def test_swap_activation_reaches_fused_norm_act_and_keeps_gates() -> None:
    reg.register_edit("mnv3_relu", base="mobilenetv3_small_100", edits=[reg.swap_activation("relu")])
    base, edited = reg.create_model("mobilenetv3_small_100", 4), reg.create_model("mnv3_relu", 4)
    assert type(base.bn1.act).__name__ == "Hardswish", (
        "fixture assumption: the stem BatchNormAct2d fuses hardswish"
    )
    assert isinstance(edited.bn1.act, nn.ReLU), "the act inside timm's BatchNormAct2d must be swapped too"
    assert kinds(edited)["Hardswish"] == 0
    assert kinds(edited)["Hardsigmoid"] == kinds(base)["Hardsigmoid"] > 0, (
        "SE gates are not activations to swap"
    )
    assert run32(edited).shape == (2, 4)


def test_change_kernel_size_changes_kernel_and_padding_only_where_matched() -> None:
    reg.register_edit("r18_k5", base="resnet18", edits=[reg.change_kernel_size(5, pattern="layer*.conv2")])
    base, edited = reg.create_model("resnet18", 4), reg.create_model("r18_k5", 4)
    conv = edited.layer3[1].conv2
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2), f"got {conv}"
    assert edited.layer3[1].conv1.kernel_size == (3, 3) and edited.conv1.kernel_size == (7, 7), (
        "unmatched stay"
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert base.eval().forward_features(x).shape == edited.eval().forward_features(x).shape, (
            "same padding"
        )
    assert run32(edited, size=224).shape == (2, 4), "the edit must also run at 224 px"


def test_change_kernel_size_on_depthwise_convs_of_efficientnet() -> None:
    reg.register_edit(
        "eb0_k5", base="efficientnet_b0", edits=[reg.change_kernel_size(5, pattern="blocks.*.conv_dw")]
    )
    edited = reg.create_model("eb0_k5", 3)
    dw = edited.blocks[1][0].conv_dw
    assert dw.kernel_size == (5, 5) and dw.groups == dw.in_channels, "depthwise grouping must survive"
    assert run32(edited).shape == (2, 3)


def test_change_stride_keeps_resolution() -> None:
    reg.register_edit("r18_s1", base="resnet18", edits=[reg.change_stride(1, pattern="maxpool")])
    base, edited = reg.create_model("resnet18", 4).eval(), reg.create_model("r18_s1", 4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert base.forward_features(x).shape[-1] == 1 and edited.forward_features(x).shape[-1] == 2
    reg.register_edit("r18_l2", base="resnet18", edits=[reg.change_stride(1, pattern="layer2.0.*")])
    assert reg.create_model("r18_l2", 4).layer2[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize(
    ("base", "edit", "probe"),
    [
        ("mobilenetv3_small_100", reg.widen(1.5), lambda m: m.conv_stem.out_channels),
        ("efficientnet_b0", reg.deepen(1.5), lambda m: sum(len(s) for s in m.blocks)),
        ("resnet18", reg.deepen(2.0), lambda m: len(m.layer1)),
        ("resnet18", reg.widen(0.5), lambda m: -m.layer4[0].conv1.out_channels),  # narrower
        ("regnetx_002", reg.widen(1.5), lambda m: m.s1.b1.conv1.conv.out_channels),
        ("convnext_atto", reg.widen(2.0), lambda m: m.stem[0].out_channels),
        ("convnext_atto", reg.deepen(1.5), lambda m: len(m.stages[2].blocks)),
    ],
)
def test_widen_and_deepen_use_timm_multipliers(base: str, edit: reg.Edit, probe) -> None:
    reg.register_edit("scaled", base=base, edits=[edit])
    before, after = probe(reg.create_model(base, 3)), probe(reg.create_model("scaled", 3))
    assert after > before, f"{edit.describe()} on {base}: {before} -> {after}"
    assert run32(reg.create_model("scaled", 3)).shape == (2, 3)


def test_a_vit_widened_gets_more_heads_of_the_same_size_and_deepened_more_blocks() -> None:
    reg.register_edit("vit_w2", base="vit_tiny_patch16_224", edits=[reg.widen(2.0)], kwargs={"img_size": 32})
    reg.register_edit("vit_d2", base="vit_tiny_patch16_224", edits=[reg.deepen(1.5)], kwargs={"img_size": 32})
    wide, deep = reg.create_model("vit_w2", 3), reg.create_model("vit_d2", 3)
    attn = wide.blocks[0].attn
    assert wide.embed_dim == 384 and attn.num_heads == 6 and attn.head_dim == 64, "vit_tiny -> vit_small's shape"
    assert len(deep.blocks) == 18 and run32(wide).shape == (2, 3)


def test_change_in_chans_and_the_stem_of_a_factory_without_it() -> None:
    reg.register_edit("r18_gray", base="resnet18", edits=[reg.change_in_chans(1)])
    model = reg.create_model("r18_gray", 4)
    assert model.conv1.in_channels == 1 and run32(model, in_chans=1).shape == (2, 4)
    assert reg.arch_spec("r18_gray", 4)["in_chans"] == 1, "the spec records the effective input channels"
    assert reg.create_model("r18_gray", 4, in_chans=4).conv1.in_channels == 4, "an explicit in_chans wins"

    reg.register_arch("rgb_only")(lambda num_classes: tiny_net(num_classes))
    adapted = reg.create_model("rgb_only", 2, in_chans=1)
    assert adapted[0].in_channels == 1 and run32(adapted, in_chans=1).shape == (2, 2)


def test_fixed_in_chans_is_what_the_registration_sets() -> None:
    """The stages refuse data with other channels only where the architecture itself fixes them."""
    reg.register_edit("r18_gray", base="resnet18", edits=[reg.change_in_chans(1)])
    reg.register_edit("r18_gray_silu", base="r18_gray", edits=[reg.swap_activation("silu")])
    reg.register_arch("tiny_rgba", kwargs={"in_chans": 4})(tiny_net)
    reg.register_arch("tiny_any")(tiny_net)
    fixed = {name: reg.fixed_in_chans(name) for name in ("resnet18", "r18_gray", "r18_gray_silu", "tiny_rgba",
                                                           "tiny_any")}
    assert fixed == {"resnet18": None, "r18_gray": 1, "r18_gray_silu": 1, "tiny_rgba": 4, "tiny_any": None}, fixed


def test_replace_head_with_mlp_and_a_registered_head() -> None:
    reg.register_edit("r18_mlp", base="resnet18", edits=[reg.replace_head("mlp", hidden=64, dropout=0.1)])
    fc = reg.create_model("r18_mlp", 6).fc
    linears = [m for m in fc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 6)]

    @reg.register_head("cosine")
    def cosine(in_features: int, num_classes: int, scale: float = 1.0) -> nn.Module:
        return nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, num_classes))

    reg.register_edit(
        "mnv3_cos", base="mobilenetv3_small_100", edits=[reg.replace_head("cosine", scale=10.0)]
    )
    model = reg.create_model("mnv3_cos", 3)
    assert isinstance(model.classifier[0], nn.LayerNorm) and run32(model).shape == (2, 3)


def test_edits_are_frozen_and_json_round_trip() -> None:
    edits = [
        reg.swap_activation("gelu", pattern="layer4.*"),
        reg.change_kernel_size((5, 3)),
        reg.change_stride(1, pattern="x"),
        reg.widen(1.25),
        reg.deepen(2),
        reg.change_in_chans(1),
        reg.replace_head("mlp", hidden=(32, 16), scale=2),
    ]
    for e in edits:
        back = reg.edit_from_dict(json.loads(json.dumps(e.to_dict())))
        assert back == e, f"{e} came back as {back}"
        with pytest.raises(AttributeError):
            e.pattern = "y"  # type: ignore[misc,attr-defined]


# ------------------------------------------------------------------------------------------------- specs
def test_spec_of_an_edit_rebuilds_in_a_fresh_interpreter(tmp_path: Path) -> None:
    reg.register_edit(
        "r18_tli",
        base="resnet18",
        edits=[reg.swap_activation("silu"), reg.change_kernel_size(5, pattern="layer*.conv2")],
    )
    reg.register_edit(
        "r18_tli_wide", base="r18_tli", edits=[reg.change_in_chans(1), reg.replace_head("mlp", hidden=32)]
    )
    spec = reg.arch_spec("r18_tli_wide", 5, drop_rate=0.1)
    here = reg.create_model_from_spec(spec)
    assert shapes(here) == shapes(reg.create_model("r18_tli_wide", 5, drop_rate=0.1))

    # a notebook factory lives in __main__: a fresh process without the cell cannot rebuild it
    ns: dict[str, object] = {"__name__": "__main__", "nn": nn}
    exec(
        compile("def cell_net(num_classes, **kw):\n    return nn.Linear(4, num_classes)\n", "<cell>", "exec"),
        ns,
    )
    reg.register_arch("cell_net")(ns["cell_net"])
    (tmp_path / "edit.json").write_text(json.dumps(spec))
    (tmp_path / "cell.json").write_text(json.dumps(reg.arch_spec("cell_net", 2)))
    script = textwrap.dedent(
        f"""
        import json, sys
        from kaggle_tli import models as reg
        assert reg.list_archs() == [], "fresh process: nothing registered"
        model = reg.create_model_from_spec(json.load(open({str(tmp_path / "edit.json")!r})))
        out = {{"shapes": [(k, list(v.shape)) for k, v in model.state_dict().items()],
                "acts": sorted({{type(m).__name__ for m in model.modules() if 'LU' in type(m).__name__}})}}
        try:
            reg.create_model_from_spec(json.load(open({str(tmp_path / "cell.json")!r})))
        except reg.UnknownArchError as e:
            out["cell_error"] = str(e)
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [tuple(s) for s in out["shapes"]] == [tuple(s) for s in shapes(here)], "fresh rebuild differs"
    assert out["acts"] == ["ReLU", "SiLU"], (
        f"SiLU body and ReLU inside the MLP head expected, got {out['acts']}"
    )
    assert "register_arch('cell_net')" in out.get("cell_error", ""), out


def test_spec_is_plain_json_and_checks_its_inputs() -> None:
    spec = reg.arch_spec("resnet18", 3, drop_rate=0.2, pretrained=False)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["num_classes"] == 3 and spec["in_chans"] == 3 and "pretrained" not in spec["kwargs"]
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        reg.arch_spec("resnet18", 3, act_layer=nn.GELU)
    with pytest.raises(ValueError, match="newer"):
        reg.create_model_from_spec({**spec, "schema": reg.SPEC_SCHEMA + 1})
    with pytest.raises(ValueError, match="num_classes"):
        reg.create_model("resnet18", -1)


def test_rebuilding_a_changed_factory_warns() -> None:
    reg.register_arch("tiny")(tiny_net)
    spec = reg.arch_spec("tiny", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shapes(reg.create_model_from_spec(spec)) == shapes(reg.create_model("tiny", 3))
    with pytest.warns(UserWarning, match="already registered"):
        reg.register_arch("tiny")(tiny_net_v2)
    with pytest.warns(UserWarning, match="changed since this spec was written"):
        reg.create_model_from_spec(spec)


# ------------------------------------------------------------------------------- review fixes
def test_fixed_size_models_validate_at_their_own_input_size() -> None:
    # img_size=32 keeps the ViT cheap; a 64 px check input would trip its patch embedding's size assert
    reg.register_edit(
        "vit_relu", base="vit_tiny_patch16_224", edits=[reg.swap_activation("relu")], kwargs={"img_size": 32}
    )
    model = reg.create_model("vit_relu", 3)
    assert kinds(model)["GELU"] == 0 and kinds(model)["ReLU"] == 12, f"every MLP act swapped: {kinds(model)}"
    assert run32(model).shape == (2, 3)


class _NeedsReLU(nn.Module):
    """A model whose forward refuses anything but its ReLU: an edit that breaks forward with a ValueError."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.act, nn.ReLU):
            raise ValueError("this block is written for ReLU")
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_an_edit_that_breaks_forward_with_any_error_is_an_edit_error() -> None:
    reg.register_arch("needs_relu")(lambda num_classes, **kw: _NeedsReLU(num_classes))
    with pytest.raises(reg.EditError) as err:
        reg.register_edit("needs_relu_silu", base="needs_relu", edits=[reg.swap_activation("silu")])
    msg = str(err.value)
    assert "1x3x224x224" in msg and "ValueError: this block is written for ReLU" in msg, msg
    assert "validate=False" in msg, f"the message names a way out: {msg}"
    assert "needs_relu_silu" not in reg.list_archs()


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable module whose import and whose function both leave a mark on disk."""
    name = f"evil_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    marks = tmp_path / "marks"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        import pathlib
        from torch import nn
        from kaggle_tli import models as registry
        pathlib.Path({str(marks)!r}).mkdir(exist_ok=True)
        pathlib.Path({str(marks)!r}, "imported").touch()

        def head(in_features, num_classes, **kw):
            pathlib.Path({str(marks)!r}, "called").touch()
            return nn.Linear(in_features, num_classes)

        @registry.register_arch("evil_net")
        def evil_net(num_classes, **kw):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marks
    sys.modules.pop(name, None)


def test_a_spec_cannot_import_or_call_anything_without_opt_in(evil_module, monkeypatch) -> None:
    name, marks = evil_module
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    reg.register_edit("r18_head", base="resnet18", edits=[reg.replace_head("linear")], validate=False)
    spec = reg.arch_spec("r18_head", 3)
    for head in ("os:system", f"{name}:head"):
        bad = json.loads(json.dumps(spec))
        bad["build"]["edits"][0]["head"] = head
        with pytest.raises(reg.EditError, match=r"allow_imports=True") as err:
            reg.create_model_from_spec(bad)
        assert repr(head.split(":")[0]) in str(err.value), f"the module is named: {err.value}"
    factory = {
        **spec,
        "kind": "factory",
        "build": {
            "kind": "factory",
            "name": "evil_net",
            "module": name,
            "qualname": "evil_net",
            "kwargs": {},
        },
    }
    with pytest.raises(reg.UnknownArchError, match=rf"'{name}'.*allow_imports=True"):
        reg.create_model_from_spec(factory)
    assert called == [] and not marks.exists() and name not in sys.modules, "refused before any side effect"

    bad["build"]["edits"][0]["head"] = f"{name}:head"
    assert run32(reg.create_model_from_spec(bad, allow_imports=True)).shape == (2, 3)
    assert (marks / "imported").exists() and (marks / "called").exists(), "the opt-in does import and call"
    assert isinstance(reg.create_model_from_spec(factory, allow_imports=True)[1], nn.LazyLinear)


def test_a_module_path_head_the_user_chose_rebuilds_from_its_spec(evil_module) -> None:
    name, marks = evil_module
    reg.register_edit(
        "r18_own_head", base="resnet18", edits=[reg.replace_head(f"{name}:head")], validate=False
    )
    assert (marks / "imported").exists(), "the user's own register_edit resolves the head"
    spec = reg.arch_spec("r18_own_head", 3)
    assert isinstance(reg.create_model_from_spec(spec).fc, nn.Linear), (
        "resolved by the user: a registered head"
    )


def test_spec_kwargs_that_load_weights_are_ignored(tmp_path: Path) -> None:
    reg.register_edit(
        "r18_pre",
        base="resnet18",
        edits=[reg.swap_activation("silu")],
        validate=False,
        kwargs={"checkpoint_path": str(tmp_path / "w.pth")},
    )
    spec = reg.arch_spec("r18_pre", 3, pretrained=True)
    assert "checkpoint_path" not in json.dumps(spec) and "pretrained" not in json.dumps(spec), spec
    missing = str(tmp_path / "nowhere.pth")  # loading it would raise FileNotFoundError
    for extra in (
        {"checkpoint_path": missing},
        {"pretrained": True, "pretrained_cfg_overlay": {"file": missing}},
    ):
        with pytest.warns(UserWarning, match="asks to load weights.*ignored"):
            model = reg.create_model_from_spec({**spec, "kwargs": extra})
        assert run32(model).shape == (2, 3)
    tampered = json.loads(json.dumps(spec))
    tampered["build"]["base"]["kwargs"] = {"checkpoint_path": missing}
    with pytest.warns(UserWarning, match="checkpoint_path"):
        reg.create_model_from_spec(tampered)


def test_import_archs_from_a_module_name_and_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = textwrap.dedent("""
        from torch import nn
        import kaggle_tli as kt

        @kt.register_arch("{p}_net")
        def net(num_classes, **kw):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

        kt.register_edit("{p}_silu", base="{p}_net", edits=[kt.swap_activation("silu")])
    """)
    pkg = tmp_path / "site" / "archpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(source.format(p="dotted"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        assert reg.import_archs("archpkg.mine") == ["dotted_net", "dotted_silu"]
        assert reg.import_archs("archpkg.mine") == ["dotted_net", "dotted_silu"], "again: re-run, same names"
    finally:
        for m in ("archpkg.mine", "archpkg"):
            sys.modules.pop(m, None)
    script = tmp_path / "scripts" / "my_archs_file.py"
    script.parent.mkdir()
    script.write_text(source.format(p="file"))
    try:
        assert reg.import_archs(str(script)) == ["file_net", "file_silu"]
        assert run32(reg.create_model("file_silu", 2)).shape == (2, 2)
    finally:
        sys.modules.pop("my_archs_file", None)
    with pytest.raises(FileNotFoundError, match="no_such.py"):
        reg.import_archs(str(tmp_path / "no_such.py"))
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        reg.import_archs("no_such_module_xyz")
