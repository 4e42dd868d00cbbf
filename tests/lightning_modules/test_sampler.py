"""Tests of `TokenBudgetBatchSampler` (`lightning_modules/data/sampler.py`) on the token lengths of real Multi30k text.

Expected behaviour: the order is a pure function of (seed, epoch) and never touches the global RNG; every example
appears exactly once per epoch; no batch costs more than `max_tokens` padded tokens; under DDP the ranks get
disjoint batches, the same number each, and paired batches of similar cost; a resumed sampler yields exactly the
batches an interrupted iteration had left, and the next epoch in full; padding on Multi30k stays under 5%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from data_utils import multi30k_lines

from hf_transformer.tokenization_vaswani import iter_parallel_texts, train_tokenizer
from lightning_modules.data.sampler import TokenBudgetBatchSampler, padding_fraction

MAX_TOKENS = 4096


@pytest.fixture(scope="module")
def lengths() -> list[tuple[int, int]]:
    """(German, English) token lengths, `</s>` included, of the 29,000 Multi30k training pairs."""
    german = multi30k_lines("train.de.gz")
    english = multi30k_lines("train.en.gz")
    assert len(german) == len(english) == 29000
    tokenizer = train_tokenizer(iter_parallel_texts(zip(german, english)), vocab_size=8000)
    encode = tokenizer.backend_tokenizer.encode_batch
    return [(len(s.ids), len(t.ids)) for s, t in zip(encode(german), encode(english))]


def _cost(batch: list[int], lengths: list[tuple[int, int]]) -> int:
    return len(batch) * max(max(lengths[i]) for i in batch)


def test_order_is_a_pure_function_of_seed_and_epoch(lengths):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, seed=3)
    second = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, seed=3)
    epoch0 = list(first)
    assert epoch0 == list(second) == list(first)  # same twice, and same again on re-iteration
    first.set_epoch(1)
    second.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 == list(second)
    assert epoch1 != epoch0
    # Equal-length examples are mixed differently across epochs, not just the batch order.
    assert sorted(map(sorted, epoch1)) != sorted(map(sorted, epoch0))
    assert list(TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, seed=4)) != epoch0
    # The global RNGs were never used.
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


def test_every_example_once_per_epoch_within_budget(lengths):
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        assert max(_cost(batch, lengths) for batch in batches) <= MAX_TOKENS


def test_padding_fraction_on_multi30k_is_small(lengths):
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS)
    fraction = sampler.padding_fraction()
    fixed = TokenBudgetBatchSampler(lengths, batch_size=64)
    print(
        f"\nMulti30k train, max_tokens={MAX_TOKENS}: {len(sampler)} batches, padding {100 * fraction:.2f}% "
        f"(length-sorted batch_size=64: {100 * fixed.padding_fraction():.2f}%)"
    )
    assert fraction < 0.05
    assert sampler.padding_fraction(list(sampler)) == pytest.approx(fraction)  # same batches, another order
    # Unsorted batches of the same sizes would pad far more: the bucketing is what keeps padding low.
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(lengths))
    sizes = [len(batch) for batch in sampler]
    random_batches = np.split(shuffled, np.cumsum(sizes)[:-1])
    source, target = zip(*lengths)
    assert padding_fraction(random_batches, source, target) > 4 * fraction


def test_two_replicas_are_disjoint_equal_and_paired_by_cost(lengths):
    ranks = [TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, num_replicas=2, rank=r) for r in (0, 1)]
    reference = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS)
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        batches = [list(sampler) for sampler in ranks]
        assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(reference) // 2
        seen = [{i for batch in rank_batches for i in batch} for rank_batches in batches]
        assert not seen[0] & seen[1]
        union = seen[0] | seen[1]
        assert union <= set(range(len(lengths)))
        # Only the odd batch out (at most num_replicas - 1 batches) is missing.
        missing = set(range(len(lengths))) - union
        global_batches = ranks[0].global_batches(epoch)
        assert len(global_batches) == len(reference)
        assert len(missing) <= max(len(batch) for batch in global_batches)
        assert any(set(batch) == missing for batch in global_batches) or not missing
        # Paired batches (the i-th of each rank) come from neighbouring length buckets: similar cost.
        costs = np.array([[_cost(batch, lengths) for batch in rank_batches] for rank_batches in batches])
        ratio = costs.max(axis=0) / costs.min(axis=0)
        longest = [[max(max(lengths[i]) for i in batch) for batch in rank_batches] for rank_batches in batches]
        gaps = np.abs(np.subtract(*longest))
        print(f"\nepoch {epoch}: paired cost ratio median {np.median(ratio):.3f}, max {ratio.max():.3f}; "
              f"longest-example gap median {np.median(gaps)}, max {gaps.max()}")
        # Every pair is close except the one holding the last, partly filled batch of the longest examples.
        assert np.median(ratio) < 1.02 and np.sort(ratio)[-2] < 1.1
        assert np.median(gaps) <= 1


def test_replicas_drop_nothing_when_batches_divide(lengths):
    sampler = TokenBudgetBatchSampler(lengths[:2000], batch_size=100, num_replicas=4, rank=0)
    others = [TokenBudgetBatchSampler(lengths[:2000], batch_size=100, num_replicas=4, rank=r) for r in (1, 2, 3)]
    covered = sorted(i for s in (sampler, *others) for batch in s for i in batch)
    assert covered == list(range(2000))


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_resume_yields_exactly_the_remaining_batches(lengths, num_replicas):
    kwargs = dict(max_tokens=MAX_TOKENS, seed=5, num_replicas=num_replicas, rank=num_replicas - 1)
    reference = TokenBudgetBatchSampler(lengths, **kwargs)
    reference.set_epoch(1)
    full_epoch1 = list(reference)
    reference.set_epoch(2)
    full_epoch2 = list(reference)

    interrupted = TokenBudgetBatchSampler(lengths, **kwargs)
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    done = [next(iterator) for _ in range(7)]
    state = interrupted.state_dict()
    assert {"epoch": 1, "batches_done": 7, "seed": 5}.items() <= state.items()

    resumed = TokenBudgetBatchSampler(lengths, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["batches_done"] == 7
    rest = list(resumed)
    assert done + rest == full_epoch1
    assert len(resumed) == len(full_epoch1)  # len() is the full epoch's
    resumed.set_epoch(2)
    assert list(resumed) == full_epoch2  # later epochs are complete


def test_skip_applies_to_one_iteration_of_its_epoch(lengths):
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS)
    full = list(sampler)
    sampler.skip(10)
    assert list(sampler) == full[10:]
    assert list(sampler) == full  # the skip was used up
    sampler.skip(len(sampler))
    assert list(sampler) == []
    with pytest.raises(ValueError, match=r"batches_done must be an int in \[0, "):
        sampler.skip(len(sampler) + 1)


def test_resume_from_a_state_with_other_settings(lengths):
    saved = TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, seed=1)
    saved.skip(20)
    other = TokenBudgetBatchSampler(lengths, max_tokens=2 * MAX_TOKENS, seed=2)
    with pytest.raises(ValueError, match=r"seed 1 -> 2.*max_tokens 4096 -> 8192"):
        other.load_state_dict(saved.state_dict())
    other.load_state_dict(saved.state_dict(), strict=False)  # approximate: the same fraction of the epoch
    assert len(list(other)) == len(other) - round(20 * len(other) / len(saved))


def test_fixed_batch_size(lengths):
    subset = lengths[:1000]
    sampler = TokenBudgetBatchSampler(subset, batch_size=64)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 16
    assert sorted(len(batch) for batch in batches) == [1000 - 15 * 64] + [64] * 15
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    dropping = TokenBudgetBatchSampler(subset, batch_size=64, drop_last=True)
    assert len(dropping) == 15 and all(len(batch) == 64 for batch in dropping)
    # Length-sorted, so padding stays far below that of batches taken in corpus order.
    in_order = [list(range(start, min(start + 64, 1000))) for start in range(0, 1000, 64)]
    assert sampler.padding_fraction() < 0.5 * sampler.padding_fraction(in_order)


def test_without_shuffle_batches_come_shortest_first(lengths):
    sampler = TokenBudgetBatchSampler(lengths[:3000], max_tokens=1024, shuffle=False)
    batches = list(sampler)
    longest = [max(max(lengths[i]) for i in batch) for batch in batches]
    assert longest == sorted(longest)
    sampler.set_epoch(1)
    assert list(sampler) == batches


def test_single_lengths_are_used_for_both_sides():
    sampler = TokenBudgetBatchSampler([3, 9, 4, 8, 5], max_tokens=16, shuffle=False)
    assert list(sampler) == [[0, 2, 4], [3], [1]]  # 3*5 = 15; then 8 alone (2*9 > 16); 9 alone


def test_too_long_example_is_named():
    lengths = [(10, 12)] * 5 + [(4100, 30)] + [(20, 5000)]
    with pytest.raises(ValueError, match=r"example 5 has length 4100 tokens .*max_tokens=4096 \(2 example"):
        TokenBudgetBatchSampler(lengths, max_tokens=4096)


def test_bad_arguments_are_explained(lengths):
    with pytest.raises(ValueError, match="exactly one of max_tokens"):
        TokenBudgetBatchSampler(lengths, max_tokens=100, batch_size=8)
    with pytest.raises(ValueError, match="exactly one of max_tokens"):
        TokenBudgetBatchSampler(lengths)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, num_replicas=2\)"):
        TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="drop_last=True only applies with batch_size"):
        TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS, drop_last=True)
    with pytest.raises(ValueError, match="fewer than num_replicas=4"):
        TokenBudgetBatchSampler([(5, 5)] * 10, max_tokens=100, num_replicas=4)
    with pytest.raises(ValueError, match="lengths is empty"):
        TokenBudgetBatchSampler([], max_tokens=100)
    # What Lightning does with use_distributed_sampler=True: re-create the batch sampler around its sampler.
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        TokenBudgetBatchSampler(DistributedSampler(range(10), num_replicas=2, rank=0), batch_size=4, drop_last=False)
    with pytest.raises(ValueError, match="missing"):
        TokenBudgetBatchSampler(lengths, max_tokens=MAX_TOKENS).load_state_dict({"seed": 0})


def test_lightning_finds_set_epoch(lengths):
    """Lightning calls `set_epoch` on `dataloader.sampler` and `dataloader.batch_sampler.sampler` only."""
    from lightning.fabric.utilities.data import _set_sampler_epoch  # the function Lightning's fit loop calls

    sampler = TokenBudgetBatchSampler(lengths[:500], max_tokens=512)
    loader = torch.utils.data.DataLoader(range(500), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3
