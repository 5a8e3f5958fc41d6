"""A loss built from Python and `amcl train` use the same defaults: for every registered method, its AMCL loss
class, constructed with only the required arguments, has the method's settings (objective, β, temperature centre)."""

import dataclasses
import inspect

import pytest

import amcl_keras  # noqa: F401 (registers the methods)
from amcl_keras import registry


@pytest.mark.parametrize("name", registry.names())
def test_the_amcl_loss_defaults_are_the_methods_settings(name):
    spec = registry.METHODS[name]
    settings = spec.settings()
    loss_class = spec.model.amcl_loss
    required = {key: getattr(settings, "projection_dim") if key == "projection_dim" else 256
                for key, parameter in inspect.signature(loss_class.__init__).parameters.items()
                if parameter.default is inspect.Parameter.empty and key not in ("self", "kwargs")}
    loss = loss_class(**required)
    config = loss.get_config()
    for field in ("objective", "beta", "temperature_center", "temperature_stop_gradient"):
        assert config[field] == getattr(settings, field), (name, field)
    assert settings.objective in loss_class.objectives
    assert {f.name for f in dataclasses.fields(settings)} >= {"objective", "beta", "temperature_center"}
