"""Token-budget batches from a stream (a `datasets.IterableDataset` too large for the disk): bucket a buffer of
examples by length, cut batches, shuffle their order with a generator seeded by (seed, epoch, rank, worker, buffer)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .sampler import TokenBudgetBatchSampler

logger = logging.getLogger(__name__)


class StreamingTokenBudgetBatches(IterableDataset):
    """Token-budget batches from a stream of tokenized examples.

    Args:
        examples: Rows with `source_length`, `target_length` and `flags` (rows with a `drop_flag` bit are skipped).
        collate: Turns a list of rows into a batch.
        max_tokens: Token budget of a batch (exactly one of it and `batch_size`).
        batch_size: Fixed number of examples per batch instead.
        buffer_size: Examples read before they are sorted and batched.
        seed: With the epoch, rank and worker, seeds the order within each buffer.
        rank: This process's rank (only for the seed: the stream is already sharded).
        drop_flag: The bit of `flags` that marks a row to skip.
        report: Summarises the flags of a whole pass (logged at its end: the cleaning report of the stream).
    """

    def __init__(
        self,
        examples: datasets.IterableDataset,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        max_tokens: int | None,
        batch_size: int | None,
        buffer_size: int,
        seed: int,
        rank: int = 0,
        drop_flag: int = 0,
        report: Callable[[np.ndarray], dict[str, int]] | None = None,
    ) -> None:
        self.examples = examples
        self.collate = collate
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.seed = seed
        self.rank = rank
        self.drop_flag = drop_flag
        self.report = report
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass produces."""
        self.epoch = epoch

    def batches_of_buffer(self, buffer: list[dict[str, Any]], worker_id: int, index: int) -> Iterator[dict[str, Any]]:
        entropy = [self.seed, self.epoch, self.rank, worker_id, index]  # the buffer's order: a function of these
        buffer_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        lengths = [(row["source_length"], row["target_length"]) for row in buffer]
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=self.max_tokens, batch_size=self.batch_size,
                                          shuffle=True, seed=buffer_seed)
        for batch in sampler:
            yield self.collate([buffer[i] for i in batch])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = 0 if worker is None else worker.id
        self.examples.set_epoch(self.epoch)
        flags: list[int] = []
        buffer: list[dict[str, Any]] = []
        buffers = 0
        for row in self.examples:
            flags.append(row["flags"])
            if row["flags"] & self.drop_flag:
                continue
            buffer.append(row)
            if len(buffer) >= self.buffer_size:
                yield from self.batches_of_buffer(buffer, worker_id, buffers)
                buffer, buffers = [], buffers + 1
        if buffer:
            yield from self.batches_of_buffer(buffer, worker_id, buffers)
        if self.report is not None:
            logger.info("streamed train split (epoch %d, rank %d, worker %d) cleaning report: %s", self.epoch,
                        self.rank, worker_id, self.report(np.asarray(flags, dtype=np.int64)))


class EpochAwareDataLoader(DataLoader):
    """A DataLoader over a `StreamingTokenBudgetBatches` that tells it the epoch each time it is iterated.

    Lightning calls `set_epoch` only on a loader's sampler, which an iterable dataset cannot have; this loader asks
    `epoch_fn` (the trainer's epoch) when a pass starts, before the dataset is handed to workers.
    """

    def __init__(self, dataset: StreamingTokenBudgetBatches, epoch_fn: Callable[[], int], num_workers: int = 0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, generator=generator)
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(self.epoch_fn())
        return super().__iter__()


__all__ = ["StreamingTokenBudgetBatches", "EpochAwareDataLoader"]
