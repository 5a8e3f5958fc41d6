"""`amcl` command line: `amcl train [--config FILE] [--set section.key=value ...]`."""

import argparse
import os
import sys
import time


def _parser():
    parser = argparse.ArgumentParser(prog="amcl", description="Adaptive Multi-Head Contrastive Learning for Keras.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="pre-train an encoder, evaluate it, write a run directory",
        description="Pre-train with AMCL (defaults: the CPU demo on the shipped Fashion-MNIST subset).",
    )
    train.add_argument("--config", help="YAML config (see configs/); defaults to the demo")
    train.add_argument("--run-dir", help="output directory (default: runs/<method>-<time>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=1 (repeatable)")
    train.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    train.add_argument("--steps-per-epoch", type=int, help="shortcut for --set train.steps_per_epoch=N")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)

    from amcl_keras import config as config_lib

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    try:
        config = config_lib.load(args.config, overrides)
    except config_lib.ConfigError as error:
        print(f"amcl: config error: {error}", file=sys.stderr)
        return 2
    from amcl_keras import train as train_lib

    run_dir = args.run_dir or os.path.join("runs", f"{config.model.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        results = train_lib.run(config, run_dir, overwrite=args.overwrite)
    except (train_lib.RunDirectoryError, ValueError, RuntimeError) as error:
        print(f"amcl: error: {error}", file=sys.stderr)
        return 2
    print()
    print(train_lib.format_results(results))
    print(f"\nRun directory: {run_dir} (config.yaml, history.jsonl, final.weights.h5, encoder.keras, results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
