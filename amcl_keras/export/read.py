"""Reading an export folder: its `metadata.json`, the runner of one of its artefacts, and the features
of a run computed by an artefact (`amcl eval --artefact`)."""

import hashlib
import json
import pathlib

from amcl_keras import evaluation, runs
from amcl_keras.constants import DEFAULT_EXPORT_FORMATS
from amcl_keras.export.formats import FORMATS, METADATA, ExportReadError


def config_hash(config_text):
    return hashlib.sha256(config_text.encode()).hexdigest() if config_text else None


def read_metadata(export_dir, format=None):
    """`metadata.json` of an export folder; with `format`, also checks that its artefact is there."""
    export_dir = pathlib.Path(export_dir)
    path = export_dir / METADATA
    if not path.is_file():
        raise ExportReadError(
            f"No export in {str(export_dir)!r} ({METADATA} is missing). Write one with `amcl export RUN_DIR "
            f"--formats {format or ' '.join(DEFAULT_EXPORT_FORMATS)}` (or --out to choose the folder)."
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        formats = metadata["formats"]
    except (ValueError, KeyError, TypeError) as error:
        raise ExportReadError(f"{str(path)!r} is corrupt ({type(error).__name__}: {error}). Export again with "
                              "`amcl export RUN_DIR --overwrite`.") from None
    for name in [format] if format is not None else []:
        _check_artefact(export_dir, formats, name)
    return metadata


def _check_artefact(export_dir, formats, name):
    if name not in FORMATS:
        raise ExportReadError(f"Unknown export format {name!r}; choose from {list(FORMATS)}.")
    if name not in formats:
        raise ExportReadError(
            f"The export in {str(export_dir)!r} has the formats {list(formats)}, not {name!r}. Export it with "
            f"`amcl export RUN_DIR --out NEW_FOLDER --formats {name}` (or add it: `--formats "
            f"{' '.join([*formats, name])} --overwrite`)."
        )
    if not (export_dir / formats[name]["path"]).exists():
        raise ExportReadError(f"{str(export_dir / formats[name]['path'])!r} is missing from the export in "
                              f"{str(export_dir)!r}. Export again with `amcl export RUN_DIR --overwrite`.")


def open_artefact(export_dir, format, metadata=None):
    """`run(images)`: embeddings (float32 `[batch, feature_dim]`) of uint8 images `[batch, H, W, C]`
    computed by the exported artefact `format` of `export_dir` (TF SavedModel, onnxruntime session,
    LiteRT interpreter)."""
    metadata = metadata or read_metadata(export_dir, format)
    info = metadata["formats"][format]
    path = pathlib.Path(export_dir) / info["path"]
    try:
        return FORMATS[format].open(path, info)
    except Exception as error:  # onnxruntime, TF and LiteRT raise their own types for a damaged file
        raise ExportReadError(
            f"The {format} artefact {str(path)!r} cannot be opened ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else 'no message'}): it is truncated, "
            f"damaged or not a {format} file. Export it again: `amcl export RUN_DIR --formats {format} --overwrite`."
        ) from error


def artefact_features(run_dir, format, export_dir=None, batch_size=512):
    """An `evaluation.FeatureSource` computing a run's features with its exported artefact `format`
    (from `export_dir`, default `RUN_DIR/export`), for `evaluation.evaluate_run(run_dir, features=...)`.
    Refuses, with what to do, a missing export or format and another model's export."""
    run_dir = pathlib.Path(run_dir)
    encoder, config_text = runs.load_run(run_dir)
    export_dir = pathlib.Path(export_dir) if export_dir is not None else run_dir / runs.EXPORT
    metadata = read_metadata(export_dir, format)
    made_from = metadata.get("training_config_sha256")
    if made_from and made_from != config_hash(config_text):
        raise ExportReadError(
            f"The export in {str(export_dir)!r} was made from another run (its training config differs from "
            f"{str(run_dir / runs.CONFIG)!r}). Pass the export of this run (--export-dir), or export it: "
            f"`amcl export {run_dir} --formats {format}`."
        )
    expected = (int(encoder.outputs[0].shape[-1]), int(encoder.inputs[0].shape[-1]))
    if (metadata["feature_dim"], metadata["input"]["shape"][-1]) != expected:
        raise ExportReadError(
            f"The export in {str(export_dir)!r} maps {metadata['input']['shape'][-1]}-channel images to "
            f"{metadata['feature_dim']} features; the run's encoder maps {expected[1]}-channel images to {expected[0]}. "
            f"It is another model's export: pass this run's (--export-dir) or `amcl export {run_dir} --formats {format}`."
        )
    info = metadata["formats"][format]
    return evaluation.FeatureSource(
        evaluation.batched_features(open_artefact(export_dir, format, metadata), batch_size), format,
        {"format": format, "path": str(export_dir / info["path"]), "weights": info["weights"]},
    )
