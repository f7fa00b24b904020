from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from data_prep.recipe import ConfigError, load_recipe, save_recipe, to_dict


@dataclass
class Inner:
    ratio: float = 0.5
    name: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self):
        if self.ratio > 1:
            raise ValueError(f"ratio must be <= 1, got {self.ratio}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("inner: {ratio: 0.25}\nsteps: 3\n")
    cfg = load_recipe(Outer, p, ["inner.name=b", "steps=7", "flag=true", "inner.sizes=[4, 5]", "inner.ratio=1e-3"])
    assert cfg.inner.ratio == 0.001 and cfg.inner.name == "b" and cfg.steps == 7 and cfg.flag is True
    assert cfg.inner.sizes == [4, 5]


@pytest.mark.parametrize("override, message", [
    (["inner.ratoi=0.1"], "inner.ratoi: unknown key"),
    (["inner.ratio=high"], "inner.ratio: expected float, got str 'high'"),
    (["steps=1.5"], "steps: expected int"),
    (["flag=1"], "flag: expected bool"),
    (["inner.name=c"], "inner.name: expected one of ['a', 'b']"),
    (["inner.ratio=2"], "inner: ratio must be <= 1"),
    (["steps"], "expected key=value"),
    (["steps.x=1"], "steps: expected int, got dict"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(Outer, None, override)
    assert message in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(Outer, bad)


def test_save_recipe_round_trips(tmp_path):
    cfg = load_recipe(Outer, None, ["inner.ratio=0.75"])
    path = save_recipe(cfg, tmp_path / "run")
    again = load_recipe(Outer, path)
    assert to_dict(again) == to_dict(cfg) == yaml.safe_load(open(path))
