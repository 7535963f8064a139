"""The key schema (`config_keys`): it agrees with the shipped configs, types included, and it
names the closest valid key for a misspelt one."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import REPO
from mimo_launch.settings.config_keys import AppKeys, MimoKeys, check_keys, suggest_for_path
from mimo_launch.settings.config_schema import SchemaError


def test_the_shipped_top_level_config_fits_the_typed_schema():
    shipped = OmegaConf.load(REPO / "conf" / "config.yaml")
    for key in ("defaults", "hydra", "mimo", "cluster"):
        shipped.pop(key, None)
    shipped.timeout_s = 30  # `${cluster.timeout_s}` in the file
    merged = OmegaConf.merge(OmegaConf.structured(AppKeys), shipped)
    assert merged.health.threshold == 0.7 and merged.fault.where == "start"
    check_keys(OmegaConf.to_container(shipped))
    with pytest.raises(ValidationError):  # typed: a string where a number belongs
        OmegaConf.merge(OmegaConf.structured(AppKeys), {"health": {"iters": "many"}})


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "mimo").glob("*.yaml")))
def test_every_layout_preset_fits_the_typed_schema(preset):
    layout = OmegaConf.load(REPO / "conf" / "mimo" / f"{preset}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(MimoKeys), layout)
    assert "language" in merged.modules
    check_keys({"mimo": OmegaConf.to_container(layout)})


@pytest.mark.parametrize("data,fragments", [
    ({"timeout": 5}, ["unknown key 'timeout'", "did you mean 'timeout_s'?"]),
    ({"mimo": {"modules": {"vision": {"tpp": 2}}}},
     ["unknown key 'mimo.modules.vision.tpp' (did you mean 'mimo.modules.vision.tp'?)"]),
    ({"mimo": {"wold_size": 8}},
     ["unknown key 'mimo.wold_size' (did you mean 'mimo.world_size'?)"]),
    ({"health": {"iter": 3, "zzz": 1}},
     ["unknown key 'health.iter' (did you mean 'health.iters'?); also unknown: 'health.zzz'"]),
    ({"plan": {"colour": 1}}, ["unknown key 'plan.colour' (known: rank"]),
])
def test_an_unknown_key_names_the_closest_valid_one(data, fragments):
    with pytest.raises(SchemaError) as info:
        check_keys(data)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_suggestions_for_a_dotted_path():
    assert suggest_for_path("mimo.modules.language.tpp") == "tp"
    assert suggest_for_path("cluster.partiton") == "partition"
    assert suggest_for_path("fault.phse") == "phase"
    assert suggest_for_path("timeout") == "timeout_s"
    assert suggest_for_path("cluster.partition") is None  # a key of some cluster kind
    assert suggest_for_path("zzzz") is None


@pytest.mark.parametrize("keys, settings", [
    ("FaultKeys", "mimo_launch.rank.phases:FaultSpec"),
    ("HealthKeys", "mimo_launch.settings.health_config:HealthSettings"),
])
def test_a_sections_keys_are_the_fields_of_what_it_becomes(keys, settings):
    """The key schema (mutable, for OmegaConf) and the frozen settings a section becomes are
    two classes; a field added to one only would be refused, or dropped, without a word."""
    import dataclasses
    import importlib

    from mimo_launch.settings import config_keys

    module, name = settings.split(":")
    target = getattr(importlib.import_module(module), name)

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(getattr(config_keys, keys)) == defaults(target)
