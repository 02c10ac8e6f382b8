"""Passkey retrieval (section 2.2, appendix B): can the model recall a 5-digit key from a long context?

The prompt is appendix B.1's: an instruction, the filler sentence repeated, the needle at
a chosen depth of the filler, more filler, the question. For a context length T and n
samples the i-th needle (i = 0..n-1) sits at depth i/n, i.e. near token T*i/n - 1.
Decoding is greedy (appendix B); a trial is correct when the key appears in the decoded
continuation. The prompt is prefilled in chunks carrying the recurrent state, so memory
does not grow with T, then the answer is decoded with `model.step`.

Results: accuracy per (length, depth), accuracy when the needle lies within the last r
tokens (figures 13-14), and T_recall = the longest length with accuracy >= 95% (section 4.3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from stuffed_mamba.allocator import returning_freed_pages
from stuffed_mamba.data.passkey_prompt import (  # noqa: F401  (the prompt builder, re-exported: the probe's contract)
    FILLER,
    INSTRUCTION,
    NEEDLE,
    QUESTION,
    SEPARATOR,
    PasskeyPrompt,
    build_prompt,
    make_prompt,
    prompt_text,
)
from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.registry import Context, Probe, ProbeSettings, heading, knob


# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_continuation(
    model,
    ids: Sequence[int] | torch.Tensor,
    *,
    max_new_tokens: int = 8,
    prefill_chunk: int = 4096,
    eos_id: int | None = None,
) -> list[int]:
    """Greedy decoding after `ids`: chunked prefill carrying the state, then `model.step`.

    The prefill's peak memory is that of one `prefill_chunk` forward whatever len(ids) is.
    The last prompt token goes through `step`, whose logits start the answer.
    """
    if len(ids) < 1:
        raise ValueError("empty prompt")
    device = next(model.parameters()).device
    vocab = model.config.vocab_size  # the padded rows of the LM head are never real tokens
    prompt = (ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)).to(device=device, dtype=torch.long)
    prompt = prompt.reshape(1, -1)  # [1, T]
    if prompt.shape[1] > 1:
        state = prefill(model, prompt[:, :-1], chunk_size=prefill_chunk)
    else:
        state = model.init_state(1)
    logits, state = model.step(prompt[:, -1], state)
    out: list[int] = []
    for _ in range(max_new_tokens):
        tok = logits[:, :vocab].argmax(dim=-1)  # [1]
        out.append(int(tok))
        if eos_id is not None and out[-1] == eos_id:
            break
        logits, state = model.step(tok, state)
    return out


@dataclass
class PasskeyTrial:
    length: int  # asked context length T
    depth: float  # i/n
    passkey: str
    prompt_tokens: int
    needle_start: int
    answer: str
    correct: bool

    @property
    def needle_distance(self) -> int:
        """Tokens from the needle's start to the end of the prompt."""
        return self.prompt_tokens - self.needle_start


@dataclass
class PasskeyResult:
    lengths: list[int]
    samples: int
    trials: list[PasskeyTrial] = field(default_factory=list)
    complete: bool = True  # False when the time budget stopped the sweep

    def accuracy(self) -> dict[int, dict[float, float]]:
        """{T: {depth: accuracy}} over the trials that ran."""
        acc: dict[int, dict[float, list[bool]]] = {}
        for t in self.trials:
            acc.setdefault(t.length, {}).setdefault(t.depth, []).append(t.correct)
        return {T: {d: sum(v) / len(v) for d, v in sorted(ds.items())} for T, ds in sorted(acc.items())}

    def accuracy_by_length(self) -> dict[int, float]:
        out: dict[int, list[bool]] = {}
        for t in self.trials:
            out.setdefault(t.length, []).append(t.correct)
        return {T: sum(v) / len(v) for T, v in sorted(out.items())}

    def last_r_accuracy(self, r: int, length: int | None = None) -> float | None:
        """Accuracy over trials whose needle lies within the last r tokens (of one length, or all); None if none."""
        hits = [t.correct for t in self.trials if t.needle_distance <= r and (length is None or t.length == length)]
        return sum(hits) / len(hits) if hits else None

    def t_recall(self, threshold: float = 0.95) -> int:
        """T_recall: the longest tested length whose accuracy is >= threshold (0 if none)."""
        good = [T for T, a in self.accuracy_by_length().items() if a >= threshold]
        return max(good) if good else 0

    def to_json(self, last_r: Sequence[int] = (1024, 2048, 4096, 8192)) -> dict:
        return {
            "lengths": self.lengths,
            "samples": self.samples,
            "complete": self.complete,
            "T_recall": self.t_recall(),
            "accuracy_by_length": {str(T): a for T, a in self.accuracy_by_length().items()},
            "accuracy": {str(T): {f"{d:.4f}": a for d, a in ds.items()} for T, ds in self.accuracy().items()},
            "last_r": {str(r): {str(T): self.last_r_accuracy(r, T) for T in self.accuracy_by_length()} for r in last_r},
            "trials": [asdict(t) for t in self.trials],
        }


def evaluate_passkey(
    model,
    tokenizer,
    lengths: Sequence[int],
    *,
    samples: int = 4,
    repeats: int = 1,
    prefill_chunk: int = 4096,
    max_new_tokens: int = 8,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
    progress: Callable[[PasskeyTrial], None] | None = None,
) -> PasskeyResult:
    """Passkey sweep: for each length T, `samples` depths i/n (x `repeats` keys), greedy answers.

    generator: draws the 5-digit keys (use the probe's own, never the training RNG).
    deadline: `time.monotonic()` value after which no new trial starts (result.complete=False).
    progress: called after each trial.
    """
    if samples < 1 or repeats < 1:
        raise ValueError("samples and repeats must be >= 1")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    result = PasskeyResult(lengths=[int(T) for T in lengths], samples=samples)
    eos = getattr(tokenizer, "eos_id", None)
    for T in result.lengths:
        for i in range(samples):
            depth = i / samples
            for _ in range(repeats):
                if deadline is not None and time.monotonic() > deadline:
                    result.complete = False
                    return result
                key = str(int(torch.randint(10000, 100000, (1,), generator=gen)))
                with returning_freed_pages():  # a long prompt's tokenization must not stay resident (allocator.py)
                    prompt = make_prompt(tokenizer, T, depth, key)
                new = greedy_continuation(
                    model, prompt.ids, max_new_tokens=max_new_tokens, prefill_chunk=prefill_chunk, eos_id=eos
                )
                answer = tokenizer.decode(new)
                trial = PasskeyTrial(T, depth, key, len(prompt.ids), prompt.needle_start, answer, key in answer)
                result.trials.append(trial)
                if progress is not None:
                    progress(trial)
    return result


# ------------------------------------------------------------------------------------------------
@dataclass
class PasskeyConfig(ProbeSettings):
    """Passkey retrieval (appendix B.1): accuracy per (length, depth), T_recall."""

    lengths: list[int] | None = knob(
        None,
        "context lengths T, e.g. 1K,2K,...,256K (default: `multiples` of T_train, at least `min_length`)",
        tokens=True,
    )
    multiples: list[float] = knob([0.5, 1.0, 2.0, 4.0], "default lengths as multiples of T_train")
    min_length: int = knob(512, "floor of the default lengths: room for the prompt's own text", tokens=True)
    samples: int = knob(4, "needle depths per length: the i-th at depth i/n (token T*i/n - 1)")
    repeats: int = knob(1, "keys per (length, depth)")
    last_r: list[int] = knob(
        [1024, 2048, 4096, 8192], "accuracy with the needle within the last r tokens (fig. 13)", tokens=True
    )
    prefill_chunk: int = knob(4096, "tokens per prefill forward; the state is carried between chunks")
    max_new_tokens: int = knob(8, "greedy tokens decoded after the question")
    seed: int = knob(0, "seed of the probe's own generator of 5-digit keys")


class PasskeyProbe(Probe):
    name = "passkey"
    Config = PasskeyConfig
    layout = {
        "passkey accuracy per length": ["Multiline", [r"probes/passkey/acc/.*"]],
        "passkey accuracy, needle in the last r tokens": ["Multiline", [r"probes/passkey/acc_last_r/.*"]],
        "T_recall": ["Multiline", [r"probes/passkey/T_recall"]],
    }

    def lengths(self, cfg: PasskeyConfig, ctx: Context) -> list[int]:
        if cfg.lengths:
            return sorted({int(T) for T in cfg.lengths})
        if not ctx.train_length:
            raise ValueError("passkey: T_train unknown: pass --lengths (e.g. 1K,2K,4K) or --train-length")
        return sorted({max(cfg.min_length, int(ctx.train_length * m)) for m in cfg.multiples})

    def check(self, cfg, ctx):
        if cfg.samples < 1 or cfg.repeats < 1:
            raise ValueError("passkey: samples and repeats must be >= 1")
        lengths = self.lengths(cfg, ctx)
        if not lengths:
            raise ValueError("probes.passkey.lengths is empty")
        try:  # a length too short for the prompt's own text fails now, not at step N
            with returning_freed_pages():
                make_prompt(ctx.need_tokenizer(self.name), min(lengths), 0.0, "00000")
        except ValueError as e:
            raise ValueError(f"probes.passkey.lengths: {e}") from None

    def inputs(self, cfg, ctx):
        self.check(cfg, ctx)
        return ctx.tokenizer, self.lengths(cfg, ctx)

    def run(self, model, inputs, cfg, deadline=None, progress=None):
        tokenizer, lengths = inputs
        # the same keys at every evaluation, from the probe's own generator: curves over
        # training compare like with like, and the run's RNG streams are never drawn from
        return evaluate_passkey(
            model,
            tokenizer,
            lengths,
            samples=cfg.samples,
            repeats=cfg.repeats,
            prefill_chunk=cfg.prefill_chunk,
            max_new_tokens=cfg.max_new_tokens,
            generator=torch.Generator().manual_seed(cfg.seed),
            deadline=deadline,
            progress=progress,
        )

    def summary(self, result, cfg, ctx):
        # r at or past the longest length: every needle lies in the last r tokens, the plain accuracy
        last_r = [r for r in cfg.last_r if r < max(result.lengths)]
        overall = {str(r): result.last_r_accuracy(r) for r in last_r}
        return {**result.to_json(last_r=cfg.last_r), "last_r_accuracy": overall}

    def scalars(self, summary):
        out = {f"acc/T={T}": a for T, a in summary["accuracy_by_length"].items()}
        out.update({f"acc_last_r/r={r}": a for r, a in summary["last_r_accuracy"].items() if a is not None})
        out["T_recall"] = summary["T_recall"]
        return out

    def figures(self, result, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import passkey_heatmap, passkey_last_r

        return {
            "heatmap": passkey_heatmap(result, title=heading("passkey retrieval", note)),
            "last_r": passkey_last_r(result, cfg.last_r, title=heading("needle within the last r tokens", note)),
        }

    def table(self, result, summary, cfg, note=""):
        from stuffed_mamba.probes.tables import passkey_table

        return passkey_table(result, cfg.last_r, title=heading("passkey retrieval", note))


PROBE = PasskeyProbe()
