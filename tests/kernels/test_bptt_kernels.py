"""Issue 12 acceptance 1 on the "mamba_ssm" backend: `full` back-propagation through an episode
equals one backward over the whole sequence. The gradient of the final state enters
`mamba_chunk_scan_combined` as dfinal_states and leaves it as the gradient of initial_states.
Triton's interpreter runs the kernels on the CPU (fixture `mamba_kernels`), so the model is as
small as will still cross chunks: 2 heads, 2 segments of 21 tokens (chunk 16). causal-conv1d needs
CUDA, so the conv is the torch one here (its initial-state gradient on the GPU: test_gpu.py)."""

from __future__ import annotations

import pytest

from tests.training.test_bptt import assert_grads_close, episode, episode_grads, episode_model, whole_sequence_grads

pytestmark = pytest.mark.slow  # ~1 min of CPU per case under the interpreter


@pytest.mark.parametrize(
    "checkpointing",
    [
        pytest.param(False, marks=pytest.mark.extended("the same backward without recomputation runs in CI on torch")),
        True,
    ],
)
def test_full_equals_whole_sequence_on_the_kernels(mamba_kernels, checkpointing):
    model = episode_model("mamba_ssm", d_model=16, n_layer=1)
    model.gradient_checkpointing = checkpointing
    inputs, labels = episode(batch=1, segments=2, length=21)
    _, want = whole_sequence_grads(model, inputs, labels)
    _, got = episode_grads(model, inputs, labels, "full")
    assert_grads_close(got, want, 1e-3)
