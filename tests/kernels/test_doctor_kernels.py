"""The doctor's kernels check runs its comparison for real here: under the Triton interpreter the
"mamba_ssm" backend imports on this CPU (fixture `mamba_kernels`), so the check builds the two
tiny models, compares logits, final states and gradients, and passes; a backend that disagrees is
a failing line with the error it measured."""

from __future__ import annotations

import pytest

from stuffed_mamba.training import doctor

pytestmark = (
    pytest.mark.slow
)  # a forward and backward of two models under the interpreter: 80-100 s each on the loaded CPU


def _context(backend: str) -> doctor.Context:
    ctx = doctor.Context("recipes/tiny_cpu.yaml", [f"model.backend={backend}"])
    doctor.check_recipe(ctx)
    ctx.passed.add("recipe")
    return ctx


def test_kernels_check_compares_the_backends(mamba_kernels):
    detail = doctor.check_kernels(_context("mamba_ssm"))
    assert detail.startswith("mamba_ssm = torch on cpu: logits, states, gradients; worst rel. error ")
    worst = float(detail.split("worst rel. error ")[1].split()[0])
    assert worst < 1e-4  # fp32 on CPU: the interpreter's kernels agree far inside the 1e-2 allowed for TF32


@pytest.mark.extended(
    "the same comparison runs and passes in CI (compares_the_backends); this one makes a kernel 10% wrong"
)
def test_kernels_check_fails_on_a_wrong_kernel(mamba_kernels, monkeypatch):
    real = mamba_kernels.ssd

    def off_by_a_bit(*args, **kwargs):
        y, h = real(*args, **kwargs)
        return y * 1.1, h

    monkeypatch.setattr(mamba_kernels, "ssd", off_by_a_bit)
    with pytest.raises(doctor.Fail, match="mamba_ssm differs from the torch backend on cpu: worst relative error"):
        doctor.check_kernels(_context("mamba_ssm"))
