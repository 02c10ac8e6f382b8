"""PasskeyCallback: passkey retrieval accuracy per (length, depth) and T_recall during training."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import ProbeCallback


class PasskeyCallback(ProbeCallback):
    name = "passkey"

    def __init__(
        self,
        tokenizer,
        lengths: Sequence[int],
        *,
        samples: int = 4,
        repeats: int = 1,
        last_r: Sequence[int] = (1024, 2048, 4096, 8192),
        prefill_chunk: int = 4096,
        max_new_tokens: int = 8,
        seed: int = 0,
        every_n_steps: int = 500,
        time_budget_s: float = 600.0,
        run_dir: Optional[str] = None,
    ):
        super().__init__(every_n_steps=every_n_steps, time_budget_s=time_budget_s, run_dir=run_dir)
        self.tokenizer = tokenizer
        self.lengths = [int(x) for x in lengths]
        self.samples, self.repeats = int(samples), int(repeats)
        self.last_r = [int(r) for r in last_r]
        self.prefill_chunk, self.max_new_tokens, self.seed = int(prefill_chunk), int(max_new_tokens), int(seed)
        if not self.lengths:
            raise ValueError("probes.passkey.lengths is empty")
        if tokenizer is not None:  # a length too short for the prompt's own text fails now, not at step N
            from stuffed_mamba.probes.passkey import make_prompt

            try:
                make_prompt(tokenizer, min(self.lengths), 0.0, "00000")
            except ValueError as e:
                raise ValueError(f"probes.passkey.lengths: {e}") from None

    def run_probe(self, model, deadline):
        from stuffed_mamba.probes.passkey import evaluate_passkey

        # the same keys at every evaluation, from the probe's own generator: curves over
        # training compare like with like, and the run's RNG streams are never drawn from
        gen = torch.Generator().manual_seed(self.seed)
        return evaluate_passkey(
            model, self.tokenizer, self.lengths, samples=self.samples, repeats=self.repeats,
            prefill_chunk=self.prefill_chunk, max_new_tokens=self.max_new_tokens,
            generator=gen, deadline=deadline,
        )

    def log_result(self, writer, result, step):
        from stuffed_mamba.probes.plots import figure_to_image, passkey_heatmap

        by_length = result.accuracy_by_length()
        t_recall = result.t_recall()
        if writer is not None:
            for T, acc in by_length.items():
                writer.add_scalar(f"probes/passkey/acc/T={T}", acc, step)
            for r in self.last_r:
                if r >= max(self.lengths):  # every needle lies in the last r tokens: the plain accuracy
                    continue
                acc = result.last_r_accuracy(r)
                if acc is not None:
                    writer.add_scalar(f"probes/passkey/acc_last_r/r={r}", acc, step)
            writer.add_scalar("probes/passkey/T_recall", t_recall, step)
            writer.add_image("probes/passkey/heatmap", figure_to_image(passkey_heatmap(result)), step, dataformats="HWC")
        return {**result.to_json(last_r=self.last_r)}

    @classmethod
    def layout(cls):
        return {
            "passkey accuracy per length": ["Multiline", [r"probes/passkey/acc/.*"]],
            "passkey accuracy, needle in the last r tokens": ["Multiline", [r"probes/passkey/acc_last_r/.*"]],
            "T_recall": ["Multiline", [r"probes/passkey/T_recall"]],
        }
