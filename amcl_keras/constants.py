"""Named defaults and the allowed values of every option: the bottom of the import graph.

`config` validates against these tuples and the modules that implement an option import the
same tuple, so a value is spelled once. Nothing here imports TensorFlow, Keras or the package
(only `amcl_keras.errors`, which imports nothing).
"""

from amcl_keras.errors import InvalidInputError

# --- AMCL: the shared temperature network φ and the loss (the authors' values, docs/METHOD.md §5) -----
NUM_HEADS = 3  # projection heads C
TEMPERATURE_MIN = 1e-5  # τ = τ_min + (τ_max − τ_min)·sigmoid(−φ(a)·φ(b))
TEMPERATURE_MAX = 2.0
TEMPERATURE_HIDDEN_DIM = 128  # φ: d → 128 → ReLU → 128
TOP_K = 100  # negatives per anchor in the authors' top-k form
NEGATIVE_FORMS = ("topk", "hardest")  # "topk": the authors' code; "hardest": paper Eq. 2.1

# How the per-pair temperatures enter the objective (docs/METHOD.md §9):
#   "authors":    the paper's / authors' code's form (linear sim/τ terms, −βΩ on negatives);
#                 unbounded below, so τ collapses to temperature_min with their β.
#   "normalized": τ inside a normalised objective: per-pair τ inside NT-Xent's / InfoNCE's
#                 log-sum-exp; for SimSiam and Barlow Twins, inverse temperatures normalised to
#                 mean one over the pairs of a term (they re-weight pairs, cannot rescale the loss).
#   "rectified":  each of the authors' terms made bounded on its own: ±sim/τ through softplus
#                 (a per-pair logistic likelihood); Barlow Twins' squared terms are kept as they are.
#   "weighted":   SimSiam and Barlow Twins only: each term keeps its form and its target and is
#                 multiplied by a weight from its temperature, bounded to [1/4, 4] with mean one
#                 (temperature.bounded_weights): the temperatures can re-weight terms, never
#                 rescale the loss or move its minimum (Barlow Twins' diagonal target stays 1).
#   "head_weighted": Barlow Twins only: one weight per HEAD instead of per pair — each head's plain
#                 Barlow Twins loss times a bounded, mean-one weight from the geometric mean of that
#                 head's channel-pair temperatures; within a head every term keeps its plain weight.
# The bounded forms regularise EVERY temperature with +β·R_c(τ) ≥ 0 (temperature.bounded_omega).
OBJECTIVES = ("authors", "normalized", "rectified", "weighted", "head_weighted")
NON_CONTRASTIVE_OBJECTIVES = ("authors", "normalized", "rectified", "weighted")  # SimSiam
CONTRASTIVE_OBJECTIVES = ("authors", "normalized", "rectified")  # the AMCL losses with negatives (SimCLR, MoCo)
# `MethodSettings`' fallback. Each method's default is the objective its AMCL loss class declares as
# `default_objective`, the one chosen on validation (docs/METHOD.md §10), so `AMCLNTXentLoss(d)` built
# from Python, `SimCLR(encoder)` and `amcl train` all use the same form; pass objective="authors"
# for the paper's Eq. 2.1 / top-k form.
DEFAULT_OBJECTIVE = "normalized"

# --- the training step ------------------------------------------------------------------------------
# How the two views go through the online encoder and heads (and SimSiam's predictor, MoCo's key
# encoder): each on its own (batch-norm statistics per view, the authors'), or as one batch.
ENCODER_FORWARDS = ("per_view", "concatenated")
# How `train.clipnorm` (global-norm clipping) treats the temperature network φ's gradient: "joint" — one global norm
# over every trainable variable (the authors'); "separate" — φ clipped by its own global norm and the encoder + heads
# by theirs, so a large φ gradient (AMCL-Barlow Twins' regulariser over d² channel pairs: ~100× the encoder's norm)
# cannot shrink the encoder's step. docs/METHOD.md §10.
TEMPERATURE_CLIPPINGS = ("joint", "separate")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
# The authors' optimiser settings: `train:` defaults and `CoupledWeightDecaySGD`'s constructor defaults.
SGD_MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
CLIPNORM = 1.0  # global gradient-norm clipping  # PyTorch's SGD (the authors') / Keras's SGD(weight_decay=)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
JIT_COMPILE_SETTINGS = (True, False, "auto")  # train.jit_compile; "auto": amcl_keras/autotune.py

# --- augmentation presets: letters of the six families (amcl_keras.augment) -------------------------
AUGMENTATION_FAMILIES = "abcdef"
AUGMENTATION_PRESETS = {"simclr": "abcde", "strong": "abcdef"}


def parse_preset(preset):
    """'simclr' → 'abcde', 'strong' → 'abcdef'; letters from 'abcdef' (with 'a') come back sorted and checked."""
    letters = AUGMENTATION_PRESETS.get(preset, preset)
    if (not isinstance(letters, str) or not letters or "a" not in letters
            or any(ch not in AUGMENTATION_FAMILIES for ch in letters)):
        raise InvalidInputError(
            f"Unknown augmentation preset {preset!r}. Use 'simclr', 'strong' or letters from 'abcdef' that "
            "include 'a' (the crop, which also sets the output size): (a) random resized crop, (b) Gaussian "
            "blur, (c) random grayscale, (d) colour jitter, (e) horizontal flip, (f) solarization. "
            "Examples: 'a', 'abc', 'abcde'."
        )
    return "".join(sorted(set(letters)))


# --- evaluation protocols (amcl_keras.evaluation; their text comes from `protocol_text`) ------------
KNN_K = 200  # cosine kNN with weighted votes, as the AMCL authors and lightly
KNN_TEMPERATURE = 0.1
PROBE_EPOCHS = 50  # linear probe: softmax on standardised frozen features
PROBE_LEARNING_RATE = 1e-2  # Adam, for the offline probe and the online probe alike
PROBE_BATCH_SIZE = 256

# --- export ------------------------------------------------------------------------------------------
# float32: "saved_model" (TF Serving), "onnx" (onnxruntime), "litert" (the TFLite / LiteRT interpreter);
# int8 weights (dynamic-range quantization, activations stay float): "onnx_int8", "litert_int8".
EXPORT_FORMATS = ("saved_model", "onnx", "onnx_int8", "litert", "litert_int8")
ONNX_FORMATS = ("onnx", "onnx_int8")  # made by tf2onnx (the int8 one from the float one): need a convertible graph
DEFAULT_EXPORT_FORMATS = ("saved_model", "onnx")  # `amcl export` and the export at the end of `amcl train`
EXPORT_TOLERANCE = 1e-4  # float formats: max |difference| to the Keras encoder allowed in the verification
# int8 formats: max relative error ||E_int8 - E_keras|| / ||E_keras|| (Frobenius, per verified batch) allowed.
# Measured 0.005-0.013 (five trained small_convnets, random small_convnet / ResNet-18 / ResNet-50; README
# "Export"); an encoder with other weights gives 0.97-1.2, so 0.05 passes every int8 export seen with ~4x
# headroom and fails a wrong one.
EXPORT_INT8_TOLERANCE = 0.05
