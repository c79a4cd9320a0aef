"""Config handling: bad configs fail with one line and exit 2 before anything compiles; trainable rules;
logical-axis shardings of parameters and optimizer state; multi-process settings."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from train_helpers import ROOT, load_config, tiny_args

from deemo_jax import exit_codes, sharding
from deemo_jax.models.deemo_llama import PAPER_TRAINABLE, DeemoLlama, DeemoLlamaConfig
from deemo_jax.train import cli
from deemo_jax.train.config import ConfigError, model_config
from deemo_jax.train.distributed import distributed_settings
from deemo_jax.train.partition import TrainableFilter, state_shardings, unmatched_patterns


@pytest.fixture
def compiles():
    """Counts XLA compilations while a test runs."""
    events = []

    def listener(event, duration, **kwargs):
        if "backend_compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


def run_main(capsys, argv):
    code = cli.main(["train.py", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.optim.lr=1e-4"], r"unknown config key in '--config.optim.lr=1e-4'; keys there: \['b1'"),
        (["--config.mesh.data=3"], "data\\*fsdp\\*tensor = 3\\*1\\*1 = 3 but there are 1 devices"),
        (["--config.mesh.data=2", "--config.mesh.fsdp=-1"], "do not divide the 1 devices"),
        (["--config.checkpoints.llm=/nonexistent/vicuna"], "checkpoints.llm = '/nonexistent/vicuna' does not exist"),
        (["--config.checkpoints.init_trainable=/nonexistent/run"], "init_trainable = '/nonexistent/run' does not"),
        (["--config.data.shard_dir=/nonexistent/shards"], "shard_dir = '/nonexistent/shards' does not exist"),
        (["--config.data.tokenizer_path=/nonexistent/tok"], "tokenizer directory '/nonexistent/tok' does not exist"),
        (["--config.train.global_batch_size=7"], "not divisible by train.grad_accum_steps"),
        (["--config.optim.init_lr=abc"], "could not convert string to float"),
        (["--config.model.attention_impl=flash"], r"attention_impl = 'flash': must be '' \(auto\) or one of \['xla'"),
        (["--config.trainable=('video_qformer', 'no_such_module')"], "patterns \\['no_such_module'\\] select no"),
        (["--config.data.template=alpaca"], r"data.template = 'alpaca': use one of \('vicuna', 'affectgpt'"),
        (["--config.data.template=affectgpt", "--config.data.use_transcription=False"],
         r"config.data with prompt template 'affectgpt': .*with audio, video and subtitle"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_compiling(corpus, tmp_path, capsys, compiles, extra, message):
    code, err = run_main(capsys, tiny_args(corpus, tmp_path / "run", *extra))
    assert code == exit_codes.USAGE
    assert "\n" not in err and err.startswith("train.py: config error:")
    assert pytest.importorskip("re").search(message, err), err
    if "no_such_module" not in extra[0]:  # (that one is found while building the abstract model)
        assert compiles == []


def test_paper_config_needs_converted_checkpoints(corpus, tmp_path, capsys, compiles):
    base = [f"--config.workdir={tmp_path}", f"--config.data.shard_dir={corpus['shards']}",
            f"--config.data.tokenizer_path={corpus['tokenizer']}"]
    code, err = run_main(capsys, ["--config=" + str(ROOT / "configs" / "instruct.py"), *base])
    assert code == 2 and "config.checkpoints.eva_vit is empty but the model builds visual_encoder" in err
    fake = tmp_path / "eva"
    fake.mkdir()
    code, err = run_main(capsys, ["--config=" + str(ROOT / "configs" / "instruct.py"), *base,
                                  f"--config.checkpoints.eva_vit={fake}"])
    assert code == 2 and "has no manifest.json" in err and "--source eva-vit-g" in err
    assert compiles == []


def test_config_errors_from_the_command_line(tmp_path):
    """The real entry point: one stderr line, exit status 2 (also for a missing config file)."""
    for argv in (["--config=configs/instruct.py:demo", "--config.nonsense=1"], ["--config=configs/missing.py"]):
        result = subprocess.run([sys.executable, "scripts/train.py", *argv], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_trainable_rules_match_path_prefixes():
    rule = TrainableFilter(["llama_proj", "llama/layers/(0|1)", "video_qformer"])
    assert rule.matches("llama_proj/kernel") and not rule.matches("audio_llama_proj/kernel")
    assert rule.matches("llama/layers/1/mlp/up_proj/kernel") and not rule.matches("llama/layers/10/mlp/up_proj/kernel")
    assert rule.matches("video_qformer/query_tokens") and not rule.matches("video_qformer_extra/x")
    abstract = nnx.eval_shape(lambda: DeemoLlama(DeemoLlamaConfig.tiny(), rngs=nnx.Rngs(0)))
    assert unmatched_patterns(nnx.state(abstract), TrainableFilter([*PAPER_TRAINABLE, "audio_proj"])) == ["audio_proj"]
    with pytest.raises(ValueError, match="list of regular expressions"):
        TrainableFilter("video_qformer")


def test_parameter_and_optimizer_shardings_follow_logical_axes():
    import optax

    mesh = sharding.make_mesh(1, 1, 1)
    trainable = TrainableFilter(["llama_proj"])
    opt = nnx.eval_shape(
        lambda: nnx.Optimizer(DeemoLlama(DeemoLlamaConfig.tiny(), rngs=nnx.Rngs(0)), optax.adam(1e-3), wrt=trainable)
    )
    model = nnx.eval_shape(lambda: DeemoLlama(DeemoLlamaConfig.tiny(), rngs=nnx.Rngs(0)))
    shardings = state_shardings(nnx.state(model), mesh)
    assert shardings["llama"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value().spec == PartitionSpec(
        "fsdp", "tensor")
    assert shardings["llama"]["embed_tokens"]["embedding"].get_value().spec == PartitionSpec("tensor", "fsdp")
    opt_shardings = state_shardings(nnx.state(opt), mesh)
    mu = opt_shardings["opt_state"][0]["mu"]["llama_proj"]["kernel"].get_value()
    assert mu.spec == PartitionSpec(None, "fsdp")  # same as its parameter (logical axes (None, "embed"))
    assert opt_shardings["step"].get_value().spec == PartitionSpec()


def test_tiny_model_config_from_the_demo_config():
    cfg = load_config("instruct.py", "demo")
    model = model_config(cfg, vocab_size=1000)
    assert model.llm.vocab_size == 1000 and model.llm.hidden_size == 128  # the "demo" preset
    assert model.vit.depth == 2 and model.audio_encoder is not None
    with cfg.unlocked():
        cfg.model.use_audio = False
    assert model_config(cfg, 1000).audio_encoder is None
    assert model.llm.attention_impl is None  # "" = auto
    with cfg.unlocked():
        cfg.model.attention_impl = "looped"
    assert model_config(cfg, 1000).llm.attention_impl == "looped"


def test_distributed_settings():
    cfg = load_config("instruct.py", "demo")
    assert distributed_settings(cfg, environ={}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert distributed_settings(cfg, environ=env) == dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                                                         process_id=2)
    assert distributed_settings(cfg, environ={"SLURM_NTASKS": "8"}) == {}
    cfg.distributed.num_processes = 2
    with pytest.raises(ConfigError, match="coordinator_address"):
        distributed_settings(cfg, environ={})
    cfg.distributed.coordinator_address = "127.0.0.1:999"
    cfg.distributed.process_id = 1
    assert distributed_settings(cfg, environ=env)["process_id"] == 1  # the config wins
