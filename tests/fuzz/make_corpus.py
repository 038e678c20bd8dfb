#!/usr/bin/python3
"""Writes the fuzzer's seed corpus, tests/fuzz/corpus/: small valid .safetensors files
covering every dtype, rank 0-4, metadata and empty tensors, plus a few invalid ones
near the edges the reader checks. The files are committed; rerun after changing this."""
import json
import pathlib
import struct

corpus = pathlib.Path(__file__).with_name("corpus")
corpus.mkdir(exist_ok=True)

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
         "U8": 1, "BOOL": 1}


def file_bytes(header, data=b"", pad=True):
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tensors(entries, metadata=None):
    """entries: (name, dtype, shape, raw bytes or None for a counting pattern)."""
    header = {"__metadata__": metadata} if metadata is not None else {}
    data = b""
    for name, dtype, shape, raw in entries:
        count = 1
        for extent in shape:
            count *= extent
        if raw is None:
            raw = bytes((i * 37 + 11) % 256 for i in range(count * SIZES[dtype]))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return file_bytes(header, data)


def write(name, content):
    (corpus / name).write_bytes(content)


write("valid_empty.safetensors", file_bytes({}))
write("valid_metadata_only.safetensors", file_bytes({"__metadata__": {"format": "pt"}}))
write("valid_f32_ranks.safetensors", tensors([
    ("layers.0.attn.q_proj.weight", "F32", [2, 3], struct.pack("<6f", 1, -2, 0.5, 0, -0.0, 3.25)),
    ("layers.0.attn.lambda_q1", "F32", [4], None),
    ("layers.0.norm.weight", "F32", [1, 2, 2], None),
    ("r4", "F32", [1, 1, 2, 1], None),
], {"format": "pt"}))
write("valid_half_types.safetensors", tensors([
    ("f16", "F16", [2, 2], struct.pack("<4H", 0x3C00, 0x8001, 0x7C00, 0x7E01)),
    ("bf16", "BF16", [3], struct.pack("<3H", 0x3F80, 0x0001, 0xFF81)),
    ("f64", "F64", [1], struct.pack("<d", 1.0 / 3.0)),
]))
write("valid_all_dtypes.safetensors", tensors([(d.lower(), d, [2], None) for d in SIZES]))
write("valid_scalar_and_empty.safetensors", tensors([
    ("scalar", "F32", [], struct.pack("<f", 2.5)),
    ("empty", "F16", [0, 4], b""),
    ("empty2", "BF16", [3, 0], b""),
]))
write("valid_unpadded.safetensors", file_bytes(
    b'{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}', bytes(16), pad=False))

write("invalid_short.safetensors", b"\x05\x00\x00")
write("invalid_length_past_end.safetensors", struct.pack("<Q", 64) + b"{}")
write("invalid_not_object.safetensors", file_bytes(b"[1,2,3]"))
write("invalid_duplicate.safetensors", file_bytes(
    b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
    b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)))
write("invalid_overlap.safetensors", file_bytes(
    b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)))
write("invalid_size_mismatch.safetensors", file_bytes(
    b'{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,8]}}', bytes(8)))
write("invalid_huge_shape.safetensors", file_bytes(
    b'{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}', bytes(4)))
write("invalid_unknown_dtype.safetensors", file_bytes(
    b'{"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}', bytes(1)))
print(f"wrote {len(list(corpus.iterdir()))} files to {corpus}")
