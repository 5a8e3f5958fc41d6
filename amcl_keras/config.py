"""Typed run configuration: dataclasses, YAML in and out, validation with clear messages.

Every field has the demo's value as default, so `Config()` is the CPU demo. A YAML file
names only what it changes; unknown keys, wrong types and out-of-range values are refused
at load time with the key, the value and what is allowed.

The `model:` section is flat in YAML but has two parts: the fields every method shares
(`ModelConfig`) and the chosen method's own settings (its registered settings dataclass, e.g.
MoCo's `queue_size`), declared in the method's file (`amcl_keras.registry`). This module sits at
the bottom of the import graph: it imports only `constants` and `registry`.
"""

import dataclasses
import difflib
import importlib.resources
import os
import pathlib
import typing

import yaml

from amcl_keras import registry
from amcl_keras.constants import (
    CLIPNORM, SGD_MOMENTUM, WEIGHT_DECAY,
    DEFAULT_EXPORT_FORMATS, ENCODER_FORWARDS, EXPORT_FORMATS, EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE,
    JIT_COMPILE_SETTINGS, KNN_K, KNN_TEMPERATURE, NEGATIVE_FORMS, NUM_HEADS, ONNX_FORMATS, OBJECTIVES, PRECISIONS,
    PROBE_EPOCHS, STRATEGIES, TEMPERATURE_HIDDEN_DIM, TEMPERATURE_MAX, TEMPERATURE_MIN, TOP_K, WEIGHT_DECAY_MODES, parse_preset,
)
from amcl_keras.errors import InvalidInputError


class ConfigError(InvalidInputError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def require(condition, key, value, allowed):
    """Raise a `ConfigError` naming `key`, its `value` and what is `allowed` unless `condition`."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is out of range: {allowed}.")


@dataclasses.dataclass
class DataConfig:
    dataset: str = "fashion_mnist_subset"  # the shipped subset, a tfds name such as "cifar10", a .npz file, or a folder
    split: str = "train"  # the pre-training split
    eval_train_split: str = "train"  # labelled split for the kNN bank and the probe's training
    eval_test_split: str = "test"
    data_dir: typing.Optional[str] = None  # tfds data_dir with prepared data
    download: bool = True  # let tfds download a named dataset that is not prepared
    image_size: typing.Optional[int] = None  # None: the dataset's own size
    batch_size: int = 256  # global batch (all replicas); the last incomplete batch is dropped
    augmentation: str = "simclr"  # preset: "simclr", "strong" or letters from "abcdef"
    crop_scale: typing.Tuple[float, float] = (0.2, 1.0)
    augment_on: str = "dataset"  # "dataset": in tf.data (CPU, parallel map); "step": inside the training step
    shuffle_buffer: int = 5000
    channels: typing.Optional[int] = None  # folders: 1 or 3 (None: 1 if every file is grayscale, else 3)
    on_bad_image: str = "skip"  # folders: "skip" unreadable files (counted, reported) or "error"


@dataclasses.dataclass
class ModelConfig:
    """The fields every method shares, and `settings`: the method's own (see the module docstring).

    `cfg.queue_size` reads the method's setting through `cfg.settings`."""

    method: str = "simclr"  # a registered method: "simclr", "moco", "barlow_twins", "simsiam"
    # a registered encoder ("small_convnet", "resnet18_cifar", "resnet50_cifar"), "keras.applications.<Name>"
    # (e.g. keras.applications.ResNet50) or "keras_hub.ViTBackbone" (amcl_keras/backbones.py, README "Encoders")
    encoder: str = "small_convnet"
    encoder_width: int = 32  # the registered encoders' width
    encoder_weights: typing.Optional[str] = None  # a local weights file to start from (never downloaded)
    encoder_options: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)  # the backbone's settings
    num_heads: int = NUM_HEADS
    amcl: bool = True
    negatives: str = "topk"  # SimCLR/MoCo: "topk" (authors' code) or "hardest" (paper Eq. 2.1)
    top_k: int = TOP_K
    temperature_hidden_dim: int = TEMPERATURE_HIDDEN_DIM
    temperature_min: float = TEMPERATURE_MIN
    temperature_max: float = TEMPERATURE_MAX
    # model.objective and model.temperature_center (how the temperatures enter the AMCL loss) and
    # model.beta are each method's own settings (MethodSettings): their defaults were chosen per method
    # on validation splits (docs/METHOD.md §10).
    synchronized_batch_norm: bool = False  # encoder batch norm over the global batch (all replicas)
    encoder_forward: str = "per_view"  # each view through the encoder and heads on its own (batch-norm statistics
    # per view, the authors'), or "concatenated": both views in one batch (fewer, larger kernels)
    settings: typing.Any = None  # the method's settings dataclass (None: the method's defaults)

    def __post_init__(self):
        if self.settings is None and self.method in registry.METHODS:
            self.settings = registry.METHODS[self.method].settings()

    def __getattr__(self, name):  # only for names that are not ModelConfig fields
        settings = self.__dict__.get("settings")
        if not name.startswith("__") and settings is not None and name in _field_names(settings):
            return getattr(settings, name)
        raise AttributeError(f"model.{name} is not a setting of method {self.__dict__.get('method')!r}.")


def _field_names(dataclass):
    return [field.name for field in dataclasses.fields(dataclass)]


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: typing.Optional[int] = None  # None: one pass over the data
    learning_rate: typing.Optional[float] = None  # SGD, momentum, cosine decay to 0; None: the method's
    momentum: float = SGD_MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    weight_decay_mode: str = "coupled"  # "coupled": added to the gradient before momentum, as PyTorch's SGD (the
    # authors'); "decoupled": Keras's SGD(weight_decay=...), w -= lr·wd·w outside the momentum (~10x weaker at m=0.9)
    clipnorm: float = CLIPNORM  # global gradient-norm clipping (the authors' 1.0)
    strategy: str = "mirrored"  # "auto": Mirrored over GPUs, else default; "mirrored": always; "multi_worker": TF_CONFIG
    cpu_replicas: int = 1  # with "mirrored" and no GPU: logical CPU devices to mirror over
    jit_compile: typing.Union[bool, str] = "auto"  # true/false, or "auto": measured on the first steps (autotune.py)
    # "auto": mixed_bfloat16 where the hardware computes it natively AND it is measured faster for this step (cached),
    # else float32 on CPU / mixed_float16 on GPUs with tensor cores; or a named policy. Losses and φ stay float32.
    mixed_precision: str = "auto"
    backup_every_steps: typing.Optional[int] = 100  # resume backups: every epoch and every N steps (None: epochs)
    seed: int = 0
    deterministic: bool = False  # bit-identical reruns and exact resume (amcl_keras.enable_determinism); costs speed


@dataclasses.dataclass
class EvalConfig:
    knn_k: int = KNN_K
    knn_temperature: float = KNN_TEMPERATURE
    probe_epochs: int = PROBE_EPOCHS
    knn_every: int = 0  # epochs between online kNN monitors during training (0: off)
    online_probe_every: int = 1  # steps between online linear-probe updates (0: off; needs labels)
    telemetry_every: int = 1  # epochs between per-head τ / similarity distributions (0: off)
    tensorboard: bool = True  # TensorBoard logs in RUN_DIR/tensorboard
    max_examples: typing.Optional[int] = 10000  # per labelled split
    random_init: bool = True  # also score the untrained encoder (the reference row of the results)


@dataclasses.dataclass
class ExportConfig:
    # [] to skip the export after training; also onnx_int8, litert, litert_int8 (amcl_keras.export)
    formats: typing.Tuple[str, ...] = DEFAULT_EXPORT_FORMATS
    tolerance: float = EXPORT_TOLERANCE  # float formats: max |difference| to the Keras encoder allowed
    int8_tolerance: float = EXPORT_INT8_TOLERANCE  # int8 formats: max relative error to the Keras encoder allowed


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self):
        if self.train.learning_rate is None and self.model.method in registry.METHODS:
            self.train.learning_rate = registry.METHODS[self.model.method].learning_rate

    def to_dict(self):
        """Nested plain dicts, as YAML writes them (the method's settings flat in `model`)."""
        values = dataclasses.asdict(self)
        values["model"].update(values["model"].pop("settings") or {})
        return values

    def to_yaml(self):
        """The config as YAML text (what `dump` writes, `load` reads)."""
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def dump(self, path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_yaml())


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _unknown_key(where, key, known):
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"Unknown config key {where}{key!r}.{suggestion} Known keys here: {sorted(known)}.")


def _coerce(where, value, annotation):
    """Check `value` against a field annotation (int, float, bool, str, Optional, Tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # e.g. bool or "auto": the first annotation the value fits
        for option in args:
            try:
                return _coerce(where, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be one of the types {[a.__name__ for a in args]}, got {value!r}.")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ConfigError(f"{where} must be a mapping of names to values, e.g. {{patch_size: 4}}, got {value!r}.")
        return dict(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        return tuple(_coerce(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} numbers, got {value!r}.")
        return tuple(_coerce(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r} (write 1.0e-4, not 1e-4 without a dot, in YAML).")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported annotation {annotation!r}")


def from_dict(raw):
    """Build and validate a `Config` from nested dicts (as YAML gives them)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, section in raw.items():
        if name not in hints:
            raise _unknown_key("", name, list(hints))
        if not isinstance(section, dict):
            raise ConfigError(f"Config section {name!r} must be a mapping, got {section!r}.")
        sections[name] = _model_section(section) if name == "model" else _section(name, hints[name], section)
    config = Config(**sections)
    validate(config)
    return config


def _section(name, dataclass, values, known=None):
    """`dataclass(**values)` with every value checked against its annotation."""
    fields = typing.get_type_hints(dataclass)
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(f"{name}.", key, known or list(fields))
        checked[key] = _coerce(f"{name}.{key}", value, fields[key])
    return dataclass(**checked)


def _model_section(values):
    """The shared `ModelConfig` fields, and the chosen method's own settings (its dataclass)."""
    method = _coerce("model.method", values.get("method", ModelConfig.method), str)
    require(method in registry.METHODS, "model.method", method, f"one of {sorted(registry.METHODS)}")
    spec = registry.METHODS[method]
    shared = [name for name in _field_names(ModelConfig) if name != "settings"]
    own = spec.setting_names()
    for key in values:
        owners = [name for name, other in registry.METHODS.items() if key in other.setting_names()]
        if key not in shared and key not in own and owners:
            raise ConfigError(
                f"model.{key} is a setting of {' and '.join(owners)}, and model.method is {method!r}, whose settings "
                f"are {list(own)}. Remove model.{key}, or set model.method to {owners[0]!r}."
            )
    known = shared + list(own)
    if "settings" in values:
        raise _unknown_key("model.", "settings", known)
    model = _section("model", ModelConfig, {k: v for k, v in values.items() if k not in own}, known)
    model.settings = _section("model", spec.settings, {k: v for k, v in values.items() if k in own}, known)
    return model


def _bundled_config_folder():
    """Where the shipped configs are: `amcl_keras/configs` in an installed wheel, the repository's `configs/` in a
    source checkout (which the wheel's `amcl_keras.configs` is built from)."""
    try:
        folder = importlib.resources.files("amcl_keras.configs")
        if folder.is_dir() and any(entry.name.endswith(".yaml") for entry in folder.iterdir()):
            return folder
    except (ModuleNotFoundError, OSError, TypeError):
        pass
    return pathlib.Path(__file__).resolve().parents[1] / "configs"


def bundled_configs():
    """{name: (path, one-line description)} of the configs that ship with amcl-keras (`amcl configs` lists them;
    `amcl train --config NAME` takes a name from anywhere). The description is the YAML's first comment line."""
    folder = _bundled_config_folder()
    found = {}
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith(".yaml"):
            first = next((line for line in entry.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "#")
            found[entry.name[: -len(".yaml")]] = (entry, first.lstrip("# ").strip())
    return found


def resolve_config(path_or_name):
    """A config path as given if it exists; else the shipped config of that name (`moco_demo`, `moco_demo.yaml`,
    `configs/moco_demo.yaml` from another folder); else the path unchanged (`load` then says it is missing)."""
    text = os.fspath(path_or_name)
    if os.path.exists(text):
        return text
    name = os.path.basename(text)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    bundled = bundled_configs()
    if name in bundled and (os.sep not in text or os.path.dirname(text) in ("configs", "./configs")):
        return bundled[name][0]
    return text


def load(path=None, overrides=()):
    """Load a YAML config (or the defaults) and apply `section.key=value` overrides. `path`: a YAML file, or the
    name of a shipped config (`bundled_configs()`, e.g. "moco_demo")."""
    raw = {}
    if path is not None:
        path = resolve_config(path)
        try:
            with (path.open(encoding="utf-8") if hasattr(path, "open") else open(path, encoding="utf-8")) as handle:
                raw = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            names = ", ".join(bundled_configs()) or "none found"
            raise ConfigError(f"Config file {str(path)!r} does not exist, and it is not the name of a shipped config "
                              f"(`amcl configs` lists them: {names}). Give a YAML path or one of those names.") from None
        except IsADirectoryError:
            raise ConfigError(f"Config file {str(path)!r} is a folder, not a YAML file. Pass one file, e.g. "
                              "configs/demo.yaml.") from None
        except NotADirectoryError:
            raise ConfigError(f"Config file {str(path)!r} does not exist: a folder on its path is a file.") from None
        except OSError as error:  # no permission, an I/O error
            raise ConfigError(f"Config file {str(path)!r} cannot be read: {error.strerror or error}.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"Config file {str(path)!r} is not a text file (YAML is UTF-8 text).") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {error}") from None
    for override in overrides:
        key, sep, text = override.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"An override must look like section.key=value (e.g. train.epochs=1), got {override!r}.")
        if not isinstance(raw, dict):
            raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"Config section {section!r} must be a mapping, got {raw[section]!r}.")
        raw[section][field] = yaml.safe_load(text)
    return from_dict(raw)


def validate(config):
    data, model, train, evaluation = config.data, config.model, config.train, config.eval
    require(data.batch_size >= 2, "data.batch_size", data.batch_size, "it must be at least 2 (positives need pairs)")
    require(data.image_size is None or data.image_size >= 8, "data.image_size", data.image_size, "use None or >= 8")
    require(data.shuffle_buffer >= 1, "data.shuffle_buffer", data.shuffle_buffer, "it must be >= 1")
    require(data.augment_on in ("dataset", "step"), "data.augment_on", data.augment_on, "'dataset' or 'step'")
    require(data.channels in (None, 1, 3), "data.channels", data.channels, "None, 1 or 3")
    require(data.on_bad_image in ("skip", "error"), "data.on_bad_image", data.on_bad_image, "'skip' or 'error'")
    require(0 < data.crop_scale[0] <= data.crop_scale[1] <= 1, "data.crop_scale", data.crop_scale, "0 < low <= high <= 1")
    try:
        parse_preset(data.augmentation)
    except ValueError as error:
        raise ConfigError(f"data.augmentation: {error}") from None
    require(model.method in registry.METHODS, "model.method", model.method, f"one of {sorted(registry.METHODS)}")
    try:
        registry.check_encoder(model.encoder, model.encoder_weights, model.encoder_options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key in ("encoder_width", "num_heads", "top_k", "temperature_hidden_dim"):
        value = getattr(model, key)
        require(value >= 1, f"model.{key}", value, "it must be a positive integer")
    require(model.encoder_forward in ENCODER_FORWARDS, "model.encoder_forward", model.encoder_forward,
            f"one of {ENCODER_FORWARDS}")
    amcl_loss = registry.METHODS[model.method].model.amcl_loss
    objectives = getattr(amcl_loss, "objectives", OBJECTIVES)  # the objectives this method's AMCL loss implements
    require(model.objective in objectives, "model.objective", model.objective,
            f"one of {objectives} for {model.method} ('authors': the paper's form; the others bounded, docs/METHOD.md §9)")
    require(model.temperature_center is None or model.temperature_center > 0, "model.temperature_center",
            model.temperature_center, "None (2/projection_dim) or > 0")
    require(model.negatives in NEGATIVE_FORMS, "model.negatives", model.negatives, f"one of {NEGATIVE_FORMS}")
    require(0 < model.temperature_min < model.temperature_max, "model.temperature_min",
            (model.temperature_min, model.temperature_max),
            f"0 < temperature_min < temperature_max (the authors use {TEMPERATURE_MIN} and {TEMPERATURE_MAX})")
    require(isinstance(model.settings, registry.METHODS[model.method].settings), "model.settings",
            type(model.settings).__name__, f"the settings of {model.method!r}")
    model.settings.check(config)  # the method's own checks (amcl_keras/methods/<method>.py)
    require(train.epochs >= 1, "train.epochs", train.epochs, "it must be >= 1")
    require(train.steps_per_epoch is None or train.steps_per_epoch >= 1, "train.steps_per_epoch", train.steps_per_epoch, "None or >= 1")
    require(train.learning_rate > 0, "train.learning_rate", train.learning_rate, "it must be > 0")
    require(0 <= train.momentum < 1, "train.momentum", train.momentum, "0 <= momentum < 1")
    require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "it must be >= 0")
    require(train.weight_decay_mode in WEIGHT_DECAY_MODES, "train.weight_decay_mode", train.weight_decay_mode,
            f"one of {WEIGHT_DECAY_MODES} ('coupled': PyTorch's SGD, the authors'; 'decoupled': Keras's SGD)")
    require(train.clipnorm > 0, "train.clipnorm", train.clipnorm, "it must be > 0")
    require(train.strategy in STRATEGIES, "train.strategy", train.strategy, f"one of {STRATEGIES}")
    require(train.jit_compile in JIT_COMPILE_SETTINGS, "train.jit_compile", train.jit_compile,
            "true, false or 'auto' (measure both on the first steps and keep the faster)")
    require(not (train.jit_compile is True and train.cpu_replicas > 1), "train.jit_compile", train.jit_compile,
            "false with train.cpu_replicas > 1: Keras 3 cannot XLA-compile a step spanning several devices "
            "(keras-team/keras#19005). Set train.jit_compile=false, or train on one device")
    require(not (train.jit_compile is True and train.deterministic), "train.jit_compile", train.jit_compile,
            "not true with train.deterministic=true: bit-identical reruns are verified without XLA only. Set "
            "train.jit_compile=auto (deterministic runs then train without XLA) or false")
    require(train.mixed_precision in PRECISIONS, "train.mixed_precision", train.mixed_precision, f"one of {PRECISIONS}")
    require(train.backup_every_steps is None or train.backup_every_steps >= 1, "train.backup_every_steps",
            train.backup_every_steps, "None (every epoch only) or >= 1")
    require(train.cpu_replicas >= 1, "train.cpu_replicas", train.cpu_replicas, "it must be >= 1")
    require(
        data.batch_size % train.cpu_replicas == 0,
        "data.batch_size",
        data.batch_size,
        f"the global batch must divide evenly over train.cpu_replicas={train.cpu_replicas}",
    )
    for name in config.export.formats:
        require(name in EXPORT_FORMATS, "export.formats", list(config.export.formats),
                f"a list drawn from {list(EXPORT_FORMATS)}")
    onnx_formats = [name for name in config.export.formats if name in ONNX_FORMATS]
    problem = registry.encoder_onnx_problem(model.encoder) if onnx_formats else None
    require(problem is None, "export.formats", list(config.export.formats),
            f"model.encoder={model.encoder!r} cannot be exported to ONNX ({problem}); drop {onnx_formats}, e.g. "
            "export.formats=[saved_model]")
    require(config.export.tolerance > 0, "export.tolerance", config.export.tolerance, "it must be > 0")
    require(config.export.int8_tolerance > 0, "export.int8_tolerance", config.export.int8_tolerance, "it must be > 0")
    require(evaluation.knn_k >= 1, "eval.knn_k", evaluation.knn_k, "it must be >= 1")
    require(evaluation.knn_temperature > 0, "eval.knn_temperature", evaluation.knn_temperature, "it must be > 0")
    require(evaluation.knn_every >= 0, "eval.knn_every", evaluation.knn_every, "0 (off) or a number of epochs")
    require(evaluation.online_probe_every >= 0, "eval.online_probe_every", evaluation.online_probe_every,
            "0 (off) or a number of steps")
    require(evaluation.telemetry_every >= 0, "eval.telemetry_every", evaluation.telemetry_every,
            "0 (off) or a number of epochs")
    require(evaluation.probe_epochs >= 1, "eval.probe_epochs", evaluation.probe_epochs, "it must be >= 1")
    require(evaluation.max_examples is None or evaluation.max_examples >= 1, "eval.max_examples", evaluation.max_examples, "None or >= 1")
    return config
