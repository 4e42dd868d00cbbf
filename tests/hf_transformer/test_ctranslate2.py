"""The CTranslate2 export: every supported configuration decodes token for token like our generate() (beam 4 and
greedy), every unsupported one is refused by name, and a converted folder translates in an interpreter where torch
cannot be imported. The models are tiny and trained for a few seconds on the reverse task (tests/model_utils.py), so
that they end their outputs with </s> at varied lengths and beam search often disagrees with greedy search."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from benchmarks.ctranslate2_exactness import reproduced_under_jitter
from data_utils import multi30k_lines
from helpers import REPO_ROOT, RESULT_PREFIX, json_result, run_python
from model_utils import reverse_task_batch, tiny_config, tiny_model, train_reverse_model
from transformers import GenerationConfig

from hf_transformer import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForImageCaptioning,
    iter_parallel_texts,
    train_tokenizer,
    translate,
)
from hf_transformer.ctranslate2 import (
    SETTINGS_FILE,
    CTranslate2Model,
    check_convertible,
    convert_to_ctranslate2,
    ctranslate2_options,
    int8_saturates,
    main,
)
from hf_transformer.translation import paper_generation_config

import ctranslate2  # noqa: F401, E402  (in the `test` extra: without it this module fails, it is never skipped)

# Every configuration CTranslate2's Transformer can express, each trained briefly on the reverse task.
SUPPORTED = {
    "paper": dict(),  # sinusoidal (interleaved), post-LN, three-way tying, ReLU
    "learned_gelu": dict(position_embedding_type="learned", activation_function="gelu"),
    "pre_ln_gelu_tanh": dict(normalize_before=True, activation_function="gelu_new"),
    "untied_silu_unscaled": dict(tie_word_embeddings=False, activation_function="silu", scale_embedding=False),
    "relative_shared": dict(position_embedding_type="relative", relative_attention_per_head=False,
                            max_relative_position=3),
    "relative_pre_ln_untied_tanh": dict(position_embedding_type="relative", relative_attention_per_head=False,
                                        max_relative_position=5, normalize_before=True, tie_word_embeddings=False,
                                        activation_function="tanh", decoder_attention_heads=2),
}
TRAIN_STEPS = 150  # partly trained: outputs end with </s>, and beam 4 differs from greedy on about half the inputs


@pytest.fixture(scope="module")
def tokenizer():
    pairs = zip(multi30k_lines("train.de.gz", 2000), multi30k_lines("train.en.gz", 2000))
    return train_tokenizer(iter_parallel_texts(pairs), vocab_size=600)


def reverse_sources(count: int = 24, seed: int = 5) -> list[list[int]]:
    """Unpadded sources of 1..12 tokens + </s> (the models were trained on 1..8: longer ones are uncertain)."""
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(seed), count, max_length=12)
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def decode_both(model, engine, sources, num_beams: int, length_penalty: float | None = None):
    """(ours, CTranslate2's) outputs for each source alone, with translate()'s §6.1 generation config."""
    ours, theirs = [], []
    for ids in sources:
        config = paper_generation_config(model, len(ids), num_beams, length_penalty)
        ours.append(model.generate(input_ids=torch.tensor([ids]), generation_config=config)[0].tolist())
        theirs.append(engine.generate([ids], config)[0])
    return ours, theirs


def differences_are_rounding_ties(model, sources, ours, theirs, num_beams: int,
                                  length_penalty: float | None = None) -> list[int]:
    """The indices where CTranslate2's output differs from ours, after checking that each difference is a near-tie
    decided by float32 rounding: our own generate() returns CTranslate2's output when the scores move by 1e-5
    (benchmarks/ctranslate2_exactness.py, reproduced_under_jitter). CTranslate2's matrix kernels round otherwise
    (they differ by CPU), so two candidates closer than that may swap: seen on an AVX2 CPU, two beam-4 candidates
    5e-7 apart; a difference of the algorithm would not be reproduced that way."""
    differing = [index for index, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    for index in differing:
        config = paper_generation_config(model, len(sources[index]), num_beams, length_penalty)
        assert reproduced_under_jitter(model, sources[index], config, theirs[index]), (index, ours[index], theirs[index])
    return differing


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as CTranslate2's engine here (intra_threads=1), restored afterwards: later tests of the
    session compare logits bitwise with subprocesses that run with the default thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_configuration_decodes_identically(name, tokenizer, tmp_path):
    model = train_reverse_model(TRAIN_STEPS, seed=0, vocab_size=len(tokenizer), **SUPPORTED[name])
    folder = convert_to_ctranslate2(model, tmp_path / "ct2", tokenizer=tokenizer)
    engine = CTranslate2Model(folder, compute_type="float32", intra_threads=1)
    sources = reverse_sources()

    beam, beam_ct2 = decode_both(model, engine, sources, num_beams=4)
    greedy, greedy_ct2 = decode_both(model, engine, sources, num_beams=1)
    # identical but for near-ties that float32 rounding decides, and those rare (none on most CPUs)
    assert len(differences_are_rounding_ties(model, sources, beam, beam_ct2, num_beams=4)) <= 1
    assert len(differences_are_rounding_ties(model, sources, greedy, greedy_ct2, num_beams=1)) <= 1
    # the comparison exercises what it should: outputs that stop at </s>, at several lengths, and beam search that
    # picks other outputs than greedy search
    assert all(output[-1] == model.config.eos_token_id for output in beam)
    assert len({len(output) for output in beam}) >= 4
    assert sum(b != g for b, g in zip(beam, greedy)) >= 3
    if name == "paper":  # alpha 0 (CTranslate2 has another stopping rule there) and a long-favouring alpha
        for alpha in (0.0, 1.5):
            ours, theirs = decode_both(model, engine, sources, num_beams=4, length_penalty=alpha)
            assert len(differences_are_rounding_ties(model, sources, ours, theirs, 4, alpha)) <= 1, alpha


def test_translate_backend_ctranslate2_matches_pytorch(tokenizer, tmp_path):
    """Text in, text out through translate(): batches of equal length, blank texts, the §6.1 limit (this random
    model's outputs mostly run to input length + 50 tokens), a folder path and its own tokenizer."""
    model = tiny_model(seed=2, vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    sources = multi30k_lines("val.de.gz", 10) + ["", "   "]
    expected = translate(sources, model, tokenizer, batch_size=3)
    assert translate(sources, model, tokenizer, batch_size=3, backend="ctranslate2") == expected
    assert expected[-2:] == ["", ""] and len(set(expected)) > 5
    greedy = translate(sources, model, tokenizer, num_beams=1)
    assert translate(sources, model, tokenizer, num_beams=1, backend="ctranslate2", compute_type="float32") == greedy

    folder = tmp_path / "ct2"
    convert_to_ctranslate2(model, folder, tokenizer=tokenizer)
    assert translate(sources[0], str(folder), None, backend="ctranslate2") == expected[0]
    int8 = translate(sources, str(folder), None, backend="ctranslate2", compute_type="int8")
    assert len(int8) == len(sources) and int8[-2:] == ["", ""]

    with pytest.raises(ValueError, match=r"Input 1 has \d+ tokens but the model reads at most 128"):
        translate(["Ein Hund.", "Hund " * 200], str(folder), None, backend="ctranslate2")
    with pytest.raises(ValueError, match="`backend` must be one of"):
        translate(sources, model, tokenizer, backend="onnx")
    with pytest.raises(ValueError, match="`compute_type`='int8' is a CTranslate2 setting"):
        translate(sources, model, tokenizer, compute_type="int8")


def test_int8_mostly_agrees_with_float32(tokenizer, tmp_path):
    """The int8 export decodes mostly as float32 does, on a backend whose int8 products are exact: every CPU but an
    x86 one that is neither Intel's nor has VNNI, where CTranslate2 computes with oneDNN, whose int8 products
    saturate. There the test decodes in a child process with Intel MKL (CT2_USE_MKL=1), and checks that loading
    int8 in this process warns, and rightly: far fewer outputs agree (measured on an AMD EPYC with AVX2: 4 of 32,
    29 of 32 with MKL)."""
    model = train_reverse_model(300, seed=1, vocab_size=len(tokenizer))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folder = convert_to_ctranslate2(model, tmp_path / "ct2", quantization="int8", tokenizer=tokenizer)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # copies quantized
    assert json.loads((folder / SETTINGS_FILE).read_text())["quantization"] == "int8"
    sources = reverse_sources(32, seed=7)
    ours = [model.generate(input_ids=torch.tensor([ids]), generation_config=paper_generation_config(
        model, len(ids), 4, None))[0].tolist() for ids in sources]

    saturates = int8_saturates()
    code = f"""
        import json
        from hf_transformer.ctranslate2 import CTranslate2Model
        from hf_transformer.translation import paper_generation_config

        engine = CTranslate2Model({str(folder)!r}, intra_threads=1)  # int8 weights, int8 compute
        sources = json.loads({json.dumps(sources)!r})
        outputs = [engine.generate([ids], paper_generation_config(engine, len(ids), 4, None))[0] for ids in sources]
        print({RESULT_PREFIX!r} + json.dumps(outputs))
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"CT2_USE_MKL": "1"} if saturates else {})}
    theirs = json_result(run_python(code, env, timeout=300, cwd=REPO_ROOT))
    agree = sum(a == b for a, b in zip(ours, theirs))
    assert agree >= 0.8 * len(sources), (agree, len(sources))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = CTranslate2Model(folder, intra_threads=1)
    messages = [str(warning.message) for warning in caught if "saturate" in str(warning.message)]
    assert len(messages) == int(saturates), messages
    if saturates:
        assert "compute_type='float32'" in messages[0]
        here = [engine.generate([ids], paper_generation_config(model, len(ids), 4, None))[0] for ids in sources]
        assert sum(a == b for a, b in zip(ours, here)) < 0.8 * len(sources)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: VaswaniForConditionalGeneration(tiny_config(attention_type="local", local_block_length=4)),
         "`attention_type`='local'"),
        (lambda: VaswaniForConditionalGeneration(tiny_config(position_embedding_type="relative")),
         "`relative_attention_per_head`=True"),
        (lambda: VaswaniForCausalLM(tiny_config(is_encoder_decoder=False)), "`is_encoder_decoder`=False"),
        (lambda: VaswaniForImageCaptioning(tiny_config(image_size=8, patch_size=4)), "`image_size`=8"),
    ],
    ids=["local", "relative_per_head", "decoder_only", "image"],
)
def test_unsupported_configuration_is_refused_by_name(make, field, tmp_path, capsys):
    model = make()
    with pytest.raises(ValueError, match=f"Cannot convert to CTranslate2: {field}"):
        check_convertible(model.config)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:  # the command, on the saved folder, before loading any weight
        main([str(tmp_path / "model"), str(tmp_path / "ct2")])
    assert exit_info.value.code == 2
    assert f"error: Cannot convert to CTranslate2: {field}" in capsys.readouterr().err
    assert not (tmp_path / "ct2").exists()


def test_activation_without_a_ctranslate2_equivalent_is_refused():
    config = tiny_config()
    config.activation_function = "quick_gelu"  # not one of ours today; a later one CTranslate2 lacks is refused
    with pytest.raises(ValueError, match="`activation_function`='quick_gelu': CTranslate2 has an equivalent of"):
        check_convertible(config)


def test_generation_settings_without_an_exact_equivalent_are_refused():
    assert ctranslate2_options(GenerationConfig(num_beams=4, length_penalty=0.6, early_stopping=True, max_length=20)) \
        == dict(beam_size=4, patience=1, num_hypotheses=1, length_penalty=0.6, max_decoding_length=19,
                min_decoding_length=0, return_end_token=True, max_input_length=0, max_batch_size=0)
    with pytest.raises(ValueError, match="generation_config.no_repeat_ngram_size=3 has no exact CTranslate2"):
        ctranslate2_options(GenerationConfig(num_beams=4, early_stopping=True, no_repeat_ngram_size=3, max_length=9))
    with pytest.raises(ValueError, match="generation_config.early_stopping=False"):
        ctranslate2_options(GenerationConfig(num_beams=4, early_stopping=False, max_length=9))


def test_command_writes_a_folder_that_translates_without_torch(tokenizer, tmp_path):
    """hf-transformer-ctranslate2 on a save_pretrained folder; then a fresh interpreter where torch, transformers
    and our package cannot be imported loads the folder with ctranslate2 alone, reads its decoding settings from the
    folder's JSON files, and decodes the test sources: the same tokens as our generate()."""
    model = train_reverse_model(TRAIN_STEPS, seed=0, vocab_size=len(tokenizer), normalize_before=True)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    main([str(tmp_path / "model"), str(tmp_path / "ct2")])
    with pytest.raises(SystemExit):  # an existing folder is kept unless --force
        main([str(tmp_path / "model"), str(tmp_path / "ct2")])
    main([str(tmp_path / "model"), str(tmp_path / "ct2"), "--force"])

    sources = reverse_sources(12)
    expected = []
    for ids in sources:
        config = paper_generation_config(model, len(ids), None, None)
        output = model.generate(input_ids=torch.tensor([ids]), generation_config=config)[0].tolist()
        expected.append(tokenizer.convert_ids_to_tokens(output[1:]))  # without the decoder start token
    source_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in sources]
    code = f"""
        import importlib.abc, json, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "hf_transformer"):
                    raise ImportError(f"{{name}} is blocked in this interpreter")

        sys.meta_path.insert(0, Block())
        try:
            import torch
            raise SystemExit("torch is importable")
        except ImportError:
            pass
        import ctranslate2

        folder, sources = {str(tmp_path / "ct2")!r}, json.loads({json.dumps(source_tokens)!r})
        settings = json.load(open(folder + "/{SETTINGS_FILE}"))
        generation = json.load(open(folder + "/generation_config.json"))
        translator = ctranslate2.Translator(folder, device="cpu", compute_type="float32", intra_threads=1)
        outputs = []
        for tokens in sources:  # §6.1: at most input length + 50 tokens, within the positions
            max_length = min(len(tokens) + 51, settings["max_position_embeddings"]) - 1
            result = translator.translate_batch(
                [tokens], beam_size=generation["num_beams"], length_penalty=generation["length_penalty"],
                max_decoding_length=max_length, min_decoding_length=0, return_end_token=True, max_input_length=0)
            outputs.append(result[0].hypotheses[0])
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("RESULT-JSON: " + json.dumps(outputs))
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    assert json_result(run_python(code, env, cwd=tmp_path)) == expected


def test_exactness_benchmark_runs_and_explains(tmp_path):
    """benchmarks/ctranslate2_exactness.py end to end on a few test2016 sentences (a tiny model and tokenizer)."""
    tokenizer = train_tokenizer(multi30k_lines("train.de.gz", 500) + multi30k_lines("train.en.gz", 500),
                                vocab_size=400)
    model = train_reverse_model(100, seed=3, vocab_size=len(tokenizer), max_position_embeddings=128)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ctranslate2_exactness", "--model", str(tmp_path / "model"), "--limit", "12",
                           "--output", str(tmp_path / "result.json")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sentences"] == 12 and result["results"]["pytorch float32"]["identical_to_pytorch"] == 12
    identical = result["results"]["ctranslate2 float32"]["identical_to_pytorch"]
    assert identical + len(result["differences_float32"]) == 12 and result["unexplained_differences_float32"] == 0
    assert "ctranslate2 int8" in result["results"] and "identical to ours" in proc.stdout
