import pytest

from data_prep.recipe import ConfigError, load_recipe
from pretrain.config import PretrainConfig
from pretrain.engine import deepspeed_config, lr_multiplier, param_groups
from pretrain.objectives import OBJECTIVES
from pretrain.train import build_model
from tests.conftest import ROOT


def test_warmup_then_cosine():
    m = [lr_multiplier(s, 100, 10, 0.1) for s in range(100)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[10:], m[11:]))             # monotone decay after warm-up
    assert lr_multiplier(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_recipes_in_configs_folder_load():
    for path in (ROOT / "configs" / "pretrain").glob("*.yaml"):
        cfg = load_recipe(PretrainConfig, path)
        assert cfg.objective["name"] in OBJECTIVES


@pytest.mark.parametrize("override, message", [
    ("objective.mask_ratio=1.5", "mask_ratio must be in (0, 1)"),
    ("objective.mask_ratoi=0.5", "objective.mask_ratoi: unknown key"),
    ("objective.name=simclr", "objective.name 'simclr' unknown"),
    ("engine.zero_stage=4", "zero_stage must be 0-3"),
    ("model.size=giant", "model.size: expected one of"),
])
def test_bad_recipe_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(PretrainConfig, ROOT / "configs/pretrain/mae_quickstart.yaml", [override])


def test_no_weight_decay_on_norms_biases_tokens():
    cfg = load_recipe(PretrainConfig, ROOT / "configs/pretrain/mae_quickstart.yaml", ["model.depth=1", "objective.decoder_depth=1"])
    model = build_model(cfg)
    groups = param_groups(model, cfg.optim)
    decay, no_decay = groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(names[id(p)].endswith("cls_token") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_layer_decay_and_group_overrides():
    cfg = load_recipe(PretrainConfig, ROOT / "configs/pretrain/mae_quickstart.yaml", [
        "model.depth=2", "objective.decoder_depth=1", "optim.layer_decay=0.5",
        "optim.groups=[{match: '^decoder', lr_scale: 0.1, weight_decay: 0.0}]"])
    model = build_model(cfg)
    lr_of = {}
    for g in param_groups(model, cfg.optim):
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"] / cfg.optim.lr, g["weight_decay"])
    by_name = {n: lr_of[id(p)] for n, p in model.named_parameters()}
    assert by_name["backbone.blocks.1.attn.qkv.weight"] == (pytest.approx(0.5), 0.05)      # last block: 0.5 ** 1
    assert by_name["backbone.blocks.0.attn.qkv.weight"][0] == pytest.approx(0.25)
    assert by_name["backbone.cls_token"] == (pytest.approx(0.125), 0.0)                     # embedding: 0.5 ** 3
    dec = [v for n, v in by_name.items() if n.startswith("decoder")]
    assert dec and all(v == (pytest.approx(0.1), 0.0) for v in dec)
    assert len(lr_of) == sum(1 for _ in model.parameters())                                 # every parameter once


def test_deepspeed_config_uses_torch_adam_and_stage():
    cfg = load_recipe(PretrainConfig, None, ["engine.zero_stage=3", "engine.precision=bf16"])
    ds = deepspeed_config(cfg.engine, cfg.optim, 8)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["train_micro_batch_size_per_gpu"] == 8


def test_deepspeed_config_offload_fp16_universal():
    cfg = load_recipe(PretrainConfig, None, ["engine.zero_stage=3", "engine.offload_optimizer=true",
                                             "engine.offload_params=true", "engine.precision=fp16",
                                             "engine.loss_scale=128", "engine.timeout_min=5"])
    ds = deepspeed_config(cfg.engine, cfg.optim, 4, load_universal=True)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["fp16"] == {"enabled": True, "loss_scale": 128.0, "initial_scale_power": 16,
                          "loss_scale_window": 1000, "min_loss_scale": 1.0}
    assert ds["checkpoint"]["load_universal"] is True
    for bad, msg in (("engine.offload_params=true", "offload_params needs zero_stage 3"),
                     ("engine.offload_optimizer=true", "offload_optimizer needs zero_stage"),
                     ("optim.layer_decay=0", "layer_decay must be in"),
                     ("optim.groups=[{match: '(', lr_scale: 1}]", "not a regular expression")):
        with pytest.raises(ConfigError, match=msg):
            load_recipe(PretrainConfig, None, [bad])



def test_layer_decay_puts_date_location_scales_with_the_patch_embedding():
    from pretrain.engine import _layer_id
    assert _layer_id("backbone.time_scale", "backbone.", 12) == 0
    assert _layer_id("backbone.loc_scale", "backbone.", 12) == 0
    assert _layer_id("backbone.blocks.3.attn.qkv.weight", "backbone.", 12) == 4
    assert _layer_id("backbone.norm.weight", "backbone.", 12) == 13
