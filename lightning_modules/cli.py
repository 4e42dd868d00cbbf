"""The command line: `hf-transformer fit --config quickstart --trainer.default_root_dir runs/x` (or `python -m recipes
...`), `hf-transformer test --ckpt_path runs/x/checkpoints/best.ckpt`, `hf-transformer translate MODEL`,
`hf-transformer plot RUN`.

A LightningCLI over any LightningModule (`model.class_path`; a `model:` section without one is a `TranslationModule`)
and any LightningDataModule (`data.class_path`), with fit / validate / test / predict and `--print_config`; the data
module's `tokenizer_fields` are linked into the model's. What it adds to Lightning's:
- `--config NAME` finds a packaged recipe by name (`quickstart`, `multi30k_de_en`, ...);
- one run directory: `--trainer.default_root_dir` (default `runs/<recipe name>`; for validate / test / predict, the
  run of the checkpoint) holds everything: the CSV and TensorBoard logs (`csv/`, `tensorboard/`) unless the config
  names its own loggers, the checkpoints of every ModelCheckpoint without a `dirpath` (`checkpoints/`), the exports,
  test outputs, predictions and plots (`lightning_modules/runs.py`);
- validate / test / predict with `--ckpt_path CKPT` (or an exported folder) need nothing else: the checkpoint's run
  record brings the task, the data module and its tokenizer; the command line and a `--config` still override;
- `translate` and `plot` run `hf_transformer.translation.main` and `lightning_modules.callbacks.curves.main`.
"""

import logging
import os
import sys
import warnings
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from . import callbacks, data  # noqa: F401  (imported: their classes go by their short names, `--data NAME`)
from .checkpointing import AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file
from .redaction import HIDDEN, is_secret_name, redact_command, redact_config
from .runs import (
    RunDirectoryInUse,
    RunLock,
    is_first_process,
    materialize_tokenizer,
    packaged_recipes,
    read_run_record,
    resolve_recipe,
    run_dir_of,
)
from .tasks.translation import TranslationModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")
CONFIG_FLAGS = ("--config", "-c")


def option_value(args: list[str], names: tuple[str, ...]) -> tuple[int, str] | None:
    """(index, value) of the first `--name VALUE` / `--name=VALUE` of `args`, or None."""
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return index, args[index + 1]
            if arg.startswith(name + "="):
                return index, arg.split("=", 1)[1]
    return None


def with_packaged_recipes(args: list[str]) -> list[str]:
    """Every `--config NAME` that is not a file but a packaged recipe's name, replaced by that recipe's path."""
    resolved = list(args)
    for index, arg in enumerate(resolved):
        if arg in CONFIG_FLAGS and index + 1 < len(resolved):
            resolved[index + 1] = resolve_recipe(resolved[index + 1])
        elif arg.split("=", 1)[0] in CONFIG_FLAGS and "=" in arg:
            flag, value = arg.split("=", 1)
            resolved[index] = f"{flag}={resolve_recipe(value)}"
    return resolved


def evaluation_config(ckpt_path: str) -> dict | None:
    """What a checkpoint or an exported folder brings to validate / test / predict: its task (and, for a folder, its
    weights), its data module with the tokenizer it was trained with, and its run directory; None when it carries no
    run record (then `--config` or `--data` must say it)."""
    path = Path(ckpt_path)
    record = read_run_record(path) or {}
    if not record and not path.is_dir():
        return None
    config: dict = {"trainer": {"default_root_dir": str(run_dir_of(path))}}
    model = {"class_path": record.get("task") or f"{TranslationModule.__module__}.{TranslationModule.__name__}"}
    if path.is_dir():
        model["init_args"] = {"pretrained": str(path.resolve())}
    config["model"] = model
    if record.get("data"):
        init_args = dict(record["data"]["init_args"])
        tokenizer = path if path.is_dir() else materialize_tokenizer(record["tokenizer"]) if record.get(
            "tokenizer") else None
        if tokenizer is not None:
            init_args["tokenizer_path"] = str(Path(tokenizer).resolve())
        config["data"] = {"class_path": record["data"]["class_path"], "init_args": init_args}
    elif path.is_dir():
        config["data"] = {"init_args": {"tokenizer_path": str(path.resolve())}}
    return config


def with_run_of_checkpoint(subcommand: str, rest: list[str]) -> list[str]:
    """validate / test / predict `--ckpt_path X`: X's own configuration first (`evaluation_config`), then the
    user's arguments; an exported folder is no checkpoint for Lightning: it becomes the model's `pretrained`."""
    found = option_value(rest, ("--ckpt_path",))
    if subcommand not in EVALUATION_SUBCOMMANDS or found is None or not os.path.exists(found[1]):
        return rest
    index, ckpt_path = found
    config = evaluation_config(ckpt_path)
    if config is None:
        return rest
    if Path(ckpt_path).is_dir():
        rest = rest[:index] + rest[index + (1 if rest[index].startswith("--ckpt_path=") else 2):]
    return ["--config", yaml.safe_dump(config, sort_keys=False), *rest]


def missing_data_message(subcommand: str) -> str:
    names = ", ".join(sorted(packaged_recipes()))
    return (f"hf-transformer {subcommand}: no data module given. Start from a recipe: --config quickstart (packaged: "
            f"{names}), or a YAML file of your own; or name one: --data TranslationDataModule --data.dataset "
            "bentrevett/multi30k (see --data.help TranslationDataModule)."
            + (" With --ckpt_path CKPT (a checkpoint or an exported folder of this version) the run's own data "
               "module comes with it." if subcommand in EVALUATION_SUBCOMMANDS else ""))


def secret_keys(value: object, path: str = "") -> list[str]:
    """The dotted keys of `value` (parsed YAML: dicts and lists) whose name says token and that hold a value."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if is_secret_name(key) and item not in (None, "", HIDDEN):  # a saved config.yaml says ***
                found.append(where)
            else:
                found.extend(secret_keys(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(secret_keys(item, f"{path}[{index}]"))
    return found


def secret_arguments(args: list[str]) -> list[str]:
    """Where `args` carry a token (never the token itself): `--x.token VALUE` / `--x.token=VALUE` arguments, and
    `token` keys of config files, YAML strings and inline dicts (`--trainer.callbacks '{...token: ...}'`)."""
    found = []
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name.startswith("-") and is_secret_name(name):
            found.append(f"argument {name}")
            continue
        flag = name if name.startswith("-") and equals else args[index - 1] if index else ""
        text = value if name.startswith("-") and equals else arg
        is_config = flag in CONFIG_FLAGS
        if not (is_config or text.lstrip()[:1] in ("{", "[")):
            continue
        is_file = is_config and "\n" not in text and Path(text).is_file()
        try:
            parsed = yaml.safe_load(Path(text).read_text(encoding="utf-8") if is_file else text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # the parser reports an unreadable or malformed config
        where = f"config file {text}" if is_file else f"the YAML value of {flag or 'an argument'}"
        found.extend(f"{where}: key {key}" for key in secret_keys(parsed))
    return found


def refuse_secret_arguments(args: list[str]) -> None:
    """Exit (status 2) when the command line or a config file gives a Hub token: it would be printed by
    `--print_config`, by the parser's errors and by tracebacks, and it sits in shell history and the process list.
    The message names where the token is, never the token."""
    found = secret_arguments(args)
    if found:
        print(f"hf-transformer: a Hub token was given on the command line ({'; '.join(found)}). Tokens are never taken "
              "from the command line or from config files: they would be printed by --print_config and by error "
              "messages, and kept in shell history. Remove it, and set the HF_TOKEN environment variable (or log in "
              "once with `hf auth login`, the Hugging Face credential store): HubPushCallback uses that.",
              file=sys.stderr)
        sys.exit(2)


def refuse_undecodable_arguments(args: list[str]) -> None:
    """Exit (status 2) naming the argument when one holds bytes that are not UTF-8 (a file name from another
    encoding reaches Python as surrogate escapes, which the parser and YAML cannot carry)."""
    for index, arg in enumerate(args):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as error:
            name, equals, value = arg.partition("=")
            flag = name if name.startswith("-") and equals else args[index - 1] if index and \
                args[index - 1].startswith("-") else f"argument {index + 1}"
            shown = os.fsencode(value if name.startswith("-") and equals else arg)
            print(f"hf-transformer: {flag}: the value {shown!r} is not valid UTF-8 (byte "
                  f"{os.fsencode(arg[error.start:error.end])!r}); file names must be UTF-8: rename the file (e.g. "
                  "`convmv -f latin1 -t utf8 --notest FILE`) or link it under a UTF-8 name.", file=sys.stderr)
            sys.exit(2)


def prepare_arguments(args: list[str]) -> tuple[list[str], str | None]:
    """The command line as LightningCLI parses it (packaged recipes by name, the checkpoint's own configuration),
    and the recipe name that names the default run directory. Exits with a clear message when a subcommand has no
    data module at all, or when an argument gives a Hub token (`refuse_secret_arguments`)."""
    refuse_undecodable_arguments(args)
    args = with_packaged_recipes(args)
    refuse_secret_arguments(args)
    config = option_value(args, CONFIG_FLAGS)
    recipe = Path(config[1]).stem if config is not None and Path(config[1]).is_file() else None
    position = next((i for i, arg in enumerate(args) if arg in SUBCOMMANDS), None)
    if position is None:
        return args, recipe
    subcommand, rest = args[position], args[position + 1:]
    rest = with_run_of_checkpoint(subcommand, rest)
    asks_help = any(arg in ("-h", "--help") or arg.startswith("--print_config") or arg.endswith(".help")
                    for arg in rest)
    gives_data = any(arg.split("=", 1)[0].split(".", 1)[0] == "--data" for arg in rest)
    if not asks_help and option_value(rest, CONFIG_FLAGS) is None and not gives_data:
        print(missing_data_message(subcommand), file=sys.stderr)
        sys.exit(2)
    return [*args[:position], subcommand, *rest], recipe


def configuration_changes(model: object, hparams: dict) -> list[str]:
    """How the model given now (the parsed `model` section: class_path and init_args) differs from the checkpoint's
    hyper-parameters (`hparams`): VaswaniConfig fields of the resolved model configuration, then the task's other
    arguments. Empty for a model class that is not one of the task modules."""
    import importlib

    from .tasks.base import TaskModule, model_differences, pretrained_fields, read_model_config

    module_name, _, name = str(model.class_path).rpartition(".")
    task = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(task, type) and issubclass(task, TaskModule)):
        return []
    init_args = model.init_args.as_dict() if hasattr(model.init_args, "as_dict") else dict(model.init_args or {})
    given = read_model_config(init_args.get("model_config"))
    if init_args.get("pretrained"):
        given = {**pretrained_fields(init_args["pretrained"]), **given}
    fields = {**task.default_model_fields, **given, **task.fixed_model_fields}
    changes = [f"model_config.{change}" for change in model_differences(hparams.get("model_config") or {}, fields)]
    for key, value in hparams.items():
        if key not in ("model_config", "tokenizer_fields") and not key.startswith("_") and key in init_args \
                and init_args[key] != value:
            changes.append(f"{key}: {value!r} in the checkpoint, {init_args[key]!r} now")
    return changes


class TransformerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": f"{TranslationModule.__module__}.{TranslationModule.__name__}"}})
        parser.link_arguments("data.tokenizer_fields", "model.init_args.tokenizer_fields", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse the prepared command line (`prepare_arguments`), then refuse (with the reason) a `--ckpt_path`
        written before the model took its configuration as `model_config`: LightningCLI would otherwise fail on the
        checkpoint's old hyper-parameter names."""
        args, self.recipe_name = prepare_arguments(list(sys.argv[1:] if args is None else args))
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            try:
                hparams = load_checkpoint_file(ckpt_path, mmap=True).get("hyper_parameters") or {}
            except CheckpointLoadError as error:  # damaged, or not what its checksum says: the file and the fix
                parser.error(str(error))
            if "d_model" in hparams and "model_config" not in hparams:
                parser.error(
                    f"--ckpt_path {ckpt_path} was written by an older version of the task modules, whose arguments "
                    "were a renamed copy of the model's configuration (d_model, attention_heads, ffn_dim, ...): it "
                    "cannot be resumed or tested with this version. Export its weights with that version, or train "
                    "again (the recipes now give the model's VaswaniConfig fields under model.model_config)."
                )
            changes = configuration_changes(self.config.fit.model, hparams) if subcommand == "fit" else []
            if changes:  # Lightning would replace them silently with the checkpoint's values
                from .tasks.base import start_fresh_advice

                parser.error(
                    f"--ckpt_path {ckpt_path} resumes a run whose model was configured otherwise: "
                    f"{'; '.join(changes)}. A resume continues the same run with the same model: give the run's own "
                    "configuration (its config.yaml is in the run's csv/version_N/), or leave these out. "
                    + start_fresh_advice(ckpt_path))

    def before_instantiate_classes(self) -> None:
        """The run directory, when nothing set it: `runs/<recipe name>`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.default_root_dir is None:
            config.trainer.default_root_dir = os.path.join("runs", self.recipe_name or "run")
        if self.subcommand == "fit" and is_first_process():  # one writer per run directory, for the fit's life
            try:
                self.run_lock = RunLock(config.trainer.default_root_dir, redact_command(sys.argv)).acquire()
            except RunDirectoryInUse as error:
                print(f"hf-transformer fit: {error}", file=sys.stderr)
                sys.exit(1)
        if self.subcommand in EVALUATION_SUBCOMMANDS:  # the training callbacks' states do not matter to evaluation
            warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer, its logs and its checkpoints in the run directory: CSV and TensorBoard loggers there unless
        the config names loggers (or `logger: false`), and `<run>/checkpoints` for a ModelCheckpoint without a
        dirpath (Lightning would put it under the first logger's version folder)."""
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        root = config["default_root_dir"]
        if config.get("logger") in (None, True):
            kwargs["logger"] = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tensorboard")]
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                subfolder = getattr(callback, "subfolder", "")  # PeriodicCheckpoint: checkpoints/periodic
                callback.dirpath = os.path.realpath(os.path.join(root, "checkpoints", subfolder))
        return trainer


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
    locks_before = set(RunLock.held)
    try:
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
    finally:  # the run directory's lock is held while the subcommand runs
        for key in set(RunLock.held) - locks_before:
            RunLock.held[key].release()


def main() -> None:
    """The `hf-transformer` console script: `translate` and `plot` are commands of their own, everything else goes
    to the LightningCLI (its return value becomes the exit status: None is success). A fit stopped by SIGTERM or
    SIGINT (`PreemptionCheckpoint`) exits with 128 + the signal's number and a message that says "interrupted"."""
    tools = {"translate": "hf_transformer.translation", "plot": "lightning_modules.callbacks.curves"}
    if len(sys.argv) > 1 and sys.argv[1] in tools:
        import importlib

        sys.exit(importlib.import_module(tools[sys.argv[1]]).main(sys.argv[2:]))
    try:
        build_cli()
    except callbacks.TrainingInterrupted as interrupted:  # SIGTERM / SIGINT: last.ckpt written, nothing exported
        print(f"hf-transformer: {interrupted}", file=sys.stderr)
        sys.exit(interrupted.exit_code)


if __name__ == "__main__":
    main()
