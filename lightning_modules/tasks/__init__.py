"""The three tasks on one base (`base.py`): each task file holds only its model class, its batch and its metric.

- `TranslationModule` (`translation.py`): `VaswaniForConditionalGeneration`, BLEU of beam-search translations.
- `CausalLanguageModule` (`language_modeling.py`): `VaswaniForCausalLM`, perplexity.
- `CaptioningModule` (`captioning.py`): `VaswaniForImageCaptioning`, BLEU against every reference of an image.
"""

from .base import TaskModule
from .captioning import CaptioningModule
from .language_modeling import CausalLanguageModule
from .translation import TranslationModule

__all__ = ["TaskModule", "TranslationModule", "CausalLanguageModule", "CaptioningModule"]
