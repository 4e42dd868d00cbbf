"""Every recipe instantiates through the CLI: data module, model (with the tokenizer's ids linked in), trainer,
callbacks and loggers. Hub datasets are not touched: a local tokenizer stands in for the one each recipe would train
(the music and pixel data modules have a fixed vocabulary of their own)."""

from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT

from hf_transformer import train_tokenizer
from lightning_modules.callbacks import HFExportCallback
from lightning_modules.cli import build_cli
from lightning_modules.data import CaptioningDataModule, LanguageModelingDataModule, TranslationDataModule
from lightning_modules.data.fixed_vocabulary import FixedVocabularyDataModule
from lightning_modules.tasks import CaptioningModule, CausalLanguageModule, TranslationModule

CONFIGS = sorted((REPO_ROOT / "recipes" / "configs").glob("*.yaml"))
EXPECTED = {"quickstart", "multi30k_de_en", "multi30k_en_de", "iwslt_de_en", "wmt14_en_de_base", "wmt14_en_de_big"}
EXPECTED |= {"multi30k_de_en_cpu", "multi30k_en_de_cpu"}  # the measured CPU runs of RESULTS.md
EXPECTED |= {"captioning_shapes", "captioning_flickr8k"}  # image captioning (lightning_modules/tasks/captioning.py)
EXPECTED |= {"causal_lm_relative", "causal_lm_multi30k_cpu"}  # decoder-only (.../tasks/language_modeling.py)
EXPECTED |= {"chorales_relative", "chorales_sinusoidal", "pixels_shapes", "pixels_cifar10"}  # music and images
# (module, data module) pairs a recipe may instantiate
MODULE_PAIRS = [(TranslationModule, TranslationDataModule), (CaptioningModule, CaptioningDataModule),
                (CausalLanguageModule, LanguageModelingDataModule), (CausalLanguageModule, FixedVocabularyDataModule)]
FIXED_VOCABULARY_DATA = {"ChoralesDataModule", "PixelDataModule", "ShapesPixelDataModule"}  # no tokenizer_path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(["ein kleiner Hund läuft", "a small dog runs"] * 20, vocab_size=300).save_pretrained(folder)
    return str(folder)


def test_all_recipes_are_there():
    assert {path.stem for path in CONFIGS} == EXPECTED


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_recipe_has_a_header_and_instantiates(config, tokenizer_dir, tmp_path, monkeypatch):
    header = config.read_text().split("\n")
    comments = [line for line in header[:25] if line.startswith("#")]
    text = "\n".join(comments)
    for word in ("Paper", "Command", "Expected"):
        assert word in text, f"{config.name}: the header comment must say {word}"
    settings = [line for line in header if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "runs/" in line or "dirpath" in line or "save_dir" in line
                or "cache_dir" in line or "default_root_dir" in line], f"{config.name}: no output paths in recipes"
    monkeypatch.chdir(tmp_path)  # loggers and checkpoints go to a scratch folder
    monkeypatch.setattr("sys.argv", ["hf-transformer"])
    recipe = yaml.safe_load(config.read_text())
    fixed = recipe["data"]["class_path"].rpartition(".")[2] in FIXED_VOCABULARY_DATA
    tokenizer = [] if fixed else ["--data.init_args.tokenizer_path", tokenizer_dir]
    cli = build_cli(["--config", config.stem, *tokenizer,  # by its name
                     "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"], run=False)
    run = tmp_path / "runs" / config.stem  # the default run directory: everything goes there
    assert Path(cli.trainer.default_root_dir).resolve() == run
    assert [Path(logger.save_dir).resolve() for logger in cli.trainer.loggers] == [run, run]
    assert {Path(cb.dirpath) for cb in cli.trainer.checkpoint_callbacks} <= {run / "checkpoints",
                                                                            run / "checkpoints" / "periodic"}
    assert any(isinstance(cli.model, module) and isinstance(cli.datamodule, data) for module, data in MODULE_PAIRS)
    model_config = cli.model.model.config
    assert model_config.vocab_size == len(cli.datamodule.tokenizer)  # linked from the data module
    model_args = recipe["model"].get("init_args", recipe["model"])  # a `model:` with a class_path nests its arguments
    fields = model_args["model_config"]  # VaswaniConfig fields, as they are
    assert model_config.d_model == fields["d_model"]
    # a decoder-only model has no encoder: its config mirrors the decoder's sizes there
    assert model_config.encoder_layers == fields.get("encoder_layers", fields.get("decoder_layers"))
    assert model_config.encoder_attention_heads == fields.get("encoder_attention_heads",
                                                              fields.get("decoder_attention_heads"))
    assert any(isinstance(callback, HFExportCallback) for callback in cli.trainer.callbacks)
    assert cli.trainer.max_steps == recipe["trainer"]["max_steps"]
    assert len(cli.trainer.loggers) == 2
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


def test_the_multi30k_recipes_average_their_last_checkpoints_and_sample_validation():
    for name in ("multi30k_de_en", "multi30k_en_de"):
        recipe = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
        callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in recipe["trainer"]["callbacks"]}
        assert callbacks["PeriodicCheckpoint"]["keep"] >= callbacks["CheckpointAveragingCallback"]["last_n"] == 5
        assert "LastCheckpoint" in callbacks and recipe["data"]["init_args"]["validation_sample"] == 512


def test_the_cpu_multi30k_recipes_are_the_measured_ones_and_cool_down_inside_their_run():
    """RESULTS.md: both directions are the bf16 hour (eager kernel, attention and FFN dropout, a 57-minute bound);
    de->en at d_model 256 (3 + 3 layers, 3,400 steps, validated every 680, cooldown 1,100), en->de at the anchor's
    size (d_model 128, 4 + 4 layers, 4,400 steps, every 880, cooldown 1,600, ending inside the hour); nothing else
    differs, and each cooldown fits in its run."""
    de_en, en_de = (yaml.safe_load((CONFIGS[0].parent / f"multi30k_{pair}_cpu.yaml").read_text())
                    for pair in ("de_en", "en_de"))
    shape = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
             "encoder_ffn_dim", "decoder_ffn_dim")
    for recipe, pair, sizes, steps, every, cooldown in (
            (de_en, ("de", "en"), (256, 3, 3, 8, 8, 512, 512), 3400, 680, 1100),
            (en_de, ("en", "de"), (128, 4, 4, 4, 4, 256, 256), 4400, 880, 1600)):
        data, trainer, model = recipe["data"]["init_args"], recipe["trainer"], recipe["model"]
        assert (data.pop("source_lang"), data.pop("target_lang")) == pair
        assert tuple(model["model_config"].pop(field) for field in shape) == sizes
        assert (trainer.pop("max_steps"), trainer.pop("val_check_interval")) == (steps, every)
        schedule = model["lr_scheduler"]["init_args"]
        assert schedule.pop("cooldown_steps") == cooldown and schedule["warmup_steps"] + cooldown <= steps
    assert de_en == en_de  # so what is checked of one below holds for both
    trainer = de_en["trainer"]
    assert (trainer["accelerator"], trainer["precision"], trainer["max_time"]) == ("cpu", "bf16-mixed", "00:00:57:00")
    assert de_en["model"]["model_config"]["attn_implementation"] == "eager"


def test_paper_recipes_use_the_papers_hyper_parameters():
    base = yaml.safe_load((CONFIGS[0].parent / "wmt14_en_de_base.yaml").read_text())
    big = yaml.safe_load((CONFIGS[0].parent / "wmt14_en_de_big.yaml").read_text())
    for recipe, (d_model, ffn, heads, dropout, steps, average) in ((base, (512, 2048, 8, 0.1, 100000, 5)),
                                                                   (big, (1024, 4096, 16, 0.3, 300000, 20))):
        model, trainer, data = recipe["model"], recipe["trainer"], recipe["data"]["init_args"]
        fields = model["model_config"]
        assert (fields["d_model"], fields["encoder_ffn_dim"], fields["encoder_attention_heads"], fields["dropout"]) == (
            d_model, ffn, heads, dropout)
        assert (fields["decoder_ffn_dim"], fields["decoder_attention_heads"]) == (ffn, heads)
        assert model["label_smoothing"] == 0.1 and trainer["max_steps"] == steps
        assert model["lr_scheduler"]["init_args"]["warmup_steps"] == 4000
        tokens_per_step = data["max_tokens"] * trainer["accumulate_grad_batches"] * trainer["devices"]
        assert tokens_per_step == 25000  # §5.1: about 25000 source and 25000 target tokens per batch
        averaging = [c for c in trainer["callbacks"] if c["class_path"].endswith("CheckpointAveragingCallback")]
        assert averaging[0]["init_args"]["last_n"] == average
        assert data["vocab_size"] == 37000


def test_a_hub_token_argument_is_refused_and_a_saved_config_with_a_hidden_token_is_reusable(tokenizer_dir, tmp_path,
                                                                                              monkeypatch, capsys):
    """The CLI takes no token (HF_TOKEN or `hf auth login` instead): a token argument exits 2 naming the argument,
    not the token. A run's saved config.yaml (its token shown as ***) can be given back as --config: no token."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["hf-transformer"])
    secret = "planted-cli-token-51d3a0"
    common = ["--config", str(CONFIGS[0].parent / "quickstart.yaml"), "--data.init_args.tokenizer_path", tokenizer_dir,
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--trainer.callbacks+=lightning_modules.callbacks.HubPushCallback",
              "--trainer.callbacks.repo_id", "tester/secret"]
    with pytest.raises(SystemExit) as exited:
        build_cli([*common, "--trainer.callbacks.token", secret], run=False)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --trainer.callbacks.token" in err and "HF_TOKEN" in err and secret not in err

    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning_modules.callbacks.HubPushCallback",
        "init_args": {"repo_id": "tester/secret", "token": "***"}}]}}))
    cli = build_cli([*common[:-3], "--config", str(saved)], run=False)
    pushes = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "HubPushCallback"]
    assert pushes and pushes[0].token is None and pushes[0].repo_id == "tester/secret"
