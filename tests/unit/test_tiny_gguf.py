"""The prefix-cache benchmark's tiny model (benchmarks/llama/tiny_model.py): a GGUF file that
llama.cpp's server loads as a llama model with a character-level SentencePiece vocabulary and a
ChatML template. Read back with gguf's own reader (no llama.cpp build needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")  # the `bench` extra

from benchmarks.llama.tiny_model import CHATML, SPACE, write_model  # noqa: E402


def _field(reader, name):
    f = reader.fields[name]
    return f.contents()


def test_tiny_model_is_a_llama_gguf_with_a_character_vocabulary_and_chatml(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", layers=2, embd=64, ff=128, heads=2, context=4096)
    r = gguf.GGUFReader(str(path))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.block_count") == 2
    assert _field(r, "llama.context_length") == 4096
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert _field(r, "tokenizer.chat_template") == CHATML
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == _field(r, "llama.vocab_size")
    # every printable ASCII character is one token; space is SentencePiece's "▁"; bytes fall back
    for ch in [SPACE] + [chr(c) for c in range(33, 127)]:
        assert types[tokens.index(ch)] == gguf.TokenType.NORMAL
    assert all(f"<0x{b:02X}>" in tokens for b in range(256))
    assert types[tokens.index("<|im_start|>")] == gguf.TokenType.CONTROL
    assert tokens[_field(r, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    names = {t.name: t for t in r.tensors}
    assert len(names) == 2 + 9 * 2 + 1
    # GGUF lists dimensions innermost first: (n_embd, n_vocab)
    assert list(names["token_embd.weight"].shape) == [64, len(tokens)]
    assert list(names["blk.1.ffn_down.weight"].shape) == [128, 64]
