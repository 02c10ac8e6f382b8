"""Back-propagation through an episode of S segments: truncated (the paper's) or full (exact).

Each row of an episode is S consecutive segments of T tokens; h_s, the recurrent state of every
layer (SSM and conv) after segment s, is the initial state of segment s+1, and h_0 = 0 or the given
`initial_state` (a constant: training/initial_state.py). The
objective is the mean segment loss

    L(theta) = (1/S) sum_s l_s(theta, h_{s-1}),    h_s = f_s(theta, h_{s-1}).

truncated  h_{s-1} is a constant in l_s (detached): the gradient horizon is T tokens.
full       the exact dL/dtheta, as one backward over the S*T tokens would give: horizon S*T.
           With g_s = dL/dh_s (g_S = 0), the vector-Jacobian product through the state gives

               g_{s-1} = d/dh_{s-1} [ l_s/S + <h_s, g_s> ],   dL/dtheta = sum_s d/dtheta [ l_s/S + <h_s, g_s> ]

           each with h_{s-1} held fixed, i.e. one backward per segment, last segment first. So:
           S-1 forwards without graphs keeping h_1..h_{S-1}, then for s = S..1 recompute segment
           s from h_{s-1} (a leaf that requires grad), back-propagate l_s/S with g_s injected at
           h_s (`torch.autograd.backward([l_s/S, *h_s], [None, *g_s])`), and read
           g_{s-1} = h_{s-1}.grad. Memory: one segment's graph plus S boundary states of N_S
           floats per row; cost: S-1 extra segment forwards.

The model knows nothing of Lightning: the trainer injects its backward (DDP's `no_sync`,
DeepSpeed's accumulation boundary) and its cross-rank agreement on finiteness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stuffed_mamba.model.state import ModelState

MODES = ("truncated", "full")

# backward(tensors, grad_tensors, *, last): as torch.autograd.backward (a None grad for a scalar
# means 1); `last` marks the episode's final backward, where DDP all-reduces and DeepSpeed closes
# its accumulation window. It may scale everything it back-propagates by one factor (loss scaling).
Backward = Callable[..., None]
# all_finite(losses) -> whether every loss is finite on every rank (one decision for all ranks).
AllFinite = Callable[[torch.Tensor], bool]


def _plain_backward(
    tensors: Sequence[torch.Tensor], grad_tensors: Sequence[torch.Tensor | None], *, last: bool
) -> None:
    torch.autograd.backward(list(tensors), list(grad_tensors))


def _local_all_finite(losses: torch.Tensor) -> bool:
    return bool(torch.isfinite(losses).all())


def backward_episode(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str = "full",
    backward: Backward | None = None,
    all_finite: AllFinite | None = None,
    scale: float | None = None,
    return_state: bool = False,
    initial_state: ModelState | None = None,
):
    """Accumulate into `.grad` the gradient of the episode's mean segment loss.

    Args:
        model: called as `model(ids [B, T], state=ModelState | None, labels=[B, T])`, returning
            `.loss` (mean over labels != -100) and `.state` (a `Mamba2LM`)
        inputs, labels: [B, S, T] (labels aligned as in `model(ids, labels=...)`)
        mode: "truncated" (gradients stop at segment boundaries) or "full" (exact through them)
        backward: `backward(tensors, grad_tensors, *, last)`; default `torch.autograd.backward`
        all_finite: `all_finite(losses) -> bool`, the ranks' common decision; default local
        scale: each segment's loss is back-propagated times this; default 1/S (the mean). A
            trainer that steps after every truncated segment passes 1 and steps in `backward`.
        return_state: also return the state after the episode (detached; None after a
            non-finite segment)
        initial_state: h_0 of every row (detached here: no gradient flows into it); None = zeros
    Returns:
        losses: [S] fp32, detached, each segment's loss (and the final state if asked).

    A non-finite loss (on any rank: `all_finite`) is back-propagated times NaN, so that the
    episode's gradient is NaN on every rank and the trainer's non-finite check skips the step,
    while every rank still runs the same backward calls, `last` once at the end. Truncated: the
    next segment starts from zeros. Full: that single poisoned backward is the whole episode's.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if inputs.ndim != 3 or labels.shape != inputs.shape:
        raise ValueError(
            f"inputs and labels must both be [B, S, T], got {tuple(inputs.shape)} and {tuple(labels.shape)}"
        )
    run = _truncated if mode == "truncated" else _full
    losses, state = run(
        None if initial_state is None else initial_state.detach(),
        model,
        inputs,
        labels,
        backward or _plain_backward,
        all_finite or _local_all_finite,
        1.0 / inputs.shape[1] if scale is None else scale,
    )
    return (losses, state) if return_state else losses


def _truncated(h0, model, inputs, labels, backward: Backward, all_finite: AllFinite, scale: float):
    S = inputs.shape[1]
    losses = []
    state = h0  # None: zeros
    for s in range(S):
        out = model(inputs[:, s], state=state, labels=labels[:, s])
        losses.append(out.loss.detach().float())
        finite = all_finite(losses[-1])
        backward([_poisoned(out.loss, finite) * scale], [None], last=s == S - 1)
        # The gradient stops at the boundary and this graph is freed; a poisoned state is not
        # carried: restart from zeros.
        state = out.state.detach() if finite else None
    return torch.stack(losses), state


def _full(h0, model, inputs, labels, backward: Backward, all_finite: AllFinite, scale: float):
    S = inputs.shape[1]
    # Forward: segments 1..S-1 without graphs, keeping the initial states h_0..h_{S-1}.
    initial: list[ModelState | None] = [h0]
    losses = []
    with torch.no_grad():
        for s in range(S - 1):
            out = model(inputs[:, s], state=initial[s], labels=labels[:, s])
            losses.append(out.loss.float())
            # A copy: a backend's final state may be a view that keeps a whole segment's buffer alive.
            initial.append(out.state.map(torch.clone) if torch.isfinite(out.loss) else None)

    # Backward, last segment first; segment S's forward is the first recomputation.
    g = None  # dL/dh_s of the segment being recomputed: nothing follows segment S
    for s in reversed(range(S)):
        h = None if initial[s] is None else initial[s].map(lambda t: t.detach().requires_grad_())
        out = model(inputs[:, s], state=h, labels=labels[:, s])
        if s == S - 1:
            final_state = out.state.map(lambda t: t.detach().clone())
            losses = torch.stack(losses + [out.loss.detach().float()])
            if not all_finite(losses):
                backward([_poisoned(out.loss, False) * scale], [None], last=True)
                return losses, None
        tensors, grads = [out.loss * scale], [None]
        if g is not None:
            tensors += out.state.tensors()
            grads += g
        if h is not None:
            # Zero in value; its gradient is the factor c by which `backward` scales what it
            # back-propagates (loss scaling), so that g_{s-1} = h.grad / c stays unscaled.
            probe = torch.ones((), device=out.loss.device, requires_grad=True)
            tensors.append(probe - probe.detach())
            grads.append(None)
        backward(tensors, grads, last=s == 0)
        del out, tensors  # free this segment's graph before the next recomputation
        if h is not None:
            c = probe.grad
            g = [(t.grad if t.grad is not None else torch.zeros_like(t)) / c.to(t.dtype) for t in h.tensors()]
    return losses, final_state


def _poisoned(loss: torch.Tensor, finite: bool) -> torch.Tensor:
    return loss if finite else loss * float("nan")
