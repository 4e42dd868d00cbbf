"""The loss (§5.4) and the learning-rate schedule (§5.3) of the training module."""

import math

import pytest
import torch
from torch import nn

from lightning_modules.tasks.metrics import label_smoothed_loss
from lightning_modules.schedules import InverseSquareRootLR, paper_adam


def test_label_smoothed_loss_matches_torch_cross_entropy_and_ignores_padding():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    labels[1, 3:] = -100
    loss, nll, tokens = label_smoothed_loss(logits, labels, epsilon=0.1)
    keep = labels != -100
    assert tokens.item() == keep.sum().item() == 13
    expected = nn.functional.cross_entropy(logits[keep], labels[keep], label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(nll, nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
    plain, _, _ = label_smoothed_loss(logits, labels, epsilon=0.0)
    torch.testing.assert_close(plain, nll)


def test_schedule_is_equation_3_of_the_paper():
    optimizer = paper_adam([nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9
    schedule = InverseSquareRootLR(optimizer, d_model=512, warmup_steps=4000)
    rates = []
    for _ in range(10000):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    for step in (1, 100, 4000, 9999):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert rates[step - 1] == pytest.approx(expected, rel=1e-12)
    assert max(range(10000), key=rates.__getitem__) == 3999  # the peak is at step 4000
    assert rates[3999] == pytest.approx(512**-0.5 * 4000**-0.5)  # about 7.0e-4


def test_peak_lr_form_and_bad_arguments():
    optimizer = paper_adam([nn.Parameter(torch.zeros(1))])
    schedule = InverseSquareRootLR(optimizer, warmup_steps=10, peak_lr=5e-4)
    assert schedule.rate(10) == pytest.approx(5e-4) and schedule.rate(40) == pytest.approx(2.5e-4)
    assert schedule.rate(5) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="warmup_steps"):
        InverseSquareRootLR(optimizer, warmup_steps=0)
    assert math.isclose(InverseSquareRootLR(optimizer, d_model=64, warmup_steps=100, scale=2.0).rate(100),
                        2.0 * 64**-0.5 * 100**-0.5)


def test_cooldown_falls_linearly_to_zero_at_the_last_step_and_the_task_sets_the_length():
    optimizer = paper_adam([nn.Parameter(torch.zeros(1))])
    plain = InverseSquareRootLR(optimizer, d_model=256, warmup_steps=100)
    schedule = InverseSquareRootLR(optimizer, d_model=256, warmup_steps=100, cooldown_steps=200, total_steps=1000)
    rates = []
    for _ in range(1000):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:800] == pytest.approx([plain.rate(step) for step in range(1, 801)], rel=1e-12)  # untouched
    assert rates[899] == pytest.approx(plain.rate(900) * 101 / 200)  # halfway down the cooldown
    assert rates[999] == pytest.approx(plain.rate(1000) / 200) and all(b < a for a, b in zip(rates[800:], rates[801:]))
    with pytest.raises(ValueError, match="cooldown_steps"):
        InverseSquareRootLR(optimizer, cooldown_steps=-1)
    with pytest.raises(ValueError, match="does not fit in a run of 250 steps.*max_steps` >= 300"):
        InverseSquareRootLR(optimizer, warmup_steps=100, cooldown_steps=200, total_steps=250)


def test_lowercased_bleu_ignores_case_only():
    from lightning_modules.tasks.metrics import corpus_bleu

    hypotheses, references = ["A Dog runs on the Grass ."], [["a dog runs on the grass ."]]
    cased, signature = corpus_bleu(hypotheses, references)
    lowered, lowered_signature = corpus_bleu(hypotheses, references, lowercase=True)
    assert cased < 50 and lowered == pytest.approx(100.0)
    assert "case:mixed" in signature and "case:lc" in lowered_signature and "tok:13a" in lowered_signature


def test_corpus_bleu_scores_and_keeps_no_tokenized_lines():
    """Validation BLEU over a long run must not accumulate sacreBLEU's per-line tokenizer caches (soak: RSS growth)."""
    import sacrebleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from lightning_modules.tasks.metrics import corpus_bleu

    hypotheses = [f"a small dog number {i} runs home" for i in range(200)]
    references = [f"a small dog number {i} runs to its home" for i in range(200)]
    expected = sacrebleu.BLEU().corpus_score(hypotheses, [references]).score
    assert Tokenizer13a.__call__.cache_info().currsize > 0  # sacreBLEU alone keeps every line it tokenized
    score, signature = corpus_bleu(hypotheses, [references])
    assert score == expected and "tok:13a" in signature
    assert Tokenizer13a.__call__.cache_info().currsize == 0
