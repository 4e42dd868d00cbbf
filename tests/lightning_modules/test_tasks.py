"""The task modules on their one base (`lightning_modules/tasks/`): the model's configuration is `VaswaniConfig`'s own
fields (a mapping or a config.json), every variant is open to every task, the tokenizer's fields win and a conflict is
an error, the schedule reads d_model from the model, checkpoints carry the model's config (checkpoint averaging
rebuilds the model from it) and checkpoints of the older layout are refused with a clear message. Also the import
graph of the Lightning layer: one direction, no circle."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from helpers import REPO_ROOT
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from hf_transformer import VaswaniConfig, VaswaniForCausalLM
from lightning_modules.callbacks.averaging import export_average
from lightning_modules.checkpointing import MODEL_KEY, AtomicCheckpointIO, load_checkpoint_file
from lightning_modules.cli import build_cli
from lightning_modules.tasks import CaptioningModule, CausalLanguageModule, TranslationModule

TINY = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0, max_position_embeddings=32)
TOKENIZER = dict(vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
VARIANTS = {"relative": dict(position_embedding_type="relative", max_relative_position=4),
            "local": dict(attention_type="local", local_block_length=2, local_memory_length=2)}
TASKS = {"translation": (TranslationModule, {}), "language_modeling": (CausalLanguageModule, {}),
         "captioning": (CaptioningModule, dict(image_size=8, patch_size=4, num_channels=3))}
QUICKSTART = REPO_ROOT / "recipes" / "configs" / "quickstart.yaml"


def batch_for(task: str) -> dict:
    ids = torch.randint(4, TOKENIZER["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    if task == "captioning":
        return {"pixel_values": torch.randn(2, 3, 8, 8), "labels": ids, "ids": torch.arange(2)}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "ids": torch.arange(2)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_variant_is_a_model_config_field_of_every_task(task, variant):
    module_class, extra = TASKS[task]
    module = module_class(model_config={**TINY, **extra, **VARIANTS[variant]}, tokenizer_fields=TOKENIZER)
    for key, value in VARIANTS[variant].items():
        assert getattr(module.model.config, key) == value
    loss, nll, tokens = module.forward_loss(batch_for(task))
    assert torch.isfinite(loss) and torch.isfinite(nll) and int(tokens) == (10 if task == "language_modeling" else 12)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    # the checkpointed hyper-parameters are the resolved configuration, the tokenizer's fields kept apart
    assert module.hparams.model_config["d_model"] == 16 and "vocab_size" not in module.hparams.model_config
    assert module.hparams.tokenizer_fields == TOKENIZER


def test_the_tokenizer_decides_its_fields_and_a_conflict_names_both_values(tmp_path):
    module = TranslationModule(model_config=TINY, tokenizer_fields=TOKENIZER)
    assert (module.model.config.vocab_size, module.model.config.eos_token_id) == (40, 2)
    same = TranslationModule(model_config={**TINY, "vocab_size": 40}, tokenizer_fields=TOKENIZER)  # agreeing is fine
    assert same.model.config.vocab_size == 40
    with pytest.raises(ValueError, match=r"model_config.vocab_size is 8000 but must be 40: the data module's "
                                         r"tokenizer decides it"):
        TranslationModule(model_config={**TINY, "vocab_size": 8000}, tokenizer_fields=TOKENIZER)
    with pytest.raises(ValueError, match=r"model_config.is_encoder_decoder is True but must be False: "
                                         r"CausalLanguageModule trains that kind of model"):
        CausalLanguageModule(model_config={**TINY, "is_encoder_decoder": True})
    with pytest.raises(ValueError, match=r"model_config has unknown keys \['attention_heads', 'ffn_dim'\]: it takes "
                                         r"VaswaniConfig fields"):
        TranslationModule(model_config={"attention_heads": 4, "ffn_dim": 64})
    with pytest.raises(ValueError, match=r"`position_embedding_type` must be one of"):  # the config's own checks
        TranslationModule(model_config={**TINY, "position_embedding_type": "rotary"})
    with pytest.raises(FileNotFoundError, match="nowhere/config.json"):
        TranslationModule(model_config=str(tmp_path / "nowhere" / "config.json"))


def test_a_config_json_or_an_exported_folder_is_a_model_config(tmp_path):
    exported = VaswaniForCausalLM(VaswaniConfig(**TINY, **TOKENIZER, is_encoder_decoder=False,
                                                position_embedding_type="relative"))
    exported.save_pretrained(tmp_path / "exported")
    for source in (tmp_path / "exported", tmp_path / "exported" / "config.json"):
        module = CausalLanguageModule(model_config=str(source), tokenizer_fields=TOKENIZER)
        assert all(getattr(module.model.config, key) == getattr(exported.config, key)
                   for key in VaswaniConfig.__annotations__)
    with pytest.raises(ValueError, match="model_config.is_encoder_decoder is False but must be True"):
        TranslationModule(model_config=str(tmp_path / "exported"))  # a decoder-only config for translation


def test_the_schedule_reads_d_model_from_the_model_config(tmp_path, monkeypatch):
    module = TranslationModule(model_config={**TINY, "d_model": 64}, tokenizer_fields=TOKENIZER)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.d_model == 64 and scheduler.warmup_steps == 4000
    assert math.isclose(scheduler.get_last_lr()[0], 64**-0.5 * 4000**-1.5)  # step 1 of §5.3, equation 3

    folder = tmp_path / "tokenizer"
    from hf_transformer import train_tokenizer

    train_tokenizer(["eins zwei drei", "one two three"] * 20, vocab_size=300).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["hf-transformer"])
    cli = build_cli(["--config", str(QUICKSTART), "--data.init_args.tokenizer_path", str(folder),
                     "--model.model_config.d_model", "64", "--trainer.logger", "false"], run=False)
    assert cli.model.configure_optimizers()["lr_scheduler"]["scheduler"].d_model == 64  # not the recipe's 128
    with pytest.raises(SystemExit):  # no third copy: the schedule takes no d_model of its own
        build_cli(["--config", str(QUICKSTART), "--data.init_args.tokenizer_path", str(folder),
                   "--model.lr_scheduler.init_args.d_model", "512"], run=False)


class Batches(L.LightningDataModule):
    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def train_dataloader(self) -> DataLoader:
        return DataLoader([batch_for(self.task)] * 3, batch_size=None)


def fit_with_checkpoints(tmp_path: Path, module: L.LightningModule, task: str) -> list[Path]:
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=3, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, plugins=[AtomicCheckpointIO()],
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1,
                                                   filename="{step}")])
    trainer.fit(module, Batches(task))
    return sorted((tmp_path / "ckpt").glob("*.ckpt"))


def test_checkpoints_carry_the_model_config_and_averaging_rebuilds_any_task_from_it(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_transformer import train_tokenizer

    torch.manual_seed(0)
    module = CausalLanguageModule(model_config={**TINY, **VARIANTS["local"]}, tokenizer_fields=TOKENIZER,
                                  optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    paths = fit_with_checkpoints(tmp_path, module, "language_modeling")
    entry = load_checkpoint_file(paths[-1])[MODEL_KEY]
    assert entry["class"] == "VaswaniForCausalLM" and entry["config"]["attention_type"] == "local"
    tokenizer = train_tokenizer(["a b c d e f g"] * 10, vocab_size=300)
    folder = export_average(paths, tmp_path / "averaged", tokenizer=tokenizer)
    averaged = AutoModelForCausalLM.from_pretrained(folder)
    assert type(averaged) is VaswaniForCausalLM and averaged.config.local_block_length == 2
    states = [load_checkpoint_file(p)["state_dict"]["model.model.layers.0.fc1.weight"] for p in paths]
    torch.testing.assert_close(averaged.model.layers[0].fc1.weight, torch.stack(states).mean(0))


def test_a_checkpoint_of_the_older_layout_is_refused_with_the_reason(tmp_path, monkeypatch, capsys):
    """Before: flat, renamed hyper-parameters (d_model, attention_heads, ffn_dim) and no model config entry."""
    module = TranslationModule(model_config=TINY, tokenizer_fields=TOKENIZER)
    path = fit_with_checkpoints(tmp_path, module, "translation")[-1]
    checkpoint = load_checkpoint_file(path)
    del checkpoint[MODEL_KEY]
    checkpoint["hyper_parameters"] = {"vocab_size": 40, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                                      "attention_heads": 2, "ffn_dim": 32, "label_smoothing": 0.1}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=4, accelerator="cpu", logger=False,
                        enable_progress_bar=False, limit_val_batches=0, plugins=[AtomicCheckpointIO()])
    with pytest.raises(ValueError, match="written by an older version of TranslationModule.*model.model_config"):
        trainer.fit(TranslationModule(model_config=TINY, tokenizer_fields=TOKENIZER), Batches("translation"),
                    ckpt_path=str(old))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["hf-transformer"])
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["test", "--config", str(QUICKSTART), "--ckpt_path", str(old)])
    assert exit_info.value.code != 0
    assert "was written by an older version of the task modules" in capsys.readouterr().err


def test_the_import_graph_goes_one_way_without_a_circle():
    """hf_transformer imports nothing of the Lightning side; inside lightning_modules, data and callbacks never import
    the tasks; benchmarks never import the tests; no module-level import circle."""
    graph: dict[str, set[str]] = {}
    for folder in ("hf_transformer", "lightning_modules", "benchmarks", "recipes"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            imports = set()
            for node in ast.parse(path.read_text()).body:  # module level: what runs at import time
                if isinstance(node, ast.Import):
                    imports |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        parts = package.split(".")
                        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                    imports |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            graph[name] = imports
    for name, imports in graph.items():
        if name.startswith("hf_transformer"):
            assert not {i for i in imports if i.split(".")[0] in ("lightning_modules", "lightning", "jsonargparse",
                                                                     "yaml")}, name
        if name.startswith(("lightning_modules.data", "lightning_modules.callbacks")):
            assert not {i for i in imports if i.startswith("lightning_modules.tasks")}, name
        if name.startswith("benchmarks"):
            assert not {i for i in imports if i.split(".")[0] in ("tests", "helpers", "data_utils", "model_utils",
                                                                     "conftest") or i.startswith("test_")}, name
    modules = set(graph)

    def targets(name: str, imported: str) -> set[str]:  # importing a.b.c runs a/b/__init__ too (unless inside a.b)
        parts = imported.split(".")
        found = {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & modules
        return {t for t in found if t != name and not name.startswith(t + ".")}

    edges = {name: set().union(*[targets(name, i) for i in imports]) for name, imports in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in edges[node]:
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
