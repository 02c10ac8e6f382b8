"""Back-propagation through an episode of S segments: truncated (the paper's) or full (exact).

Each row of an episode is S consecutive segments of T tokens; h_s, the recurrent state of every
layer (SSM and conv) after segment s, is the initial state of segment s+1, and h_0 = 0. The
objective is the mean segment loss

    L(theta) = (1/S) sum_s l_s(theta, h_{s-1}),    h_s = f_s(theta, h_{s-1}).

truncated  h_{s-1} is a constant in l_s (detached): the gradient horizon is T tokens.
full       the exact dL/dtheta, as one backward over the S*T tokens would give: horizon S*T.
           With g_s = dL/dh_s (g_S = 0), the vector-Jacobian product through the state gives

               g_{s-1} = d/dh_{s-1} [ l_s/S + <h_s, g_s> ],   dL/dtheta = sum_s d/dtheta [ l_s/S + <h_s, g_s> ]

           each with h_{s-1} held fixed, i.e. one backward per segment, last segment first. So:
           S-1 forwards without graphs keeping h_1..h_{S-1}, then for s = S..1 recompute segment
           s from h_{s-1} (a leaf that requires grad), backward l_s/S + <h_s, g_s>, and read
           g_{s-1} = h_{s-1}.grad. Memory: one segment's graph plus S boundary states of N_S
           floats per row; cost: S-1 extra segment forwards.

The scalar l_s/S + <h_s, g_s> (g_s a constant) has exactly the gradient of
`torch.autograd.backward([l_s/S, h_s], [1, g_s])`, and it goes through any backward that takes
one loss (Lightning's `manual_backward`, DeepSpeed's `engine.backward`), even one that scales the
loss. The model knows nothing of Lightning: the trainer injects its backward and its cross-rank
agreement on finiteness.
"""

from __future__ import annotations

from typing import Callable

import torch

from stuffed_mamba.model.state import ModelState

MODES = ("truncated", "full")

# backward(objective, last=...): accumulate d objective / d theta into .grad. `last` marks the
# episode's final backward, where DDP all-reduces and DeepSpeed closes its accumulation window.
Backward = Callable[..., None]
# all_finite(losses) -> whether every loss is finite on every rank (one decision for all ranks).
AllFinite = Callable[[torch.Tensor], bool]


def _plain_backward(objective: torch.Tensor, *, last: bool) -> None:
    objective.backward()


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
) -> torch.Tensor:
    """Accumulate into `.grad` the gradient of the episode's mean segment loss.

    Args:
        model: called as `model(ids [B, T], state=ModelState | None, labels=[B, T])`, returning
            `.loss` (mean over labels != -100) and `.state` (a `Mamba2LM`)
        inputs, labels: [B, S, T] (labels aligned as in `model(ids, labels=...)`)
        mode: "truncated" (gradients stop at segment boundaries) or "full" (exact through them)
        backward: `backward(objective, *, last)`; default `objective.backward()`
        all_finite: `all_finite(losses) -> bool`, the ranks' common decision; default local
    Returns:
        losses: [S] fp32, detached, each segment's loss. A segment whose loss is not finite
        (on any rank) is not back-propagated and the next one starts from zeros (truncated);
        under "full" one such segment leaves the whole episode without backward. Either way
        the gradient is then incomplete, `last` may never have been passed, and the caller
        must skip the optimiser step.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if inputs.ndim != 3 or labels.shape != inputs.shape:
        raise ValueError(f"inputs and labels must both be [B, S, T], got {tuple(inputs.shape)} and {tuple(labels.shape)}")
    backward = backward or _plain_backward
    all_finite = all_finite or _local_all_finite
    run = _truncated if mode == "truncated" else _full
    return run(model, inputs, labels, backward, all_finite)


def _truncated(model, inputs, labels, backward: Backward, all_finite: AllFinite) -> torch.Tensor:
    S = inputs.shape[1]
    losses = []
    state = None  # zeros: the state resets at every episode
    for s in range(S):
        out = model(inputs[:, s], state=state, labels=labels[:, s])
        loss = out.loss.detach().float()
        losses.append(loss)
        if all_finite(loss):
            backward(out.loss / S, last=s == S - 1)
            state = out.state.detach()  # the gradient stops at the boundary; this graph is freed
        else:
            state = None  # a poisoned state is not carried: restart from zeros
    return torch.stack(losses)


def _full(model, inputs, labels, backward: Backward, all_finite: AllFinite) -> torch.Tensor:
    S = inputs.shape[1]
    # Forward: segments 1..S-1 without graphs, keeping their initial states h_0..h_{S-2} and h_{S-1}.
    initial: list[ModelState | None] = [None]
    losses = []
    with torch.no_grad():
        for s in range(S - 1):
            out = model(inputs[:, s], state=initial[s], labels=labels[:, s])
            losses.append(out.loss.float())
            # A copy: a backend's final state may be a view that keeps a whole segment's buffer alive.
            initial.append(out.state.map(torch.clone) if torch.isfinite(out.loss) else None)

    # Backward, last segment first; segment S's forward is the first recomputation.
    g = None  # dL/dh_s for the segment being recomputed: nothing follows segment S
    for s in reversed(range(S)):
        h = None if initial[s] is None else initial[s].map(lambda t: t.detach().requires_grad_())
        out = model(inputs[:, s], state=h, labels=labels[:, s])
        if s == S - 1:
            losses.append(out.loss.detach().float())
            losses = torch.stack(losses)
            if not all_finite(losses):
                return losses
        objective = out.loss / S
        if g is not None:
            objective = objective + sum((t * gt).sum() for t, gt in zip(_leaves(out.state), g))
        if h is not None:
            # Zero in value; its gradient is the factor c by which `backward` scales the objective
            # (loss scaling, accumulation averaging), so that g_{s-1} = h.grad / c stays unscaled.
            probe = torch.ones((), device=out.loss.device, requires_grad=True)
            objective = objective + (probe - probe.detach())
        backward(objective, last=s == 0)
        del out, objective  # free this segment's graph before the next recomputation
        if h is not None:
            c = probe.grad
            g = [(t.grad if t.grad is not None else torch.zeros_like(t)) / c.to(t.dtype) for t in _leaves(h)]
    return losses


def _leaves(state: ModelState) -> list[torch.Tensor]:
    """The tensors of a state in a fixed order (conv, ssm[, window] per layer)."""
    out: list[torch.Tensor] = []
    state.map(lambda t: out.append(t) or t)
    return out
