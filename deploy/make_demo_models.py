#!/usr/bin/env python3
"""Write tiny GGUF chat models (~0.5 MB) that llama-server loads in well under a second.

They generate gibberish: enough to see the switch start, stop and forward, no download needed.
Used by `setup.sh --demo`; needs the `gguf` and `numpy` packages.

    python3 deploy/make_demo_models.py DIR [NAME ...]     # default names: demo-a demo-b

Each NAME becomes DIR/NAME.gguf; a different name gives different weights (seeded by the name).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

HIDDEN = 64
BLOCKS = 2
HEADS = 4
FFN = 128
CONTEXT = 2048

# Byte tokens above 0x7F would let random sampling emit invalid UTF-8, which llama-server's
# chat parser answers with HTTP 500: only ASCII bytes, then whole words.
_WORDS = (
    "hello world switch model local systemd unit llama server ready start stop "
    "fast slow small large one two three yes no the a of and to is it"
).split()
_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(0x80)]
    types += [TokenType.BYTE] * 0x80
    pieces = [f"\u2581{w}" for w in _WORDS] + list("abcdefghijklmnopqrstuvwxyz") + ["\u2581"]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * len(tokens)
    return tokens, scores, [int(t) for t in types]


def make_model(path: str | Path, name: str) -> Path:
    """Write one tiny llama-architecture model to `path`, its weights seeded by `name`."""
    path = Path(path)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(BLOCKS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(_CHAT_TEMPLATE)

    # numpy shapes are ggml's dimensions reversed: token_embd is ne=[hidden, vocab]
    writer.add_tensor("token_embd.weight", weights(n_vocab, HIDDEN))
    writer.add_tensor("output_norm.weight", ones(HIDDEN))
    writer.add_tensor("output.weight", weights(n_vocab, HIDDEN))
    for i in range(BLOCKS):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones(HIDDEN))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{t}.weight", weights(HIDDEN, HIDDEN))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones(HIDDEN))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weights(FFN, HIDDEN))
        writer.add_tensor(f"{blk}.ffn_up.weight", weights(FFN, HIDDEN))
        writer.add_tensor(f"{blk}.ffn_down.weight", weights(HIDDEN, FFN))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)  # a reader never sees half a file
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="directory to write NAME.gguf into")
    parser.add_argument("names", nargs="*", default=["demo-a", "demo-b"])
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        print(make_model(args.dir / f"{name}.gguf", name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
