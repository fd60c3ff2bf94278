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
from gguf import GGUFWriter

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORDS = [
    "the", "a", "model", "switch", "unit", "server", "token", "test", "hello", "world",
    "fast", "slow", "start", "stop", "ready", "json", "tool", "call", "llama", "system",
    "user", "stream", "chunk", "port", "bus", "job", "load", "run", "yes", "no",
]


def _vocab() -> tuple[list[str], list[float], list[int]]:
    # Token types (gguf.TokenType): NORMAL=1, UNKNOWN=2, CONTROL=3, BYTE=6.
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    # Byte tokens for 0x00..0x7F only: above 0x7F, random sampling emits invalid UTF-8 and
    # llama-server's chat parser answers 500 (docs/testing.md).
    for byte in range(0x80):
        tokens.append(f"<0x{byte:02X}>")
        types.append(6)
    pieces = ["▁" + w for w in _WORDS] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["▁", ".", ",", "!", "?"]
    for piece in pieces:
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
    scores = [0.0] * 3 + [-1000.0] * 0x80 + [-float(i) for i in range(len(tokens) - 3 - 0x80)]
    return tokens, scores, types


def make_model(
    path: str | Path,
    seed: int | str,
    *,
    hidden: int = 64,
    blocks: int = 2,
    heads: int = 4,
    ffn: int = 128,
    ctx: int = 2048,
) -> Path:
    """Write a random llama-architecture GGUF (F32) that llama-server loads and chats with.

    Defaults give a ~0.5 MB model; hidden=1024, blocks=8, ffn=2816 gives ~400 MB.
    A different ``seed`` (a number, or a name) is a different model.
    """
    path = Path(path)
    if isinstance(seed, str):
        seed = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    head_dim = hidden // heads

    tmp = path.with_name(path.name + ".part")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_name(f"llm-switch-test-{seed}")
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # ALL_F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    vocab = len(tokens)
    # numpy shapes are ggml's dims reversed: (rows=out, cols=in).
    writer.add_tensor("token_embd.weight", rand(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", rand(vocab, hidden))
    for i in range(blocks):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(b + "attn_q.weight", rand(hidden, hidden))
        writer.add_tensor(b + "attn_k.weight", rand(heads * head_dim, hidden))
        writer.add_tensor(b + "attn_v.weight", rand(heads * head_dim, hidden))
        writer.add_tensor(b + "attn_output.weight", rand(hidden, hidden))
        writer.add_tensor(b + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(b + "ffn_gate.weight", rand(ffn, hidden))
        writer.add_tensor(b + "ffn_up.weight", rand(ffn, hidden))
        writer.add_tensor(b + "ffn_down.weight", rand(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
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
