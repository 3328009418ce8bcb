"""The run's configuration: `--gen0-epochs auto` or a number, old config.json files, the options of part 4."""

import json
from pathlib import Path

import pytest

from host_trainer.config import AUTO, EvolveConfig, default_text, parse_epochs
from host_trainer.errors import UserError

OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0.1"


def test_gen0_epochs_is_auto_or_a_number():
    assert parse_epochs("auto") == AUTO and parse_epochs(" AUTO ") == AUTO
    assert parse_epochs("2.5") == 2.5 and parse_epochs("0") == 0.0
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(UserError):
            parse_epochs(bad)
    assert EvolveConfig().gen0_epochs == AUTO
    assert default_text("gen0_epochs").startswith("auto") and "with --weights: 0" in default_text("gen0_epochs")


def test_a_config_json_with_a_number_or_auto_loads():
    old = json.loads((OLD_RUN / "config.json").read_text())
    assert EvolveConfig.from_dict(old).validate().gen0_epochs == 2.0  # written by 0.1: a float
    assert EvolveConfig.from_dict({**old, "gen0_epochs": 3}).gen0_epochs == 3
    assert EvolveConfig.from_dict({**old, "gen0_epochs": "auto"}).validate().gen0_epochs == AUTO
    for bad in ("soon", True, None):
        with pytest.raises(UserError, match="gen0_epochs"):
            EvolveConfig.from_dict({**old, "gen0_epochs": bad})
    assert EvolveConfig.from_dict(old).final_epochs == 0.0  # absent: an older run, which had no final fine-tune
    assert EvolveConfig.from_dict(EvolveConfig().to_dict()) == EvolveConfig()


@pytest.mark.parametrize("given,message", [
    ({"gen0_epochs": 0.0}, "needs --weights"),
    ({"gen0_epochs": -1.0}, "--gen0-epochs"),
    ({"final_epochs": -1.0}, "--final-epochs"),
    ({"allocation": "random"}, "--allocation must be one of device, magnitude"),
])
def test_bad_values_are_one_line_errors(given, message):
    with pytest.raises(UserError, match=message):
        EvolveConfig.for_task("classify", **given).validate()


def test_weights_change_only_the_gen0_default():
    with_weights = EvolveConfig.for_task("detect", weights="w.pt")
    assert with_weights.gen0_epochs == 0.0 and with_weights.validate()
    assert EvolveConfig.for_task("classify", weights="w.pt", gen0_epochs=AUTO).gen0_epochs == AUTO
    cfg = EvolveConfig()
    assert (cfg.allocation, cfg.latency_model, cfg.weights) == ("device", "", "")


def test_every_evolve_option_is_a_config_field_or_named_as_not_one():
    """cli.evolve builds EvolveConfig from its own parameters (cli._given): each is a field, renamed in one
    table, or listed as not a field; an option given nothing is None (the config's default applies)."""
    import dataclasses
    import inspect
    from pathlib import Path

    from host_trainer import cli
    from host_trainer.config import EvolveConfig

    params = list(inspect.signature(cli.evolve).parameters)
    fields = {f.name for f in dataclasses.fields(EvolveConfig)}
    given = cli._given(dict.fromkeys(params))
    assert set(given) <= fields and len(given) == len(params) - len(cli.NOT_CONFIG)
    assert set(cli.NOT_CONFIG) <= set(params) and set(cli.RENAMED) <= set(params)
    assert all(v is None for v in given.values())
    flags = cli._given({"no_probes": True, "no_mqtt": False, "insecure": True, "device": ["a", "b"],
                        "weights": Path("w.pt"), "seed": 0})
    assert flags == {"probes": False, "no_mqtt": None, "insecure": True, "devices": ["a", "b"], "weights": "w.pt",
                     "seed": 0}
    assert cli._given({"device": []}) == {"devices": None}
    cfg = EvolveConfig.for_task("classify", **given)
    assert cfg == EvolveConfig.for_task("classify")
