"""Peer engine: transformers prompt lookup decoding (`prompt_lookup_num_tokens=K`), greedy.

Drafts are n-gram matches against the prompt plus the output so far; for predicted outputs the
prompt holds the code, as vLLM's n-gram speculator assumes, so `prediction_token_ids` is unused.
Options: `prompt_lookup_num_tokens` (K, default 10), `max_matching_ngram_size` (default 2).
"""

from __future__ import annotations

from pytest_vibeserve.contract import EngineSpec
from reference_impls.hf_streaming import StreamingGenerateEngine


def create_engine(spec: EngineSpec) -> StreamingGenerateEngine:
    options = {"prompt_lookup_num_tokens": int(spec.options.get("prompt_lookup_num_tokens", 10))}
    if "max_matching_ngram_size" in spec.options:
        options["max_matching_ngram_size"] = int(spec.options["max_matching_ngram_size"])
    return StreamingGenerateEngine(spec, options)
