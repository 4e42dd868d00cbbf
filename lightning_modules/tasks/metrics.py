"""The loss (§5.4) and the corpus scores the tasks report: sacreBLEU's BLEU and chrF, COMET (optional)."""

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


def corpus_bleu(hypotheses: list[str], reference_streams: list[list[str | None]],
                lowercase: bool = False) -> tuple[float, str]:
    """sacreBLEU corpus score and signature; `lowercase`: the tokenized (13a), lowercased BLEU that older papers
    report (`case:lc` in the signature), to compare like for like with them.

    sacreBLEU memoises every line it tokenizes in LRU caches of 65,536 entries keyed by the tokenizer object, new for
    each score: over a long run with frequent validation they filled up and RSS grew by tens of MB
    (benchmarks/soak.py). Evaluation lines are not scored twice, so they are dropped."""
    metric = sacrebleu.BLEU(lowercase=lowercase)
    score = metric.corpus_score(hypotheses, reference_streams).score
    for tokenizer in (Tokenizer13a, TokenizerRegexp):
        cache_clear = getattr(tokenizer.__call__, "cache_clear", None)  # functools.lru_cache's, if the method has one
        if cache_clear is not None:
            cache_clear()
    return score, str(metric.get_signature())


def corpus_chrf(hypotheses: list[str], reference_streams: list[list[str | None]]) -> tuple[float, str]:
    """sacreBLEU's chrF (character 6-grams, beta 2; Popović 2015) and its signature: robust where BLEU's word
    n-grams are sparse (morphologically rich targets, short sentences)."""
    metric = sacrebleu.CHRF()
    return metric.corpus_score(hypotheses, reference_streams).score, str(metric.get_signature())


def translation_scores(hypotheses: list[str], references: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """sacreBLEU's BLEU, lowercased BLEU and chrF of hypotheses against one reference each, and their signatures."""
    bleu, bleu_signature = corpus_bleu(hypotheses, [references])
    bleu_lc, bleu_lc_signature = corpus_bleu(hypotheses, [references], lowercase=True)
    chrf, chrf_signature = corpus_chrf(hypotheses, [references])
    return ({"bleu": bleu, "bleu_lc": bleu_lc, "chrf": chrf},
            {"bleu": bleu_signature, "bleu_lc": bleu_lc_signature, "chrf": chrf_signature})


def comet_score(model_name: str, sources: list[str], hypotheses: list[str], references: list[str],
                batch_size: int = 32) -> float:
    """The system COMET score (Rei et al. 2020) of a neural metric model (e.g. `Unbabel/wmt22-comet-da`, downloaded
    once into the Hugging Face cache), times 100 to read as BLEU does. Needs the optional `unbabel-comet` package."""
    try:
        from comet import download_model, load_from_checkpoint
    except ImportError:
        raise ImportError(
            f"comet_model={model_name!r} needs the optional COMET package: pip install unbabel-comet (or "
            "hf-transformer[comet]); leave comet_model unset to score BLEU and chrF only"
        ) from None
    scorer = load_from_checkpoint(download_model(model_name))
    rows = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    gpus = 1 if torch.cuda.is_available() else 0
    return 100.0 * float(scorer.predict(rows, batch_size=batch_size, gpus=gpus, progress_bar=False).system_score)


__all__ = ["label_smoothed_loss", "corpus_bleu", "corpus_chrf", "comet_score"]
