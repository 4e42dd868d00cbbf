"""Token-budget batching (fairseq `--max-tokens`), length bucketing, DDP sharding and exact mid-epoch resume.

The paper (§5.1) batches "sentence pairs together by approximate sequence length", each batch holding about 25k
source and 25k target tokens. `TokenBudgetBatchSampler` does the same on a map-style dataset whose token lengths
are known: it sorts the examples by length and fills each batch up to `max_tokens` padded tokens, so batches carry
little padding and a similar cost, then shuffles the order of the batches every epoch.

Everything is a pure function of `(seed, epoch)`: the sampler never touches the global RNG, so two runs (or a run
and its resumption) see the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A `torch.Generator` seeded from `(seed, epoch, stream)` through numpy's `SeedSequence` (so distinct tuples
    give independent streams); `stream` separates the draws of one epoch that serve different purposes."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def padding_fraction(
    batches: Iterable[Sequence[int]], source_lengths: Sequence[int], target_lengths: Sequence[int]
) -> float:
    """Fraction of pad tokens in `batches` once each side is right-padded to its longest example.

    Counts source and target together: (padded slots - real tokens) / padded slots. 0.0 for no batches.
    """
    source = np.asarray(source_lengths, dtype=np.int64)
    target = np.asarray(target_lengths, dtype=np.int64)
    slots = 0
    tokens = 0
    for batch in batches:
        index = np.asarray(batch, dtype=np.int64)
        if index.size == 0:
            continue
        src, tgt = source[index], target[index]
        slots += index.size * (int(src.max()) + int(tgt.max()))
        tokens += int(src.sum()) + int(tgt.sum())
    return 0.0 if slots == 0 else (slots - tokens) / slots


def check_arguments(lengths: Any, max_tokens: int | None, batch_size: int | None, seed: int, num_replicas: int,
                    rank: int, drop_last: bool) -> None:
    """Raise a TypeError / ValueError naming the first bad argument of `TokenBudgetBatchSampler` and the fix."""
    if isinstance(lengths, Sampler):
        # Lightning re-instantiates a batch sampler with its DistributedSampler as first argument when the
        # trainer has `use_distributed_sampler=True`: that would silently give every rank the wrong batches.
        raise TypeError(
            "TokenBudgetBatchSampler got a sampler instead of per-example lengths: Lightning is trying to inject "
            "its DistributedSampler. This sampler shards across ranks itself: create the Trainer with "
            "`use_distributed_sampler=False` (YAML: `trainer: {use_distributed_sampler: false}`)."
        )
    if (max_tokens is None) == (batch_size is None):
        raise ValueError(
            f"give exactly one of max_tokens (token budget per batch) and batch_size (examples per batch), got "
            f"max_tokens={max_tokens!r} and batch_size={batch_size!r}"
        )
    for name, value in (("max_tokens", max_tokens), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}")
    if drop_last and max_tokens is not None:
        raise ValueError(
            "drop_last=True only applies with batch_size (it drops the last, smaller batch); token-budget "
            "batches are filled up to max_tokens already: leave drop_last=False"
        )


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices: length-bucketed batches of at most `max_tokens` padded tokens.

    Args:
        lengths: Per example, `(source_length, target_length)` in tokens, or a single length (then used for both).
        max_tokens: Token budget of a batch. A batch's cost is `n_examples * max(longest source, longest target)`,
            its padded size. Exactly one of `max_tokens` / `batch_size`.
        batch_size: Fixed number of examples per batch instead (still length-sorted, so padding stays small).
        shuffle: Shuffle the order of the batches every epoch (and mix examples of equal length). Without it the
            batches come shortest first, the same every epoch.
        seed: Seed of the order; with the epoch it determines everything.
        num_replicas: Number of DDP ranks sharing the data.
        rank: This rank, in `[0, num_replicas)`.
        drop_last: Drop the last, smaller batch; only with `batch_size` (token-budget batches are already as full as
            the budget allows).

    Order of an epoch: the examples are sorted by `(max(src, tgt), src, tgt)` with ties broken at random (seeded by
    `(seed, epoch)`), cut into batches filled up to the budget (the batch boundaries are the same every epoch, so
    `len()` is too), and runs of `num_replicas` consecutive batches, which have a similar cost, form a group. Groups
    are shuffled; rank r takes member r of each group, so ranks step through batches of similar cost together and
    all ranks get the same number of batches. When the number of batches is not a multiple of `num_replicas`, the
    `len(batches) % num_replicas` left over are dropped for that epoch: chosen at random each epoch with `shuffle`
    (so no example, e.g. the longest ones, is systematically left out), the trailing ones without it. With
    `num_replicas=1` nothing is dropped.

    Resume: `state_dict()` records the epoch and how many batches were handed out in it; `load_state_dict()` (or
    `skip()`) makes the next iteration of that epoch start after that many batches; later epochs start at 0. Under
    a `DataLoader` with prefetching the sampler hands out more batches than were trained: pass the trained count
    to `skip()` (the data module reads it from the trainer).
    """

    def __init__(
        self,
        lengths: Sequence[tuple[int, int]] | Sequence[int],
        max_tokens: int | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        check_arguments(lengths, max_tokens, batch_size, seed, num_replicas, rank, drop_last)
        source, target = self._split_lengths(lengths)

        self.source_lengths = source
        self.target_lengths = target
        self.costs = np.maximum(source, target)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last

        too_long = np.flatnonzero(self.costs > max_tokens) if max_tokens is not None else []
        if len(too_long):
            index = int(too_long[0])
            raise ValueError(
                f"example {index} has length {int(self.costs[index])} tokens (source {int(source[index])}, "
                f"target {int(target[index])}), over the batch budget max_tokens={max_tokens} "
                f"({len(too_long)} example(s) are): raise max_tokens, or drop/truncate examples longer than it"
            )
        self._boundaries = self._batch_boundaries(np.sort(self.costs, kind="stable"))
        num_batches = len(self._boundaries) - 1
        if num_batches < num_replicas:
            raise ValueError(
                f"{len(self.costs)} examples make only {num_batches} batch(es), fewer than num_replicas="
                f"{num_replicas}: every rank needs at least one; lower max_tokens/batch_size or use fewer ranks"
            )
        self.num_global_batches = num_batches

        self.epoch = 0
        self._pending_skip: tuple[int, int] | None = None  # (epoch, batches) to skip in that epoch's next iteration
        self._batches_done = 0  # batches handed out (or skipped) in the current epoch

    @staticmethod
    def _split_lengths(lengths: Sequence[tuple[int, int]] | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) int64 arrays from `lengths`, checked."""
        if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
            raise TypeError(
                f"lengths must be a sequence of (source_length, target_length) pairs or of ints, got "
                f"{type(lengths).__name__}"
            )
        array = np.asarray(lengths)
        if array.size == 0:
            raise ValueError("lengths is empty: the dataset has no examples to batch")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"lengths must hold ints (token counts), got dtype {array.dtype}")
        array = array.astype(np.int64)
        if array.ndim == 1:
            source = target = array
        elif array.ndim == 2 and array.shape[1] == 2:
            source, target = array[:, 0].copy(), array[:, 1].copy()
        else:
            raise ValueError(
                f"lengths must be a sequence of ints or of (source_length, target_length) pairs, got shape "
                f"{array.shape}"
            )
        if (array < 0).any():
            index = int(np.flatnonzero((array < 0).reshape(len(array), -1).any(axis=1))[0])
            raise ValueError(f"lengths[{index}] is negative: {lengths[index]!r}")
        return source, target

    def _batch_boundaries(self, sorted_costs: np.ndarray) -> np.ndarray:
        """Start offsets of the batches in length-sorted order, plus the end: `[0, ..., n]`."""
        n = len(sorted_costs)
        if self.batch_size is not None:
            starts = list(range(0, n, self.batch_size))
            if self.drop_last and n % self.batch_size:
                n = starts.pop()
            return np.asarray([*starts, n], dtype=np.int64)
        budget = self.max_tokens
        starts = []
        costs = sorted_costs.tolist()
        i = 0
        while i < n:
            starts.append(i)
            count = 0
            # Sorted ascending, so the example being added is the longest of the batch so far.
            while i < n and (count + 1) * costs[i] <= budget:
                count += 1
                i += 1
        return np.asarray([*starts, n], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration produces (Lightning calls this every epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches_done = 0

    @property
    def sampler(self) -> TokenBudgetBatchSampler:
        """This sampler itself: Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, not on the batch
        sampler, so exposing itself here is what makes Lightning advance the epoch."""
        return self

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of `epoch` (default: the current one) in length-sorted order, before sharding."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            tie_break = torch.randperm(len(self.costs), generator=epoch_generator(self.seed, epoch)).numpy()
        else:
            tie_break = np.arange(len(self.costs))
        # np.lexsort sorts by the last key first.
        order = np.lexsort((tie_break, self.target_lengths, self.source_lengths, self.costs))
        bounds = self._boundaries
        return [order[bounds[i] : bounds[i + 1]].tolist() for i in range(len(bounds) - 1)]

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of `epoch` (default: the current one), in the order they are yielded."""
        epoch = self.epoch if epoch is None else epoch
        batches = self.global_batches(epoch)
        replicas = self.num_replicas
        leftover = len(batches) % replicas
        generator = epoch_generator(self.seed, epoch, stream=1)
        if leftover:
            if self.shuffle:
                dropped = set(torch.randperm(len(batches), generator=generator)[:leftover].tolist())
                batches = [batch for i, batch in enumerate(batches) if i not in dropped]
            else:
                batches = batches[: len(batches) - leftover]
        groups = [batches[i : i + replicas] for i in range(0, len(batches), replicas)]
        if self.shuffle:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        return [group[self.rank] for group in groups]

    def __len__(self) -> int:
        """Batches this rank gets in a full epoch (the same every epoch; a resumed epoch yields fewer)."""
        return self.num_global_batches // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        start = 0
        if self._pending_skip is not None and self._pending_skip[0] == epoch:
            start = self._pending_skip[1]
        self._pending_skip = None
        batches = self.epoch_batches(epoch)
        self._batches_done = start
        for position in range(start, len(batches)):
            self._batches_done = position + 1
            yield batches[position]

    def skip(self, batches_done: int) -> None:
        """Make the next iteration of the current epoch start after `batches_done` batches (later epochs: at 0)."""
        if isinstance(batches_done, bool) or not isinstance(batches_done, int) or not 0 <= batches_done <= len(self):
            raise ValueError(
                f"batches_done must be an int in [0, {len(self)}] (the batches of an epoch on this rank), got "
                f"{batches_done!r}"
            )
        self._pending_skip = (self.epoch, batches_done)
        self._batches_done = batches_done

    def padding_fraction(self, batches: Iterable[Sequence[int]] | None = None) -> float:
        """Fraction of pad tokens (source and target together) in `batches`; default: all of this epoch's batches."""
        batches = self.global_batches() if batches is None else batches
        return padding_fraction(batches, self.source_lengths, self.target_lengths)

    def _signature(self) -> dict[str, Any]:
        """What determines the batches: a resume state only applies to a sampler with the same values."""
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
            "max_tokens": self.max_tokens,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "num_examples": len(self.costs),
            "num_batches": len(self),
        }

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batches_done", "seed", "shuffle", "num_replicas", "max_tokens", "batch_size", "drop_last",
        "num_examples", "num_batches"}`; `batches_done` counts the batches handed out in `epoch` so far."""
        return {"epoch": self.epoch, "batches_done": self._batches_done, **self._signature()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Resume: select `state["epoch"]` and skip its first `state["batches_done"]` batches on the next iteration.

        With `strict`, a state saved by a sampler with other settings (seed, budget, number of ranks, dataset size)
        raises a ValueError naming them, since its batches would not be these. Without it, the same fraction of the
        epoch is skipped (an approximate resume).
        """
        missing = [key for key in ("epoch", "batches_done") if key not in state]
        if missing:
            raise ValueError(
                f"sampler state is missing {missing}: pass what state_dict() returned, got keys {sorted(state)}"
            )
        changed = {
            key: (state[key], value)
            for key, value in self._signature().items()
            if key in state and state[key] != value
        }
        batches_done = int(state["batches_done"])
        if changed:
            details = ", ".join(f"{key} {saved!r} -> {now!r}" for key, (saved, now) in changed.items())
            if strict:
                raise ValueError(
                    f"cannot resume this sampler exactly from a state saved with other settings ({details}): use the "
                    f"same settings, or load_state_dict(state, strict=False) to skip the same fraction of the epoch"
                )
            saved_batches = int(state.get("num_batches") or len(self))
            batches_done = min(len(self), round(batches_done * len(self) / max(saved_batches, 1)))
        self.set_epoch(int(state["epoch"]))
        self.skip(batches_done)


class EvalBatchSampler(Sampler[list[int]]):
    """Length-sorted batches for evaluation and prediction: no shuffle, the same every time, sharded disjointly.

    Batches are made as by `TokenBudgetBatchSampler(shuffle=False)` (shortest first, so generation wastes little
    on padding); rank r takes batches r, r + num_replicas, ...: ranks may get one batch more or less than others
    (gather the results by example id). No examples gives no batches.

    Args:
        lengths: Per example, `(source_length, target_length)` or a single length.
        max_tokens: Token budget of a batch (exactly one of it and `batch_size`).
        batch_size: Fixed number of examples per batch instead.
        num_replicas: Number of ranks sharing the data.
        rank: This rank.
        order_seed: None: shortest batches first. A seed: the same batches in a fixed random order, so that a limit
            on the number of batches (`trainer.limit_val_batches`) keeps batches of every length, not the shortest.
    """

    def __init__(
        self,
        lengths: Sequence[tuple[int, int]] | Sequence[int],
        max_tokens: int | None = None,
        batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        order_seed: int | None = None,
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}")
        self.num_replicas = num_replicas
        self.rank = rank
        if len(lengths) == 0:
            self.batches: list[list[int]] = []
            return
        ordered = TokenBudgetBatchSampler(lengths, max_tokens=max_tokens, batch_size=batch_size, shuffle=False)
        batches = ordered.global_batches()
        if order_seed is not None:
            permutation = torch.randperm(len(batches), generator=epoch_generator(order_seed, 0, stream=7)).tolist()
            batches = [batches[i] for i in permutation]
        self.batches = batches[rank::num_replicas]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


__all__ = ["TokenBudgetBatchSampler", "EvalBatchSampler", "epoch_generator", "padding_fraction"]
