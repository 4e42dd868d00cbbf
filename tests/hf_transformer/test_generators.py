"""The two generators of the seed papers as `VaswaniForCausalLM` configurations: the Music Transformer's (relative
attention over the 133 chorale tokens, continued past its relative window) and the Image Transformer's (sub-pixels in
raster order over 260 tokens, local 1D, local 2D or full attention). Each generates through `generate()` with the KV
cache exactly as without it, and exports as a folder that loads with trust_remote_code where our package cannot be
imported. (The data side is tests/lightning_modules/test_music.py and test_pixels.py.)"""

import json
import os

import pytest
import torch
from helpers import json_result, run_python
from variant_utils import assert_cached_generation_is_uncached_generation, varied_causal_lm

MUSIC = dict(vocab_size=133, position_embedding_type="relative", max_relative_position=8)
IMAGE_SIDE, CHANNELS = 4, 3  # a 4 x 4 RGB picture: 48 sub-pixels, grid rows of 12 positions
PIXELS = dict(vocab_size=260, max_position_embeddings=64, local_grid_width=IMAGE_SIDE * CHANNELS,
              local_block_rows=2, local_block_columns=6, local_memory_rows=1, local_memory_columns=3,
              local_block_length=12, local_memory_length=12)
IMAGE_VARIANTS = {"local_2d": dict(attention_type="local_2d"), "local": dict(attention_type="local"),
                  "full": dict(attention_type="full")}


def greedy(model, prompt: torch.Tensor, length: int, use_cache: bool) -> torch.Tensor:
    return model.generate(input_ids=prompt, do_sample=False, max_length=length, use_cache=use_cache,
                          suppress_tokens=[0, 1, 2, 3])


def test_music_continuations_past_the_relative_window_are_the_same_with_the_cache():
    model = varied_causal_lm(**MUSIC)
    prompt = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.randint(5, 133, (2, 8))], 1)  # <s> + two steps
    cached, uncached = greedy(model, prompt, 81, True), greedy(model, prompt, 81, False)  # 9 x the window of 8
    assert torch.equal(cached, uncached) and cached.shape == (2, 81)
    assert len(set(cached[:, 9:].flatten().tolist())) >= 5  # not one token repeated
    assert_cached_generation_is_uncached_generation(model, input_ids=prompt)  # greedy and beam search


@pytest.mark.parametrize("variant", IMAGE_VARIANTS)
def test_a_whole_picture_is_the_same_with_the_cache(variant):
    model = varied_causal_lm(**PIXELS, **IMAGE_VARIANTS[variant])
    start = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.randint(4, 260, (2, 3))], 1)  # <s> + one pixel
    length = 1 + IMAGE_SIDE * IMAGE_SIDE * CHANNELS
    cached, uncached = greedy(model, start, length, True), greedy(model, start, length, False)
    assert torch.equal(cached, uncached) and cached.shape == (2, length)
    assert (cached[:, 1:] >= 4).all() and len(set(cached[:, 4:].flatten().tolist())) >= 5
    assert_cached_generation_is_uncached_generation(model, input_ids=cached[:, :7])  # from a partial picture


def test_sampled_pictures_follow_the_seed():
    model = varied_causal_lm(**PIXELS, **IMAGE_VARIANTS["local_2d"])
    start = torch.ones(3, 1, dtype=torch.long)
    samples = []
    for _ in range(2):
        torch.manual_seed(7)
        samples.append(model.generate(input_ids=start, do_sample=True, top_k=0, max_length=49,
                                      suppress_tokens=[0, 1, 2, 3]))
    assert torch.equal(samples[0], samples[1]) and not torch.equal(samples[0][0], samples[0][1])


def test_both_generators_export_and_generate_where_our_package_is_blocked(tmp_path):
    models = {"music": varied_causal_lm(**MUSIC), "pixels": varied_causal_lm(**PIXELS, **IMAGE_VARIANTS["local_2d"])}
    prompts = {"music": [[1, 70, 65, 60, 53]], "pixels": [[1]]}
    expected = {}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
        expected[name] = greedy(model, torch.tensor(prompts[name]), 49, True).tolist()
    saved = json.loads((tmp_path / "pixels" / "config.json").read_text())
    assert (saved["attention_type"], saved["local_grid_width"], saved["local_block_columns"]) == ("local_2d", 12, 6)
    snippet = f"""
import json, sys
sys.modules["hf_transformer"] = None  # only the exported folders' code may run
import torch
from transformers import AutoModelForCausalLM
out = {{}}
for name, prompt in {prompts!r}.items():
    model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    out[name] = model.generate(input_ids=torch.tensor(prompt), do_sample=False, max_length=49,
                               suppress_tokens=[0, 1, 2, 3]).tolist()
print("RESULT-JSON: " + json.dumps(out))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": os.environ.get("PATH", "")}
    assert json_result(run_python(snippet, env, timeout=300, cwd=tmp_path)) == expected
