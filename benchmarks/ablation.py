"""Which part of AMCL earns its gain? The paper's ablation against tuned baselines, chosen on validation.

Two phases per dataset, every run an ordinary `amcl train` run directory under
`--out/<dataset>/{validation,test}/`; finished runs are kept, so re-running the same command after an
interruption only does what is missing (the script is resumable, and the phases can be run apart).

1. **validation** (seed `--validation-seed`, scored on a split carved from the training images; the
   test split is never read): every method's candidates, with the same budget for both sides —
   - SimCLR / MoCo: the 1-head baseline at each τ of `TAUS` (4 runs), and AMCL (C heads, adaptive τ)
     with each of its 4 knob settings in `AMCL_KNOBS` (objective, β, the centre of the regulariser);
   - Barlow Twins / SimSiam (no temperature to tune): 1 head, C plain heads, and AMCL with each
     setting of `AMCL_KNOBS`.
   The choice is made by THE RULE: the highest mean of linear-probe and kNN accuracy on validation
   (`score`); it is written to `--out/<dataset>/choice.json`.
2. **test** (seeds `--seeds`, test split): the validated arms of the ablation grid —
   - SimCLR / MoCo: `baseline` (1 head, τ*), `multihead` (C heads, τ*, no adaptive τ),
     `adaptive` (1 head, adaptive τ with the chosen knobs), `amcl` (C heads, adaptive τ, chosen knobs);
   - Barlow Twins / SimSiam: `baseline`, `multihead`, `amcl` (the chosen knobs), then every other knob
     setting (`amcl-<knob>`), so each AMCL objective is on the test split too.
   The grid's own arms (baseline, multihead, adaptive, amcl) of every method and seed run before the
   other knob settings (`amcl-<knob>`).

Writes `--out/<dataset>/{validation,test}.md`, `--out/results.json` (every run, the choices, the
paired per-seed deltas) and `--out/table.md` (both datasets).

Datasets (both offline): `fashion_mnist` — the full Fashion-MNIST from Debian's
`dataset-fashion-mnist` (validation: the last 10,000 training images), and `tuxpaint_stamps` — the
colour set shipped with the package (its own validation split, disjoint source images).

    python -m benchmarks.ablation                                 # both datasets, both phases
    python -m benchmarks.ablation --datasets tuxpaint_stamps --methods simclr --phase validation
    python -m benchmarks.ablation --quick                          # a few steps: checks the pipeline
    python -m benchmarks.ablation --methods barlow_twins --phase test --no-extras   # the grid's own arms only
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import reproduce  # noqa: E402

METHODS = ("simclr", "moco", "barlow_twins", "simsiam")
TEMPERATURE_METHODS = ("simclr", "moco")  # the methods whose baseline has a temperature to tune
TAUS = (0.05, 0.1, 0.2, 0.5)
NUM_HEADS = 3
# AMCL's own knobs, given the same validation budget as the baselines' τ (4 settings). "{tau}" is
# replaced by the validated baseline τ* of the method (SimCLR / MoCo only).
AMCL_KNOBS = {
    "simclr": {
        "normalized": ["model.objective=normalized"],
        "normalized-c{tau}": ["model.objective=normalized", "model.temperature_center={tau}", "model.beta=0.01"],
        "rectified": ["model.objective=rectified"],
        "authors": ["model.objective=authors"],
    },
    "barlow_twins": {  # every knob says whether φ's inputs stop the gradient (the default differs per method)
        "normalized": ["model.objective=normalized", "model.temperature_stop_gradient=false"],
        "normalized-beta1": ["model.objective=normalized", "model.beta=1.0", "model.temperature_stop_gradient=false"],
        "rectified": ["model.objective=rectified", "model.temperature_stop_gradient=false"],
        "authors": ["model.objective=authors", "model.temperature_stop_gradient=false"],
        # added after the first round (issue 22, item 4): the form that keeps each term's meaning and scale
        "weighted": ["model.objective=weighted", "model.temperature_stop_gradient=false"],
        # ... and the same with φ on stopped-gradient embeddings (the encoder cannot game its own weights)
        "weighted-sg": ["model.objective=weighted", "model.temperature_stop_gradient=true"],
    },
}
AMCL_KNOBS["moco"] = dict(AMCL_KNOBS["simclr"])
AMCL_KNOBS["simsiam"] = dict(AMCL_KNOBS["barlow_twins"])
# Barlow Twins only (third round): one weight per head from its geometric-mean τ, each head's terms Barlow Twins' own
AMCL_KNOBS["barlow_twins"]["head-weighted-sg"] = ["model.objective=head_weighted", "model.temperature_stop_gradient=true"]
# ... and with φ's gradient clipped on its own (fourth round): under one global norm φ's gradient (its regulariser over
# d² channel pairs, ~100x the encoder's norm at the start) shrank the encoder's step ~100x against plain Barlow Twins
for _knob in ("weighted-sg", "head-weighted-sg"):
    AMCL_KNOBS["barlow_twins"][_knob + "-clip"] = AMCL_KNOBS["barlow_twins"][_knob] + ["model.temperature_clipping=separate"]
# Fifth round (issue 22): φ clipped on its own for MoCo's validated objective (φ's gradient made the joint clip
# factor 1.17x smaller at the start, benchmarks/gradient_norms.py), and SimSiam's validated objective with φ on
# stopped-gradient inputs (what turned Barlow Twins' `weighted` from -9.8 to -6.5 points on validation)
AMCL_KNOBS["moco"]["authors-clip"] = AMCL_KNOBS["moco"]["authors"] + ["model.temperature_clipping=separate"]
AMCL_KNOBS["simsiam"]["authors-sg"] = ["model.objective=authors", "model.temperature_stop_gradient=true"]
DATASETS = ("fashion_mnist", "tuxpaint_stamps")
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST (full, grayscale)", "tuxpaint_stamps": "Tux Paint stamps (colour)"}


def score(record):
    """THE RULE's number: the mean of linear-probe and kNN accuracy (both in [0, 1])."""
    return (record["linear_probe"] + record["knn"]) / 2


def dataset_value(name, out, validation):
    """`data.dataset` and `data.eval_test_split` for one dataset and phase."""
    if name == "fashion_mnist":
        path, _ = reproduce.dataset_for("full", out, validation)
        return path, "val" if validation else "test"
    return name, "val" if validation else "test"


def arm_overrides(method, arm):
    """(amcl, heads, extra overrides) of an arm described as a dict."""
    extra = list(arm.get("knobs", []))
    if "tau" in arm:
        extra.append(f"model.temperature={arm['tau']}")
        extra = [o.replace("{tau}", str(arm["tau"])) for o in extra]
    return arm["amcl"], arm["heads"], extra


def config_overrides(args, dataset, split, method, arm, seed):
    amcl, heads, extra = arm_overrides(method, arm)
    if not any(item.startswith("model.temperature_clipping=") for item in extra):
        # the arms defined before this setting existed trained with "joint": pinned, whatever a method's default is now
        extra.append("model.temperature_clipping=joint")
    return [
        f"data.dataset={dataset}", f"data.eval_test_split={split}", "data.augmentation=abcde",
        f"data.batch_size={args.batch}", f"model.method={method}", f"model.amcl={str(amcl).lower()}",
        f"model.num_heads={heads}", f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
        f"train.seed={seed}", "train.strategy=default", f"train.mixed_precision={args.precision}",
        f"eval.probe_epochs={args.probe_epochs}",
        f"eval.max_examples={args.eval_examples}", "eval.random_init=false", "export.formats=[]",
        "eval.online_probe_every=0", "eval.tensorboard=false", *extra,
    ]


def validation_arms(method, tau_star=None):
    """name → arm for the validation phase of one method (τ* fills the knobs that use it)."""
    arms = {}
    if method in TEMPERATURE_METHODS:
        for tau in TAUS:
            arms[f"baseline-tau{tau}"] = {"amcl": False, "heads": 1, "tau": tau}
    else:
        arms["baseline"] = {"amcl": False, "heads": 1}
        arms["multihead"] = {"amcl": False, "heads": NUM_HEADS}
    for knob, knobs in AMCL_KNOBS[method].items():
        if "{tau}" in knob and tau_star is None:
            continue  # filled once τ* is known
        arm = {"amcl": True, "heads": NUM_HEADS, "knobs": knobs}
        if tau_star is not None and method in TEMPERATURE_METHODS:
            arm["tau"] = tau_star
        arms["amcl-" + knob.replace("{tau}", str(tau_star))] = arm
    return arms


def test_arms(method, choice):
    """name → arm for the test phase, essential arms first."""
    if method in TEMPERATURE_METHODS:
        tau, knobs = choice["tau"], AMCL_KNOBS[method][choice["knob"]]
        return {
            "baseline": {"amcl": False, "heads": 1, "tau": tau},
            "multihead": {"amcl": False, "heads": NUM_HEADS, "tau": tau},
            "adaptive": {"amcl": True, "heads": 1, "tau": tau, "knobs": knobs},
            "amcl": {"amcl": True, "heads": NUM_HEADS, "tau": tau, "knobs": knobs},
        }
    arms = {"baseline": {"amcl": False, "heads": 1}, "multihead": {"amcl": False, "heads": NUM_HEADS},
            "amcl": {"amcl": True, "heads": NUM_HEADS, "knobs": AMCL_KNOBS[method][choice["knob"]]}}
    for knob, knobs in AMCL_KNOBS[method].items():
        if knob != choice["knob"]:
            arms[f"amcl-{knob}"] = {"amcl": True, "heads": NUM_HEADS, "knobs": knobs}
    return arms


AMCL_ONLY = ("objective", "temperature_center", "temperature_stop_gradient", "beta", "temperature_hidden_dim",
             "temperature_min", "temperature_max", "negatives", "top_k", "temperature_clipping")
# Settings added after runs were recorded, with the value every earlier run had: a run whose config lacks one of
# these was trained with that value (not with today's default, which may differ per method).
ADDED_SINCE = {("model", "temperature_clipping"): "joint"}


def _equivalent(stored, config):
    """Whether a run recorded with the config dict `stored` was trained with `config`: every setting it holds equals
    `config`'s (a setting added since, absent from it, had its `ADDED_SINCE` value, else the value it now has by
    default), ignoring the AMCL-only settings of a plain run (a default that changed there does not change it)."""
    intended = json.loads(json.dumps(config.to_dict()))  # tuples as the lists a YAML or JSON holds
    plain = not intended["model"]["amcl"]
    for section, values in stored.items():
        for key, value in (values or {}).items():
            if section == "model" and key in AMCL_ONLY and plain:
                continue
            if intended.get(section, {}).get(key, value) != value:
                return False
    for (section, key), earlier in ADDED_SINCE.items():
        skip = section == "model" and key in AMCL_ONLY and plain
        if not skip and key not in (stored.get(section) or {}) and intended[section][key] != earlier:
            return False
    return True


def _same_settings(written, config):
    """Whether the finished run whose config is at `written` (its config.yaml) was trained with `config`."""
    import yaml

    return _equivalent(yaml.safe_load(written.read_text(encoding="utf-8")), config)


def _recorded(previous, method, name, seed, arm, config):
    """A record of `previous` (the results.json records of an earlier invocation) for this run, trained with these
    settings: its whole config where the record holds one, its arm's settings otherwise (records written before
    configs were recorded: a run folder lost with its machine is then not trained again)."""
    for record in previous:
        if (record["method"], record["arm"], record["seed"]) != (method, name, seed) or record["settings"] != arm:
            continue
        if "config" not in record or _equivalent(record["config"], config):
            return record
    return None


def run_one(args, dataset, split, method, name, arm, seed, directory, previous=(), read_only=False):
    """Train (or read back) one run; returns its record."""
    from amcl_keras import config as config_lib, train

    run_dir = directory / "runs" / f"{method}-{name}-seed{seed}"
    results_path = run_dir / "results.json"
    config = config_lib.load(None, config_overrides(args, dataset, split, method, arm, seed))
    # a finished run is reused only if it was trained with these settings (an arm such as "amcl" changes its
    # settings when validation chooses another knob)
    same = results_path.is_file() and _same_settings(run_dir / "config.yaml", config)
    recorded = None if results_path.is_file() else _recorded(previous, method, name, seed, arm, config)
    if recorded is not None:
        print(f"  {method:<12} {name:<26} seed {seed}: read back from results.json (its run folder is gone)")
        return recorded
    if same:
        results = json.loads(results_path.read_text())
    elif args.only_finished or read_only:
        return None
    else:
        results = train.run(config, run_dir, overwrite=True, verbose=0)
    record = {"method": method, "arm": name, "seed": seed, "settings": arm, "run_dir": str(run_dir),
              "linear_probe": results["trained"]["linear_probe"], "knn": results["trained"]["knn"],
              "seconds": results["seconds"], "temperatures": reproduce.final_temperatures(run_dir),
              "config": json.loads(json.dumps(config.to_dict()))}
    print(f"  {method:<12} {name:<26} seed {seed}: probe {100 * record['linear_probe']:.1f}  "
          f"kNN {100 * record['knn']:.1f}  {reproduce._format_tau(record['temperatures'])}  "
          f"({record['seconds']:.0f} s)", flush=True)
    return record


def finished(records):
    """The records of runs that exist (`--only-finished` skips the others)."""
    return [r for r in records if r is not None]


def choose(method, records):
    """THE RULE applied to one method's validation records: τ* = the best 1-head baseline's τ
    (SimCLR / MoCo), knob = the best AMCL knob setting; plus the validation table for the record."""
    by_name = {r["arm"]: r for r in records}
    if not any(r["arm"].startswith("amcl-") for r in records) or not any(not r["settings"]["amcl"] for r in records):
        return None  # not validated yet (`--only-finished` while runs go on)
    choice = {"scores": {name: round(100 * score(r), 2) for name, r in by_name.items()}}
    if method in TEMPERATURE_METHODS:
        best = max((r for r in records if r["arm"].startswith("baseline")), key=score)
        choice["tau"] = best["settings"]["tau"]
        choice["baseline_arm"] = best["arm"]
    else:
        choice["baseline_arm"] = "baseline"
    amcl = [r for r in records if r["arm"].startswith("amcl-")]
    best = max(amcl, key=score)
    knob = best["arm"][len("amcl-"):]
    if method in TEMPERATURE_METHODS and knob == f"normalized-c{choice['tau']}":
        knob = "normalized-c{tau}"
    choice["knob"] = knob
    choice["amcl_arm"] = best["arm"]
    choice["amcl_minus_baseline"] = round(100 * (score(best) - score(by_name[choice["baseline_arm"]])), 2)
    plain = [r for r in records if not r["settings"]["amcl"]]
    choice["best_plain_arm"] = max(plain, key=score)["arm"]
    return choice


def library_defaults(choices):
    """THE RULE over both datasets: per method, the baseline τ and the AMCL knob setting with the
    highest validation score averaged over the datasets (`choices`: dataset → method → choice), and
    AMCL's margin over the best plain arm (1 head at τ*, or C plain heads) on each dataset."""
    defaults = {}
    methods = dict.fromkeys(m for per_dataset in choices.values() for m in per_dataset)
    for method in methods:
        validated = [c[method] for c in choices.values() if method in c]
        if len(validated) < len(choices):
            continue  # not validated on every dataset yet
        mean = lambda arm: statistics.mean(c["scores"][arm] for c in validated)  # noqa: E731
        out = {}
        if method in TEMPERATURE_METHODS:
            out["tau"] = max(TAUS, key=lambda tau: mean(f"baseline-tau{tau}"))
        knobs = [k for k in AMCL_KNOBS[method] if all(f"amcl-{k.replace('{tau}', str(c.get('tau')))}" in c["scores"]
                                                      for c in validated)]
        score_of = lambda c, k: c["scores"][f"amcl-{k.replace('{tau}', str(c.get('tau')))}"]  # noqa: E731
        out["knob"] = max(knobs, key=lambda k: statistics.mean(score_of(c, k) for c in validated))
        out["settings"] = AMCL_KNOBS[method][out["knob"]]
        out["amcl_minus_best_plain"] = {
            dataset: round(score_of(c[method], out["knob"]) - c[method]["scores"][c[method]["best_plain_arm"]], 2)
            for dataset, c in choices.items()}
        out["amcl_wins_on_validation"] = all(d > 0 for d in out["amcl_minus_best_plain"].values())
        defaults[method] = out
    return defaults


def paired(records, arm, key):
    base = {r["seed"]: r[key] for r in records if r["arm"] == "baseline"}
    return [100 * (r[key] - base[r["seed"]]) for r in records if r["arm"] == arm and r["seed"] in base]


def mean_std(values):
    values = list(values)
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary_rows(records):
    rows = []
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        for arm in dict.fromkeys(r["arm"] for r in runs):
            mine = [r for r in runs if r["arm"] == arm]
            row = {"method": method, "arm": arm, "seeds": [r["seed"] for r in mine], "settings": mine[0]["settings"]}
            for key in ("linear_probe", "knn"):
                row[key] = mean_std(100 * r[key] for r in mine)
                row[f"delta_{key}"] = mean_std(paired(runs, arm, key)) if arm != "baseline" else None
                row[f"delta_{key}_per_seed"] = [round(d, 2) for d in paired(runs, arm, key)] if arm != "baseline" else None
            rows.append(row)
    return rows


def describe(method, arm):
    parts = [f"{arm['heads']} head{'s' if arm['heads'] > 1 else ''}"]
    if "tau" in arm and not arm["amcl"]:
        parts.append(f"τ {arm['tau']}")
    parts.append("adaptive τ, " + " ".join(k.split("=", 1)[1] if k.startswith("model.objective") else
                                           k.replace("model.", "").replace("{tau}", str(arm.get("tau")))
                                           for k in arm["knobs"]) if arm["amcl"] else "plain loss")
    return ", ".join(parts)


def markdown(rows, title):
    lines = [f"**{title}**", "", "| method | arm | what | seeds | probe | kNN | score | Δ probe | Δ kNN |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fmt = lambda ms: "–" if ms is None else (f"{ms[0]:.1f} ± {ms[1]:.1f}" if len(row["seeds"]) > 1 else f"{ms[0]:.1f}")  # noqa: E731
        dfmt = lambda ms: "–" if ms is None else (f"{ms[0]:+.1f} ± {ms[1]:.1f}" if len(row["seeds"]) > 1 else f"{ms[0]:+.1f}")  # noqa: E731
        lines.append(f"| {reproduce.DISPLAY[row['method']]} | {row['arm']} | {describe(row['method'], row['settings'])} "
                     f"| {len(row['seeds'])} | {fmt(row['linear_probe'])} | {fmt(row['knn'])} "
                     f"| {(row['linear_probe'][0] + row['knn'][0]) / 2:.1f} "
                     f"| {dfmt(row['delta_linear_probe'])} | {dfmt(row['delta_knn'])} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--phase", choices=("validation", "test", "all"), default="all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--validation-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--probe-epochs", type=int, default=20)
    parser.add_argument("--eval-examples", type=int, default=10000)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/ablation"))
    parser.add_argument("--precision", default="float32",
                        help="train.mixed_precision of every run (the study: float32; e.g. mixed_bfloat16 with another "
                             "--out to compare precisions on the same arms and seeds)")
    parser.add_argument("--quick", action="store_true", help="one seed, 1 epoch of 3 steps, short probe")
    parser.add_argument("--no-extras", action="store_true",
                        help="test phase: only the grid's own arms (baseline, multihead, adaptive, amcl), not every "
                             "other AMCL knob setting")
    parser.add_argument("--only-arms", nargs="+", metavar="ARM",
                        help="test phase: train only these arms (e.g. amcl, amcl-weighted-sg-clip); the others are "
                             "read back where they exist")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: summarise the runs that have finished (e.g. while others still run)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.steps, args.probe_epochs, args.eval_examples = args.seeds[:1], 1, 3, 2, 1000
    started = time.perf_counter()
    summary = {"command": "python -m benchmarks.ablation " + " ".join(sys.argv[1:]), "rule": score.__doc__,
               "settings": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
               "hardware": {"machine": platform.machine(), "cpus": os.cpu_count()}, "datasets": {}}
    results_path = args.out / "results.json"
    if results_path.is_file():  # keep what other invocations (other datasets / methods) wrote
        summary["datasets"] = json.loads(results_path.read_text()).get("datasets", {})
    for name in args.datasets:
        directory = args.out / name
        directory.mkdir(parents=True, exist_ok=True)
        entry = summary["datasets"].setdefault(name, {})
        choice_path = directory / "choice.json"
        choices = json.loads(choice_path.read_text()) if choice_path.is_file() else {}
        if args.phase in ("validation", "all"):
            dataset, split = dataset_value(name, directory, validation=True)
            print(f"[{name}] validation (seed {args.validation_seed})", flush=True)
            previous = entry.get("validation", [])
            validation = [r for r in previous if r["method"] not in args.methods]
            for method in args.methods:
                records = finished(run_one(args, dataset, split, method, arm_name, arm, args.validation_seed,
                                           directory / "validation", previous)
                                   for arm_name, arm in validation_arms(method).items())
                if not records:
                    continue
                choice = choose(method, records)
                if method in TEMPERATURE_METHODS and choice:  # knobs that sit at the validated τ*
                    tau = choice["tau"]
                    extra = {k: a for k, a in validation_arms(method, tau).items() if k not in validation_arms(method)}
                    records += finished(run_one(args, dataset, split, method, arm_name, arm, args.validation_seed,
                                                directory / "validation", previous)
                                        for arm_name, arm in extra.items())
                choice = choose(method, records)
                if choice:
                    choices[method] = choice
                validation += records
                choice_path.write_text(json.dumps(choices, indent=2))
            entry["validation"] = validation
            entry["choices"] = choices
            (directory / "validation.md").write_text(markdown(summary_rows(validation), f"{DATASET_NAMES[name]}, validation"))
        if args.phase in ("test", "all"):
            missing = [m for m in args.methods if m not in choices]
            if missing and not args.only_finished:
                sys.exit(f"No validated choice for {missing} on {name}: run --phase validation first.")
            dataset, split = dataset_value(name, directory, validation=False)
            print(f"[{name}] test (seeds {args.seeds})", flush=True)
            previous = entry.get("test", [])
            test = [r for r in previous if r["method"] not in args.methods]
            arms = {m: list(test_arms(m, choices[m]).items()) for m in args.methods if m in choices}
            plan = [(m, n, a, seed) for seed in args.seeds for m in arms for n, a in arms[m]]
            essential = [item for item in plan if not item[1].startswith("amcl-")]
            extras = [item for item in plan if item[1].startswith("amcl-")]
            plan = essential + ([] if args.no_extras else extras)  # every seed's essential arms first
            if args.only_arms:  # the others only read back (their records are kept in the tables)
                plan = [item for item in plan if item[1] in args.only_arms] + \
                       [item for item in essential + extras if item[1] not in args.only_arms]
            for method, arm_name, arm, seed in plan:
                reading = args.only_finished or bool(args.only_arms and arm_name not in args.only_arms)
                test += finished([run_one(args, dataset, split, method, arm_name, arm, seed, directory / "test",
                                          previous, read_only=reading)])
                entry["test"] = test
                results_path.write_text(json.dumps(summary, indent=2))
            entry["test_summary"] = summary_rows(test)
            (directory / "test.md").write_text(markdown(entry["test_summary"], f"{DATASET_NAMES[name]}, test"))
        results_path.write_text(json.dumps(summary, indent=2))
    summary["library_defaults"] = library_defaults(
        {name: entry["choices"] for name, entry in summary["datasets"].items() if entry.get("choices")})
    results_path.write_text(json.dumps(summary, indent=2))
    tables = [f"Command: `{summary['command'].strip()}`", "",
              f"Budget per run: {args.epochs} epochs × {args.steps} steps of batch {args.batch}; rule: {score.__doc__}", ""]
    for name in summary["datasets"]:
        for phase in ("validation", "test"):
            path = args.out / name / f"{phase}.md"
            if path.is_file():
                tables += [path.read_text(), ""]
    tables += ["**Library defaults by the rule** (validation score averaged over the datasets; AMCL's margin over "
               "the best plain arm per dataset, points):", ""]
    for method, d in summary["library_defaults"].items():
        tables.append(f"- {reproduce.DISPLAY[method]}: AMCL knob `{d['knob']}` ({' '.join(d['settings'])})"
                      + (f", baseline τ {d['tau']}" if "tau" in d else "")
                      + f"; AMCL − best plain: {d['amcl_minus_best_plain']}")
    (args.out / "table.md").write_text("\n".join(tables))
    print("\n".join(tables))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
