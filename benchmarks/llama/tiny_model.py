"""A tiny llama-architecture GGUF model with random weights, for llama.cpp's server in
benchmarks/prefix_cache.py: nothing to download, and big enough that prompt processing takes
measurable milliseconds (~0.1 ms per prompt token on one core).

The vocabulary is SentencePiece-style ("llama" tokenizer in GGUF terms), character level: the
printable ASCII characters, "▁" (a space), the 256 byte-fallback tokens, <unk>/<s>/</s> and
ChatML's <|im_start|>/<|im_end|> (a ChatML chat template is embedded). One prompt character is
one token, so prompts re-tokenize the same way turn after turn (a stable prefix for the cache).

The weights are random but steered: every token embedding carries a constant component in
dimension 0 that the output matrix maps to a large positive logit for the printable character
tokens and a large negative one for the rest, so replies are printable ASCII made of the tokens
the prompt's tokenizer would choose (no byte tokens, no broken UTF-8, no early end-of-sequence:
every reply is max_tokens long and comes back into the next prompt as the same tokens).

    python benchmarks/llama/tiny_model.py OUT.gguf [--layers 4 --embd 256 --ff 768 --heads 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPACE = "\u2581"


def vocabulary() -> tuple[list[str], list[int], list[float], list[bool]]:
    """Tokens, their GGUF token types, scores and whether a reply may contain them."""
    from gguf import TokenType

    tokens: list[str] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TokenType.BYTE)
    printable = [SPACE] + [chr(c) for c in range(33, 127)]
    tokens += printable
    types += [TokenType.NORMAL] * len(printable)
    scores = [0.0] * len(tokens)
    replyable = [t == TokenType.NORMAL for t in types]
    return tokens, types, scores, replyable


def write_model(path: Path, *, layers: int = 4, embd: int = 256, ff: int = 768, heads: int = 4,
                context: int = 4096, seed: int = 0) -> Path:
    """Write the model to ``path`` (f32 weights) and return it."""
    import gguf

    if embd % heads:
        raise ValueError(f"embd ({embd}) must be a multiple of heads ({heads})")
    rng = np.random.default_rng(seed)
    tokens, types, scores, replyable = vocabulary()
    n_vocab = len(tokens)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("rllm-tiny-random")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_context_length(context)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(embd // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(4)  # <|im_end|>: ChatML's end of turn
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHATML)

    # numpy shapes are (rows=out, cols=in); GGUF stores them reversed, as llama.cpp expects.
    embed = rand(n_vocab, embd)
    # The constant component the output steers on, large enough to dominate the normalized final
    # state at any width (at 1.0 an n_embd 512 model sampled byte tokens for ASCII characters,
    # which re-tokenize as the character tokens: the previous reply fell out of the cached prefix).
    embed[:, 0] = 10.0
    w.add_tensor("token_embd.weight", embed)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(embd, embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ff, embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ff, embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(embd, ff))
    w.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    out = rand(n_vocab, embd, std=0.5)
    out[:, 0] = np.where(np.array(replyable), 1.0, -1.0)
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embd", type=int, default=256)
    p.add_argument("--ff", type=int, default=768)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        write_model(a.out, layers=a.layers, embd=a.embd, ff=a.ff, heads=a.heads, context=a.context, seed=a.seed)
    except ImportError:
        print("error: the gguf package is missing (pip install 'litellm-rllm[bench]')", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
