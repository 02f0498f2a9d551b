#!/usr/bin/env python3
"""The one-off step that turned models/tiny.bin from checkpoint version 1 into version 2 (run once, 2026-11-29).

Version 2 changed only the tokenizer block (see the README's format section): a fourth header field add_bos after
n_tokens, n_merges, pretok, and a flags word per token (1 special, 2 added token, 4 added token matched after
normalization) where version 1 had a 0/1 special word. The HF directory tiny.bin came from (tools/train_tiny.py's
output) is no longer at hand, so this rewrites the file in place of re-running ./convert:

  - the header: version 2, Config.tok_bytes grown by 4; every other Config field as it was;
  - the tokenizer block: pretok 0 (ByteLevel with the GPT-2 split, what train_tiny.py's tokenizer uses); add_bos 0
    (its tokenizer.json has no post_processor template and there is no tokenizer_config.json, so HF adds no BOS;
    train_tiny.py writes none either); the one special token, <|endoftext|> (id 0, added by the BPE trainer as
    special with normalized: false), gets flags 3; every other token 0; the token bytes and merges unchanged;
  - the weights: the same bytes, moved to the new weights_offset (64-byte aligned after the block).

It checks that the weights are byte-identical and the file size is what tpla.h's layout says.
  python3 tools/upgrade_tiny_v2.py models/tiny.bin models/tiny.bin
"""
import struct, sys

HEADER, TOK_BYTES_AT = 512, 8 + 26 * 4   # Config.tok_bytes is its 27th int (tpla.h)


def align64(x):
    return (x + 63) & ~63


def main(src, dst):
    f = open(src, "rb").read()
    magic, version = struct.unpack_from("<Ii", f, 0)
    assert magic == 0x414C5054 and version == 1, f"{src}: not a version-1 tpla checkpoint"
    (tok_bytes,) = struct.unpack_from("<i", f, TOK_BYTES_AT)
    blk = f[HEADER: HEADER + tok_bytes]
    n, n_merges, pretok = struct.unpack_from("<iii", blk, 0)
    assert pretok == 0, "version 1 pretok 0 is the GPT-2 split"
    out, at, specials = [struct.pack("<iiii", n, n_merges, 0, 0)], 12, []
    for i in range(n):
        length, special = struct.unpack_from("<ii", blk, at)
        if special:
            specials.append(i)
        out.append(struct.pack("<ii", length, 3 if special else 0) + blk[at + 8: at + 8 + length])
        at += 8 + length
    assert specials == [0] and len(blk) - at == 12 * n_merges, (specials, len(blk) - at)
    out.append(blk[at:])
    new_blk = b"".join(out)
    assert len(new_blk) == tok_bytes + 4
    weights = f[align64(HEADER + tok_bytes):]
    header = bytearray(f[:HEADER])
    struct.pack_into("<i", header, 4, 2)
    struct.pack_into("<i", header, TOK_BYTES_AT, len(new_blk))
    pad = b"\0" * (align64(HEADER + len(new_blk)) - HEADER - len(new_blk))
    new = bytes(header) + new_blk + pad + weights
    assert new[align64(HEADER + len(new_blk)):] == weights
    open(dst, "wb").write(new)
    print(f"{dst}: version 2, tokenizer block {tok_bytes} -> {len(new_blk)} bytes, weights ({len(weights)} bytes) "
          f"unchanged at offset {align64(HEADER + len(new_blk))}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
