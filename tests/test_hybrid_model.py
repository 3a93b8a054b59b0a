"""The hybrid reference models (seeded NemotronH): build, load, and exact prefix reuse."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reference_impls.hybrid import HYBRID_CPU, HYBRID_TINY, HybridRecipe, build_config
from reference_impls.models import cached_model_dir, materialize
from reference_impls.tiny import BOS_ID, EOS_ID, VOCAB_SIZE, build_tokenizer


@pytest.fixture(scope="module")
def hybrid_dir(vibeserve_cache: Path) -> Path:
    return materialize("hybrid-tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def hybrid(hybrid_dir: Path) -> PreTrainedModel:
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(hybrid_dir, dtype=torch.float32).eval()


def _prompt(length: int, seed: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=gen)


def test_hybrid_tiny_builds_once_loads_and_has_its_pattern(
    vibeserve_cache: Path, hybrid_dir: Path, hybrid: PreTrainedModel, tmp_path: Path
) -> None:
    assert cached_model_dir("hybrid-tiny", vibeserve_cache) == hybrid_dir
    assert materialize("hybrid-tiny", vibeserve_cache) == hybrid_dir
    assert hybrid.config.model_type == "nemotron_h"
    assert hybrid.config.hybrid_override_pattern == HYBRID_TINY.pattern
    assert hybrid.config.vocab_size == VOCAB_SIZE
    assert hybrid.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(hybrid_dir)
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_ID, EOS_ID)
    # The bytes depend only on the recipe: a second cache builds the same weights.
    other = materialize("hybrid-tiny", tmp_path / "other")
    assert other.name == hybrid_dir.name
    again = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32)
    for (name, a), (_, b) in zip(
        hybrid.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@torch.inference_mode()
def test_mamba_constants_are_mamba2s_not_random(hybrid: PreTrainedModel) -> None:
    mixer = hybrid.model.layers[0].mixer
    heads = HYBRID_TINY.mamba_num_heads
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, heads + 1).float())
    assert torch.equal(mixer.D, torch.ones(heads))
    steps = torch.nn.functional.softplus(mixer.dt_bias)
    assert float(steps[0]) == pytest.approx(HYBRID_TINY.time_step_min, rel=1e-4)
    assert float(steps[-1]) == pytest.approx(HYBRID_TINY.time_step_max, rel=1e-4)


@torch.inference_mode()
def test_greedy_output_is_diverse(hybrid: PreTrainedModel) -> None:
    prompt = _prompt(32, 0, VOCAB_SIZE)
    out = hybrid.generate(prompt, max_new_tokens=64, do_sample=False, eos_token_id=None)
    new = out[0, prompt.shape[1] :].tolist()
    assert len(set(new)) >= 24, new  # flat logits (init 0.02) loop over a handful of tokens


@torch.inference_mode()
def test_a_restored_prefix_cache_continues_exactly(hybrid: PreTrainedModel) -> None:
    """What hybrid prefix caching relies on: a snapshot of the attention KV *and* the recurrent
    state at the prefix boundary, restored, gives a from-scratch run's logits."""
    prefix, tails = _prompt(80, 1, VOCAB_SIZE), [_prompt(9, s, VOCAB_SIZE) for s in (2, 3)]
    snapshot = hybrid(prefix, use_cache=True).cache
    for tail in tails:
        scratch = hybrid(torch.cat([prefix, tail], dim=1)).logits[0, -tail.shape[1] :]
        cached = hybrid(tail, cache=copy.deepcopy(snapshot), use_cache=True).logits[0]
        assert torch.allclose(cached, scratch, atol=1e-4, rtol=0), (cached - scratch).abs().max()
        assert torch.equal(cached.argmax(-1), scratch.argmax(-1))
    # A stale recurrent state (the prefix minus its last token) is *not* interchangeable.
    short = hybrid(prefix[:, :-1], use_cache=True).cache
    wrong = hybrid(tails[0], cache=short, use_cache=True).logits[0]
    right = hybrid(torch.cat([prefix, tails[0]], dim=1)).logits[0, -tails[0].shape[1] :]
    assert (wrong - right).abs().max() > 1e-2


def test_recipe_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown layer codes"):
        dataclasses.replace(HYBRID_TINY, pattern="M*X")
    with pytest.raises(ValueError, match="needs Mamba2"):
        dataclasses.replace(HYBRID_TINY, pattern="*-*")
    with pytest.raises(ValueError, match="2 \\* hidden_size"):
        dataclasses.replace(HYBRID_TINY, mamba_num_heads=3)


def test_cpu_recipe_is_about_125m_parameters() -> None:
    """Counted on the meta device: no weights are allocated."""
    from transformers import NemotronHForCausalLM

    with torch.device("meta"):
        model = NemotronHForCausalLM(build_config(HYBRID_CPU))
    params = sum(p.numel() for p in model.parameters())
    assert 100e6 <= params <= 150e6, params
    assert isinstance(HYBRID_CPU, HybridRecipe) and HYBRID_CPU.dir_name.startswith("hybrid-cpu-")


def test_a_larger_vocabulary_keeps_byte_ids_and_names_its_fillers() -> None:
    small, large = build_tokenizer(), build_tokenizer(VOCAB_SIZE + 10)
    assert len(small) == VOCAB_SIZE and len(large) == VOCAB_SIZE + 10
    text = "def f(x):\n    return x"
    assert large(text).input_ids == small(text).input_ids
    assert (large.bos_token_id, large.eos_token_id) == (BOS_ID, EOS_ID)
    assert large.decode([VOCAB_SIZE + 3]) == f"<|t{VOCAB_SIZE + 3}|>"
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(100)


def test_an_unknown_model_name_lists_the_built_ones(vibeserve_cache: Path) -> None:
    from pytest_vibeserve.reference import ReferenceError as ModelError
    from pytest_vibeserve.reference import materialize_model

    with pytest.raises(ModelError, match="one of tiny, cpu, hybrid-tiny, hybrid-cpu"):
        materialize_model("hybird-tiny", vibeserve_cache)


def test_a_batch_1_reference_never_reuses_batched_outputs(
    vibeserve_cache: Path, hybrid_dir: Path
) -> None:
    from pytest_vibeserve.contract import Request
    from pytest_vibeserve.reference import Reference

    def reference(batch: int) -> Reference:
        return Reference(
            hybrid_dir, vibeserve_cache, device="cpu", dtype="float32", threads=1, batch=batch
        )

    request = Request("r", (BOS_ID, 5, 6), 4)
    assert reference(1)._key(request, 5) != reference(16)._key(request, 5)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        reference(0)
