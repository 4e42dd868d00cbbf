"""The paper's optimiser (§5.3): Adam(beta1=0.9, beta2=0.98, eps=1e-9) with warmup then inverse-square-root decay.

A task module is given an optimiser factory (`OptimizerCallable`: parameters -> optimiser) and a schedule factory
(`ScheduleCallable`: optimiser, d_model -> schedule). The schedule gets the model's `d_model` from the task, which reads
it from the model's configuration: a recipe names only the warmup (`InverseSquareRootLR` with `init_args:
{warmup_steps: 4000}`), never a second copy of `d_model`.
"""

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler


def paper_adam(params: Iterable, lr: float = 1.0, fused: bool | None = None) -> Adam:
    """Adam with the paper's betas and epsilon (§5.3). The learning rate is set by `InverseSquareRootLR`.

    fused: torch's fused Adam kernel (one kernel for all parameters instead of a loop of small ones; about 5x faster
    updates on CPU and fewer launches on CUDA, same result). None = on when every parameter is a plain CPU or CUDA
    tensor, off for sharded (FSDP2 DTensor) parameters, where torch's default implementation is kept.
    """
    params = list(params)
    if fused is None:
        tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
        fused = bool(tensors) and all(
            type(p) in (torch.Tensor, nn.Parameter) and p.device.type in ("cpu", "cuda") and p.is_floating_point()
            for p in tensors
        )
    return Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=fused or None)


#: (optimiser, the model's d_model) -> learning-rate schedule, stepped every optimiser step.
ScheduleCallable = Callable[[Optimizer, int], LRScheduler]


class InverseSquareRootLR(LRScheduler):
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)  (§5.3, equation 3), times `scale`.

    With `peak_lr` set, fairseq's `inverse_sqrt` form instead: peak_lr * min(step / warmup, sqrt(warmup / step)),
    the same curve rescaled so that its maximum, reached at `warmup_steps`, is `peak_lr`. The optimiser's own
    learning rate is ignored: this schedule sets it (step it every optimiser step, `interval: step`).

    With `cooldown_steps` set, the rate falls linearly to 0 over the last `cooldown_steps` of `total_steps`: the
    annealing that a run of fixed length gains from (a "warmup-stable-decay" cooldown, Hägele et al. 2024). A task
    fills `total_steps` from `trainer.max_steps` when it is left None.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        d_model: int = 512,
        warmup_steps: int = 4000,
        scale: float = 1.0,
        peak_lr: float | None = None,
        cooldown_steps: int = 0,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ):
        if warmup_steps < 1:
            raise ValueError(f"`warmup_steps` must be >= 1, got {warmup_steps}.")
        if cooldown_steps < 0:
            raise ValueError(f"`cooldown_steps` must be >= 0 (0 = no cooldown), got {cooldown_steps}.")
        if d_model < 1:
            raise ValueError(f"`d_model` must be >= 1, got {d_model}.")
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        self.scale = scale
        self.peak_lr = peak_lr
        self.cooldown_steps = cooldown_steps
        self.total_steps: int | None = None
        if total_steps is not None:
            self.set_total_steps(total_steps)
        super().__init__(optimizer, last_epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """The run's length, where the cooldown ends (a task passes `trainer.max_steps`)."""
        if self.cooldown_steps and not self.warmup_steps + self.cooldown_steps <= total_steps:
            raise ValueError(
                f"the cooldown of {self.cooldown_steps} steps after {self.warmup_steps} warmup steps does not fit in "
                f"a run of {total_steps} steps: set `trainer.max_steps` >= {self.warmup_steps + self.cooldown_steps} "
                "or a shorter `cooldown_steps`."
            )
        self.total_steps = total_steps

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume; the run's own length (set by the task from this run's `trainer.max_steps`) is kept."""
        total_steps = self.total_steps
        super().load_state_dict(state_dict)
        if total_steps is not None:
            self.total_steps = total_steps

    def rate(self, step: int) -> float:
        step = max(step, 1)
        if self.peak_lr is not None:
            rate = self.peak_lr * min(step / self.warmup_steps, (self.warmup_steps / step) ** 0.5)
        else:
            rate = self.scale * self.d_model**-0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)
        if self.cooldown_steps and self.total_steps is not None:  # the length is set by the task before step 1
            rate *= min(1.0, max(0.0, (self.total_steps - step + 1) / self.cooldown_steps))
        return rate

    def get_lr(self) -> list[float]:
        # last_epoch counts scheduler steps: 0 before the first optimiser step, which therefore uses step 1
        return [self.rate(self.last_epoch + 1) for _ in self.optimizer.param_groups]


def inverse_sqrt_schedule(optimizer: Optimizer, d_model: int) -> InverseSquareRootLR:
    """The paper's schedule for a model of width `d_model`: 4000 warmup steps."""
    return InverseSquareRootLR(optimizer, d_model=d_model, warmup_steps=4000)


__all__ = ["paper_adam", "InverseSquareRootLR", "ScheduleCallable", "inverse_sqrt_schedule"]
