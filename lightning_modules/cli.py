"""The command line: `hf-transformer fit --config recipes/configs/quickstart.yaml` (or `python -m recipes ...`).

A LightningCLI over any LightningModule (`model.class_path`; a `model:` section without one is a
`TranslationModule`, so the translation recipes name only its arguments) and any LightningDataModule
(`data.class_path`), with fit / validate / test / predict and `--print_config`. The data module's `tokenizer_fields`
(the tokenizer's size and special ids) are linked into the model's `tokenizer_fields`.
"""

import logging
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from .checkpointing import AtomicCheckpointIO, load_checkpoint_file
from .redaction import redact_config
from .tasks.translation import TranslationModule


class TransformerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": f"{TranslationModule.__module__}.{TranslationModule.__name__}"}})
        parser.link_arguments("data.tokenizer_fields", "model.init_args.tokenizer_fields", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse, then refuse (with the reason) a `--ckpt_path` written before the model took its configuration as
        `model_config`: LightningCLI would otherwise fail on the checkpoint's old hyper-parameter names."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = load_checkpoint_file(ckpt_path, mmap=True).get("hyper_parameters") or {}
            if "d_model" in hparams and "model_config" not in hparams:
                parser.error(
                    f"--ckpt_path {ckpt_path} was written by an older version of the task modules, whose arguments "
                    "were a renamed copy of the model's configuration (d_model, attention_heads, ffn_dim, ...): it "
                    "cannot be resumed or tested with this version. Export its weights with that version, or train "
                    "again (the recipes now give the model's VaswaniConfig fields under model.model_config)."
                )


class RedactingSaveConfigCallback(SaveConfigCallback):
    """Lightning's config.yaml of the run, written without the secrets the command line may carry."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.config = redact_config(self.config)
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
