"""The bf16 check at the start of a fit: a measured ratio that tells emulated bf16 from native, and the warning."""

import torch

from lightning_modules.hardware import SLOW_BF16_RATIO, cpu_bf16_slowdown, slow_bf16_advice


def test_the_measured_bf16_slowdown_agrees_with_the_cpus_instruction_sets():
    """Native bf16 (AVX512-BF16, AMX, ARM's BF16) measures under the ratio; a CPU without it measures over it."""
    capabilities = torch.cpu.get_capabilities()
    native = any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    slowdown = cpu_bf16_slowdown()
    assert slowdown > 0
    assert (slowdown > SLOW_BF16_RATIO) == (not native), (capabilities, slowdown)


def test_the_advice_names_the_ratio_and_the_fix_only_when_bf16_is_slow():
    advice = slow_bf16_advice("bf16-mixed", 9.04)
    assert advice is not None and "9.0x" in advice and "--trainer.precision 32-true" in advice
    assert slow_bf16_advice("bf16-true", 3.0) is not None
    assert slow_bf16_advice("bf16-mixed", 0.6) is None  # native bf16: faster than float32
    assert slow_bf16_advice("32-true", 9.0) is None  # float32 asked: nothing to say
