"""Small models and inputs shared by the model tests."""

import json

import torch

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration


def tiny_config(**overrides) -> VaswaniConfig:
    """Two layers of width 32 over a 101-token vocabulary: big enough to exercise everything, fast on CPU."""
    values = dict(
        vocab_size=101,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.0,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return VaswaniConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> VaswaniForConditionalGeneration:
    torch.manual_seed(seed)
    return VaswaniForConditionalGeneration(tiny_config(**overrides)).eval()


def source_batch(seed: int = 1, batch: int = 3, length: int = 9, vocab: int = 101):
    """Right-padded source ids (ids >= 4: no special tokens inside), ending in </s>, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # rows get shorter: row r has `length - 2 r` real tokens
        real = max(2, length - 2 * row)
        ids[row, real:] = 0
        mask[row, real:] = 0
        ids[row, real - 1] = 2
    ids[0, -1] = 2
    return ids, mask


def reverse_task_batch(generator: torch.Generator, batch: int, max_length: int = 8, vocab: int = 101):
    """Random sequences of 1..max_length tokens -> the same tokens reversed. Returns padded source ids + </s>,
    their mask, and labels (reversed tokens + </s>, -100 on padding)."""
    lengths = torch.randint(1, max_length + 1, (batch,), generator=generator)
    input_ids = torch.zeros(batch, max_length + 1, dtype=torch.long)
    labels = torch.full((batch, max_length + 1), -100, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        tokens = torch.randint(4, vocab, (length,), generator=generator)
        input_ids[row, : length + 1] = torch.cat([tokens, torch.tensor([2])])
        labels[row, : length + 1] = torch.cat([tokens.flip(0), torch.tensor([2])])
    return input_ids, (input_ids != 0).long(), labels


def train_reverse_model(steps: int, seed: int = 0, peak_lr: float = 5e-3, warmup: int = 60, **overrides):
    """Adam(0.9, 0.98, 1e-9) with the paper's warmup then inverse-square-root decay (§5.3) on the reverse task,
    batches of 64; returns the model in eval mode."""
    model = tiny_model(seed=seed, **overrides).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, (warmup / (step + 1)) ** 0.5)
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        input_ids, attention_mask, labels = reverse_task_batch(generator, 64)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def remote_code_beams_snippet(source: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """Code for a fresh interpreter (see helpers.run_python): loads `source` (a folder or a Hub repo id) with
    trust_remote_code while our package is NOT importable, and prints the beam-4 output as a RESULT-JSON line."""
    inputs = json.dumps({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()})
    return f"""
import json, sys
sys.modules["hf_transformer"] = None  # our package must not be importable: only the repository's code may run
try:
    import hf_transformer
    raise SystemExit("hf_transformer is importable")
except ImportError:
    pass
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM
source, inputs = {source!r}, json.loads({inputs!r})
model = AutoModelForSeq2SeqLM.from_pretrained(source, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(AutoModel.from_pretrained(source, trust_remote_code=True)).__name__ == "VaswaniModel"
out = model.generate(input_ids=torch.tensor(inputs["input_ids"]), attention_mask=torch.tensor(inputs["attention_mask"]),
                     num_beams=4, max_new_tokens=12)
print("RESULT-JSON: " + json.dumps(out.tolist()))
"""


CAPTION_IMAGE_SIZE = 16


def tiny_caption_config(**overrides) -> VaswaniConfig:
    """A tiny captioning model: 16 x 16 RGB images in 4 x 4 patches, two layers of width 32, 300 tokens."""
    values = dict(vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
                  max_position_embeddings=64, image_size=CAPTION_IMAGE_SIZE, patch_size=4, num_channels=3)
    values.update(overrides)
    return VaswaniConfig(**values)


def labelled_batch():
    """A right-padded source batch (3 x 11) and labels (3 x 8), -100 on the padding of the last row."""
    input_ids, attention_mask = source_batch(batch=3, length=11)
    labels = torch.randint(4, 101, (3, 8), generator=torch.Generator().manual_seed(2))
    labels[2, 5:] = -100
    return input_ids, attention_mask, labels
