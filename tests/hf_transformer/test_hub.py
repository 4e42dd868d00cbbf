"""Publishing and loading through the real huggingface_hub HTTP client, against servers on 127.0.0.1:
`push_to_hub` to the upload-capable test hub (tests/hub_server.py), `from_pretrained("org/name")` from it and from
a real `olah` mirror. The client runs in a subprocess because huggingface_hub reads HF_ENDPOINT at import."""

import json

import torch
from helpers import TEST_TOKEN, hub_env, json_result, run_python
from model_utils import remote_code_beams_snippet, source_batch, train_reverse_model

from hf_transformer import train_tokenizer

EXPECTED_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "configuration_vaswani.py", "modeling_vaswani.py",
    "tokenizer.json", "tokenizer_config.json",
}

PUSH = """
import sys
import hf_transformer
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
model = AutoModelForSeq2SeqLM.from_pretrained({folder!r})
tokenizer = AutoTokenizer.from_pretrained({folder!r})
model.push_to_hub("org/reverser", private=True)
tokenizer.push_to_hub("org/reverser")
"""

LOAD_WITH_PACKAGE = """
import json, torch
import hf_transformer
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
model = AutoModelForSeq2SeqLM.from_pretrained("org/reverser").eval()
tokenizer = AutoTokenizer.from_pretrained("org/reverser") if {with_tokenizer} else None
assert type(model) is hf_transformer.VaswaniForConditionalGeneration
inputs = json.loads({inputs!r})
with torch.no_grad():
    logits = model(input_ids=torch.tensor(inputs["input_ids"]), attention_mask=torch.tensor(inputs["attention_mask"]),
                   decoder_input_ids=torch.tensor([[1, 5, 6]] * len(inputs["input_ids"]))).logits
print("RESULT-JSON: " + json.dumps({{"logits": logits.tolist(), "vocab": len(tokenizer) if tokenizer else None,
                                     "num_beams": model.generation_config.num_beams}}))
"""


def saved_model(tmp_path):
    """A half-trained reverse-task model (beams are not trivial) and a tokenizer, saved as a user would."""
    model = train_reverse_model(60)
    folder = tmp_path / "local_model"
    model.save_pretrained(folder)
    train_tokenizer(["ein Hund läuft", "a dog runs"] * 50, vocab_size=280).save_pretrained(folder)
    return model, folder


def expected_outputs(model):
    input_ids, attention_mask = source_batch()
    beams = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=12)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       decoder_input_ids=torch.tensor([[1, 5, 6]] * 3)).logits
    inputs = json.dumps({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()})
    return input_ids, attention_mask, beams, logits, inputs


def test_push_to_hub_then_from_pretrained_and_remote_code(tmp_path, hub_server):
    model, folder = saved_model(tmp_path)
    input_ids, attention_mask, beams, logits, inputs = expected_outputs(model)
    env = hub_env(hub_server.url, tmp_path / "hf_home_push", token=TEST_TOKEN)
    run_python(PUSH.format(folder=str(folder)), env, timeout=300)

    stored = hub_server.files("org/reverser", "model", "main")
    assert EXPECTED_FILES <= set(stored), sorted(stored)
    assert hub_server.is_private("org/reverser", "model")
    writes = [r for r in hub_server.requests if r.method == "POST"]
    assert writes and all(r.authorization == f"Bearer {TEST_TOKEN}" for r in writes)
    assert json.loads(stored["config.json"])["auto_map"]["AutoModel"] == "modeling_vaswani.VaswaniModel"

    # a second machine: a fresh cache, our package installed
    loaded = json_result(run_python(LOAD_WITH_PACKAGE.format(inputs=inputs, with_tokenizer=True),
                                    hub_env(hub_server.url, tmp_path / "hf_home_a", token=TEST_TOKEN), timeout=300))
    assert torch.equal(torch.tensor(loaded["logits"]), logits)
    assert loaded["num_beams"] == 4 and loaded["vocab"] > 256
    # a third machine: only transformers, the code comes from the repository
    remote = run_python(remote_code_beams_snippet("org/reverser", input_ids, attention_mask),
                        hub_env(hub_server.url, tmp_path / "hf_home_b", token=TEST_TOKEN), timeout=300)
    assert json_result(remote) == beams.tolist()


def test_from_pretrained_through_an_olah_mirror(tmp_path, hub_mirror):
    """olah 0.5 answers a tree listing of a missing folder with 401 RepoNotFound (the Hub says 404 EntryNotFound),
    which breaks AutoTokenizer's optional chat-template lookup; the tokenizer's Hub path is covered above."""
    model, folder = saved_model(tmp_path)
    input_ids, attention_mask, beams, logits, inputs = expected_outputs(model)
    hub_mirror.add_repo("model", "org/reverser", folder)
    loaded = json_result(run_python(LOAD_WITH_PACKAGE.format(inputs=inputs, with_tokenizer=False), hub_mirror.env(tmp_path / "hf_a"),
                                    timeout=300))
    assert torch.equal(torch.tensor(loaded["logits"]), logits)
    remote = run_python(remote_code_beams_snippet("org/reverser", input_ids, attention_mask),
                        hub_mirror.env(tmp_path / "hf_b"), timeout=300)
    assert json_result(remote) == beams.tolist()
