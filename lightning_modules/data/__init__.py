"""The data modules of the three tasks, on one corpus layer (`corpus.py`: sources, splits, cache, tokenizer, loaders).

- `TranslationDataModule` (`translation.py`): parallel corpora; `NumbersDataModule` (`synthetic.py`) generates one.
- `LanguageModelingDataModule` (`language_modeling.py`): monolingual text as token sequences.
- `CaptioningDataModule` (`captioning.py`): image-caption datasets; `ShapesCaptioningDataModule` generates one
  (`shapes.py`).
- `ChoralesDataModule` (`music.py`): Bach chorales from music21's corpus as the Music Transformer serialises them;
  `PixelDataModule` (`pixels.py`): images as sequences of sub-pixel intensities, `ShapesPixelDataModule` on the
  generated shapes; both on `fixed_vocabulary.py` (a vocabulary fixed by the data, not trained).
- `sampler.py`: token-budget batches; `streaming.py`: the same from a stream; `parallel_text.py`: aligned text files.
"""

from .captioning import CaptioningDataModule, ShapesCaptioningDataModule
from .corpus import LABEL_PAD_ID, CorpusDataModule
from .language_modeling import LanguageModelingDataModule
from .music import ChoralesDataModule
from .pixels import PixelDataModule, ShapesPixelDataModule
from .synthetic import NumbersDataModule
from .translation import REPORT_KEYS, TranslationDataModule

__all__ = ["CaptioningDataModule", "ChoralesDataModule", "CorpusDataModule", "LanguageModelingDataModule",
           "NumbersDataModule", "PixelDataModule", "ShapesCaptioningDataModule", "ShapesPixelDataModule",
           "TranslationDataModule", "LABEL_PAD_ID", "REPORT_KEYS"]
