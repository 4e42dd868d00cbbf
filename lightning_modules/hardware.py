"""What this machine does fast, measured rather than guessed from its name: checked once as training starts
(`TaskModule.on_train_start`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# A CPU that multiplies bf16 natively (AVX512-BF16, AMX, ARM's BF16) trains faster in bf16 autocast than in float32
# (1.4x the steps on an AMD EPYC with AVX512-BF16). One without (AVX2 only) emulates it: on a 2-core AMD EPYC with
# AVX2, a 512 x 512 product took 60 to 100x its float32 time, and the en->de CPU recipe trained at 220 to 250
# tokens/s in bf16-mixed against 3,410 on average in float32 (RESULTS.md). Above this ratio is the emulated case.
SLOW_BF16_RATIO = 2.0


def best_time(product: Callable[[], torch.Tensor], repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one untimed call (allocation, kernel selection)."""
    product()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_bf16_slowdown(size: int = 512, repeats: int = 3) -> float:
    """The time of a (size x size) @ (size x size) product under bf16 autocast on the CPU over that of the same float32
    product, with the current torch threads: well below 1 with native bf16, several times 1 without."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    float32 = best_time(lambda: a @ b, repeats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = best_time(lambda: a @ b, repeats)
    return bf16 / float32


def slow_bf16_advice(precision: str, slowdown: float) -> str | None:
    """The warning for `precision` on a CPU whose bf16 products take `slowdown` times the float32 ones, or None."""
    if not precision.startswith("bf16") or slowdown <= SLOW_BF16_RATIO:
        return None
    return (f"precision {precision!r} on a CPU without native bf16: a bf16 matrix product measured {slowdown:.1f}x the "
            f"time of the float32 one here, so training runs several times slower than in float32 (native bf16 needs "
            f"AVX512-BF16, AMX or ARM's BF16). Rerun with `--trainer.precision 32-true`; the CPU recipes' step counts "
            f"and time bounds were set for a CPU with native bf16 (their headers say what to change).")
