"""New text-to-video models to train from scratch: diffusers/transformers classes at chosen widths.

A model built here is an ordinary diffusers-format bundle (``UNet3DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel`` + ``CLIPTokenizer``, ModelScope's DDIM schedule), so the renderer loads it like any
ModelScope checkpoint. The tokenizer is a byte-level BPE whose merges spell whole words of a
given vocabulary (every other text still tokenises, character by character).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode


@dataclass
class ArchitectureConfig:
    """Widths of a model trained from scratch.

    ``vae_channels`` has one entry per VAE block: the VAE downsamples by ``2 ** (len - 1)``.
    ``unet_channels`` has one entry per UNet level; every level but the last has spatial and
    temporal attention with heads of ``attention_head_dim`` channels. ``words`` are tokenised
    whole (the text vocabulary of the data); ``max_tokens`` includes the start and end tokens.
    ``zero_init_cross_attention`` starts every cross-attention output projection at zero, so the text
    path adds nothing until the gradient makes it useful (a random one only adds noise at first).
    ``pooled_text`` also adds the caption, pooled over tokens, to the UNet's timestep embedding
    (:mod:`videogen.models.text_condition`).
    """

    vae_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_groups: int = 8
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 24
    words: list[str] = field(default_factory=list)
    zero_init_cross_attention: bool = False
    pooled_text: bool = False


def architecture_problems(arch: ArchitectureConfig, prefix: str = "model.architecture") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in ("vae_channels", "unet_channels"):
        widths = getattr(arch, name)
        if not widths or any(w < 1 for w in widths):
            out.append((f"{prefix}.{name}", f"needs one or more positive widths, got {list(widths)}"))
        elif any(w % arch.norm_groups for w in widths):
            out.append((f"{prefix}.{name}", f"every width must be a multiple of norm_groups ({arch.norm_groups})"))
    for name in ("latent_channels", "text_dim", "text_layers", "text_heads", "attention_head_dim", "norm_groups"):
        if getattr(arch, name) < 1:
            out.append((f"{prefix}.{name}", f"must be >= 1, got {getattr(arch, name)}"))
    if arch.text_heads >= 1 and arch.text_dim % arch.text_heads:
        out.append((f"{prefix}.text_dim", f"{arch.text_dim} is not a multiple of text_heads ({arch.text_heads})"))
    if arch.max_tokens < 3:
        out.append((f"{prefix}.max_tokens", f"needs room for start, end and one token, got {arch.max_tokens}"))
    return out


def _bpe_symbols(word: str) -> list[str]:
    byte_chars = bytes_to_unicode()
    chars = [byte_chars[b] for b in word.encode("utf-8")]
    return chars[:-1] + [chars[-1] + "</w>"]


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned on ``words`` until each is one symbol (most frequent pair first, ties by name).

    Learning applies every merge to every word in rank order, the order tokenisation applies them in,
    so each vocabulary word tokenises to exactly one token.
    """
    corpus = [_bpe_symbols(w) for w in sorted({w.lower() for w in words if w})]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for i, symbols in enumerate(corpus):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            corpus[i] = merged


def word_tokenizer(words: list[str], max_tokens: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer: every byte is a token, and :func:`word_merges` make each of ``words`` one token."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(char, len(vocab))
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_tokens)


def new_vae(arch: ArchitectureConfig) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        block_out_channels=tuple(arch.vae_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_groups,
        sample_size=64,
    )


def new_unet(arch: ArchitectureConfig) -> UNet3DConditionModel:
    n = len(arch.unet_channels)
    unet = UNet3DConditionModel(
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        cross_attention_dim=arch.text_dim,
        attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.norm_groups,
        sample_size=16,
        time_cond_proj_dim=arch.text_dim if arch.pooled_text else None,
    )
    if arch.zero_init_cross_attention:
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                torch.nn.init.zeros_(module.to_out[0].weight)
                torch.nn.init.zeros_(module.to_out[0].bias)
    return unet


def new_text_encoder(arch: ArchitectureConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=arch.text_dim,
        intermediate_size=4 * arch.text_dim,
        num_attention_heads=arch.text_heads,
        num_hidden_layers=arch.text_layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=arch.max_tokens,
        projection_dim=arch.text_dim,
    )
    return CLIPTextModel(config)
