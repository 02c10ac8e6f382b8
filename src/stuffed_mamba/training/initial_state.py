"""`optim.initial_state`: the recurrent state h_0 every row of an episode starts from.

Buitrago & Gu (arXiv 2507.02782, section 4) explain the failure past T_train by "unexplored states": a model
trained from h_0 = 0 only ever reads the states that T_train tokens reach. Their interventions start some
sequences elsewhere. Per layer l, with h the SSM state [B, H, P, N] (fp32) and c the conv state [B, C, k-1]:

zeros         h_0 = 0, c_0 = 0: the paper's (Chen et al.) and the default; nothing is drawn or stored.
passed        (h_0, c_0) of row b = the detached final state of row b's previous episode on this rank
              ("state passing"). With one data worker row b continues its own row stream, so that is the
              state of the text just before it; with W > 1 workers rows take streams in turn and it is
              another stream's, the paper's "final state of a different sequence". The first episode, and
              the one after a non-finite episode (no final state), start from zeros.
noise         h_0[b, h, p, n] ~ N(0, sigma^2) i.i.d., sigma = `optim.initial_state_std`; c_0 = 0 (the conv
              window holds the last k-1 = 3 inputs, not a summary of the past: not intervened on).
fitted_noise  h_0[b, h, p, n] ~ N(mu_lh, s_lh^2) i.i.d., c_0 = 0, with mu_lh, s_lh the mean and standard
              deviation of the entries of head h of layer l in recent final states: exponential moving
              averages, weight `FITTED_MOMENTUM` on the past, of the per-episode moments
                  m1_lh = mean_{b,p,n} h_S[b, h, p, n],   m2_lh = mean_{b,p,n} h_S[b, h, p, n]^2,
              s_lh = sqrt(max(M2_lh - M1_lh^2, 0)); the first finite episode sets them (zeros before it).
              Each rank fits its own rows' states (no collective).

Draws come from this object's own CPU `torch.Generator`, seeded from (run seed, data rank): Lightning does
not checkpoint the global RNG per rank, and a draw must not shift any other random stream. The carried
state, the moments and the generator state are training state (`state_dict`, gathered per rank into the
checkpoint's `initial_state` list by the LightningModule), so a resumed run draws and carries exactly what the straight run did.
Under context parallelism the ranks of a group share a data rank: same draws, same final state (every
rank holds the segment's final state), and only the group's first rank reads h_0.
"""

from __future__ import annotations

import torch

from stuffed_mamba.model.state import LayerState, ModelState

MODES = ("zeros", "passed", "noise", "fitted_noise")
FITTED_MOMENTUM = 0.9  # ~ the last 10 episodes' final states weigh in the fitted moments


class InitialState:
    def __init__(self, mode: str, config, *, std: float | None = None, seed: int = 0):
        """config: the model's Mamba2Config (n_layer, nheads, headdim, d_state, conv_dim, d_conv)."""
        if mode not in MODES:
            raise ValueError(f"initial_state must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "noise" and not (std is not None and std > 0):
            raise ValueError(f"initial_state=noise needs a std > 0, got {std}")
        self.mode, self.config, self.std, self.seed = mode, config, std, seed
        self.carried: ModelState | None = None  # passed: the previous episode's final state (CPU)
        self.moments: torch.Tensor | None = None  # fitted_noise: [2, L, H] fp32, the EMAs of m1 and m2
        self.generator: torch.Generator | None = None  # created at the first draw or by load_state_dict

    @classmethod
    def from_optim(cls, optim, config, *, seed: int) -> InitialState:
        """From the recipe's `optim` section (`initial_state`, `initial_state_std`)."""
        return cls(optim.initial_state, config, std=optim.initial_state_std, seed=seed)

    # ------------------------------------------------------------------ one episode

    def begin(self, batch_size: int, device, stream: int) -> ModelState | None:
        """h_0 of an episode of `batch_size` rows (None = zeros, the model's own default); stream: this
        rank's data rank (rank // context_parallel), which seeds the generator at the first draw."""
        if self.mode == "passed":
            ok = self.carried is not None and self.carried.batch_size == batch_size
            return self.carried.to(device) if ok else None  # read-only in the model: no copy needed
        if self.mode == "zeros" or (self.mode == "fitted_noise" and self.moments is None):
            return None
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(hash((self.seed, stream)) & (2**63 - 1))
        state = ModelState.zeros(self.config, batch_size)  # conv zeros; ssm [B, H, P, N] fp32
        for l, layer in enumerate(state.layers):
            eps = torch.randn(layer.ssm.shape, generator=self.generator)
            if self.mode == "noise":
                layer.ssm = self.std * eps
            else:
                mean, sq = self.moments[0, l], self.moments[1, l]  # [H]
                std = (sq - mean**2).clamp_min(0).sqrt()
                layer.ssm = mean[:, None, None] + std[:, None, None] * eps
        return state.to(device)

    def end(self, final: ModelState | None) -> None:
        """Record an episode's final state (detached; None after a non-finite episode)."""
        if self.mode == "passed":
            self.carried = None if final is None else final.map(lambda t: t.detach().to("cpu", copy=True))
        elif self.mode == "fitted_noise" and final is not None:
            h = torch.stack([layer.ssm.detach().float().cpu() for layer in final.layers])  # [L, B, H, P, N]
            now = torch.stack([h.mean(dim=(1, 3, 4)), h.pow(2).mean(dim=(1, 3, 4))])  # [2, L, H]
            if not torch.isfinite(now).all():
                return
            if self.moments is None:
                self.moments = now
            else:
                self.moments = FITTED_MOMENTUM * self.moments + (1 - FITTED_MOMENTUM) * now

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """CPU tensors only (pickled across ranks by the LightningModule)."""
        carried = None
        if self.carried is not None:
            carried = [(layer.conv, layer.ssm) for layer in self.carried.layers]
        return {
            "mode": self.mode,
            "carried": carried,
            "moments": self.moments,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode", self.mode) != self.mode:
            return  # the recipe changed the mode (resume reports that): this mode starts afresh
        carried = state.get("carried")
        self.carried = None if carried is None else ModelState([LayerState(c, s) for c, s in carried])
        self.moments = state.get("moments")
        self.generator = None
        if state.get("generator") is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def load_from_ranks(self, per_rank: list | None, rank: int) -> None:
        """This rank's entry of the gathered `state_dict`s (a checkpoint from before this key: nothing)."""
        if per_rank is not None and rank < len(per_rank):
            self.load_state_dict(per_rank[rank])
