"""One "missing / unexpected / shape mismatch" report for torch keys, converted directories and training checkpoints."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from deemo_jax.convert.common import CheckpointKeyError, check_keys, compare_shapes, mismatch_report
from deemo_jax.train import checkpointing


def test_report_lists_counts_previews_and_both_shapes():
    missing, unexpected, mismatched = compare_shapes(
        {"a": (2,), "b": (3, 4), "x": (1,), "y": (1,)}, {"a": (2,), "b": (4, 3), "c": (5,)}
    )
    assert (missing, unexpected, mismatched) == (["c"], ["x", "y"], [("b", (4, 3), (3, 4))])
    assert mismatch_report(missing, unexpected, mismatched) == (
        "1 missing keys: [c]; 2 unexpected keys: [x, y]; 1 shape mismatch: [b: expected (4, 3), got (3, 4)]"
    )
    assert mismatch_report() == ""
    many = mismatch_report([f"k{i}" for i in range(10)], missing_label="absent", limit=3)
    assert many == "10 absent: [k0, k1, k2, ...]"


def test_checkpoint_key_error_uses_it_with_context_and_hint():
    with pytest.raises(CheckpointKeyError) as info:
        check_keys({"w": (2, 3), "extra": (1,)}, {"w": (3, 2), "v": (1,)}, context="eva-vit-g (x.pth)",
                   hint="check that --input is eva_vit_g.pth")
    assert str(info.value) == (
        "eva-vit-g (x.pth): 1 missing keys: [v]; 1 unexpected keys: [extra]; 1 shape mismatch: "
        "[w: expected (3, 2), got (2, 3)] (pass --allow-unexpected if they are known to be irrelevant); "
        "check that --input is eva_vit_g.pth"
    )


def test_training_checkpoint_comparison_uses_it():
    stored = {"video_qformer": {"kernel": np.zeros((4, 8)), "old": np.zeros(2)}}
    target = {"video_qformer": {"kernel": jax.ShapeDtypeStruct((4, 6), np.float32), "bias": np.zeros(6)}}
    with pytest.raises(checkpointing.CheckpointMismatchError) as info:
        checkpointing._compare("trainable", stored, target, Path("/runs/x/checkpoints/10"))
    message = str(info.value)
    assert message.endswith(
        "1 missing from the checkpoint: [video_qformer/bias]; 1 not in the model: [video_qformer/old]; "
        "1 shape mismatch: [video_qformer/kernel: model (4, 6), stored (4, 8)]"
    )
    assert "checkpoint /runs/x/checkpoints/10 item 'trainable' does not fit this run" in message
