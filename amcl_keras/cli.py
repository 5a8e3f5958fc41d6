"""`amcl` command line, the commands:

    amcl train [--config FILE] [--set section.key=value ...]   pre-train, evaluate, export; writes a run directory
    amcl eval RUN_DIR [--artefact FORMAT]                      linear probe and kNN of a run's encoder (eval.json),
                                                               or of its exported artefact (eval-FORMAT.json)
    amcl export RUN_DIR [--formats saved_model onnx ...]       verified SavedModel / ONNX / LiteRT / int8 export
    amcl report RUN_DIR [RUN_DIR ...] --out report.png          curves and similarity histograms of runs
    amcl augment-preview [--preset abcde]                      a PNG of images and two augmented views of each
    amcl embed SOURCE IMAGES... --out FILE.npy                 embeddings of your images (+ FILE.csv index)
    amcl neighbours SOURCE IMAGES... --out grid.png            each query image and its k nearest neighbours

Exit codes: 0 done, 1 a bug in amcl-keras (an error the library does not expect: its traceback is
printed, please report it), 2 bad input (config, run directory, data, a path that cannot be read
or written, a full disk; the message says what to change), 3 training stopped because the loss or
a gradient stopped being finite, 75 pre-empted (SIGTERM: a backup was written at the next step;
re-run the same command to resume), 130 interrupted (Ctrl-C).
"""

import argparse
import os
import sys
import time
import traceback

import amcl_keras
from amcl_keras import __version__, config as config_lib  # neither imports TensorFlow: `amcl --help` stays fast
from amcl_keras.constants import DEFAULT_EXPORT_FORMATS, EXPORT_FORMATS, EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE
from amcl_keras.errors import AMCLError

# The commands import what they use when they run (after `amcl_keras.load()`), so that parsing the arguments and
# printing help never import TensorFlow.


def _parser():
    parser = argparse.ArgumentParser(prog="amcl", description="Adaptive Multi-Head Contrastive Learning for Keras.")
    parser.add_argument("--version", action="version", version=f"amcl-keras {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("configs", help="list the configs that ship with amcl-keras (usable by name: --config NAME)",
                        description="List the shipped configs; `amcl train --config NAME` takes one by name from any "
                        "folder (a YAML path works too).")
    train = commands.add_parser(
        "train",
        help="pre-train an encoder, evaluate it, write a run directory",
        description="Pre-train with AMCL (defaults: the CPU demo on the shipped Fashion-MNIST subset).",
    )
    train.add_argument("--config", help="a shipped config by name (`amcl configs` lists them, e.g. moco_demo) or a "
                                        "YAML path; defaults to the demo")
    train.add_argument("--run-dir", help="output directory (default: runs/<method>-<time>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=1 (repeatable)")
    train.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    train.add_argument("--steps-per-epoch", type=int, help="shortcut for --set train.steps_per_epoch=N")
    train.add_argument("--method", metavar="NAME",
                       help="shortcut for --set model.method=NAME, a registered method (simclr, moco, barlow_twins, "
                            "simsiam, or your own); the method's defaults fill what the config leaves open")
    train.add_argument("--no-amcl", action="store_true",
                       help="the method's baseline, 1 head with its fixed temperature: shortcut for --set model.amcl=false "
                            "--set model.num_heads=1")
    train.add_argument("--heads-only", action="store_true",
                       help="multi-head only: the config's C heads with the fixed temperature, no adaptive τ (shortcut "
                            "for --set model.amcl=false); README 'Reproduction'")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    export = commands.add_parser(
        "export",
        help="export a run's encoder to SavedModel, ONNX and LiteRT (float32 or int8 weights), verified",
        description="Export the trained encoder of RUN_DIR (SavedModel for TF Serving, ONNX for onnxruntime, LiteRT; "
        "onnx_int8 and litert_int8: dynamic-range int8 weights). Each artefact is reloaded and compared with Keras "
        "on real images before the export is kept.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `amcl train`")
    export.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    export.add_argument("--formats", nargs="+", default=list(DEFAULT_EXPORT_FORMATS), choices=EXPORT_FORMATS,
                        help=f"default: {' '.join(DEFAULT_EXPORT_FORMATS)}")
    export.add_argument("--tolerance", type=float, default=EXPORT_TOLERANCE,
                        help="float formats: max |difference| to Keras allowed (default %(default)g)")
    export.add_argument("--int8-tolerance", type=float, default=EXPORT_INT8_TOLERANCE,
                        help="int8 formats: max relative error ||E - E_keras|| / ||E_keras|| allowed (default %(default)g)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    evaluate = commands.add_parser(
        "eval",
        help="linear probe and kNN of a run's encoder (or of an exported artefact); writes RUN_DIR/eval.json",
        description="Evaluate the frozen encoder of RUN_DIR: linear probe and kNN (defaults: the run's config). "
        "With --artefact FORMAT the features come from that exported artefact (RUN_DIR/export unless --export-dir) "
        "and the result goes to RUN_DIR/eval-FORMAT.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--artefact", metavar="FORMAT", choices=EXPORT_FORMATS,
                          help=f"evaluate this exported artefact instead of the Keras encoder: {', '.join(EXPORT_FORMATS)}")
    evaluate.add_argument("--export-dir", help="the export folder holding the artefact (default: RUN_DIR/export)")
    evaluate.add_argument("--probe-epochs", type=int)
    evaluate.add_argument("--knn-k", type=int)
    evaluate.add_argument("--knn-temperature", type=float)
    evaluate.add_argument("--seed", type=int)
    report = commands.add_parser(
        "report",
        help="write a PNG with loss, kNN, per-head temperatures and similarity histograms of runs",
        description="Write one PNG comparing one or more run directories side by side.",
    )
    report.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    report.add_argument("--out", default="report.png", help="PNG to write")
    report.add_argument("--map", dest="map_method", default="auto", choices=("auto", "tsne", "pca"),
                        help="the embedding map's projection: t-SNE (needs scikit-learn: pip install "
                             "\"amcl-keras[map]\"), PCA, or auto (t-SNE when scikit-learn is installed)")
    preview = commands.add_parser(
        "augment-preview",
        help="write a PNG of original images and two augmented views of each",
        description="Write a PNG grid (original | view 1 | view 2 per row) for the config's dataset and preset.",
    )
    preview.add_argument("--config", help="a shipped config by name or a YAML path (dataset, image size, preset); "
                                          "defaults to the demo")
    preview.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    preview.add_argument("--preset", help="augmentation preset to show (default: the config's)")
    preview.add_argument("--rgb-samples", action="store_true", help="use the shipped colour photos instead")
    preview.add_argument("--count", type=int, default=8, help="number of images (rows)")
    preview.add_argument("--out", default="augment_preview.png", help="PNG to write")
    images = argparse.ArgumentParser(add_help=False)  # what `embed` and `neighbours` share
    images.add_argument("source", metavar="SOURCE",
                        help="a run directory (its encoder.keras), an export folder, or one artefact in it "
                             "(saved_model/, encoder.onnx, encoder.tflite, the int8 files)")
    images.add_argument("images", metavar="IMAGES", nargs="*",
                        help="image files or folders of them (searched recursively; a folder's sub-folder names are "
                             "the labels)")
    images.add_argument("--dataset", help="instead of IMAGES: a dataset by name (shipped, tfds, .npz or a folder)")
    images.add_argument("--split", default="test", help="the dataset's split (default %(default)s)")
    images.add_argument("--max-examples", type=int, help="at most this many images of the dataset")
    images.add_argument("--format", choices=EXPORT_FORMATS,
                        help="embed with this exported artefact (default: the Keras encoder of a run directory, or an "
                             "export folder's first float artefact)")
    images.add_argument("--batch-size", type=int, default=256, help="images per encoder call (default %(default)s)")
    embed = commands.add_parser(
        "embed", parents=[images],
        help="embed your images (or a dataset split) with a trained or exported encoder: FILE.npy + FILE.csv",
        description="Embed images with the encoder of SOURCE: writes OUT (.npy, float32 [N, feature_dim]) and next "
        "to it OUT with .csv (row, source file, label) — the rows in the same order.",
    )
    embed.add_argument("--out", required=True, help="the .npy file to write (its .csv index is written next to it)")
    neighbours = commands.add_parser(
        "neighbours", parents=[images],
        help="write a PNG of query images and their k nearest neighbours among IMAGES (or a dataset split)",
        description="Embed the gallery (IMAGES or --dataset) with the encoder of SOURCE, then for each query (--queries "
        "files, else --count images drawn from the gallery, each left out of its own neighbours) write a row of the "
        "query and its k most cosine-similar gallery images. Prints how many neighbours share the query's label.",
    )
    neighbours.add_argument("--queries", nargs="+", metavar="IMAGE", help="query image files or folders (default: "
                                                                          "--count images drawn from the gallery)")
    neighbours.add_argument("--count", type=int, default=8, help="queries drawn from the gallery (default %(default)s)")
    neighbours.add_argument("-k", type=int, default=8, help="neighbours per query (default %(default)s)")
    neighbours.add_argument("--seed", type=int, default=0, help="which gallery images are drawn as queries")
    neighbours.add_argument("--out", default="neighbours.png", help="PNG to write (default %(default)s)")
    return parser


def _gallery(args):
    """The embedder of args.source and the images it embeds: IMAGES or --dataset (exactly one)."""
    from amcl_keras import embedding
    from amcl_keras.errors import InvalidInputError

    if bool(args.images) == bool(args.dataset):
        raise InvalidInputError("Give the images to embed either as IMAGES (files or folders) or as --dataset NAME "
                                f"(with --split), not {'both' if args.images else 'neither'}.")
    if args.batch_size < 1 or (args.max_examples is not None and args.max_examples < 1):
        raise InvalidInputError("--batch-size and --max-examples must be at least 1.")
    embedder = embedding.open_embedder(args.source, args.format)
    if args.dataset:
        image_set = embedding.dataset_images(args.dataset, args.split, embedder.size, embedder.channels, args.max_examples)
    else:
        image_set = embedding.read_images(args.images, embedder.size, embedder.channels)
        if args.max_examples:
            image_set = image_set.take(slice(args.max_examples))
    if image_set.skipped:
        print(f"amcl: skipped {len(image_set.skipped)} unreadable file(s), e.g. {image_set.skipped[0]}", file=sys.stderr)
    print(f"Embedding {len(image_set.images)} images with {embedder.description}")
    return embedding, embedder, image_set


def _embed(args):
    embedding, embedder, image_set = _gallery(args)
    vectors = embedding.embed(embedder, image_set.images, args.batch_size, verbose=1)
    path, index = embedding.write_embeddings(args.out, vectors, image_set, embedder.description)
    print(f"Wrote {path} (float32 {list(vectors.shape)}) and {index} (row, source, label)")
    return 0


def _neighbours(args):
    import numpy as np

    from amcl_keras.errors import InvalidInputError

    embedding, embedder, gallery = _gallery(args)
    vectors = embedding.embed(embedder, gallery.images, args.batch_size, verbose=1)
    if args.queries:
        queries = embedding.read_images(args.queries, embedder.size, embedder.channels)
        query_vectors, exclude_self = embedding.embed(embedder, queries.images, args.batch_size), False
    else:
        if not 1 <= args.count <= len(gallery.images):
            raise InvalidInputError(f"--count must be between 1 and the gallery's {len(gallery.images)} images, got "
                                    f"{args.count}.")
        order = np.random.default_rng(args.seed).permutation(len(gallery.images))  # queries first: exclude_self
        gallery, vectors = gallery.take(order), vectors[order]
        queries = gallery.take(slice(args.count))
        query_vectors, exclude_self = vectors[: args.count], True
    indices, similarities = embedding.nearest_neighbours(vectors, query_vectors, args.k, exclude_self)
    embedding.write_neighbour_grid(args.out, queries.images, queries.labels, gallery.images, gallery.labels, indices,
                                   similarities)
    agreement = embedding.label_agreement(queries.labels, gallery.labels, indices)
    shared = "" if agreement is None else f"; {agreement * 100:.1f}% of the neighbours share their query's label"
    print(f"Wrote {args.out}: {len(queries.images)} queries x {args.k} neighbours{shared}")
    return 0


def _preview(args):
    import numpy as np

    from amcl_keras import data, preview

    config = config_lib.load(args.config, args.overrides + ([f"data.augmentation={args.preset}"] if args.preset else []))
    if args.count < 1:
        print("amcl: --count must be at least 1", file=sys.stderr)
        return 2
    cfg = config.data
    if args.rgb_samples:
        images = data.load_rgb_samples()
    else:
        images, _ = data.labelled_arrays(cfg.dataset, cfg.eval_test_split, cfg.data_dir, args.count, cfg.download)
    images = np.resize(images, (args.count,) + images.shape[1:])
    size = cfg.image_size or images.shape[1]
    shape = preview.write_preview(args.out, images, size, cfg.augmentation, cfg.crop_scale)
    print(f"Wrote {args.out} ({shape[1]}x{shape[0]} px): {args.count} rows of original | view 1 | view 2, "
          f"preset {cfg.augmentation!r}")
    return 0


def _eval(args):
    from amcl_keras import evaluation, export as export_lib

    if args.export_dir and not args.artefact:
        print("amcl: eval failed: --export-dir needs --artefact FORMAT (which artefact of the export to evaluate, "
              f"one of {', '.join(EXPORT_FORMATS)})", file=sys.stderr)
        return 2
    features = args.artefact and export_lib.artefact_features(args.run_dir, args.artefact, args.export_dir)
    result = evaluation.evaluate_run(args.run_dir, args.probe_epochs, args.knn_k, args.knn_temperature, args.seed,
                                     features=features or None)
    probe, knn = result["linear_probe"], result["knn"]
    print(f"features: {result['features']['format']} ({result['features']['path']})\n"
          f"linear probe {probe['accuracy'] * 100:.1f}% ({probe['protocol']})\n"
          f"kNN {knn['accuracy'] * 100:.1f}% ({knn['protocol']})\n-> {evaluation.eval_path(args.run_dir, args.artefact)}")
    return 0


def _report(args):
    from amcl_keras import report

    path = report.write_report(args.run_dirs, args.out, map_method=args.map_method)
    print(f"Wrote {path} for {len(args.run_dirs)} run(s).")
    return 0


def _export(args):
    from amcl_keras import export as export_lib

    out = args.out or os.path.join(args.run_dir, "export")
    metadata = export_lib.export_encoder(
        args.run_dir, out, formats=args.formats, tolerance=args.tolerance, overwrite=args.overwrite,
        int8_tolerance=args.int8_tolerance,
    )
    print(f"Exported to {out}: {', '.join(metadata['formats'])}; input uint8 {metadata['input']['shape']}, "
          f"output {metadata['output']['name']} float32 [batch, {metadata['feature_dim']}]")
    verification = metadata["verification"]
    for name, diffs in verification["max_abs_diff"].items():
        relative, bound = verification["relative_error"][name], verification["bounds"][name]
        print(f"  {name:18s} max |diff| vs Keras: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
              + "; relative error: " + ", ".join(f"{k} {v:.2e}" for k, v in relative.items())
              + f"  ({bound['measure']} <= {bound['limit']:g})")
    for name, info in metadata["formats"].items():
        print(f"  {name:18s} {info['path']}: {info['size_bytes'] / 1e6:.2f} MB, {info['weights']} weights, "
              f"runs on {info['runtime']}")
    return 0


def _text(error):
    """The message of an error; an OS error's own words and path ("No space left on device: 'x'")."""
    if _is_environment_error(error):
        where = f": {str(error.filename)!r}" if error.filename else ""
        return f"{error.strerror}{where}"
    return str(error)


def _train(args):
    from amcl_keras import train as train_lib

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.method is not None:
        overrides.append(f"model.method={args.method}")
    if args.no_amcl and args.heads_only:
        print("amcl: --no-amcl (1 head, the baseline) and --heads-only (C heads, no adaptive τ) exclude each other; "
              "pass one.", file=sys.stderr)
        return 2
    if args.no_amcl:
        overrides += ["model.amcl=false", "model.num_heads=1"]
    if args.heads_only:
        overrides.append("model.amcl=false")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    config = config_lib.load(args.config, overrides)
    run_dir = args.run_dir or os.path.join("runs", f"{config.model.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = train_lib.run(config, run_dir, overwrite=args.overwrite)
    print()
    print(train_lib.format_results(results))
    print(f"\nRun directory: {run_dir} (config.yaml, history.jsonl, final.weights.h5, encoder.keras, results.json"
          + (", export/)" if "export" in results else ")"))
    return 0


def _configs(args):
    bundled = config_lib.bundled_configs()
    width = max(map(len, bundled), default=0)
    for name, (_, description) in bundled.items():
        print(f"{name:{width}s}  {description}")
    print(f"\n{len(bundled)} configs; use one with `amcl train --config NAME` (or copy it and pass the path).")
    return 0


COMMANDS = {"configs": _configs, "train": _train, "eval": _eval, "export": _export, "report": _report,
            "augment-preview": _preview, "embed": _embed, "neighbours": _neighbours}


def _is_environment_error(error):
    """A plain OS error with the OS's own words (no permission, disk full, a missing file): the machine, not a bug."""
    return type(error).__module__ == "builtins" and isinstance(error, OSError) and bool(error.strerror)


def _parse(argv):
    """The arguments; image files may also follow options (`amcl embed RUN --out e.npy a.png b.png`: argparse
    alone stops collecting IMAGES at the first option)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "images", None), list) and not any(e.startswith("-") for e in extra):
        args.images = args.images + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None):
    """Run one command; the exit code says how it ended (module docstring). Expected failures (an
    `AMCLError`, or an OS error such as a full disk) print one line; anything else is a bug in the
    library: its traceback is printed with a line asking for a report, exit code 1."""
    args = _parse(argv)
    if args.command == "configs":  # listing the shipped configs needs no TensorFlow
        return _configs(args)
    amcl_keras.load()
    from amcl_keras import backups, runs
    from amcl_keras.callbacks import NonFiniteLossError

    try:
        return COMMANDS[args.command](args)
    except backups.RunPreempted as error:
        print(f"amcl: pre-empted: {error}", file=sys.stderr)
        return backups.PREEMPTED_EXIT_CODE
    except NonFiniteLossError as error:
        print(f"amcl: training stopped: {error}", file=sys.stderr)
        return 3
    except config_lib.ConfigError as error:
        print(f"amcl: config error: {error}", file=sys.stderr)
        return 2
    except AMCLError as error:
        print(f"amcl: {args.command} failed: {_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amcl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if _is_environment_error(error):
            print(f"amcl: {args.command} failed: {_text(error)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"amcl: internal error in `amcl {args.command}`: this is a bug in amcl-keras {__version__}, not a problem "
              "with your input. Please report it to the amcl-keras maintainers with the traceback above and the "
              "command you ran.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
