"""The typed per-family config: the family picks the ``model:`` dataclass, choices are checked at parse
time, stages per family, legacy configs migrate with a warning, path fields resolve against a checkpoint."""

from __future__ import annotations

import logging

import pytest

from mmit.config.schema import load_config, save_config
from mmit.registry import UnknownNameError


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_each_family_gets_its_own_model_section(tmp_path):
    from mmit.families.instructblip.config import InstructBlipConfig
    from mmit.families.instructpix2pix.config import InstructPix2PixConfig
    from mmit.families.llava.config import LlavaConfig

    assert type(load_config(_write(tmp_path, "family: llava\n")).model) is LlavaConfig
    ib = load_config(_write(tmp_path, "family: instructblip\n"))
    assert type(ib.model) is InstructBlipConfig and ib.model.vision_tower.name == "eva-vit-g"
    ip = load_config(None, ["--family=instructpix2pix", "--train.stage=finetune", "--model.resolution=64"])
    assert type(ip.model) is InstructPix2PixConfig and ip.model.resolution == 64
    # a LLaVA run carries no Q-Former: the key is unknown there
    with pytest.raises(ValueError, match="qformer"):
        load_config(_write(tmp_path, "family: llava\nmodel:\n  qformer:\n    num_query_tokens: 8\n"))


@pytest.mark.parametrize("override,field", [("--train.precision=fp8", "precision"),
                                            ("--train.stage=lora", "stage"),
                                            ("--data.overflow=ignore", "overflow"),
                                            ("--model.vision_tower.select_feature=cls", "select_feature")])
def test_choices_are_checked_at_parse_time(override, field):
    with pytest.raises(ValueError, match=field):
        load_config(None, [override])


def test_a_choice_outside_the_literal_in_yaml_names_file_and_field(tmp_path):
    path = _write(tmp_path, "train:\n  lr_scheduler: linear\n")
    with pytest.raises(ValueError, match="lr_scheduler") as e:
        load_config(path)
    assert path in str(e.value)


def test_a_stage_the_family_lacks_is_refused_naming_the_family(tmp_path):
    with pytest.raises(ValueError, match="instructpix2pix.*finetune"):
        load_config(_write(tmp_path, "family: instructpix2pix\ntrain:\n  stage: align\n"))


def test_unknown_family_lists_close_matches(tmp_path):
    with pytest.raises(UnknownNameError, match="instructblip"):
        load_config(_write(tmp_path, "family: instruct-blip\n"))


def test_config_written_before_the_family_split_still_loads(tmp_path, caplog):
    old_llava = ("family: llava\nmodel:\n  vision_tower: {name: tiny-clip-vit}\n  template: plain\n"
                 "  qformer: {num_query_tokens: 32}\ndiffusion: {resolution: 256}\n")
    with caplog.at_level(logging.WARNING, logger="mmit.config"):
        cfg = load_config(_write(tmp_path, old_llava))
    assert cfg.model.template == "plain" and cfg.model.vision_tower.name == "tiny-clip-vit"
    assert "qformer" in caplog.text and "diffusion" in caplog.text
    old_ip2p = "family: instructpix2pix\nmodel:\n  template: vicuna-v1\ndiffusion: {resolution: 48, use_ema: false}\n"
    cfg = load_config(_write(tmp_path, old_ip2p, "ip2p.yaml"))
    assert cfg.model.resolution == 48 and cfg.model.use_ema is False


def test_round_trip_keeps_the_family_type(tmp_path):
    cfg = load_config(None, ["--family=instructblip", "--model.qformer.num_query_tokens=8"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(str(tmp_path / "out.yaml"))
    assert again == cfg and "diffusion" not in (tmp_path / "out.yaml").read_text()


def test_path_fields_resolve_against_a_folder(tmp_path):
    from mmit.config.paths import absolutise, path_fields

    cfg = load_config(None, ["--family=instructblip", "--model.llm.name_or_path=llm",
                             "--model.qformer.tokenizer=qformer_tokenizer", "--model.vision_tower.name_or_path=gone"])
    names = {n for n, _, _ in path_fields(cfg)}
    assert {"model.llm.name_or_path", "model.llm.tokenizer", "model.qformer.tokenizer",
            "model.vision_tower.name_or_path"} <= names
    (tmp_path / "llm").mkdir()
    (tmp_path / "qformer_tokenizer").mkdir()
    done = absolutise(cfg, tmp_path)
    assert sorted(done) == ["model.llm.name_or_path", "model.qformer.tokenizer"]
    assert cfg.model.llm.name_or_path == str(tmp_path / "llm")
    assert cfg.model.vision_tower.name_or_path == "gone"  # not under the folder: left as written
