"""§6.1 Decoding: beam search (and greedy search) for the encoder-decoder models, in one lean loop.

The library's generate() decodes with a loop written for every model: each step runs the model's whole forward (the
output recorders, a cache object that concatenates and reorders, the masks), the logits processors and the beam
bookkeeping. For the models of this project most of a CPU decoding step beyond the matrix products is spent there
(benchmarks/README.md, "Decoding"). `VaswaniGenerationMixin.generate` hands the decoding to `lean_decode` below
(through generate()'s `custom_generate`) whenever the request is plain beam or greedy search, which this loop
reproduces token for token: the library still prepares everything (settings, lengths, special tokens, the encoder
pass), and the loop computes the same tokens with less work:

- the encoder-decoder keys and values are projected once per sentence instead of once per beam, and the beams of a
  sentence attend to them in one call, as its query positions (§3.2.3: cross-attention queries are independent);
- the first step runs one row per sentence: every beam starts from the same token (the library runs all beams);
- the decoder self-attention keys and values of all layers live in one preallocated buffer, written in place;
  following the surviving beams is one `index_select` per step (the library concatenates and reorders per layer);
- a sentence whose search is over leaves the batch (the library decodes it to the end with the others);
- each step calls the layers' own sublayers, projections and attention kernels directly, and on CPU in float32 the
  attention projections and the output layer multiply by a transposed copy of their weights (made once per call,
  see `TransposedWeights`): the same products, bit for bit, read faster by the matrix kernel.

The beam bookkeeping is the library's (`GenerationMixin._beam_search`, the same in transformers 5.18-5.24) operation
for operation, so that ties, finished hypotheses, their length penalty and the output padding come out the same. The
one departure: a sentence leaves the batch once all its beams are finished and no running beam can enter them again;
the library would go on updating its running beams, which only matters when every score of a sentence is below -1e9
(not reachable with log-probabilities of a real model). This file imports only torch and transformers: it is copied
next to the weights for `trust_remote_code`.

Notation: B sentences still decoding, K beams, N rows of hypotheses (B or B K), S source length, P positions decoded,
H heads, Dh head size, V vocabulary.
"""

from functools import partial

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.generation import EosTokenCriteria, GenerationMode, LogitsProcessorList, MaxLengthCriteria
from transformers.generation import StoppingCriteriaList

from .attention_vaswani import padding_mask

DECODING_LOOPS = ("auto", "lean", "library")
# Settings the lean loop applies itself; any other generation setting must be unset (None) or have the value below,
# which changes nothing. A request outside this is decoded by the library's loop.
OWN_SETTINGS = {"num_beams", "length_penalty", "early_stopping", "max_length", "max_new_tokens", "bos_token_id",
                "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config"}
NEUTRAL_SETTINGS = {
    "do_sample": False, "use_cache": True, "num_return_sequences": 1, "min_length": 0, "min_new_tokens": 0,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1, "diversity_penalty": 0.0, "renormalize_logits": False,
    "remove_invalid_values": False, "guidance_scale": 1.0, "token_healing": False, "low_memory": False,
    "is_assistant": False, "output_attentions": False, "output_hidden_states": False, "output_scores": False,
    "output_logits": False, "return_dict_in_generate": False,
}
MODEL_INPUTS = {"input_ids", "attention_mask", "pixel_values"}
BEAM_FREE = -1.0e9  # the library's "never chosen" score (beams 2..K at the start, finished or blocked candidates)
# Matrix kernels compute a row differently when the matrix has fewer rows than this (MKL's sgemm switches kernels
# below 4 rows on CPU): the loop never runs fewer rows than this where the library runs more, so that every row gets
# the bits the library's loop gives it.
MIN_ROWS = 4
# ... and with transposed weights (see `TransposedWeights`) when the layer has fewer output features than this
# (MKL: under 12).
MIN_FEATURES = 16


def lean_decoding_problem(model: nn.Module, generation_config: GenerationConfig | None, kwargs: dict) -> str | None:
    """None when `model.generate(generation_config=..., **kwargs)` asks for what `lean_decode` reproduces: plain beam
    or greedy search of an encoder-decoder model in eval mode, from its input ids / pixels, returning the token ids.
    Otherwise the first thing it asks for beyond that (the library's loop then decodes it). Conservative: a setting
    counts when the call, the given config or the model's own generation config sets it."""
    if not model.config.is_encoder_decoder:
        return "a decoder-only model"
    if model.training:
        return "the model is in training mode (dropout)"
    if getattr(model, "hf_device_map", None) or any(module._forward_hooks or module._forward_pre_hooks
                                                     for module in model.modules()):
        # the loop calls the layers' parts itself, past their forward: hooks there (FSDP's, a device map's, a
        # user's) would not run
        return "forward hooks on the model's modules (FSDP, a device map, or hooks of your own)"
    settings = [("the call", kwargs)]
    settings += [("generation_config", generation_config.to_dict())] if generation_config is not None else []
    settings += [("model.generation_config", model.generation_config.to_dict())]
    for source, values in settings:
        for name, value in values.items():
            if name == "eos_token_id" and isinstance(value, list) and len(value) > 1:
                return f"several end tokens, eos_token_id={value!r} (in {source})"
            if name in OWN_SETTINGS or value is None or (source == "the call" and name in MODEL_INPUTS):
                continue
            if name not in NEUTRAL_SETTINGS or value != NEUTRAL_SETTINGS[name]:
                return f"{name}={value!r} (in {source})"
    return None


def lean_decode(
    model: nn.Module,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    **model_kwargs,
) -> torch.LongTensor:
    """The decoding loop of generate() (its `custom_generate`), called once the library has prepared the request:
    input_ids (B K, 1) decoder start tokens; the encoder output and source mask in `model_kwargs`, repeated K times.
    Returns the token ids as the library's beam or greedy search returns them."""
    mode = generation_config.get_generation_mode()
    plain_criteria = (MaxLengthCriteria, EosTokenCriteria)
    unexpected = [type(c).__name__ for c in stopping_criteria if not isinstance(c, plain_criteria)]
    if mode not in (GenerationMode.BEAM_SEARCH, GenerationMode.GREEDY_SEARCH) or len(logits_processor) or unexpected:
        raise RuntimeError(
            f"lean_decode got a request it does not reproduce (mode {mode}, logits processors "
            f"{[type(p).__name__ for p in logits_processor]}, stopping criteria {unexpected}): pass "
            "decoding_loop='library' to generate()."
        )
    if input_ids.shape[1] != 1:
        raise RuntimeError("lean_decode starts from the decoder start token alone: pass decoding_loop='library'.")
    beams = generation_config.num_beams
    encoder_output = model_kwargs["encoder_outputs"].last_hidden_state  # (B K, S, D)
    decoder = CachedDecoder(model, encoder_output, model_kwargs.get("attention_mask"), beams,
                            generation_config.max_length)
    eos = generation_config.eos_token_id
    eos = (eos[0] if eos else None) if isinstance(eos, list) else eos  # one at most (see lean_decoding_problem)
    if beams == 1:
        return greedy_search(decoder, input_ids, generation_config, eos)
    return beam_search(decoder, input_ids.view(-1, beams), generation_config, eos)


# ----------------------------------------------------------------------------------------------------------------
# Linear layers with transposed weights
# ----------------------------------------------------------------------------------------------------------------
# nn.Linear computes x W^T from W stored (out, in): on CPU the matrix kernel reads W transposed. For the few rows of a
# decoding step, reading a (in, out) copy instead is faster for the output layer (1.2-2.3x, the largest matrix of a
# step) and the square attention projections (up to 2x at 4 rows), not for the FFN's (measured one thread, weights
# out of cache), and gives the same bits (MKL, from MIN_ROWS rows and MIN_FEATURES outputs up; checked by
# tests/hf_transformer/test_lean_decoding.py over a range of shapes). The copies are made when a decoding call first
# uses a weight and dropped at its end: no copy outlives the call, because weights change between calls in ways no
# counter shows (torch's fused Adam, the default optimiser of the training recipes, updates parameters in place without
# bumping their `_version`; a copy kept across a validation and the next training steps would decode with stale
# weights). One pass over the weights per call, against one read per decoding step saved.


class TransposedWeights:
    """The (in, out) copies of one decoding call's weights, each made on first use."""

    def __init__(self) -> None:
        self.copies: dict[int, torch.Tensor] = {}  # id(weight) -> W^T (the model holds its weights through the call)

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        """A contiguous (in, out) copy of `weight` (out, in)."""
        if id(weight) not in self.copies:
            self.copies[id(weight)] = weight.detach().t().contiguous()
        return self.copies[id(weight)]

    def project(self, linear: nn.Module, states: torch.Tensor) -> torch.Tensor:
        """linear(states) for states (N, 1, D_in): through the transposed weights for a float32 nn.Linear on CPU with
        at least MIN_ROWS rows and MIN_FEATURES outputs, through the module itself otherwise (other devices, dtypes,
        autocast, int8 modules, tiny layers)."""
        rows = states.shape[0]
        if (type(linear) is not nn.Linear or rows < MIN_ROWS or linear.out_features < MIN_FEATURES
                or states.device.type != "cpu" or states.dtype != torch.float32 or linear.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu")):
            return linear(states)
        flat = states.reshape(rows, states.shape[-1])
        weight = self.of(linear.weight)  # (D_in, D_out)
        output = torch.mm(flat, weight) if linear.bias is None else torch.addmm(linear.bias, flat, weight)
        return output.view(rows, 1, weight.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# The decoder, one position at a time
# ----------------------------------------------------------------------------------------------------------------


class CachedDecoder:
    """The decoder stack of `model` run one position at a time over N rows of hypotheses.

    Self-attention keys and values of every layer live in one buffer (capacity, L, 2, N, H, Dh), position-major, so
    that the first P positions of all rows are one contiguous block (following the beams is one `index_select` into a
    second buffer) and a layer's keys are a view (N, H, P, Dh) of it. The encoder-decoder keys and values are
    (B, H, S, Dh) per layer: one row per sentence, shared by its beams."""

    def __init__(self, model: nn.Module, encoder_output: torch.Tensor, source_mask: torch.Tensor | None, beams: int,
                 max_length: int):
        """encoder_output: (B K, S, D) and source_mask (B K, S) as generate() expands them, K copies per sentence."""
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.layers = list(self.decoder.layers)
        first = self.layers[0].self_attn
        self.heads, self.head_dim = first.num_heads, first.head_dim
        self.max_positions = max_length - 1  # positions after the start token: at most max_length - 1
        # §3.2.3 encoder-decoder attention: keys and values from the encoder output, projected once per sentence
        # (from all K copies where the sentences hold fewer than MIN_ROWS source positions in all).
        once = encoder_output.shape[0] * encoder_output.shape[1] // beams >= MIN_ROWS
        states = encoder_output[::beams] if once else encoder_output
        self.cross = []
        for layer in self.layers:
            attention = layer.encoder_attn
            key = attention.split_heads(attention.k_proj(states))  # (B, H, S, Dh)
            value = attention.split_heads(attention.v_proj(states))
            self.cross.append((key, value) if once else (key[::beams], value[::beams]))
        self.source_mask = None if source_mask is None else source_mask[::beams]  # (B, S), 1 = token
        self.cross_mask: torch.Tensor | None = None  # additive (B, 1, 1, S), built at the first step
        self.cache: torch.Tensor | None = None  # (capacity, L, 2, N, H, Dh)
        self.spare: torch.Tensor | None = None  # the previous buffer, written by the next `select`
        self.length = 0  # P: positions in the cache
        self.weights = TransposedWeights()  # this call's transposed projection weights

    @property
    def sentences(self) -> int:
        return self.cross[0][0].shape[0]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode position P for N rows (`tokens` (N,), the previous tokens); returns the logits (N, V)."""
        decoder = self.decoder
        hidden = decoder.embed(decoder.embed_tokens(tokens[:, None]), self.length, None, "target")  # (N, 1, D)
        if self.length == 0:
            self.cross_mask = padding_mask(self.source_mask, hidden.dtype)  # as VaswaniDecoder builds it
        self.length += 1
        for index, layer in enumerate(self.layers):
            hidden = layer.sublayer(hidden, layer.self_attn_layer_norm, partial(self.self_attention, index))
            hidden = layer.sublayer(hidden, layer.encoder_attn_layer_norm, partial(self.cross_attention, index))
            hidden = layer.sublayer(hidden, layer.final_layer_norm, layer.feed_forward)
        if decoder.layer_norm is not None:
            hidden = decoder.layer_norm(hidden)
        return self.weights.project(self.lm_head, hidden)[:, -1]  # (N, V)

    def self_attention(self, index: int, states: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of the new position over positions 0..P (§3.2.3): the newest query may see every
        cached key, so there is no mask. The layer's own projections and kernel (and variant: relative positions,
        local blocks)."""
        attention, project = self.layers[index].self_attn, self.weights.project
        rows = states.shape[0]
        query = attention.split_heads(project(attention.q_proj, states))  # (N, H, 1, Dh)
        if index == 0:
            self.make_room(rows, query.dtype, query.device)
        position = self.length - 1
        self.cache[position, index, 0] = project(attention.k_proj, states).view(rows, self.heads, self.head_dim)
        self.cache[position, index, 1] = project(attention.v_proj, states).view(rows, self.heads, self.head_dim)
        keys = self.cache[: self.length, index, 0].permute(1, 2, 0, 3)  # (N, H, P + 1, Dh), a view
        values = self.cache[: self.length, index, 1].permute(1, 2, 0, 3)
        output, _ = attention.attend(attention, query, keys, values, None)  # (N, 1, H, Dh)
        return project(attention.out_proj, output.reshape(rows, 1, self.heads * self.head_dim))  # (N, 1, D)

    def cross_attention(self, index: int, states: torch.Tensor) -> torch.Tensor:
        """Encoder-decoder attention of N = B x R rows (R hypotheses per sentence): the R rows of a sentence are the
        query positions of one attention over its encoder output (each query attends on its own, §3.2.3)."""
        attention, project = self.layers[index].encoder_attn, self.weights.project
        rows, sentences = states.shape[0], self.sentences
        query = project(attention.q_proj, states).view(sentences, rows // sentences, self.heads, self.head_dim)
        key, value = self.cross[index]
        output, _ = attention.attend(attention, query.transpose(1, 2), key, value, self.cross_mask)  # (B, R, H, Dh)
        return project(attention.out_proj, output.reshape(rows, 1, self.heads * self.head_dim))  # (N, 1, D)

    def make_room(self, rows: int, dtype: torch.dtype, device: torch.device) -> None:
        """A cache with room for position P: allocated at the first step, doubled when full (up to the longest
        output), so that a short output never allocates `max_length` positions."""
        if self.cache is not None and self.length <= self.cache.shape[0]:
            return
        capacity = min(self.max_positions, max(16, 2 * self.length))
        cache = torch.empty(capacity, len(self.layers), 2, rows, self.heads, self.head_dim, dtype=dtype, device=device)
        if self.cache is not None:
            cache[: self.length - 1] = self.cache[: self.length - 1]
        self.cache, self.spare = cache, None

    def select(self, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        """Keep the cache rows `rows` (M,), in that order (the parents of the next step's hypotheses), and, when
        given, only the sentences `sentences` of the encoder-decoder attention."""
        shape = (*self.cache.shape[:3], rows.shape[0], *self.cache.shape[4:])
        cache = self.spare if self.spare is not None and self.spare.shape == shape else self.cache.new_empty(shape)
        torch.index_select(self.cache[: self.length], 3, rows, out=cache[: self.length])
        self.cache, self.spare = cache, self.cache
        if sentences is not None:
            self.cross = [(key.index_select(0, sentences), value.index_select(0, sentences))
                          for key, value in self.cross]
            if self.cross_mask is not None:
                self.cross_mask = self.cross_mask.index_select(0, sentences)


# ----------------------------------------------------------------------------------------------------------------
# Greedy search
# ----------------------------------------------------------------------------------------------------------------


def greedy_search(decoder: CachedDecoder, starts: torch.LongTensor, config: GenerationConfig,
                  eos: int | None) -> torch.LongTensor:
    """The library's greedy search: the arg max of the logits each step, padding after </s>. A finished sentence
    leaves the batch (while at least MIN_ROWS others remain). starts: (B, 1). Returns (B, 1 + steps)."""
    batch = starts.shape[0]
    pad = config.pad_token_id if config.pad_token_id is not None else eos  # without one the library pads with </s>
    output = starts.new_full((batch, config.max_length), pad if pad is not None else 0)
    output[:, 0] = starts[:, 0]
    active = torch.arange(batch, device=starts.device)  # the sentences in the batch, one row each
    running = torch.ones(batch, dtype=torch.bool, device=starts.device)  # and whether they are still decoding
    tokens = starts[:, 0]
    length = 1  # tokens so far, the start token included
    while length < config.max_length:
        tokens = torch.argmax(decoder.step(tokens).float(), dim=-1)  # (b,)
        if pad is not None:
            tokens = torch.where(running, tokens, pad)
        output[active, length] = tokens
        length += 1
        if eos is None:
            continue
        running = running & (tokens != eos)
        if not bool(running.any()):
            break
        if not bool(running.all()) and int(running.sum()) >= MIN_ROWS:
            kept = running.nonzero()[:, 0]
            active, tokens, running = active[kept], tokens[kept], running[kept]
            decoder.select(kept, kept)
    return output[:, :length]


# ----------------------------------------------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------------------------------------------


class BeamState:
    """The library's beam search state for B sentences and K beams: the running beams and the finished ones."""

    def __init__(self, starts: torch.LongTensor, config: GenerationConfig, eos: int | None):
        sentences, beams = starts.shape
        device = starts.device
        fill = (config.pad_token_id or eos) if eos is not None else -1  # the library's padding: pad id 0 -> </s>
        self.running = starts.new_full((sentences, beams, config.max_length), fill)  # (B, K, L) token ids
        self.running[:, :, 0] = starts
        self.finished = self.running.clone()
        self.running_scores = torch.zeros((sentences, beams), dtype=torch.float, device=device)
        self.running_scores[:, 1:] = BEAM_FREE  # only the first beam's continuations count at the first step
        self.finished_scores = torch.full((sentences, beams), BEAM_FREE, dtype=torch.float, device=device)
        self.finished_lengths = torch.zeros((sentences, beams), dtype=torch.long, device=device)  # tokens generated
        self.is_finished = torch.zeros((sentences, beams), dtype=torch.bool, device=device)
        self.improvable = torch.ones((sentences, 1), dtype=torch.bool, device=device)  # the early-stop heuristic
        self.top_beams = (torch.arange(2 * beams) < beams).to(device)  # (2K,): candidates kept; the top K may end

    def select(self, sentences: torch.Tensor) -> None:
        """Keep the state of the sentences `sentences` (B',) only."""
        for name in ("running", "finished", "running_scores", "finished_scores", "finished_lengths", "is_finished",
                     "improvable"):
            setattr(self, name, getattr(self, name).index_select(0, sentences))


def beam_search(decoder: CachedDecoder, starts: torch.LongTensor, config: GenerationConfig,
                eos: int | None) -> torch.LongTensor:
    """The library's beam search (`GenerationMixin._beam_search`) step for step. starts: (B, K) decoder start tokens.
    Returns the best finished hypothesis of each sentence, (B, 1 + longest), padded as the library pads."""
    sentences, beams = starts.shape
    device = starts.device
    state = BeamState(starts, config, eos)
    outputs, output_lengths = state.finished[:, 0].clone(), state.finished_lengths[:, 0].clone()  # (B, L), (B,)
    active = torch.arange(sentences, device=device)  # the sentences in the batch
    # first step: every beam holds the start token, one row per sentence is enough (K where that is under MIN_ROWS)
    tokens = starts[:, 0] if sentences >= MIN_ROWS else starts.reshape(-1)
    length = 1  # tokens so far, the start token included (the library's cur_len)
    while True:
        log_probs = nn.functional.log_softmax(decoder.step(tokens).float(), dim=-1)  # (n, V)
        batch, vocab = active.shape[0], log_probs.shape[-1]
        rows = log_probs.shape[0] // batch  # rows per sentence: K, or 1 at the first step
        log_probs = log_probs.view(batch, rows, vocab).expand(batch, beams, vocab)
        scores = (log_probs + state.running_scores[:, :, None]).reshape(batch, beams * vocab)
        top_scores, top_indices = torch.topk(scores, k=2 * beams)  # (b, 2K): enough to go on if the top K all end
        parents, new_tokens = top_indices // vocab, top_indices % vocab
        candidates = torch.take_along_dim(state.running, parents[:, :, None], dim=1)  # (b, 2K, L)
        candidates[:, :, length] = new_tokens
        ends = new_tokens == eos if eos is not None else torch.zeros_like(new_tokens, dtype=torch.bool)
        ends = ends | (length + 1 >= config.max_length)  # the library's stopping criteria: </s>, or max_length

        # the K best candidates that do not end go on (the library's `_get_running_beams_for_next_iteration`)
        running_scores = top_scores + ends.to(torch.float32) * BEAM_FREE
        going_on = torch.topk(running_scores, k=beams)[1]  # (b, K)
        state.running = torch.take_along_dim(candidates, going_on[:, :, None], dim=1)
        state.running_scores = torch.take_along_dim(running_scores, going_on, dim=1)
        parents = torch.take_along_dim(parents, going_on, dim=1)  # (b, K): the beam each one continues

        update_finished(state, candidates, top_scores, ends, length, config)
        length += 1
        update_improvable(state, length, config)
        early_stopping = config.early_stopping is True
        if not bool(state.improvable.any() & ~(state.is_finished.all() & early_stopping) & ~ends.all()):
            break
        # the cache rows of the parents: row b K + k (row b where the first step ran one row per sentence)
        within = parents if rows > 1 else torch.zeros_like(parents)
        parent_rows = (torch.arange(batch, device=device)[:, None] * rows + within).view(-1)  # (b K,)
        tokens = state.running[:, :, length - 1].reshape(-1)  # (b K,)
        done = state.is_finished.all(dim=-1) & (~state.improvable[:, 0] | early_stopping)  # (b,): nothing can change
        going = (~done).nonzero()[:, 0]
        if going.shape[0] == batch or going.shape[0] * beams < MIN_ROWS:
            decoder.select(parent_rows)  # done sentences stay (as in the library) while too few rows would remain
            continue
        outputs[active[done]] = state.finished[done, 0]
        output_lengths[active[done]] = state.finished_lengths[done, 0]
        active = active[going]
        state.select(going)
        decoder.select(parent_rows.view(batch, beams)[going].view(-1), going)
        tokens = tokens.view(batch, beams)[going].view(-1)
    outputs[active] = state.finished[:, 0]
    output_lengths[active] = state.finished_lengths[:, 0]
    return outputs[:, : 1 + int(output_lengths.max())]  # the library crops to the longest best output


def update_finished(state: BeamState, candidates: torch.Tensor, top_scores: torch.Tensor, ends: torch.Tensor,
                    length: int, config: GenerationConfig) -> None:
    """Move the candidates among the top K that end into the finished hypotheses of their sentence, scored
    sum(log p) / generated_length ** alpha, where they beat the K kept so far (the library's `_update_finished_beams`;
    a sentence whose K are final, or that cannot improve, takes no more)."""
    beams = state.finished.shape[1]
    just_finished = ends & state.top_beams[None, :]
    generated = length  # tokens after the start token, the new one included
    scores = top_scores / (generated**config.length_penalty)
    full = torch.all(state.is_finished, axis=-1, keepdims=True) & (config.early_stopping is True)
    scores += full.to(torch.float32) * BEAM_FREE
    scores += (~state.improvable).to(torch.float32) * BEAM_FREE
    scores += (~just_finished) * BEAM_FREE
    merged_scores = torch.cat((state.finished_scores, scores), dim=1)  # (b, K + 2K)
    best = torch.topk(merged_scores, k=beams)[1]
    state.finished = torch.take_along_dim(torch.cat((state.finished, candidates), dim=1), best[:, :, None], dim=1)
    state.finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
    lengths = torch.cat((state.finished_lengths, torch.full_like(ends, generated, dtype=torch.long)), dim=1)
    state.finished_lengths = torch.take_along_dim(lengths, best, dim=1)
    state.is_finished = torch.take_along_dim(torch.cat((state.is_finished, just_finished), dim=1), best, dim=1)


def update_improvable(state: BeamState, length: int, config: GenerationConfig) -> None:
    """Whether a running beam may still beat the worst finished hypothesis (the library's heuristic,
    `_check_early_stop_heuristic`): with early_stopping="never" and alpha > 0 it assumes the longest output."""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        best_length = config.max_length - 1
    else:
        best_length = length - 1
    best_possible = state.running_scores[:, :1] / (best_length**config.length_penalty)
    worst_finished = torch.where(state.is_finished, torch.min(state.finished_scores, dim=1, keepdim=True)[0],
                                 BEAM_FREE)
    state.improvable = state.improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
