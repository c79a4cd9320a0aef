"""Batched generation with the functional KV cache of :mod:`deemo_jax.models.llama`.

Compiled programs: for a :class:`~deemo_jax.models.deemo_llama.DeemoLlama`, each modality encoder is its own
program (per batch size and frame/clip count) and a small one splices the projected tokens into the token
embeddings, so modality ablations share the encoders' programs; then one LLM program per (batch size,
prompt bucket, ``max_new_tokens``) prefills the left-padded prompt embeddings into the cache and runs a
``lax.while_loop`` of one-token decode steps that exits as soon as every row has stopped.

Prompts of different lengths are **left-padded** (``attention_mask`` 0 on the padding): the last prompt
column is then real for every row, so the prefill logits of that column give every row's first token, and
the model's per-row positions (``cumsum(mask) - 1``) make a padded row compute exactly what it would alone.
Prompt lengths are left-padded further to a multiple of ``GenerationConfig.length_bucket`` so that batches
of similar lengths share one compiled program. Decoding mode, temperature, top-p, EOS and stop sequences are
traced values, so changing them does not recompile (up to 4 stop sequences of up to 4 tokens share a shape).

A row stops at ``eos_id`` or when its generated tokens end with one of ``stop_sequences`` (e.g. the token
ids of the end symbol ``###``; a symbol can have several tokenisations, see
:func:`end_symbol_token_sequences`), or after ``max_new_tokens``. The returned tokens include the stopping
tokens; :attr:`GenerationOutput.content_lengths` excludes them, and :func:`decode_generated` decodes the
content and also cuts the text at the end symbol (for a tokenisation that is not in the stop list).

Decoding: greedy by default (``argmax``, first index on ties); ``do_sample=True`` samples from
``softmax(logits / temperature)`` restricted to the top-p nucleus (the smallest set of most likely tokens
whose probability reaches ``top_p``; the most likely token is always kept, as in transformers'
``TopPLogitsWarper``). Randomness is per row: row ``b`` at step ``t`` uses
``fold_in(fold_in(PRNGKey(seed), row_seeds[b]), t)``, so a sampled answer depends on the seed and the
row's own seed (e.g. a hash of the example id), not on the batch it was generated in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deemo_jax.data.pipeline import IGNORE_INDEX
from deemo_jax.models.deemo_llama import DeemoLlama, check_inputs
from deemo_jax.models.llama import Llama

logger = logging.getLogger(__name__)

FINISH_LENGTH, FINISH_EOS, FINISH_STOP = 0, 1, 2
FINISH_REASONS = {FINISH_LENGTH: "length", FINISH_EOS: "eos", FINISH_STOP: "stop_sequence"}
NO_TOKEN = -1  # fills the token buffer after a row stopped
_MIN_STOPS = (4, 4)  # minimum (number, length) of the stop table
_warned_positions: list[int] = []  # warn once per process


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings (greedy by default; the AffectGPT demo sampled with top_p 0.9, temperature 1)."""

    max_new_tokens: int = 300
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    eos_id: int | None = 2
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    length_bucket: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not isinstance(self.length_bucket, int) or self.length_bucket < 1:
            raise ValueError(f"GenerationConfig.length_bucket must be a positive int, got {self.length_bucket!r}")
        if not self.temperature > 0:
            raise ValueError(
                f"GenerationConfig.temperature must be > 0, got {self.temperature!r} (use do_sample=False for greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"GenerationConfig.seed must be an int in [0, 2**32), got {self.seed!r}")
        stops = tuple(tuple(int(t) for t in s) for s in self.stop_sequences)
        if any(not s or min(s) < 0 for s in stops):
            raise ValueError(
                f"GenerationConfig.stop_sequences must be non-empty sequences of token ids >= 0, got {stops!r}"
            )
        object.__setattr__(self, "stop_sequences", stops)
        if self.eos_id is not None and (not isinstance(self.eos_id, int | np.integer) or self.eos_id < 0):
            raise ValueError(f"GenerationConfig.eos_id must be a token id >= 0 or None, got {self.eos_id!r}")


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """``tokens`` int32 [B, max_new_tokens]: generated ids, :data:`NO_TOKEN` after a row stopped.

    ``num_tokens`` [B]: generated tokens including the stopping eos/stop sequence; ``content_lengths`` [B]:
    without them; ``finish_reasons`` [B]: :data:`FINISH_LENGTH`, :data:`FINISH_EOS` or :data:`FINISH_STOP`.
    """

    tokens: np.ndarray
    num_tokens: np.ndarray
    content_lengths: np.ndarray
    finish_reasons: np.ndarray

    def content(self, row: int) -> list[int]:
        return self.tokens[row, : self.content_lengths[row]].tolist()

    def finish_reason(self, row: int) -> str:
        return FINISH_REASONS[int(self.finish_reasons[row])]


def end_symbol_token_sequences(tokenizer: Any, symbol: str = "###") -> tuple[tuple[int, ...], ...]:
    """The token-id sequences that spell ``symbol`` at the end of generated text.

    SentencePiece tokenisers spell a symbol differently after a space and glued to a word (Vicuna: ``[835]``
    for "▁###" and ``[2277, 29937]`` for "##" + "#", reference_spec §10.3), so the symbol is tokenised alone
    and after a few contexts, and every tail that decodes to the symbol is kept.
    """
    found: list[tuple[int, ...]] = []
    for context in ("", " ", "a", "a.", "a "):
        prefix = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        ids = tokenizer(context + symbol, add_special_tokens=False)["input_ids"]
        if ids[: len(prefix)] != prefix:
            continue
        tail = tuple(int(t) for t in ids[len(prefix):])
        if tail and tokenizer.decode(list(tail)).strip() == symbol and tail not in found:
            found.append(tail)
    if not found:
        raise ValueError(f"could not find a tokenisation of the end symbol {symbol!r} with this tokenizer")
    return tuple(found)


def bucket_length(length: int, bucket: int) -> int:
    """``length`` rounded up to a multiple of ``bucket``."""
    return -(-length // bucket) * bucket


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, *, bucket: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id sequences to one length (a multiple of ``bucket``): ``(ids, mask)``, int32 ``[B, P]``."""
    if not sequences:
        raise ValueError("left_pad: no sequences")
    lengths = [len(s) for s in sequences]
    if min(lengths) == 0:
        raise ValueError(f"left_pad: sequence {lengths.index(0)} is empty")
    width = bucket_length(max(lengths), bucket)
    ids = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = np.asarray(seq, np.int32)
        mask[row, width - len(seq):] = 1
    return ids, mask


def prompts_from_batch(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The prompt ids (BOS + prompt, placeholders included) of each row of a DESIGN.md §3 eval batch.

    The prompt ends where the supervised target starts (the first ``labels != -100``). Rows without a
    supervised token (padding rows, ``example_mask == 0``) keep their whole real sequence, which is a valid
    prompt with all placeholders, so the model's checks hold for the whole batch.
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if ids.shape != labels.shape or ids.shape != mask.shape:
        raise ValueError(
            f"prompts_from_batch: input_ids {ids.shape}, attention_mask {mask.shape} and labels {labels.shape} "
            "must have one shape"
        )
    prompts = []
    for row in range(ids.shape[0]):
        supervised = np.flatnonzero(labels[row] != IGNORE_INDEX)
        end = int(supervised[0]) if supervised.size else int(mask[row].sum())
        if end == 0:
            raise ValueError(f"prompts_from_batch: row {row} has an empty prompt")
        prompts.append(ids[row, :end])
    return prompts


def _pick(logits: jax.Array, keys: jax.Array, step: jax.Array, do_sample, temperature, top_p) -> jax.Array:
    """Next token per row from ``logits`` [B, V] (float32): argmax, or a top-p sample when ``do_sample``."""

    def sample_row(row_logits, key):
        scaled = row_logits / temperature
        order = jnp.argsort(-scaled)
        sorted_probs = jax.nn.softmax(scaled[order])
        keep_sorted = (jnp.cumsum(sorted_probs) - sorted_probs) < top_p  # the first token is always kept
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        return jax.random.categorical(jax.random.fold_in(key, step), jnp.where(keep, scaled, -jnp.inf))

    return jax.lax.cond(
        do_sample,
        lambda: jax.vmap(sample_row)(logits, keys).astype(jnp.int32),
        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
    )


def _stop_table(stop_sequences: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stop sequences right-aligned in a ``[K, L]`` table (``NO_TOKEN`` = wildcard) plus their lengths [K].

    K and L are at least ``_MIN_STOPS`` so the usual stop lists share one compiled program; unused rows
    have length 0 and never match.
    """
    k = max(_MIN_STOPS[0], len(stop_sequences))
    width = max([_MIN_STOPS[1], *(len(s) for s in stop_sequences)])
    table = np.full((k, width), NO_TOKEN, np.int32)
    lengths = np.zeros((k,), np.int32)
    for i, seq in enumerate(stop_sequences):
        table[i, width - len(seq):] = seq
        lengths[i] = len(seq)
    return table, lengths


@functools.partial(jax.jit, static_argnames=("graphdef", "branch"))
def _encode_jit(state, media, *, graphdef, branch):
    """Projected LLM tokens of one modality: its own program, shared by every prompt length and row set."""
    model = nnx.merge(graphdef, state)
    return model.encode_video(media) if branch == "video" else model.encode_audio(media)


def _splice(embeds: jax.Array, is_slot: jax.Array, tokens: jax.Array) -> jax.Array:
    """Row b's k-th placeholder position gets ``tokens[b, k]`` (runs were checked by ``check_inputs``)."""
    slot = jnp.clip(jnp.cumsum(is_slot, axis=1) - 1, 0, tokens.shape[1] - 1)
    gathered = jnp.take_along_axis(tokens.astype(embeds.dtype), slot[..., None], axis=1)
    return jnp.where(is_slot[..., None], gathered, embeds)


@functools.partial(jax.jit, static_argnames=("graphdef", "video_id", "audio_id"))
def _embed_jit(state, input_ids, video_tokens, audio_tokens, *, graphdef, video_id, audio_id):
    """``DeemoLlama.embed_inputs`` from precomputed modality tokens (token embeddings for a bare Llama)."""
    llama = nnx.merge(graphdef, state)
    if video_id is None:
        return llama.embed(input_ids)
    is_video, is_audio = input_ids == video_id, input_ids == audio_id
    embeds = llama.embed(jnp.where(is_video | is_audio, 0, input_ids))
    if video_tokens is not None:
        embeds = _splice(embeds, is_video, video_tokens)
    if audio_tokens is not None:
        embeds = _splice(embeds, is_audio, audio_tokens)
    return embeds


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "cache_dtype"))
def _generate_jit(
    state, embeds, attention_mask, row_keys, do_sample, temperature, top_p, eos_id, stops, stop_lengths, *,
    graphdef, max_new_tokens, cache_dtype,
):
    llama = nnx.merge(graphdef, state)
    batch, prompt_len = attention_mask.shape
    cache = llama.init_cache(batch, prompt_len + max_new_tokens, cache_dtype)
    logits, cache = llama(inputs_embeds=embeds, attention_mask=attention_mask, cache=cache, logits_to_keep=1)

    # Token buffer with (stop table width - 1) leading NO_TOKEN columns, so a stop-sequence tail never reaches
    # into the prompt and every tail is one static-size dynamic_slice.
    stop_len = stops.shape[1]
    lead = stop_len - 1
    tokens = jnp.full((batch, lead + max_new_tokens), NO_TOKEN, jnp.int32)
    zeros = jnp.zeros((batch,), jnp.int32)

    def emit(carry, logits):
        tokens, step, done, num, content, reason = carry
        nxt = _pick(logits, row_keys, step, do_sample, temperature, top_p)
        nxt = jnp.where(done, NO_TOKEN, nxt)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, lead + step))
        num = jnp.where(done, num, step + 1)
        content = jnp.where(done, content, step + 1)
        hit_eos = nxt == eos_id  # eos_id -1 (none) matches only NO_TOKEN, i.e. rows already done
        tail = jax.lax.dynamic_slice(tokens, (0, step), (batch, stop_len))  # ends at the new token
        match = jnp.all((tail[:, None, :] == stops[None]) | (stops[None] == NO_TOKEN), axis=-1)
        match &= stop_lengths[None] > 0  # [B, K]
        hit_stop = jnp.any(match, axis=-1) & ~hit_eos
        matched_len = jnp.max(jnp.where(match, stop_lengths[None], 0), axis=-1)
        newly = ~done & (hit_eos | hit_stop)
        content = jnp.where(newly & hit_eos, step, content)
        content = jnp.where(newly & hit_stop, step + 1 - matched_len, content)
        reason = jnp.where(newly, jnp.where(hit_eos, FINISH_EOS, FINISH_STOP), reason)
        return tokens, step + 1, done | newly, num, content, reason

    carry = emit((tokens, jnp.int32(0), jnp.zeros((batch,), bool), zeros, zeros, zeros), logits[:, -1])

    def cond(state_cache):
        (_, step, done, *_), _ = state_cache
        return (step < max_new_tokens) & ~jnp.all(done)

    head = llama.tied_head()  # made once, outside the loop body

    def body(state_cache):
        carry, cache = state_cache
        tokens, step = carry[0], carry[1]
        last = jax.lax.dynamic_slice(tokens, (0, lead + step - 1), (batch, 1))
        last = jnp.maximum(last, 0)  # stopped rows feed a dummy id; their outputs are discarded
        logits, cache = llama(input_ids=last, cache=cache, head=head)
        return emit(carry, logits[:, -1]), cache

    (tokens, _, _, num, content, reason), _ = jax.lax.while_loop(cond, body, (carry, cache))
    return tokens[:, lead:], num, content, reason


def _model_parts(model: Llama | DeemoLlama) -> tuple[Llama, DeemoLlama | None]:
    if isinstance(model, DeemoLlama):
        return model.llama, model
    if isinstance(model, Llama):
        return model, None
    raise ValueError(f"generate: model must be a Llama or a DeemoLlama, got {type(model).__name__}")


def generate(
    model: Llama | DeemoLlama,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    config: GenerationConfig,
    *,
    frames: np.ndarray | None = None,
    fbank: np.ndarray | None = None,
    row_seeds: np.ndarray | None = None,
    cache_dtype: Any = None,
) -> GenerationOutput:
    """Generate for left-padded prompts ``input_ids`` [B, P] with ``attention_mask`` [B, P] (1 = real).

    With a DeemoLlama the prompts carry the placeholder runs and ``frames``/``fbank`` follow DESIGN.md §3.
    The prompts are left-padded further to a multiple of ``config.length_bucket``. ``row_seeds`` [B] (ints)
    seed each row's sampling (default: the row index); unused when greedy. ``cache_dtype`` defaults to the
    LLM's compute dtype.
    """
    llama, deemo = _model_parts(model)
    input_ids = np.asarray(input_ids)
    attention_mask = np.asarray(attention_mask)
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"generate: input_ids must be [batch, length] and attention_mask the same shape, got "
            f"{input_ids.shape} and {attention_mask.shape}"
        )
    batch, length = input_ids.shape
    if batch == 0 or length == 0:
        raise ValueError(f"generate: empty prompt batch {input_ids.shape}")
    real = attention_mask.astype(bool)
    if not real[:, -1].all():
        rows = np.flatnonzero(~real[:, -1]).tolist()
        raise ValueError(
            f"generate: prompts must be left-padded (the last column real in every row); rows {rows} are not. "
            "Use deemo_jax.eval.generate.left_pad"
        )
    if deemo is not None:
        check_inputs(deemo.config, input_ids, frames, fbank)
    elif frames is not None or fbank is not None:
        raise ValueError("generate: frames/fbank need a DeemoLlama, not a bare Llama")
    vocab = llama.config.vocab_size
    if deemo is None and (input_ids[real].min() < 0 or input_ids[real].max() >= vocab):
        raise ValueError(f"generate: token ids must lie in [0, {vocab}), got [{input_ids.min()}, {input_ids.max()}]")
    for name, ids in (("eos_id", [config.eos_id] if config.eos_id is not None else []),
                      ("stop_sequences", [t for s in config.stop_sequences for t in s])):
        if any(t >= vocab for t in ids):
            raise ValueError(f"generate: {name} {ids} outside the LLM vocabulary [0, {vocab})")

    width = bucket_length(length, config.length_bucket)
    if width > length:
        pad = width - length
        input_ids = np.pad(input_ids, ((0, 0), (pad, 0)))
        attention_mask = np.pad(attention_mask, ((0, 0), (pad, 0)))
    longest = int(real.sum(axis=1).max()) + config.max_new_tokens
    if longest > llama.config.max_position_embeddings and not _warned_positions:
        _warned_positions.append(longest)
        logger.warning(
            "prompt + max_new_tokens reaches position %d, beyond the LLM's max_position_embeddings %d (RoPE "
            "extrapolates; the model never saw such positions in training)",
            longest, llama.config.max_position_embeddings,
        )

    seeds = np.arange(batch) if row_seeds is None else np.asarray(row_seeds)
    if seeds.shape != (batch,):
        raise ValueError(f"generate: row_seeds must have shape ({batch},), got {seeds.shape}")
    base = jax.random.key(config.seed)
    row_keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(seeds % 2**31, jnp.int32))

    ids = jnp.asarray(input_ids, jnp.int32)
    llama_graphdef, llama_state = nnx.split(llama)
    if deemo is None:
        embeds = _embed_jit(llama_state, ids, None, None, graphdef=llama_graphdef, video_id=None, audio_id=None)
    else:
        graphdef, state = nnx.split(deemo)
        tokens = {
            name: None if media is None else _encode_jit(state, jnp.asarray(media), graphdef=graphdef, branch=name)
            for name, media in (("video", frames), ("audio", fbank))
        }
        embeds = _embed_jit(
            llama_state, ids, tokens["video"], tokens["audio"], graphdef=llama_graphdef,
            video_id=deemo.config.video_placeholder_id, audio_id=deemo.config.audio_placeholder_id,
        )
    stops, stop_lengths = _stop_table(config.stop_sequences)
    tokens, num, content, reason = _generate_jit(
        llama_state,
        embeds,
        jnp.asarray(attention_mask, jnp.int32),
        row_keys,
        jnp.bool_(config.do_sample),
        jnp.float32(config.temperature),
        jnp.float32(config.top_p),
        jnp.int32(-1 if config.eos_id is None else config.eos_id),
        jnp.asarray(stops),
        jnp.asarray(stop_lengths),
        graphdef=llama_graphdef,
        max_new_tokens=config.max_new_tokens,
        cache_dtype=cache_dtype,
    )
    return GenerationOutput(*(np.asarray(x) for x in (tokens, num, content, reason)))


def decode_generated(tokenizer: Any, output: GenerationOutput, end_symbol: str = "###") -> list[str]:
    """The text of each row's content tokens, cut at the first ``end_symbol`` and stripped."""
    texts = []
    for row in range(output.tokens.shape[0]):
        text = tokenizer.decode(output.content(row), skip_special_tokens=True)
        texts.append(text.split(end_symbol, 1)[0].strip())
    return texts
