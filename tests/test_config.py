import tomllib

import pytest

from ppl_vae.config import DEFAULTS, MODELS_DIR, dump_toml, load_config
from ppl_vae.errors import ConfigError


@pytest.mark.parametrize("model_file", sorted(MODELS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_model_files_round_trip_through_dump_toml(model_file, tmp_path):
    config = load_config(model_file)
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config))
    assert tomllib.loads(path.read_text()) == config
    assert load_config(path) == config


def test_precedence_defaults_then_file_then_overrides():
    config = load_config("gaussian_vae", {"model.latent_dim": 3, "train.lr": 1})
    assert config["model"]["likelihood"] == "gaussian"  # from the file
    assert config["model"]["latent_dim"] == 3  # from the overrides
    assert config["train"]["lr"] == 1.0 and isinstance(config["train"]["lr"], float)
    assert config["data"]["test_fraction"] == DEFAULTS["data"]["test_fraction"]


def test_options_tables_pass_through():
    config = load_config(None, {"model.prior_options": {"num_components": 4}})
    assert config["model"]["prior_options"] == {"num_components": 4}


@pytest.mark.parametrize("overrides,message", [
    ({"model.latnet_dim": 2}, "unknown setting 'model.latnet_dim'.*known settings in "
                              r"\[model\]: .*latent_dim"),
    ({"training.epochs": 2}, "unknown setting 'training'"),
    ({"model.latent_dim": 2.5}, "'model.latent_dim' .* must be of type int; got 2.5"),
    ({"model.latent_dim": True}, "must be of type int"),
    ({"data.binarize": "sometimes"}, "must be one of dynamic, static, none"),
    ({"model.hidden": "256"}, "must be of type list"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("vae", overrides)


def test_bad_files_are_named(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nlatent_dim = 2\n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no model file 'nope'.*vae"):
        load_config("nope")
