"""Batched KV-cache generation (deemo_jax.eval.generate): equality with full recomputation, batch vs single,
seeded top-p sampling, stop sequences/EOS, end-symbol tokenisations and text cutting."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from deemo_jax.eval.generate import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    NO_TOKEN,
    GenerationConfig,
    GenerationOutput,
    decode_generated,
    end_symbol_token_sequences,
    generate,
    left_pad,
    prompts_from_batch,
)
from deemo_jax.models.llama import Llama, LlamaConfig

NEW = 10
LENGTHS = (3, 7, 12, 5)


@pytest.fixture(scope="module")
def model(numpy_init):
    # scale 0.3 gives peaked, varied next-token distributions (0.05 would give near-ties everywhere)
    return numpy_init(lambda: Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0)), seed=1, scale=0.3)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(3, 128, n).astype(np.int32) for n in LENGTHS]


@pytest.fixture(scope="module")
def forward(model):
    """Jitted cache-free forward: logits [B, L, V] of right-padded ids with their mask."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        logits, _ = nnx.merge(graphdef, state)(input_ids=ids, attention_mask=mask)
        return logits

    return lambda ids, mask: np.asarray(run(state, ids, mask))


def full_recompute_greedy(forward, prompts, new_tokens: int) -> list[list[int]]:
    """Greedy decoding without a cache: each step re-runs the whole (right-padded) sequence."""
    width = max(len(p) for p in prompts) + new_tokens
    seqs = [list(map(int, p)) for p in prompts]
    for _ in range(new_tokens):
        ids = np.zeros((len(seqs), width), np.int32)
        mask = np.zeros((len(seqs), width), np.int32)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        logits = forward(ids, mask)
        for row, seq in enumerate(seqs):
            seq.append(int(np.argmax(logits[row, len(seq) - 1])))
    return [seq[len(p):] for seq, p in zip(seqs, prompts, strict=True)]


@pytest.fixture(scope="module")
def greedy_batch(model, prompts):
    ids, mask = left_pad(prompts, pad_id=0)
    return generate(model, ids, mask, GenerationConfig(max_new_tokens=NEW, eos_id=None, length_bucket=16))


def test_kv_cache_greedy_equals_full_recomputation(forward, prompts, greedy_batch):
    expected = full_recompute_greedy(forward, prompts, NEW)
    assert [greedy_batch.tokens[row].tolist() for row in range(len(prompts))] == expected
    assert greedy_batch.num_tokens.tolist() == [NEW] * len(prompts)
    assert greedy_batch.finish_reasons.tolist() == [FINISH_LENGTH] * len(prompts)
    assert len({tuple(t) for t in expected}) == len(prompts)  # the prompts really lead to different answers


def test_batched_equals_one_at_a_time(model, prompts, greedy_batch):
    config = GenerationConfig(max_new_tokens=NEW, eos_id=None, length_bucket=16)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], np.ones((1, len(prompt)), np.int32), config)
        np.testing.assert_array_equal(alone.tokens[0], greedy_batch.tokens[row])


def test_sampling_is_seeded_per_row_and_top_p_tiny_is_greedy(model, prompts, greedy_batch):
    ids, mask = left_pad(prompts, pad_id=0)
    config = GenerationConfig(max_new_tokens=NEW, eos_id=None, length_bucket=16, do_sample=True, seed=3)
    seeds = np.array([11, 12, 13, 14])
    first = generate(model, ids, mask, config, row_seeds=seeds)
    again = generate(model, ids, mask, config, row_seeds=seeds)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    other = generate(model, ids, mask, GenerationConfig(**{**config.__dict__, "seed": 4}), row_seeds=seeds)
    assert not np.array_equal(first.tokens, other.tokens)
    assert not np.array_equal(first.tokens, greedy_batch.tokens)
    # A row's sample depends on its own seed only, not on the batch it is in.
    alone = generate(model, prompts[2][None], np.ones((1, LENGTHS[2]), np.int32), config, row_seeds=seeds[2:3])
    np.testing.assert_array_equal(alone.tokens[0], first.tokens[2])
    nucleus_of_one = GenerationConfig(**{**config.__dict__, "top_p": 1e-6, "temperature": 2.0})
    np.testing.assert_array_equal(generate(model, ids, mask, nucleus_of_one).tokens, greedy_batch.tokens)


def test_samples_stay_inside_the_top_p_nucleus(model, forward, prompts):
    top_p, temperature = 0.6, 1.5
    prompt = prompts[1]
    logits = forward(prompt[None], np.ones((1, len(prompt)), np.int32))[0, -1].astype(np.float64)
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[before < top_p].tolist())
    assert 1 < len(nucleus) < 100
    config = GenerationConfig(max_new_tokens=NEW, eos_id=None, length_bucket=16, do_sample=True, top_p=top_p,
                              temperature=temperature)
    ids = np.repeat(prompt[None], len(LENGTHS), axis=0)  # the batch shape of the other tests: no recompile
    sampled = set()
    for call in range(12):
        seeds = np.arange(len(LENGTHS)) + call * len(LENGTHS)
        sampled |= set(generate(model, ids, np.ones_like(ids), config, row_seeds=seeds).tokens[:, 0].tolist())
    assert sampled <= nucleus
    assert len(sampled) > 1


def test_stop_sequences_and_eos_cut_each_row(model, prompts, greedy_batch):
    g = greedy_batch.tokens.tolist()
    # Row 0 stops on the two-token sequence that ends at its 5th token; row 1 on an EOS id that first occurs
    # at its position k (and not in row 0's first 5 tokens). Every row's tokens up to its stop are the
    # unconstrained greedy ones, and nothing is emitted after it.
    stop = (g[0][3], g[0][4])
    k = next(i for i in range(1, NEW) if g[1][i] not in g[1][:i] and g[1][i] not in g[0][:5])
    eos = g[1][k]
    assert all(tuple(g[1][i:i + 2]) != stop for i in range(k))
    config = GenerationConfig(max_new_tokens=NEW, eos_id=eos, stop_sequences=(stop, (127, 126)), length_bucket=16)
    ids, mask = left_pad(prompts, pad_id=0)
    out = generate(model, ids, mask, config)
    assert out.finish_reason(0) == "stop_sequence" and out.finish_reasons[0] == FINISH_STOP
    assert out.num_tokens[0] == 5 and out.content(0) == g[0][:3]
    assert out.finish_reason(1) == "eos" and out.finish_reasons[1] == FINISH_EOS
    assert out.num_tokens[1] == k + 1 and out.content(1) == g[1][:k]
    for row in range(len(prompts)):
        n = out.num_tokens[row]
        assert out.tokens[row, :n].tolist() == g[row][:n]
        assert (out.tokens[row, n:] == NO_TOKEN).all()
        if out.finish_reasons[row] == FINISH_LENGTH:
            assert n == NEW and out.content_lengths[row] == NEW


def test_generate_rejects_right_padded_prompts(model):
    ids = np.array([[5, 6, 7], [5, 6, 0]], np.int32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask, GenerationConfig(max_new_tokens=2))


def test_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0.0)
    with pytest.raises(ValueError, match="stop_sequences"):
        GenerationConfig(stop_sequences=((),))


def test_left_pad_and_prompts_from_batch():
    ids, mask = left_pad([[1, 5, 6], [1, 7]], pad_id=2, bucket=4)
    assert ids.tolist() == [[2, 1, 5, 6], [2, 2, 1, 7]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    batch = {  # BOS + prompt + target ("###" = 9) + padding, labels on the target only; row 1 is a padding row
        "input_ids": np.array([[1, 5, 6, 8, 9, 2], [1, 5, 9, 2, 2, 2]], np.int32),
        "attention_mask": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], np.int32),
        "labels": np.array([[-100, -100, -100, 8, 9, -100], [-100] * 6], np.int32),
    }
    assert [p.tolist() for p in prompts_from_batch(batch)] == [[1, 5, 6], [1, 5, 9]]


class VicunaLikeTokenizer:
    """SentencePiece-like greedy tokenizer over a tiny vocabulary with Vicuna's ids for the '###' pieces."""

    vocab = {"▁###": 835, "##": 2277, "#": 29937, "▁a": 263, ".": 29889, "▁": 29871}

    def __call__(self, text, add_special_tokens=False):
        text = "▁" + text.replace(" ", "▁")
        ids = []
        while text:
            piece = max((p for p in self.vocab if text.startswith(p)), key=len)
            ids.append(self.vocab[piece])
            text = text[len(piece):]
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=False):
        pieces = {v: k for k, v in self.vocab.items()}
        return "".join(pieces[i] for i in ids).replace("▁", " ").lstrip()


def test_end_symbol_token_sequences_finds_both_vicuna_spellings():
    assert set(end_symbol_token_sequences(VicunaLikeTokenizer())) == {(835,), (2277, 29937)}


def test_decode_generated_cuts_at_the_end_symbol():
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(f"w{i}" if i != 9 else "###" for i in ids)

    out = GenerationOutput(
        tokens=np.array([[4, 9, 5, NO_TOKEN], [4, 5, 6, 7]], np.int32),
        num_tokens=np.array([4, 4]), content_lengths=np.array([3, 4]), finish_reasons=np.array([0, 0]),
    )
    # row 0: an end symbol inside the content (a tokenisation not in the stop list) still cuts the text
    assert decode_generated(Tok(), out) == ["w4", "w4 w5 w6 w7"]
