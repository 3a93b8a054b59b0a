"""The reference greedy decoder: one prefill forward, then one forward per token with a KV cache.

`GreedyStepper` is the single decoding code path: `greedy_decode` (the reference) and the baseline
engine `engines/hf_greedy` both drive it, so their tokens cannot drift apart. `greedy_decode_batch`
decodes several prompts in one left-padded batch (each row its own positions and mask): the same
model, the same greedy rule, about 3-5x the throughput at the cpu scale; only the summation order
of its matmuls differs, so its tokens equal the stepper's except where top-1 and top-2 are
within float rounding, a near-tie the token checker excuses by its margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def load_model(
    model_dir: str | Path, *, device: str = "cpu", dtype: str = "float32", threads: int = 1
) -> PreTrainedModel:
    """Load a causal LM for inference and pin torch's intra-op thread count (process-wide)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype))
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass(slots=True)
class ReferenceOutput:
    tokens: list[int]
    margins: list[float]  # top-1 minus top-2 logit at each generated position (fp32)
    top_logprobs: list[
        dict[int, float]
    ]  # top_k log-softmax values per position, chosen token first

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "margins": list(self.margins),
            "top_logprobs": [{str(t): lp for t, lp in d.items()} for d in self.top_logprobs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceOutput:
        return cls(
            tokens=[int(t) for t in data["tokens"]],
            margins=[float(m) for m in data["margins"]],
            top_logprobs=[{int(t): float(lp) for t, lp in d.items()} for d in data["top_logprobs"]],
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    token: int
    margin: float
    top_logprobs: dict[int, float]  # empty when top_k == 0
    finished: bool


def top_logprobs_of(logits: torch.Tensor, token: int, k: int) -> dict[int, float]:
    """The k highest log-softmax values of a [vocab] logit row; `token` first even on exact ties."""
    if k <= 0:
        return {}
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    result = {token: float(logprobs[token])}
    for idx in torch.topk(logprobs, min(k + 1, logprobs.numel())).indices.tolist():
        if len(result) == k:
            break
        result.setdefault(idx, float(logprobs[idx]))
    return result


class GreedyStepper:
    """Greedy decoding of one sequence; each `step()` runs exactly one model forward."""

    def __init__(
        self,
        model: PreTrainedModel,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        *,
        stop_token_ids: Sequence[int] = (),
        top_k: int = 0,
    ) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.top_k = top_k
        self.tokens: list[int] = []
        self.forward_calls = 0
        self.finished = False
        self._cache = DynamicCache(config=model.config)

    def step(self) -> StepResult:
        if self.finished:
            raise RuntimeError("GreedyStepper.step() called after the sequence finished")
        feed = self.tokens[-1:] if self.tokens else self.prompt_ids  # prefill, then one token
        input_ids = torch.tensor([feed], dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=1
            )
            logits = out.logits[0, -1].float()  # [vocab]
            top2 = torch.topk(logits, 2).values
            token = int(torch.argmax(logits))
            margin = float(top2[0] - top2[1])
            top = top_logprobs_of(logits, token, self.top_k)
        self.forward_calls += 1
        self.tokens.append(token)
        self.finished = len(self.tokens) >= self.max_new_tokens or token in self.stop_token_ids
        return StepResult(token=token, margin=margin, top_logprobs=top, finished=self.finished)


def greedy_decode(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_token_ids: Sequence[int] = (),
    top_k: int = 5,
) -> ReferenceOutput:
    """Greedy tokens with their top-2 margins and top_k logprobs; stops after a stop token."""
    stepper = GreedyStepper(
        model, prompt_ids, max_new_tokens, stop_token_ids=stop_token_ids, top_k=top_k
    )
    out = ReferenceOutput(tokens=[], margins=[], top_logprobs=[])
    while not stepper.finished:
        result = stepper.step()
        out.tokens.append(result.token)
        out.margins.append(result.margin)
        out.top_logprobs.append(result.top_logprobs)
    return out


@dataclass(frozen=True, slots=True)
class BatchItem:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    stop_token_ids: Sequence[int] = ()
    top_k: int = 5  # logprobs kept per position


def greedy_decode_batch(
    model: PreTrainedModel, items: Sequence[BatchItem]
) -> list[ReferenceOutput]:
    """Greedy outputs of several prompts decoded together, as ``greedy_decode`` gives each alone.

    Prompts are left-padded to one length; the attention mask hides the padding and every row gets
    its own position ids (transformers would otherwise number a padded row's tokens from 0 at the
    padding). A row that finishes leaves the batch (and the KV cache) at once.
    """
    if not items:
        return []
    for item in items:
        if not item.prompt_ids:
            raise ValueError("an item's prompt_ids is empty")
        if item.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {item.max_new_tokens}")
    device = model.device
    lengths = [len(item.prompt_ids) for item in items]
    width = max(lengths)
    pad = 0  # any id: padded positions are masked out and never read
    input_ids = torch.tensor(
        [
            [pad] * (width - n) + [int(t) for t in item.prompt_ids]
            for n, item in zip(lengths, items, strict=True)
        ],
        dtype=torch.long,
        device=device,
    )
    mask = torch.tensor(
        [[0] * (width - n) + [1] * n for n in lengths], dtype=torch.long, device=device
    )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, width]: 0.. on each row's own tokens
    outputs = [ReferenceOutput(tokens=[], margins=[], top_logprobs=[]) for _ in items]
    stops = [frozenset(int(t) for t in item.stop_token_ids) for item in items]
    rows = list(range(len(items)))  # the item of each batch row still decoding
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        while True:
            logits = (
                model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
            )  # [rows, vocab]
            keep, next_ids = [], []
            for at, index in enumerate(rows):
                token = int(torch.argmax(logits[at]))
                top2 = torch.topk(logits[at], 2).values
                out = outputs[index]
                out.tokens.append(token)
                out.margins.append(float(top2[0] - top2[1]))
                out.top_logprobs.append(top_logprobs_of(logits[at], token, items[index].top_k))
                if len(out.tokens) < items[index].max_new_tokens and token not in stops[index]:
                    keep.append(at)
                    next_ids.append(token)
            if len(keep) < len(rows):
                if keep:
                    selected = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(selected)
                    mask, positions = mask[selected], positions[selected]
                rows = [rows[at] for at in keep]
                if not rows:
                    break
            input_ids = torch.tensor(next_ids, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
    return outputs
