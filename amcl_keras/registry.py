"""Names → implementations. A method or an encoder declares itself once, where it is defined;
the config validation, the CLI choices and a run's labels read these tables.

Adding a method = its method file (the model class with `@register_method` and its settings
dataclass), its loss file, a YAML in `configs/` and a test file: see README "Contributing".
Like `constants`, this module imports nothing from the package (the bottom of the import graph).
"""

import dataclasses
import typing

METHODS = {}
ENCODERS = {}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a method declares about itself.

    name:          the config / CLI name (`model.method`), e.g. "simclr"
    display_name:  how results name it ("SimCLR"; with AMCL "AMCL-SimCLR")
    model:         the `ContrastiveTrainer` subclass; `model.from_model_config(encoder, cfg,
                   global_batch, **kwargs)` builds it from the `model:` section
    settings:      a dataclass of the method's own `model:` fields and their defaults (the paper's);
                   the model's constructor takes its defaults from it. An optional
                   `check(config)` method adds checks that span sections (raise `ConfigError`).
    learning_rate: the method's default `train.learning_rate`
    """

    name: str
    display_name: str
    model: type
    settings: type
    learning_rate: float

    def label(self, amcl):
        return f"AMCL-{self.display_name}" if amcl else self.display_name

    def setting_names(self):
        return tuple(field.name for field in dataclasses.fields(self.settings))


def register_method(name, display_name, settings, learning_rate):
    """Class decorator: register a `ContrastiveTrainer` subclass as method `name`.

    ```python
    @register_method("simclr", "SimCLR", settings=SimCLRSettings, learning_rate=0.06)
    class SimCLR(ContrastiveTrainer): ...
    ```
    """
    if not dataclasses.is_dataclass(settings):
        raise TypeError(f"`settings` of method {name!r} must be a dataclass, got {settings!r}.")

    def register(model):
        METHODS[name] = MethodSpec(name, display_name, model, settings, float(learning_rate))
        return model

    return register


def method(name) -> MethodSpec:
    """The spec registered as `name` (ValueError naming the known methods otherwise)."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Known methods: {sorted(METHODS)}.")
    return METHODS[name]


def register_encoder(name):
    """Function decorator: register an encoder builder `fn(input_shape, width=..., synchronized_batch_norm=...)`."""

    def register(builder: typing.Callable):
        ENCODERS[name] = builder
        return builder

    return register
