#!/usr/bin/python3
"""Writes the shape fuzzer's seed corpus, tests/fuzz/shape_corpus/: one small input per
entry point of tests/fuzz/shape_attack.hpp, in its byte format (a missing byte reads as
0: row-major views, no specials). A seed named ran_* must run its calls and one named
rejected_* must end in a documented exception (tests/test_shape_fuzz_replay.cpp checks
both). The files are committed; rerun after changing the format."""
import pathlib

corpus = pathlib.Path(__file__).with_name("shape_corpus")
corpus.mkdir(exist_ok=True)

FLOAT, DOUBLE = 0, 1
SOFTMAX, DIFF_HEAD, DIFF_TOKEN, KV_CACHE, ROPE, RMS_NORM, LAMBDA, LAYOUTS, BLOCK = 0, 3, 5, 7, 8, 9, 10, 11, 12
ROW_MAJOR = [0, 0]             # a view's mutation byte and layout byte
PERMUTED = [0, 1, 5]           # layout 1 + order code
PADDED4 = [0, 2, 1, 0, 3, 2]   # layout 2 + one pad byte per dimension (rank 4)
SEED = [0x2a, 0x00, 0x00, 0x00]


def attention(dtype, entry, dims, causal=0, scale=0, threads=1, workspace=0, q=ROW_MAJOR,
              k=ROW_MAJOR, v=ROW_MAJOR, out=ROW_MAJOR, second=(), mask=(0,), lam=(), alias=(0, 0),
              values=()):
    """dims: B, Hkv, group (Hq = Hkv·group), Nq, Nk, D, Dv."""
    return bytes([dtype, entry, *dims, causal, scale, threads, workspace, *q, *k, *v, *out,
                  *second, *mask, *lam, *alias, *SEED, *values])


def write(name, content):
    (corpus / name).write_bytes(content)


write("ran_softmax_float_gqa.bin", attention(FLOAT, SOFTMAX, [1, 2, 2, 3, 5, 4, 3]))
write("ran_softmax_double_causal_mask.bin",
      attention(DOUBLE, SOFTMAX, [2, 1, 3, 4, 6, 8, 5], causal=1, q=PERMUTED, k=PADDED4,
                mask=(1 | 2, *ROW_MAJOR)))  # mask [1, Hq, Nq, Nk]
write("ran_softmax_float_streaming.bin",
      attention(FLOAT, SOFTMAX, [1, 1, 2, 7, 9, 9, 9], causal=1, workspace=128))  # limit 0
write("ran_diff_head_lambda_float.bin",
      attention(FLOAT, DIFF_HEAD, [1, 2, 1, 5, 5, 6, 6], second=[*ROW_MAJOR, 1],  # k2 = k1
                lam=(0, *ROW_MAJOR)))
write("ran_diff_token_lambda_double.bin",
      attention(DOUBLE, DIFF_TOKEN, [2, 1, 2, 3, 4, 2, 4], causal=1,
                second=[*PERMUTED, 0, *PADDED4], lam=(2, *ROW_MAJOR)))  # lambda [B, 1, Nq]
write("rejected_softmax_out_aliases_q.bin",
      attention(FLOAT, SOFTMAX, [1, 1, 1, 2, 2, 2, 2], alias=(0xe0, 0)))
write("rejected_softmax_negative_threads.bin", attention(DOUBLE, SOFTMAX, [1, 1, 1, 2, 2, 2, 2], threads=192))
write("rejected_softmax_gqa_ratio.bin",
      attention(FLOAT, SOFTMAX, [1, 2, 2, 2, 2, 2, 2], k=[0xf1, 3, 0]))  # Hkv = 3 does not divide 4
write("ran_kv_cache_appends.bin",
      bytes([FLOAT, KV_CACHE, 2, 6, 2, 4, 1, 3, *SEED, 2, 0, 2, *ROW_MAJOR, *PERMUTED, 0, 0, 0, 3,
             *ROW_MAJOR, *ROW_MAJOR]))
write("ran_rope_half_double.bin", bytes([DOUBLE, ROPE, 2, 3, 2, 8, 0, 2, 0, *PERMUTED, *SEED]))
write("ran_rms_norm_in_place_float.bin", bytes([FLOAT, RMS_NORM, 4, 6, 0, 5, *ROW_MAJOR, *ROW_MAJOR, *ROW_MAJOR, 0, *SEED]))
write("ran_lambda_per_head_double.bin", bytes([DOUBLE, LAMBDA, 2, 1, 3, 4, *SEED]))
write("ran_layouts_float.bin", bytes([FLOAT, LAYOUTS, 2, 3, 4, 5, *PADDED4]))
write("ran_block_diff_causal_float.bin",
      bytes([FLOAT, BLOCK, 1, 8, 2, 1, 0, 1, 1, 0, 1, 0, 0, *SEED, 2, 5, *ROW_MAJOR, 0, 5, 2]))
write("ran_block_standard_double.bin",
      bytes([DOUBLE, BLOCK, 0, 8, 2, 0, 0, 1, 2, 0, 1, 0, 0, *SEED, 1, 4, *ROW_MAJOR, 0, 4, 3]))
