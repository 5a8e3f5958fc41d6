"""train.mixed_precision: auto — the hardware's safe default (float32 on CPU, mixed_float16 on GPUs with tensor
cores); bfloat16, native and faster on some CPUs, is not chosen: it cost accuracy on the colour set (README)."""

import json
import pytest

from amcl_keras import autotune, cli, config as config_lib, train
from tests.test_bad_inputs import TINY


@pytest.mark.parametrize("gpus,flags,environ,native", [
    ([(8, 0)], [], {}, True),  # an A100: bfloat16 tensor cores
    ([(9, 0), (8, 6)], [], {}, True),
    ([(8, 0), (7, 5)], [], {}, False),  # one older GPU: no bfloat16 everywhere
    ([(7, 0)], ["avx512_bf16"], {}, False),  # a V100: the CPU's flags do not matter
    ([], ["avx2", "avx512_bf16"], {}, True),
    ([], ["avx2", "amx_bf16"], {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    ([], ["avx2", "avx512_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # capped below the instructions
    ([], ["avx2", "avx512f"], {}, False),
    ([], ["avx2", "avx512_bf16"], {"TF_ENABLE_ONEDNN_OPTS": "0"}, False),  # Eigen's kernels: not native
])
def test_native_bfloat16_is_read_from_the_gpus_or_the_cpu_flags(gpus, flags, environ, native):
    found, why = autotune.native_bfloat16(flags, environ, gpus)
    assert found is native and why


@pytest.mark.parametrize("gpus,expected", [([], "float32"), ([(7, 0)], "mixed_float16"), ([(8, 6)], "mixed_float16"),
                                           ([(6, 1)], "float32"), ([(7, 5), (6, 0)], "float32")])
def test_the_fallback_is_float32_on_cpu_and_float16_on_tensor_core_gpus(gpus, expected):
    assert autotune.fallback_precision(gpus) == expected


def test_a_named_policy_is_kept():
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert autotune.choose_precision(policy) == {"setting": policy, "policy": policy, "source": "config"}


@pytest.mark.parametrize("gpus,flags,policy,bfloat16_note", [
    ([], ["avx2"], "float32", False),
    ([], ["avx2", "avx512_bf16"], "float32", True),  # native and faster, yet not chosen: the accuracy cost
    ([(7, 0)], [], "mixed_float16", False),
    ([(9, 0)], [], "mixed_float16", True),
    ([(6, 1)], [], "float32", False),
])
def test_auto_is_the_hardwares_safe_default_and_says_why_not_bfloat16(gpus, flags, policy, bfloat16_note):
    record = autotune.choose_precision("auto", gpus=gpus, cpu_flags=flags, environ={})
    assert record["setting"] == "auto" and record["policy"] == policy and record["source"]
    assert ("bfloat16" in record) is bfloat16_note
    if bfloat16_note:
        assert "not chosen" in record["bfloat16"] and "mixed_bfloat16" in record["bfloat16"]


def test_the_default_is_auto():
    assert config_lib.load(None, []).train.mixed_precision == "auto"


@pytest.mark.slow
def test_a_run_records_the_choice_and_trains_in_it(tmp_path):
    """`results.json` says what auto chose and why, and the model's layers computed in that policy."""
    built = []
    original = train.build_model

    def recording_build_model(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(model.encoder.layers[-1].compute_dtype)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "build_model", recording_build_model)
        assert cli.main(["train", "--run-dir", str(tmp_path / "run"), *TINY]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    choice = results["mixed_precision_choice"]
    assert choice == autotune.choose_precision("auto") and results["mixed_precision"] == choice["policy"]
    assert built == [{"float32": "float32", "mixed_float16": "float16"}[choice["policy"]]]
