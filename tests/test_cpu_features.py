import warnings

import pytest

from keras_flow import cpu_features
from keras_flow import cpu_threads
from keras_flow import training

X86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve {extra}\nCPU implementer\t: 0x41\n"


def cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, native", [
    (X86.format(extra="amx_bf16 amx_tile"), True),
    (X86.format(extra="avx512_bf16"), True),
    (X86.format(extra="avx512_vnni"), False),
    (ARM.format(extra="bf16 i8mm"), True),
    (ARM.format(extra="i8mm"), False),
    ("processor\t: 0\n", None),
])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, text, native):
    path = cpuinfo(tmp_path, text)
    assert cpu_features.native_bfloat16(path) is native
    message = cpu_features.bfloat16_warning(path)
    if native is False:
        assert "--mixed-precision off" in message and path in message
    else:
        assert message is None


def test_no_cpuinfo_means_unknown_and_no_warning(tmp_path):
    missing = str(tmp_path / "missing")
    assert cpu_features.native_bfloat16(missing) is None
    assert cpu_features.bfloat16_warning(missing) is None


@pytest.mark.parametrize("extra, precision, strategy, warns", [
    ("avx512_vnni", "bf16", "default", True),
    ("amx_bf16", "bf16", "default", False),
    ("avx512_vnni", "off", "default", False),
    ("avx512_vnni", "bf16", "tpu", False),
])
def test_training_warns_about_emulated_bfloat16(tmp_path, monkeypatch, extra, precision,
                                                strategy, warns):
    monkeypatch.setattr(cpu_features, "CPUINFO", cpuinfo(tmp_path, X86.format(extra=extra)))
    monkeypatch.setattr(cpu_threads, "has_gpu", lambda: False)
    config = training.TrainConfig(mixed_precision=precision, strategy=strategy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = training.warn_about_precision(config)
    assert (message is not None) == warns
    assert [str(w.message) for w in caught] == ([message] if warns else [])
