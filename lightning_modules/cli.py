"""The command line: `hf-transformer fit --config recipes/configs/quickstart.yaml` (or `python -m recipes ...`).

A LightningCLI over any LightningModule (`model.class_path`; a `model:` section without one is a
`TranslationModule`, so the translation recipes name only its arguments) and any LightningDataModule
(`data.class_path`), with fit / validate / test / predict and `--print_config`. The tokenizer's vocabulary size and
special ids are linked from the data module into those of the model's arguments that exist.
"""

import logging
import warnings

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from .checkpointing import AtomicCheckpointIO
from .module import TranslationModule

LINKED_FROM_DATA = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


class TransformerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": f"{TranslationModule.__module__}.{TranslationModule.__name__}"}})
        for name in LINKED_FROM_DATA:  # a model without one of these arguments (a causal LM) skips its link
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def redact_tokens(value: object) -> object:
    """A copy of a parsed config in which every string under a key ending in `token` (a Hub token given on the
    command line or in YAML, e.g. HubPushCallback's `token`) is replaced by `***`."""
    if isinstance(value, Namespace):
        value = Namespace(**{key: redact_tokens(item) for key, item in vars(value).items()})
        for key, item in vars(value).items():
            if key.lower().endswith("token") and isinstance(item, str):
                setattr(value, key, "***")
        return value
    if isinstance(value, dict):
        return {key: ("***" if str(key).lower().endswith("token") and isinstance(item, str) else redact_tokens(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact_tokens(item) for item in value]
    return value


class RedactingSaveConfigCallback(SaveConfigCallback):
    """Lightning's config.yaml of the run, written without the secrets the command line may carry."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.config = redact_tokens(self.config)
        super().setup(trainer, pl_module, stage)


def configure_logging() -> None:
    """Show the project's own reports (cleaning counts, padding, exports, pushes) on the console."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    project = logging.getLogger("lightning_modules")
    if not project.handlers:
        project.addHandler(handler)
        project.setLevel(logging.INFO)
    # Lightning cannot see that the data module resumes its own sampler mid-epoch, nor that the evaluation batch
    # sampler drops nothing: its warnings about both are wrong here.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*for prediction.*")


def build_cli(args: list[str] | None = None, run: bool = True) -> TransformerCLI:
    """Parse `args` (default: sys.argv), build data module, model and trainer, and run the subcommand; with
    `run=False` there is no subcommand and nothing runs (used to check that recipes instantiate)."""
    configure_logging()
    return TransformerCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the module injects its optimiser and per-step schedule itself
        save_config_callback=RedactingSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "use_distributed_sampler": False,  # the data module shards its token-budget batches itself
            # a crash while saving never leaves a half-written checkpoint; loading is weights_only
            "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__name__}"}],
        },
        args=args,
        run=run,
    )


def main() -> None:
    """The `hf-transformer` console script (its return value becomes the exit status: None is success)."""
    build_cli()


if __name__ == "__main__":
    main()
