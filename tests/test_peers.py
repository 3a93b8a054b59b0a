"""How the peers are launched and asked: fp32 throughout for the exact ones, and no cache that a
repeat of a measured run could find warm. No peer needs to be installed: the launch plans are
read, not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vibeserve import peers
from pytest_vibeserve.contract import Request
from pytest_vibeserve.endpoint import LLAMA_CPP, EndpointEngine


@pytest.fixture
def installed(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A cache where both peers look installed, and a model directory with a config."""
    cache = tmp_path / "cache"
    server = peers._llama_server(cache)
    server.parent.mkdir(parents=True)
    server.write_text("")
    marker = peers._vllm_marker(cache)
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    model = tmp_path / "model-abc"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    monkeypatch.setattr(peers, "gguf_f32", lambda model_dir, cache_dir: cache / "m-f32.gguf")
    return model, cache


def test_llama_cpp_f32_runs_without_flash_attention_and_with_an_f32_cache(installed):
    model, cache = installed
    command = peers.launch("llama_cpp", model, cache, port=1234, threads=2).command
    joined = " ".join(command)
    assert "--cache-type-k f32 --cache-type-v f32" in joined
    assert command[command.index("-fa") + 1] == "off"  # its CPU kernel rounds through f16


@pytest.mark.parametrize("name", ["vllm", "vllm_eager", "vllm_ngram"])
def test_vllm_peers_run_without_a_prefix_cache(installed, name):
    model, cache = installed
    command = peers.launch(name, model, cache, port=1234, threads=2).command
    assert "--no-enable-prefix-caching" in command
    assert command[command.index("--dtype") + 1] == "float32"
    assert command[command.index("--max-model-len") + 1] == "2048"


def test_a_missing_peer_names_its_install_command(tmp_path):
    with pytest.raises(peers.PeerUnavailable, match="vibeserve peers install vllm"):
        peers.launch("vllm", tmp_path, tmp_path / "empty-cache", port=1, threads=1)


@pytest.mark.parametrize("prompt_cache", [True, False])
def test_llama_cpp_requests_say_whether_its_slots_may_reuse_a_prompt(prompt_cache):
    engine = EndpointEngine("http://127.0.0.1:9", prompt_cache=prompt_cache)
    engine.id_source = LLAMA_CPP
    path, body = engine.completion_body(Request("r", (1, 2, 3), 4), stream=True)
    assert path == "/completion"
    assert body["cache_prompt"] is prompt_cache
    assert body["prompt"] == [1, 2, 3] and body["n_predict"] == 4


def test_llama_cpp_gets_a_response_format_as_its_native_json_schema():
    engine = EndpointEngine("http://127.0.0.1:9")
    engine.id_source = LLAMA_CPP
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    request = Request("r", (1, 2), 8, response_format=spec)
    _, body = engine.completion_body(request, stream=False)
    assert body["json_schema"] == schema and "response_format" not in body
    engine.id_source = "token_ids"  # an OpenAI-compatible server gets the field as it is
    _, body = engine.completion_body(request, stream=False)
    assert body["response_format"] == spec
