"""Registries (close-match errors) and the run config (unknown keys, overrides, round trip, shipped configs)."""

from pathlib import Path

import pytest

from mmit.config.schema import RunConfig, load_config, save_config
from mmit.registry import Registry, UnknownNameError

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
#: Run configs (``mmit train``); configs/eval/ holds evaluation task and suite files, tested with the evaluator.
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml")  # run configs (eval suites and accelerate launch files are not)
                 if not {"eval", "accelerate"} & set(p.relative_to(CONFIG_ROOT).parts))


def test_unknown_name_lists_close_matches():
    reg = Registry("projector")
    reg.register("linear", object())
    reg.register("identity", object())
    reg.register_pattern(r"mlp(\d+)x-gelu", "mlp2x-gelu", object())
    assert "mlp3x-gelu" in reg and "mlp2x-relu" not in reg
    with pytest.raises(UnknownNameError) as e:
        reg.get("lineer")
    assert "did you mean: linear" in str(e.value)
    assert "projector" in str(e.value)


def test_registry_rejects_non_kebab_and_duplicates():
    reg = Registry("thing")
    with pytest.raises(ValueError, match="kebab"):
        reg.register("Mlp_2x", object())
    reg.register("a-b", object())
    with pytest.raises(ValueError, match="twice"):
        reg.register("a-b", object())


def test_unknown_config_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ValueError) as e:
        load_config(str(p))
    assert "bad.yaml" in str(e.value) and "max_stepz" in str(e.value)
    with pytest.raises(ValueError, match="bogus"):
        load_config(None, ["--train.bogus=1"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(None, ["--train.max_steps=4", "--model.vision_tower.select_layer=-1"])
    assert cfg.train.max_steps == 4 and cfg.model.vision_tower.select_layer == -1
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_ROOT)) for p in CONFIGS])
def test_shipped_configs_parse_and_name_registered_components(path):
    from mmit.models.connectors.projectors import PROJECTORS
    from mmit.models.encoders import VISION_TOWERS
    from mmit.templates import TEMPLATES

    from mmit.families import FAMILIES

    cfg = load_config(str(path))
    assert isinstance(cfg, RunConfig)
    assert cfg.family in FAMILIES
    from mmit.families import get_family_class

    m = cfg.model
    assert type(m) is get_family_class(cfg.family).config_class
    if hasattr(m, "vision_tower"):
        assert m.vision_tower.name in VISION_TOWERS
    if hasattr(m, "projector"):
        assert m.projector.name in PROJECTORS
    if hasattr(m, "template"):
        assert m.template in TEMPLATES
    assert cfg.train.stage in get_family_class(cfg.family).stages


def test_llava_v15_configs_follow_the_paper():
    pre = load_config(str(CONFIG_ROOT / "llava" / "v1_5_7b_pretrain.yaml"))
    ft = load_config(str(CONFIG_ROOT / "llava" / "v1_5_7b_finetune.yaml"))
    assert (pre.train.stage, pre.model.template, pre.train.lr) == ("align", "plain", 1e-3)
    assert (ft.train.stage, ft.model.template, ft.train.lr) == ("finetune", "vicuna-v1", 2e-5)
    for c in (pre, ft):
        assert c.model.vision_tower.name == "clip-vit-l-14-336" and c.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5"
        assert c.model.vision_tower.select_layer == -2 and c.model.projector.name == "mlp2x-gelu"
        assert c.train.warmup_ratio == 0.03 and c.train.weight_decay == 0.0 and c.model.max_length == 2048
    assert ft.model.vision_tower.image_aspect_ratio == "pad"
