"""The `tiny` reference model: a seeded random Llama with a byte-level tokenizer, built offline."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers load only when a model is built
    import torch
    from transformers import LlamaConfig, PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
BOS_ID = 256
EOS_ID = 257
VOCAB_SIZE = 258  # 256 byte symbols + BOS + EOS

# Plain-text roles between BOS/EOS: the tiny vocabulary has no other special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|bos|>' + message['role'] + '\n' + message['content'] + '<|eos|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|bos|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyRecipe:
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    intermediate_size: int = 704
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # The Llama default 0.02 gives flat logits: greedy loops over a dozen tokens. 0.1 is diverse.
    initializer_range: float = 0.1
    seed: int = 0
    revision: int = 1  # bump whenever the build code below changes the bytes it writes

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def dir_name(self) -> str:
        return f"tiny-llama-{self.digest()}"


def byte_symbols() -> list[str]:
    """The printable stand-in of each byte 0..255 used by byte-level BPE (GPT-2's scheme)."""
    kept_set = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    symbols: list[str] = []
    extra = 0
    for byte in range(256):
        if byte in kept_set:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer; a larger ``vocab_size`` adds ``<|tN|>`` fillers after EOS.

    Text never encodes to a filler (there are no merges): they only name the ids of a model with
    a realistic vocabulary size whose prompts are token ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} < {VOCAB_SIZE} (256 bytes, BOS and EOS)")
    # Token id == byte value; no merges, so every string is encoded one byte per token.
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    if vocab_size > VOCAB_SIZE:
        vocab[BOS_TOKEN], vocab[EOS_TOKEN] = BOS_ID, EOS_ID
        vocab.update({f"<|t{i}|>": i for i in range(VOCAB_SIZE, vocab_size)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(BOS_TOKEN, special=True), AddedToken(EOS_TOKEN, special=True)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    if tok.token_to_id(BOS_TOKEN) != BOS_ID or tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise AssertionError("tiny tokenizer: special token ids moved; update BOS_ID/EOS_ID")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(recipe: TinyRecipe) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=recipe.rope_theta,
        rms_norm_eps=recipe.rms_norm_eps,
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        dtype="float32",
    )


def _init_weights(model: torch.nn.Module, recipe: TinyRecipe) -> None:
    import torch

    # Our own seeded init (not transformers' _init_weights) so the bytes depend only on the recipe.
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if name.endswith("norm.weight") else 0.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * recipe.initializer_range)


def build_tiny(out_dir: Path, recipe: TinyRecipe) -> None:
    """Write config, safetensors weights, generation config and tokenizer files into out_dir."""
    from transformers import LlamaForCausalLM

    save_seeded_model(
        out_dir,
        LlamaForCausalLM,
        build_config(recipe),
        lambda model: _init_weights(model, recipe),
        VOCAB_SIZE,
    )


def save_seeded_model(
    out_dir: Path,
    model_class: Callable[[Any], torch.nn.Module],
    config: Any,
    init: Callable[[torch.nn.Module], None],
    vocab_size: int,
) -> None:
    """Build ``model_class(config)``, give it ``init``'s seeded weights, and write it with a greedy
    generation config and the byte tokenizer of ``vocab_size`` ids."""
    import torch
    from transformers import GenerationConfig

    # Constructing the model runs transformers' random init on the global RNG; keep the caller's.
    with torch.random.fork_rng(devices=[]):
        model = model_class(config)
    init(model)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, do_sample=False
    )
    model.save_pretrained(out_dir)
    build_tokenizer(vocab_size).save_pretrained(out_dir)
