"""save_pretrained / from_pretrained, the Auto classes, and the self-contained trust_remote_code export."""

import json
import os
import sys

import pytest
import torch
from helpers import json_result, run_python
from model_utils import remote_code_beams_snippet, source_batch, tiny_model, train_reverse_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, VaswaniModel


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False},
                                       {"position_embedding_type": "learned", "normalize_before": True}])
def test_round_trip_is_bitwise_with_no_missing_keys(tmp_path, overrides):
    model = tiny_model(seed=4, **overrides)
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "config.json", "generation_config.json", "configuration_vaswani.py",
            "modeling_vaswani.py"} <= {p.name for p in tmp_path.iterdir()}
    loaded, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 5))
    with torch.no_grad():
        a = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        b = loaded.eval()(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(a, b)
    shared = loaded.model.shared.weight
    assert loaded.model.encoder.embed_tokens.weight is shared and loaded.model.decoder.embed_tokens.weight is shared
    assert (loaded.lm_head.weight is shared) == loaded.config.tie_word_embeddings
    stored = load_file(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not loaded.config.tie_word_embeddings)  # a tied matrix is stored once
    position_keys = {key for key in stored if "embed_positions" in key}
    if loaded.config.position_embedding_type == "sinusoidal":
        assert not position_keys  # no table is saved: sinusoids are computed, never left uninitialised by a load
        positions = torch.arange(loaded.config.max_position_embeddings)
        assert torch.equal(loaded.model.encoder.embed_positions(positions), model.model.encoder.embed_positions(positions))
    else:
        assert position_keys == {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}


def test_auto_classes_resolve_to_ours(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VaswaniConfig)
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path)) is VaswaniForConditionalGeneration
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is VaswaniModel
    assert torch.equal(base.shared.weight, model.model.shared.weight)
    assert type(AutoModelForSeq2SeqLM.from_config(tiny_model().config)) is VaswaniForConditionalGeneration
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vaswani.VaswaniConfig",
        "AutoModel": "modeling_vaswani.VaswaniModel",
        "AutoModelForSeq2SeqLM": "modeling_vaswani.VaswaniForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_vaswani.VaswaniForCausalLM",
        "AutoModelForImageTextToText": "modeling_vaswani.VaswaniForImageCaptioning",
    }


def test_exported_code_imports_only_torch_and_transformers(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    exported = {path.name for path in tmp_path.glob("*.py")}
    assert exported == {"configuration_vaswani.py", "attention_vaswani.py", "generation_vaswani.py",
                        "modeling_vaswani.py"}, exported
    for name in exported:
        imports = [line.split()[1] for line in (tmp_path / name).read_text().splitlines()
                   if line.startswith(("import ", "from "))]
        roots = {module.split(".")[0] for module in imports} - set(sys.stdlib_module_names)
        assert roots <= {"torch", "transformers", ""}, (name, roots)  # "": the sibling files (from .x import y)


def test_trust_remote_code_load_without_our_package_gives_the_same_beams(tmp_path):
    model = train_reverse_model(60)  # half trained: beams are not trivial
    model.save_pretrained(tmp_path / "model")
    input_ids, attention_mask = source_batch()
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=12)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": os.environ.get("PATH", "")}
    snippet = remote_code_beams_snippet(str(tmp_path / "model"), input_ids, attention_mask)
    assert json_result(run_python(snippet, env, timeout=300, cwd=tmp_path)) == expected.tolist()


@pytest.mark.cross_version
def test_one_exported_folder_gives_the_same_beams_on_two_transformers_releases(tmp_path):
    """The remote code is saved once and must run unchanged on every release of the declared range: the folder
    exported here loads with trust_remote_code, our package blocked, in this environment and in a second one
    (`.ci/run` builds it with the lowest supported transformers) and decodes the same beams in both."""
    other = os.environ.get("HF_TRANSFORMER_OTHER_PYTHON")
    if not other:
        pytest.fail("HF_TRANSFORMER_OTHER_PYTHON must name the python of a second environment with another "
                    "transformers release (.ci/run builds .ci/venv-lowest and sets it).", pytrace=False)
    model = train_reverse_model(60)
    model.save_pretrained(tmp_path / "model")
    input_ids, attention_mask = source_batch()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": os.environ.get("PATH", "")}
    snippet = remote_code_beams_snippet(str(tmp_path / "model"), input_ids, attention_mask)
    snippet += "import transformers; print('RELEASE', transformers.__version__)\n"
    runs = [run_python(snippet, env, timeout=300, cwd=tmp_path, python=python) for python in (None, other)]
    releases = [next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("RELEASE")) for run in runs]
    assert releases[0] != releases[1], releases  # two releases, or this proves nothing
    beams = [json_result(run) for run in runs]
    assert beams[0] == beams[1], releases
    assert beams[0] == model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4,
                                      max_new_tokens=12).tolist()
