"""The loss (§5.4) and the corpus BLEU the tasks report."""

from __future__ import annotations

import sacrebleu
import torch
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp


def label_smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed over target tokens (labels != -100): label-smoothed cross-entropy (§5.4, Szegedy et al.: mass
    epsilon spread uniformly over the vocabulary), the plain negative log-likelihood, and the token count."""
    lprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    keep = labels != -100  # (B, T)
    target = labels.masked_fill(~keep, 0).unsqueeze(-1)  # (B, T, 1)
    nll = -lprobs.gather(-1, target).squeeze(-1)[keep]  # (N,)
    smooth = -lprobs.mean(-1)[keep]  # (N,) cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss.sum(), nll.sum(), keep.sum()


def corpus_bleu(hypotheses: list[str], reference_streams: list[list[str | None]]) -> tuple[float, str]:
    """sacreBLEU corpus score and signature. sacreBLEU memoises every line it tokenizes in LRU caches of 65,536
    entries keyed by the tokenizer object, new for each score: over a long run with frequent validation they filled
    up and RSS grew by tens of MB (benchmarks/soak.py). Evaluation lines are not scored twice, so they are dropped."""
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hypotheses, reference_streams).score
    for tokenizer in (Tokenizer13a, TokenizerRegexp):
        cache_clear = getattr(tokenizer.__call__, "cache_clear", None)  # functools.lru_cache's, if the method has one
        if cache_clear is not None:
            cache_clear()
    return score, str(metric.get_signature())


__all__ = ["label_smoothed_loss", "corpus_bleu"]
