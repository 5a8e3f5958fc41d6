"""AVX-512 vs AVX2 on one machine, side by side, with issue 16's target checks from the same run.

    python -m benchmarks.isa_compare --quick --torch-python /tmp/torch-venv/bin/python
    python -m benchmarks.isa_compare --smoke --torch-python /tmp/torch-venv/bin/python   # tests the script (~minutes)

Every measurement runs once per ISA setting, each in its own subprocess, the settings back to back
(alternating: native, avx2 for one measurement, then avx2, native for the next, so drift in the
machine's load falls on both columns alike). An ISA setting is a set of environment variables that
caps each library's dispatch; variables of this kind already in the environment are removed first
(this project's shells set OPENBLAS_CORETYPE=Haswell, which would otherwise cap the "native" NumPy):

- native: nothing capped (each library picks the best the CPU has).
- avx2: ONEDNN_MAX_CPU_ISA=AVX2 (TensorFlow's and PyTorch's oneDNN), XLA_FLAGS+=--xla_cpu_max_isa=AVX2
  (TensorFlow's XLA), ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2 (PyTorch's own kernels
  and its MKL BLAS), OPENBLAS_CORETYPE=Haswell (NumPy's OpenBLAS). TensorFlow's Eigen kernels are
  compiled for a fixed baseline and are the same in both columns.
- avx512 (optional): the same knobs at AVX-512 without bf16/AMX (AVX512_CORE, SkylakeX).

Recorded: the CPU's ISA flags (/proc/cpuinfo) and, per setting, what the libraries actually chose: a tiny
TensorFlow conv + matmul under ONEDNN_VERBOSE=1 (oneDNN's `isa:` line and the kernels it ran), NumPy's
OpenBLAS core, and (with --torch-python) PyTorch's get_cpu_capability() and its oneDNN `isa:` line.

Measurements: the float32 matmul peak (NumPy and TF, 4096², best of 3); ResNet-18 (CIFAR stem) at
batch 256 pairs: SimCLR baseline (1 head), AMCL-SimCLR (3 heads; the library's default objective, and
objective=authors, the loss the PyTorch mode computes), AMCL-SimCLR with XLA, and baseline
/ AMCL for moco, barlow_twins and simsiam; `benchmarks.loss_time` (batch 256); with --torch-python,
`benchmarks/pytorch_reference.py` plain SimCLR and its `--amcl authors` mode. Writes `<out>.json` (every
raw result, written again after each measurement) and `<out>.md`, and prints the Markdown.

Target checks (issue 16), per ISA column: our SimCLR baseline images/s ÷ PyTorch plain ≥ 1.0; our
AMCL-SimCLR ÷ PyTorch authors'-AMCL ≥ 1.3; MFU of AMCL-SimCLR (train FLOP/s ÷ the best matmul peak of
the same column) ≥ 60%; AMCL step ÷ baseline step ≤ 1.05 for all four methods; the AMCL-Barlow loss
(3 heads, forward + backward) ≤ 300 ms on AVX2.

Modes: default 1 warm-up + 4 timed steps per ResNet-18 run; --quick 1 + 2; --smoke: ResNet-18 at
width 8, 16×16 images, batch 8, 1 + 1 steps, a 512² peak, loss_time at batch 8 (numbers meaningless:
it checks the script end to end: 8 min with the 2 cores shared by other jobs, a few minutes idle).
Expected wall time on the idle 2-core machine (ResNet-18 step ≈ 9–12 s native, ~1.3× that on AVX2; about
15 s of TensorFlow start-up and tracing per run): --quick with PyTorch ≈ 25–40 min (~30 expected), the default ≈ 35–50 min.
`--only` reruns a part (e.g. `--only torch simclr`), into another `--out`.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from amcl_keras import registry
from benchmarks import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Issue 16's targets name two methods: SimCLR, the method benchmarks/pytorch_reference.py ports (its keys
# simclr_baseline, simclr_amcl, ... compare with the PyTorch runs), and Barlow Twins, whose AMCL loss has a time target.
REFERENCE_METHOD = "simclr"
LOSS_TARGET_METHOD = "barlow_twins"
CONTROLLED = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
              "OPENBLAS_CORETYPE")
ISAS = {
    "native": ({}, None),
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
              "OPENBLAS_CORETYPE": "Haswell"}, "AVX2"),
    "avx512": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                "OPENBLAS_CORETYPE": "SkylakeX"}, "AVX512"),
}
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
TARGETS = {"simclr_vs_pytorch": 1.0, "amcl_vs_authors": 1.3, "mfu": 0.60, "overhead": 1.05, "barlow_loss_ms": 300.0}

TF_PROBE = """
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
from benchmarks.harness import openblas_core
x = tf.random.normal([2, 8, 8, 16]); k = tf.random.normal([3, 3, 16, 16])
with tf.GradientTape() as tape:
    tape.watch(k)
    y = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME"))
tape.gradient(y, k).numpy()
tf.matmul(tf.random.normal([64, 64]), tf.random.normal([64, 64])).numpy()
print("PROBE " + json.dumps({"tensorflow": tf.__version__, "openblas_core": openblas_core()}), flush=True)
"""
TORCH_PROBE = """
import json, torch
x = torch.randn(2, 16, 8, 8, requires_grad=True)
torch.nn.Conv2d(16, 16, 3, padding=1)(x).sum().backward()
(torch.randn(64, 64) @ torch.randn(64, 64)).sum().item()
print("PROBE " + json.dumps({"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                             "mkldnn": torch.backends.mkldnn.is_available()}), flush=True)
"""


def isa_env(name):
    """os.environ with every ISA knob removed, then the setting's knobs (XLA's flag merged into XLA_FLAGS)."""
    variables, xla_isa = ISAS[name]
    env = {key: value for key, value in os.environ.items() if key not in CONTROLLED}
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith("--xla_cpu_max_isa")]
    if xla_isa:
        flags.append(f"--xla_cpu_max_isa={xla_isa}")
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.update(variables)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def setting(name):
    variables, xla_isa = ISAS[name]
    return {**variables, **({"XLA_FLAGS": f"--xla_cpu_max_isa={xla_isa}"} if xla_isa else {})}


def cpu_info():
    model, flags = harness.cpu_model_and_flags()
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in CPU_FLAGS}}


def _onednn(output):
    """oneDNN's verbose lines → version, ISA and the implementation of each primitive kind it ran."""
    info = {"isa": None, "version": None, "kernels": {}}
    for line in output.splitlines():
        if not line.startswith("onednn_verbose"):
            continue
        fields = line.split(",")
        if "isa:" in line and "info" in fields:
            info["isa"] = line.split("isa:", 1)[1].strip()
        elif ",info,oneDNN" in line:
            info["version"] = line.split(",info,", 1)[1].strip()
        elif len(fields) > 6 and fields[2] == "primitive" and fields[3] == "exec":
            kind, implementation, propagation = fields[5], fields[6], fields[7]
            name = f"{kind}/{propagation}" if propagation not in ("undef", "") else kind
            info["kernels"].setdefault(name, implementation or "(default)")
    return info


def probe(python, code, env, extra_env):
    started = time.perf_counter()
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT,
                               env={**env, **extra_env}, timeout=600)
    output = completed.stdout + completed.stderr
    result = {"onednn": _onednn(output), "seconds": round(time.perf_counter() - started, 1)}
    line = next((line for line in completed.stdout.splitlines() if line.startswith("PROBE ")), None)
    if line:
        result.update(json.loads(line[len("PROBE "):]))
    else:
        result["error"] = output[-2000:]
    mkl = next((line for line in output.splitlines() if line.startswith("MKL_VERBOSE") and "oneMKL" in line), None)
    if mkl:
        result["mkl"] = mkl.replace("MKL_VERBOSE ", "")
    return result


def run(command, env, label):
    """Run a command; its JSON (last stdout line) plus wall seconds, or {"error": ...} (the run goes on)."""
    started = time.perf_counter()
    try:
        result = harness.run_json(command, env=env, timeout=3600, cwd=ROOT)
    except RuntimeError as error:
        result = {"error": str(error)[-3000:]}
    except (subprocess.TimeoutExpired, ValueError, IndexError) as error:
        result = {"error": repr(error)[-3000:]}
    seconds = time.perf_counter() - started
    result["wall_s"] = round(seconds, 1)
    status = "FAILED" if "error" in result else "ok"
    print(f"  {label}: {seconds:.0f} s {status}", file=sys.stderr, flush=True)
    return result


def plan(args):
    """[(key, title, kind, arguments)] for the mode, in the order they run."""
    if args.smoke:
        resnet = ["--encoder", "resnet18_cifar", "--width", "8", "--image-size", "16", "--batch", "8",
                  "--warmup", "1", "--steps", "1"]
        torch_size = ["--width", "8", "--image-size", "16", "--batch", "8", "--warmup", "1", "--steps", "1"]
        peak, losses = ["--peak", "--peak-size", "512"], ["--batch", "8", "--repeats", "2"]
    else:
        steps = ["--warmup", "1", "--steps", "2" if args.quick else "4"]
        resnet = ["--encoder", "resnet18_cifar", "--batch", "256", *steps]
        torch_size = ["--batch", "256", *steps]
        peak, losses = ["--peak"], ["--repeats", "10" if args.quick else "20"]
    reference = ["train_step", "--method", REFERENCE_METHOD]
    items = [("peak", "matmul peak", "tf", ["train_step", *peak]),
             ("simclr_baseline", "SimCLR baseline, 1 head", "tf", [*reference, "--no-amcl", *resnet]),
             ("simclr_amcl", "AMCL-SimCLR, 3 heads", "tf", [*reference, *resnet]),
             ("simclr_amcl_xla", "AMCL-SimCLR, 3 heads, XLA", "tf", [*reference, "--jit", *resnet]),
             ("simclr_amcl_authors_objective", "AMCL-SimCLR, 3 heads, objective=authors (the PyTorch mode's loss)", "tf",
              [*reference, "--objective", "authors", *resnet])]
    for method in (name for name in registry.names() if name != REFERENCE_METHOD):
        items += [(f"{method}_baseline", f"{method} baseline, 1 head", "tf",
                   ["train_step", "--method", method, "--no-amcl", *resnet]),
                  (f"{method}_amcl", f"AMCL-{method}, 3 heads", "tf", ["train_step", "--method", method, *resnet])]
    items.append(("loss_time", "losses alone", "tf", ["loss_time", *losses]))
    if args.torch_python:
        threads = ["--threads", str(os.cpu_count())]
        items += [("torch_plain", "PyTorch plain SimCLR, 1 head", "torch", [*torch_size, *threads]),
                  ("torch_authors", "PyTorch authors'-AMCL SimCLR, 3 heads", "torch",
                   ["--amcl", "authors", *torch_size, *threads])]
    if args.only:
        items = [item for item in items if any(word in item[0] for word in args.only)]
    return items


def collect(args, out):
    results = {"benchmark": "isa_compare", "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
               "command": "python -m benchmarks.isa_compare " + " ".join(sys.argv[1:]), "cpu": cpu_info(),
               "machine": harness.machine(),
               "isas": {name: setting(name) for name in args.isas},
               "inherited_env": {key: os.environ[key] for key in (*CONTROLLED, "XLA_FLAGS", "OPENBLAS_L2_SIZE",
                                                                   "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
                                 if key in os.environ},
               "probes": {}, "measurements": {}}
    started = time.perf_counter()
    for name in args.isas:
        env = isa_env(name)
        results["probes"][name] = {"tensorflow": probe(sys.executable, TF_PROBE, env, {"ONEDNN_VERBOSE": "1"})}
        if args.torch_python:
            results["probes"][name]["pytorch"] = probe(args.torch_python, TORCH_PROBE, env,
                                                       {"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"})
    for index, (key, title, kind, arguments) in enumerate(plan(args)):
        order = list(args.isas) if index % 2 == 0 else list(reversed(args.isas))
        entry = results["measurements"].setdefault(key, {"title": title, "order": order})
        for name in order:
            if kind == "tf":
                command = [sys.executable, "-m", f"benchmarks.{arguments[0]}", *arguments[1:]]
            else:
                command = [args.torch_python, str(ROOT / "benchmarks" / "pytorch_reference.py"), *arguments]
            entry[name] = run(command, isa_env(name), f"{key} [{name}]")
            results["seconds"] = round(time.perf_counter() - started)
            out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    results["targets"] = targets(results, args.isas)
    results["seconds"] = round(time.perf_counter() - started)
    return results


def _get(results, key, isa, *path):
    value = results["measurements"].get(key, {}).get(isa)
    for step in path:
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def targets(results, isas):
    """Issue 16's checks per ISA column: {check: {isa: {"value", "target", "met", "detail"}}}."""
    checks = {}

    def put(check, isa, value, met, detail):
        checks.setdefault(check, {})[isa] = {"value": value, "target": TARGETS[check], "met": met, "detail": detail}

    for isa in isas:
        ours, torch = _get(results, "simclr_baseline", isa, "images_per_s"), _get(results, "torch_plain", isa, "images_per_s")
        if ours and torch:
            ratio = ours / torch
            put("simclr_vs_pytorch", isa, round(ratio, 3), ratio >= TARGETS["simclr_vs_pytorch"],
                f"{ours:.1f} / {torch:.1f} images/s = {ratio:.2f}")
        ours, torch = _get(results, "simclr_amcl", isa, "images_per_s"), _get(results, "torch_authors", isa, "images_per_s")
        if ours and torch:
            ratio = ours / torch
            same_loss = _get(results, "simclr_amcl_authors_objective", isa, "images_per_s")
            put("amcl_vs_authors", isa, round(ratio, 3), ratio >= TARGETS["amcl_vs_authors"],
                f"{ours:.1f} / {torch:.1f} images/s = {ratio:.2f}"
                + (f" (with objective=authors: {same_loss / torch:.2f})" if same_loss else ""))
        flops, peak = _get(results, "simclr_amcl", isa, "gflops_per_s"), _get(results, "peak", isa, "best_gflops")
        if flops and peak:
            mfu = flops / peak
            put("mfu", isa, round(mfu, 3), mfu >= TARGETS["mfu"], f"{flops:.1f} / {peak:.1f} GFLOP/s = {100 * mfu:.0f}%")
        ratios = {}
        for method in registry.names():
            base, amcl = (_get(results, f"{method}_{variant}", isa, "median_step_s") for variant in ("baseline", "amcl"))
            if base and amcl:
                ratios[method] = round(amcl / base, 3)
        if ratios:
            worst = max(ratios.values())
            put("overhead", isa, ratios, len(ratios) == len(registry.names()) and worst <= TARGETS["overhead"],
                ", ".join(f"{method} {ratio:.2f}" for method, ratio in ratios.items())
                + ("" if len(ratios) == len(registry.names()) else " (some methods missing)"))
        loss = _get(results, "loss_time", isa, "losses", LOSS_TARGET_METHOD, "amcl_3_heads")
        if loss is not None:
            met = loss <= TARGETS["barlow_loss_ms"] if isa == "avx2" else None  # the target is stated for AVX2
            put("barlow_loss_ms", isa, loss, met, f"{loss:.1f} ms" + ("" if isa == "avx2" else " (target is for AVX2)"))
    return checks


def _cell(row, fields):
    if row is None:
        return "—"
    if "error" in row:
        return "FAILED"
    return fields(row)


def markdown(results, isas):
    cpu = results["cpu"]
    flags = " ".join(flag for flag, present in cpu["flags"].items() if present)
    head = "| | " + " | ".join(isas) + " |"
    rule = "|---" * (len(isas) + 1) + "|"
    lines = [f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores). ISA flags: {flags}.", "",
             f"Mode: {results['mode']}. Each measurement runs under each ISA setting in its own subprocess, back to back.",
             "", "**What each library chose** (ONEDNN_VERBOSE / get_cpu_capability / OpenBLAS core):", "", head, rule]
    probes = results["probes"]
    rows = [("environment", lambda isa: ", ".join(f"{k}={v}" for k, v in results["isas"][isa].items()) or "(none)"),
            ("TF oneDNN ISA", lambda isa: probes[isa]["tensorflow"]["onednn"]["isa"]),
            ("TF oneDNN conv kernel", lambda isa: probes[isa]["tensorflow"]["onednn"]["kernels"].get(
                "convolution/forward_training")),
            ("NumPy OpenBLAS core", lambda isa: probes[isa]["tensorflow"].get("openblas_core"))]
    if any("pytorch" in probe for probe in probes.values()):
        rows += [("PyTorch CPU capability", lambda isa: probes[isa]["pytorch"].get("cpu_capability")),
                 ("PyTorch oneDNN ISA", lambda isa: probes[isa]["pytorch"]["onednn"]["isa"]),
                 ("PyTorch oneDNN conv kernel", lambda isa: probes[isa]["pytorch"]["onednn"]["kernels"].get(
                     "convolution/forward_training"))]
    for title, value in rows:
        lines.append(f"| {title} | " + " | ".join(str(value(isa)) for isa in isas) + " |")

    measured = results["measurements"]
    columns = [*isas, *([f"{isas[0]} ÷ {isas[1]}"] if len(isas) > 1 else [])]

    def header(first):
        return ["| " + first + " | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def ratio(values):
        if len(isas) < 2:
            return []
        return [f"{values[0] / values[1]:.2f}" if values[0] and values[1] else "—"]

    lines += ["", "**Dense float32 matmul peak** (GFLOP/s, best of 3):", "", *header("library")]
    for library in ("numpy", "tensorflow", "best_gflops"):
        values = [_get(results, "peak", isa, library) for isa in isas]
        lines.append(f"| {library} | " + " | ".join([*(str(v) if v is not None else "—" for v in values),
                                                      *ratio(values)]) + " |")
    lines += ["", f"**ResNet-18 (CIFAR stem) training step** (step s · images/s · MFU against the same column's peak"
                  f"{'; smoke sizes' if results['mode'] == 'smoke' else ''}; last column: images/s ratio):", "",
              *header("configuration")]
    for key, entry in measured.items():
        if key in ("peak", "loss_time"):
            continue
        cells, speeds = [], []
        for isa in isas:
            row, peak = entry.get(isa), _get(results, "peak", isa, "best_gflops")

            def fields(row, peak=peak):
                text = f"{row['median_step_s']:.3f} s · {row['images_per_s']:.1f}/s"
                if "gflops_per_s" in row and peak:
                    text += f" · {100 * row['gflops_per_s'] / peak:.0f}%"
                if row.get("mode") == "amcl_authors":
                    text += f" · φ on {row['pairs_per_step']['phi_evaluations']:,} vectors"
                return text

            cells.append(_cell(row, fields))
            speeds.append(row.get("images_per_s") if row and "error" not in row else None)
        lines.append(f"| {entry['title']} | " + " | ".join([*cells, *ratio(speeds)]) + " |")
    if "loss_time" in measured:
        lines += ["", "**The losses alone** (forward + backward, ms; baseline 1 head / AMCL 1 head / AMCL 3 heads):", "",
                  "| loss | " + " | ".join(isas) + " |", rule]
        for method in registry.names():
            cells = []
            for isa in isas:
                row = _get(results, "loss_time", isa, "losses", method)
                cells.append(f"{row['baseline_1_head']} / {row['amcl_1_head']} / {row['amcl_3_heads']}" if row else "—")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "**Issue 16 targets** (from this run):", "", "| target | " + " | ".join(isas) + " |", rule]
    names = {"simclr_vs_pytorch": "SimCLR baseline images/s ÷ PyTorch plain ≥ 1.0",
             "amcl_vs_authors": "AMCL-SimCLR images/s ÷ PyTorch authors'-AMCL ≥ 1.3",
             "mfu": "MFU of AMCL-SimCLR (÷ best matmul peak of the column) ≥ 60%",
             "overhead": "AMCL step ÷ baseline step ≤ 1.05, all four methods",
             "barlow_loss_ms": "AMCL-Barlow loss (3 heads, fwd + bwd) ≤ 300 ms on AVX2"}
    for check, title in names.items():
        cells = []
        for isa in isas:
            item = results["targets"].get(check, {}).get(isa)
            if item is None:
                cells.append("not measured")
            else:
                verdict = {True: "met", False: "**not met**", None: "info"}[item["met"]]
                cells.append(f"{verdict}: {item['detail']}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    failed = [f"{key} [{isa}]" for key, entry in measured.items() for isa in isas
              if isinstance(entry.get(isa), dict) and "error" in entry[isa]]
    if failed:
        lines += ["", "Failed runs (see the JSON for their errors): " + ", ".join(failed)]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps per ResNet-18 run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to test the script itself")
    parser.add_argument("--isas", nargs="+", default=["native", "avx2"], choices=list(ISAS))
    parser.add_argument("--torch-python", help="a Python with torch (e.g. /tmp/torch-venv/bin/python)")
    parser.add_argument("--only", nargs="+", help="run only the measurements whose key contains one of these words "
                                                  "(peak, simclr, moco, barlow, simsiam, xla, loss_time, torch)")
    parser.add_argument("--out", type=pathlib.Path,
                        help="output path without suffix (default benchmarks/results/isa_compare_cpu2; "
                             "with --smoke <tmpdir>/isa_compare_smoke)")
    args = parser.parse_args()
    out = args.out or (pathlib.Path(tempfile.gettempdir()) / "isa_compare_smoke" if args.smoke
                       else ROOT / "benchmarks" / "results" / "isa_compare_cpu2")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = collect(args, out)
    text = markdown(results, args.isas)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(f"Command: `{results['command']}` ({results['seconds']} s)\n\n{text}")
    print(text)
    for check, per_isa in results["targets"].items():
        for isa, item in per_isa.items():
            verdict = {True: "met", False: "NOT MET", None: "info"}[item["met"]]
            print(f"{check} [{isa}]: {verdict} ({item['detail']})")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
