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
        load_recipe(PretrainConfig, ROOT / "configs/pretrain/quickstart.yaml", [override])


def test_no_weight_decay_on_norms_biases_tokens():
    cfg = load_recipe(PretrainConfig, ROOT / "configs/pretrain/quickstart.yaml", ["model.depth=1", "objective.decoder_depth=1"])
    model = build_model(cfg)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(names[id(p)].endswith("cls_token") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_deepspeed_config_uses_torch_adam_and_stage():
    cfg = load_recipe(PretrainConfig, None, ["engine.zero_stage=3", "engine.precision=bf16"])
    ds = deepspeed_config(cfg.engine, cfg.optim, 8)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["train_micro_batch_size_per_gpu"] == 8
