"""`hf_transformer`: the Transformer of "Attention Is All You Need" as a Hugging Face `transformers` model.

Importing the package registers the model with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForSeq2SeqLM`, `AutoModelForCausalLM`, `AutoModelForImageTextToText`, `AutoImageProcessor`) and marks
its classes for `trust_remote_code` export, so `save_pretrained` writes the configuration, modeling (and image
processing) files next to the weights.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
)

from .configuration_vaswani import VaswaniConfig
from .image_processing_vaswani import VaswaniImageProcessor
from .modeling_vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForImageCaptioning,
    VaswaniModel,
    VaswaniPreTrainedModel,
    shift_tokens_right,
)
from .tokenization_vaswani import SPECIAL_TOKEN_IDS, iter_parallel_texts, load_tokenizer, train_tokenizer
from .translation import VaswaniTranslationPipeline, translate

AutoConfig.register(VaswaniConfig.model_type, VaswaniConfig, exist_ok=True)
AutoModel.register(VaswaniConfig, VaswaniModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VaswaniConfig, VaswaniForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(VaswaniConfig, VaswaniForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(VaswaniConfig, VaswaniForImageCaptioning, exist_ok=True)
AutoImageProcessor.register(VaswaniConfig, image_processor_classes={"pil": VaswaniImageProcessor}, exist_ok=True)

VaswaniConfig.register_for_auto_class("AutoConfig")
VaswaniModel.register_for_auto_class("AutoModel")
VaswaniForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
VaswaniForCausalLM.register_for_auto_class("AutoModelForCausalLM")
VaswaniForImageCaptioning.register_for_auto_class("AutoModelForImageTextToText")
VaswaniImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "VaswaniConfig",
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniForCausalLM",
    "VaswaniForImageCaptioning",
    "VaswaniImageProcessor",
    "shift_tokens_right",
    "SPECIAL_TOKEN_IDS",
    "train_tokenizer",
    "load_tokenizer",
    "iter_parallel_texts",
    "translate",
    "VaswaniTranslationPipeline",
]
