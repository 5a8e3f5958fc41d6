import pathlib

import pytest

from amcl_keras import config as config_lib

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_demo_config():
    assert config_lib.load(pathlib.Path(__file__).parents[1] / "configs" / "demo.yaml") == config_lib.load(None)


@pytest.mark.parametrize("method", sorted(config_lib.METHOD_DEFAULTS))
def test_method_defaults_fill_what_the_config_leaves_open(method):
    config = config_lib.load(None, [f"model.method={method}"])
    defaults = config_lib.METHOD_DEFAULTS[method]
    assert config.model.projection_dim == defaults["projection_dim"]
    assert config.model.beta == defaults["beta"] and config.train.learning_rate == defaults["learning_rate"]
    explicit = config_lib.load(None, [f"model.method={method}", "model.projection_dim=64"])
    assert explicit.model.projection_dim == 64


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config_lib.load(path)


def test_overrides_apply_with_yaml_types():
    config = config_lib.load(None, ["train.epochs=3", "model.amcl=false", "data.crop_scale=[0.5, 1.0]"])
    assert config.train.epochs == 3 and config.model.amcl is False and config.data.crop_scale == (0.5, 1.0)


def test_round_trip_through_yaml(tmp_path):
    config = config_lib.load(None, ["model.top_k=7", "data.image_size=32"])
    config.dump(tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.num_head=2"], "Did you mean 'num_heads'"),
        (["modle.num_heads=2"], "Did you mean 'model'"),
        (["train.epochs=two"], "train.epochs must be an integer"),
        (["model.amcl=1"], "model.amcl must be true or false"),
        (["model.top_k=0"], "model.top_k=0 is out of range"),
        (["model.num_heads=0"], "model.num_heads=0"),
        (["model.temperature_min=2.0"], "temperature_min < temperature_max"),
        (["model.negatives=all"], "'topk', 'hardest'"),
        (["model.method=byol"], "barlow_twins"),
        (["model.encoder=vit"], "resnet18_cifar"),
        (["data.augmentation=xyz"], "abcde"),
        (["data.batch_size=1"], "at least 2"),
        (["train.cpu_replicas=3"], "divide evenly"),
        (["train.strategy=tpu"], "'auto', 'default', 'mirrored'"),
        (["data.crop_scale=[0.5]"], "list of 2 numbers"),
        (["model.method=moco", "model.queue_size=100"], "enqueues 2 × batch = 512"),
        (["model.momentum=1.0"], "model.momentum"),
        (["model.lambda_=-1.0"], "model.lambda_"),
        (["epochs=3"], "section.key=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(config_lib.ConfigError, match="not valid YAML"):
        config_lib.load(bad)


@pytest.mark.parametrize("method", ["simclr", "moco", "barlow_twins", "simsiam"])
def test_from_model_config_hands_every_temperature_option_to_the_loss(method):
    import amcl_keras as amcl

    cfg = config_lib.load(None, [f"model.method={method}", "model.beta=0.3", "model.temperature_min=0.01",
                             "model.temperature_max=1.5", "model.temperature_hidden_dim=7", "model.top_k=9",
                             "model.negatives=hardest", "model.projection_dim=8", "model.hidden_dim=8",
                             "model.queue_size=512", "data.batch_size=16"]).model
    model = amcl.methods.get(method).from_model_config(amcl.encoders.small_convnet((8, 8, 1), width=4), cfg, 16)
    loss = model.contrastive_loss
    assert (loss.beta, loss.temperature.temperature_min, loss.temperature.temperature_max,
            loss.temperature.hidden_dim) == (0.3, 0.01, 1.5, 7)
    if method in ("simclr", "moco"):
        assert (loss.negatives, loss.top_k) == ("hardest", 9)
