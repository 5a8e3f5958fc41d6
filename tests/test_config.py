import pathlib

import pytest

from amcl_keras import config as config_lib, registry
from amcl_keras.losses.adaptive import AMCLContrastiveLoss
from tests.methods.helpers import SHIPPED_METHODS, own_settings

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_demo_config():
    assert config_lib.load(pathlib.Path(__file__).parents[1] / "configs" / "demo.yaml") == config_lib.load(None)


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_method_defaults_fill_what_the_config_leaves_open(method):
    """The method's settings dataclass (declared in its file) supplies the defaults the config leaves open,
    and the method's constructor defaults are the same values."""
    import inspect

    config = config_lib.load(None, [f"model.method={method}"])
    spec = registry.method(method)
    defaults = spec.settings()
    assert config.model.projection_dim == defaults.projection_dim
    assert config.model.beta == defaults.beta and config.train.learning_rate == spec.learning_rate
    signature = inspect.signature(spec.model.__init__).parameters
    for name in ("projection_dim", "hidden_dim", "queue_size", "momentum", "predictor_hidden_dim", "moco_form"):
        if name in signature and hasattr(defaults, name):
            assert signature[name].default == getattr(defaults, name), name
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


# The CLI catalogue (tests/test_bad_inputs.py) covers unknown keys, wrong types and the common ranges;
# these are the cases it does not have (a method's own settings: in its test file, tests/methods/test_<method>.py).
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.negatives=all"], "'topk', 'hardest'"),
        (["model.settings=1"], "Unknown config key model.'settings'"),
        (["model.encoder_forward=joint"], r"model.encoder_forward='joint' .*'per_view', 'concatenated'"),
        (["train.weight_decay_mode=adamw"], r"train.weight_decay_mode='adamw' .*'coupled', 'decoupled'"),
        (["model.temperature=0.0"], "model.temperature=0.0 is out of range"),
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


@pytest.mark.parametrize("method", registry.names())
def test_from_model_config_hands_every_temperature_option_to_the_loss(method):
    import amcl_keras as amcl

    cfg = config_lib.load(None, [f"model.method={method}", "model.beta=0.3", "model.temperature_min=0.01",
                             "model.temperature_max=1.5", "model.temperature_hidden_dim=7", "model.top_k=9",
                             "model.negatives=hardest", "model.projection_dim=8", "model.hidden_dim=8",
                             "data.batch_size=16"] + own_settings(method, queue_size=512)).model
    model = amcl.methods.get(method).from_model_config(amcl.encoders.small_convnet((8, 8, 1), width=4), cfg, 16)
    loss = model.contrastive_loss
    assert (loss.beta, loss.temperature.temperature_min, loss.temperature.temperature_max,
            loss.temperature.hidden_dim) == (0.3, 0.01, 1.5, 7)
    if issubclass(registry.method(method).model.amcl_loss, AMCLContrastiveLoss):  # an AMCL loss with negatives
        assert (loss.negatives, loss.top_k) == ("hardest", 9)


@pytest.mark.parametrize("method", SHIPPED_METHODS)
def test_the_authors_pipeline_is_the_default_and_stated_in_their_configs(method):
    """coupled weight decay, per-view encoder forward, output batch norm on the heads of a method with
    projector_output_bn, the asymmetric moco_form: the defaults, and written out in configs/<method>_amcl_cifar10.yaml."""
    own = registry.method(method).setting_names()
    output_bn = "projector_output_bn" in own  # a method that has the setting has it on
    for config in (config_lib.load(None, [f"model.method={method}"]),
                   config_lib.load(pathlib.Path(__file__).parents[1] / "configs" / f"{method}_amcl_cifar10.yaml")):
        assert config.train.weight_decay_mode == "coupled"
        assert config.model.encoder_forward == "per_view"
        assert "moco_form" not in own or config.model.moco_form == "asymmetric"
        assert getattr(config.model.settings, "projector_output_bn", False) is output_bn
    text = (pathlib.Path(__file__).parents[1] / "configs" / f"{method}_amcl_cifar10.yaml").read_text()
    for key in ("weight_decay_mode:", "encoder_forward:") + tuple(f"{name}:" for name in ("moco_form", "projector_output_bn")
                                                                  if name in own):
        assert key in text, key


@pytest.mark.parametrize("method", registry.names())
def test_from_model_config_hands_the_pipeline_options_to_the_model(method):
    import amcl_keras as amcl

    overrides = [f"model.method={method}", "model.encoder_forward=concatenated", "model.projection_dim=8",
                 "model.hidden_dim=8", "data.batch_size=16"]
    overrides += own_settings(method, moco_form="symmetric", queue_size=512, projector_output_bn="false")
    own = registry.method(method).setting_names()
    cfg = config_lib.load(None, overrides).model
    model = amcl.methods.get(method).from_model_config(amcl.encoders.small_convnet((8, 8, 1), width=4), cfg, 16)
    assert model.encoder_forward == "concatenated"
    if "moco_form" in own:
        assert model.moco_form == "symmetric"
    if "projector_output_bn" in own:
        assert model.projector_output_bn is False
        assert all(head.blocks[-1].name == "output" for head in model.projector.heads)
