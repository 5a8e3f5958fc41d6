"""Names → implementations. A method or an encoder declares itself once, where it is defined;
the config validation, the CLI choices and a run's labels read these tables.

Adding a method = its method file (the model class with `@register_method` and its settings
dataclass), its loss file, a YAML in `configs/` and a test file: see README "Contributing".
Like `constants`, this module imports nothing from the package (the bottom of the import graph).
"""

import dataclasses
import typing
from amcl_keras.errors import InvalidInputError

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


def defaults_table(methods=None):
    """A Markdown table of every method's `model:` settings and `train.learning_rate` with their defaults, read from
    the settings dataclasses (rows: settings; columns: methods; "–" where a method has no such setting). README's
    "Per-method defaults" is this table (tests/test_readme.py regenerates and compares it).

    Example:
    ```python
    import amcl_keras as amcl
    print(amcl.registry.defaults_table())
    ```
    """
    specs = [METHODS[name] for name in (methods or names())]
    rows = {"learning_rate": ["`train.learning_rate`", *(_cell(spec.learning_rate) for spec in specs)]}
    for index, spec in enumerate(specs):
        for field in dataclasses.fields(spec.settings):
            row = rows.setdefault(field.name, [f"`model.{field.name}`", *(["–"] * len(specs))])
            row[1 + index] = _cell(getattr(spec.settings, field.name))
    header = ["setting", *(spec.display_name for spec in specs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows.values()])


def _cell(value):
    return "`null`" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def names():
    """The registered method names, in registration order: THE list of methods. Tests and benchmarks that
    cover "every method" iterate this (import `amcl_keras` first: its methods register on import)."""
    return tuple(METHODS)


def method(name) -> MethodSpec:
    """The spec registered as `name` (ValueError naming the known methods otherwise)."""
    if name not in METHODS:
        raise InvalidInputError(f"Unknown method {name!r}. Known methods: {sorted(METHODS)}.")
    return METHODS[name]


def register_encoder(name):
    """Function decorator: register an encoder builder `fn(input_shape, width=..., synchronized_batch_norm=...)`."""

    def register(builder: typing.Callable):
        ENCODERS[name] = builder
        return builder

    return register


ENCODER_FAMILIES = {}


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """Encoders named `<prefix><Model>` from another library (e.g. `keras.applications.ResNet50`).

    builder: `builder(model_name, input_shape, synchronized_batch_norm=..., weights=..., options=...)`
    check:   `check(model_name, weights, options)` raises ValueError with a clear message unless it can be built
    weights: whether `model.encoder_weights` goes to the builder (else it is loaded into the built encoder)
    example: a valid name, for messages
    onnx_problem: `onnx_problem(model_name)` → why that model cannot be exported to ONNX, or None
    """

    prefix: str
    builder: typing.Callable
    check: typing.Callable
    weights: bool
    example: str
    onnx_problem: typing.Optional[typing.Callable] = None


def register_encoder_family(prefix, check, example, weights=False, onnx_problem=None):
    """Function decorator: register a builder of the encoders named `<prefix><Model>` (`example`: one of them)."""

    def register(builder: typing.Callable):
        ENCODER_FAMILIES[prefix] = EncoderFamily(prefix, builder, check, weights, example, onnx_problem)
        return builder

    return register


def encoder_family(name):
    """`(family, model_name)` for a name like `keras.applications.ResNet50`, or `(None, name)`."""
    for prefix, family in ENCODER_FAMILIES.items():
        if name.startswith(prefix):
            return family, name[len(prefix):]
    return None, name


def check_encoder(name, weights=None, options=None):
    """Raise ValueError (what is wrong, what is allowed) unless encoder `name` with `weights` (a local file)
    and `options` (the family's own settings) can be built."""
    family, model_name = encoder_family(name)
    if family is not None:
        family.check(model_name, weights, options)
        return
    if name not in ENCODERS:
        examples = " or ".join(family.example for family in ENCODER_FAMILIES.values())
        raise InvalidInputError(f"model.encoder={name!r} is unknown: use one of {sorted(ENCODERS)}, or a name such as "
                         f"{examples}.")
    if options:
        raise InvalidInputError(f"model.encoder_options={options!r}: {name!r} takes no options (they are for "
                         f"{' and '.join(p + '<Model>' for p in ENCODER_FAMILIES)}); use model.encoder_width.")
    if weights is not None and (not isinstance(weights, str) or not weights.endswith(".weights.h5")):
        raise InvalidInputError(f"model.encoder_weights={weights!r}: for {name!r}, a .weights.h5 file saved from the same "
                         "encoder (encoder.save_weights).")


def encoder_onnx_problem(name):
    """Why encoder `name` cannot be exported to ONNX (a sentence), or None."""
    family, model_name = encoder_family(name)
    return family.onnx_problem(model_name) if family is not None and family.onnx_problem else None
