"""The benchmarks' own arithmetic: FLOPs against torch's counter, token-budget batches, the Marian twin."""

import torch
from model_utils import labelled_batch, tiny_config, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from hf_transformer import VaswaniForConditionalGeneration


def test_benchmark_flop_count_matches_torch_flop_counter():
    config = tiny_config()
    model = VaswaniForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")  # the counter sees its matmuls (it has no formula for CPU flash SDPA)
    pairs = [([5] * 9 + [2], [6] * 6 + [2])] * 3  # equal lengths: no padding, so every counted FLOP is useful
    batch = common.collate(pairs, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=batch["decoder_input_ids"], use_cache=False)
    assert common.forward_flops(config, batch) == counter.get_total_flops()
    assert common.training_flops(config, batch) == 3 * counter.get_total_flops()


def test_benchmark_batches_respect_the_budget_and_the_twin_matches():
    pairs = common.wmt_like_pairs(300, vocab_size=101, seed=0)
    lengths = [len(s) for s, _ in pairs]
    assert 20 < sorted(lengths)[150] < 32 and max(lengths) > 60  # median about 25, a long tail
    batches = common.token_budget_batches(pairs, max_tokens=400, count=5, seed=0, device=torch.device("cpu"))
    assert len(batches) == 5
    for batch in batches:
        assert batch["input_ids"].numel() <= 400 and batch["labels"].numel() <= 400
        assert torch.equal(batch["decoder_input_ids"][:, 1:].masked_fill(batch["labels"][:, :-1] == -100, -100),
                           batch["labels"][:, :-1])
    model = tiny_model(seed=5)
    marian = common.marian_twin(model)
    input_ids, attention_mask, labels = labelled_batch()
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        theirs = marian(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
