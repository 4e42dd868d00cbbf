"""A CPU demo of the whole model contract, no download needed: `python -m hf_transformer.demo`.

It generates a parallel corpus (numbers written in digits -> the same numbers in English words, e.g.
"40213" -> "forty thousand two hundred thirteen": the model must read the digits in groups and reorder them into
words), trains a joint BPE tokenizer and a small Transformer with the paper's optimiser, schedule and label
smoothing (§5.3, §5.4), saves the model and tokenizer with `save_pretrained`, loads them back through
`AutoModelForSeq2SeqLM` / `AutoTokenizer`, and reports exact match on held-out numbers with beam search (§6.1).
On 2 CPU cores it takes about three minutes.
"""

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from .configuration_vaswani import VaswaniConfig
from .modeling_vaswani import VaswaniForConditionalGeneration
from .tokenization_vaswani import iter_parallel_texts, train_tokenizer
from .translation import translate

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10^6, e.g. 40213 -> "forty thousand two hundred thirteen"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_to_words(n % 100))
    return number_to_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_to_words(n % 1000))


def make_corpus(num_train: int, num_test: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Disjoint train and test pairs (digits, words); numbers drawn log-uniformly so short ones appear too."""
    rng = random.Random(seed)
    numbers: set[int] = set()
    while len(numbers) < num_train + num_test:
        numbers.add(int(10 ** rng.uniform(0, 6)) - 1)
    ordered = sorted(numbers)
    rng.shuffle(ordered)
    pairs = [(str(n), number_to_words(n)) for n in ordered]
    return pairs[:num_train], pairs[num_train:]


def inverse_sqrt_schedule(d_model: int, warmup: int, scale: float):
    """§5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), times `scale`."""
    return lambda step: scale * d_model**-0.5 * min((step + 1) ** -0.5, (step + 1) * warmup**-1.5)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_pairs, test_pairs = make_corpus(args.train_pairs, args.test_pairs, args.seed)
    print(f"corpus: {len(train_pairs)} training pairs, {len(test_pairs)} held-out pairs, e.g. {train_pairs[0]}")

    tokenizer = train_tokenizer(iter_parallel_texts(train_pairs), vocab_size=args.vocab_size)
    config = VaswaniConfig(
        vocab_size=len(tokenizer), d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model, dropout=0.1, max_position_embeddings=128,
    )
    model = VaswaniForConditionalGeneration(config)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")

    sources = tokenizer([s for s, _ in train_pairs])["input_ids"]
    targets = tokenizer([t for _, t in train_pairs])["input_ids"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)  # §5.3
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(args.d_model, 400, args.lr_scale))
    start, step = time.time(), 0
    model.train()
    while step < args.steps:
        order = torch.randperm(len(sources)).tolist()
        for begin in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[begin : begin + args.batch_size]
            inputs = tokenizer.pad({"input_ids": [sources[i] for i in batch]}, return_tensors="pt")
            labels = tokenizer.pad({"input_ids": [targets[i] for i in batch]}, return_tensors="pt")["input_ids"]
            labels[labels == tokenizer.pad_token_id] = -100
            logits = model(**inputs, labels=labels).logits
            loss = torch.nn.functional.cross_entropy(  # §5.4: label smoothing 0.1
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0:
                print(f"step {step:5d}  loss {loss.item():.3f}  lr {schedule.get_last_lr()[0]:.2e}  "
                      f"{time.time() - start:.0f}s", flush=True)
            if step >= args.steps:
                break

    output = Path(args.output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    print(f"saved model and tokenizer to {output}")

    model = AutoModelForSeq2SeqLM.from_pretrained(output)  # what a user of the folder does
    tokenizer = AutoTokenizer.from_pretrained(output)
    hypotheses = translate([s for s, _ in test_pairs], model, tokenizer, batch_size=64)
    correct = sum(h == t for h, (_, t) in zip(hypotheses, test_pairs))
    for (source, target), hypothesis in list(zip(test_pairs, hypotheses))[:5]:
        print(f"  {source:>7} -> {hypothesis}   ({'ok' if hypothesis == target else 'expected: ' + target})")
    print(f"exact match on {len(test_pairs)} held-out numbers (beam 4, alpha 0.6): {correct / len(test_pairs):.1%}; "
          f"training took {time.time() - start:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/demo", help="where the HF model folder is written")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=400)
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--train-pairs", type=int, default=20000)
    parser.add_argument("--test-pairs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
