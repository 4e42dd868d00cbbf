"""Dynamic int8 quantization of a model's linear layers, for decoding on CPU.

    from hf_transformer.quantization import quantize_int8
    fast = quantize_int8(model)           # a copy; `model` is left as it is
    translate(texts, fast, tokenizer)     # same API, int8 matrix products

On CPU a decoding step of these models is mostly matrix products whose weights are read from memory once per step
(benchmarks/README.md, "Decoding"). PyTorch's dynamic quantization stores every `nn.Linear` weight in int8 (one scale
per output row) and quantizes the activations of each call on the fly, so a step reads a quarter of the bytes and
runs int8 kernels (fbgemm / x86). Everything else (embeddings, LayerNorm, attention, the decoding loop) stays in
float32. Outputs are no longer those of the float32 model: `benchmarks/decode.py` reports the BLEU of both.

Uses `torch.ao.quantization.quantize_dynamic`, which torch marks deprecated in favour of torchao but still ships
(torch 2.13); the function fails with a clear message where it is gone.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) whose `nn.Linear` layers compute in int8 with per-output-channel weight
    scales, for CPU inference. The tied output projection is quantized too (the embedding it shares weights with
    stays float32 in the copy)."""
    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        raise ValueError("Dynamic int8 quantization runs on CPU: move the model to the CPU first (model.to('cpu')); "
                         "on a GPU, decode in bf16 or use the CTranslate2 backend with compute_type='int8_float16'.")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as error:  # torch has announced the removal of torch.ao.quantization
        raise RuntimeError(
            f"This torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic: quantize with torchao, "
            "or use the CTranslate2 backend (translate(..., backend='ctranslate2', compute_type='int8'))."
        ) from error
    copied = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # the deprecation notices of torch.ao.quantization, said once in the docstring
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*quantiz.*", category=UserWarning)
        return quantize_dynamic(copied, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
