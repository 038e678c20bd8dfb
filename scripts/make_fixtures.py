#!/usr/bin/python3
"""Writes tests/fixtures/blocks/*.safetensors: small attention blocks built in PyTorch,
their weights, an input and the expected output, for tests/test_blocks.cpp and the
run_layer ctest.

The blocks are written here from the Differential Transformer paper (Ye et al., ICLR
2025) and the reference code in microsoft/unilm Diff-Transformer/ (multihead_attention.py,
multihead_diffattn.py, multihead_flashdiff_1.py for the GQA pairing, and
Diff-Transformer-V2/multihead_flashdiffv2.py for the V2 form), with plain PyTorch ops:
no flash-attn, no apex, no triton. RoPE follows flash_attn's apply_rotary_emb (pairs
(x[2i], x[2i+1]) when interleaved, (x[i], x[i + d/2]) otherwise; angle = position ·
theta^(-2i/d)).

Each file holds, besides the weights (nn.Linear layout, reference state_dict names, with
the fixture's prefix):
  x      [B, N, E] float32  the input
  y      [B, N, E] float32  the block's output computed in float32 (softmax in fp32, as
                            the reference code does)
  y_f64  [B, N, E] float64  the same block and input computed in float64
and "__metadata__" with the block's configuration as JSON under "config".

Run with Debian's PyTorch (no pip packages needed):
    apt-get install -y python3-torch && /usr/bin/python3 scripts/make_fixtures.py
Seeds are fixed; a different PyTorch version may draw different random numbers, so the
files may change when regenerated, but they stay self-consistent.
"""

import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "blocks")

# B = 2 sequences of N = 8 tokens, E = 32 everywhere: a few thousand weights per file.
BATCH, TOKENS, EMBED = 2, 8, 32

# name -> configuration. "heads" counts differential heads for diff blocks and plain
# heads for standard blocks; "kv_heads" likewise. head_dim 0 means the default
# (E / heads / 2 for diff blocks, E / heads for standard ones).
FIXTURES = {
    "standard_causal_interleaved": dict(
        block="standard", heads=4, kv_heads=4, causal=True, rope="interleaved"),
    "standard_gqa_half_bias": dict(
        block="standard", heads=4, kv_heads=2, causal=False, rope="half", rope_theta=500.0,
        bias=True),
    "diff_reference": dict(
        block="diff", heads=2, kv_heads=2, layer=1, causal=False, rope="none",
        lambda_mode="reference"),
    "diff_reference_causal_interleaved": dict(
        block="diff", heads=2, kv_heads=2, layer=3, causal=True, rope="interleaved",
        lambda_mode="reference"),
    "diff_gqa_causal_half": dict(
        block="diff", heads=4, kv_heads=2, layer=2, causal=True, rope="half",
        lambda_mode="reference"),
    "diff_per_head_prefix_bias": dict(
        block="diff", heads=2, kv_heads=1, layer=5, causal=True, rope="interleaved",
        lambda_mode="per-head", bias=True, prefix="layers.4.attn."),
    "diff_v2_gqa_causal_interleaved": dict(
        block="diff", heads=2, kv_heads=1, causal=True, rope="interleaved", lambda_mode="v2"),
    "diff_v2_head_dim_half": dict(
        block="diff", heads=2, kv_heads=2, head_dim=16, causal=False, rope="half",
        lambda_mode="v2"),
}


def lambda_init(layer):
    """The paper's schedule for the 1-based layer index (reference: depth = layer - 1)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))


def rope(x, style, theta):
    """x [B, N, heads, d] at positions 0..N-1. Angles and cos/sin in float64, the rotation
    in x's dtype (as flash_attn's kernel rotates in fp32)."""
    if style == "none":
        return x
    d = x.shape[-1]
    half = d // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = angles.cos().to(x.dtype)[None, :, None, :]  # [1, N, 1, d/2]
    sin = angles.sin().to(x.dtype)[None, :, None, :]
    if style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    elif style == "half":
        a, b = x[..., :half], x[..., half:]
    else:
        raise ValueError(style)
    ra = a * cos - b * sin
    rb = a * sin + b * cos
    if style == "interleaved":
        return torch.stack((ra, rb), dim=-1).flatten(-2)
    return torch.cat((ra, rb), dim=-1)


def repeat_heads(x, n_rep):
    """[B, heads, N, w] -> [B, heads * n_rep, N, w]: head h of the result is head h // n_rep."""
    return x.repeat_interleave(n_rep, dim=1)


def attention_probabilities(q, k, causal):
    """softmax(q·kᵀ/√d + mask) in float32 at least, as the reference code's softmax."""
    scale = q.shape[-1] ** -0.5
    logits = torch.matmul(q * scale, k.transpose(-1, -2))
    if causal:
        n_q, n_k = logits.shape[-2], logits.shape[-1]
        mask = torch.triu(torch.full((n_q, n_k), float("-inf"), dtype=logits.dtype),
                          1 + n_k - n_q)
        logits = logits + mask
    softmax_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.softmax(logits, dim=-1, dtype=softmax_dtype).type_as(logits)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def linear(x, weights, name):
    w = weights[name + ".weight"]
    b = weights.get(name + ".bias")
    return F.linear(x, w, b)


def standard_block(cfg, weights, x):
    """multihead_attention.py: Hq heads, Hkv kv heads of width d, RoPE, GQA by repetition."""
    bsz, n, _ = x.shape
    h, h_kv, d = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = linear(x, weights, "q_proj").view(bsz, n, h, d)
    k = linear(x, weights, "k_proj").view(bsz, n, h_kv, d)
    v = linear(x, weights, "v_proj").view(bsz, n, h_kv, d)
    q = rope(q, cfg["rope"], cfg["rope_theta"]).transpose(1, 2)
    k = repeat_heads(rope(k, cfg["rope"], cfg["rope_theta"]).transpose(1, 2), h // h_kv)
    v = repeat_heads(v.transpose(1, 2), h // h_kv)
    attn = torch.matmul(attention_probabilities(q, k, cfg["causal"]), v)  # [B, h, N, d]
    attn = attn.transpose(1, 2).reshape(bsz, n, h * d)
    return linear(attn, weights, "out_proj")


def diff_block_v1(cfg, weights, x):
    """multihead_diffattn.py with the pairing of multihead_flashdiff_1.py: q1/q2 of head i
    are q heads 2i/2i+1, k1/k2 of kv head j are k heads 2j/2j+1, and head i reads kv head
    i // (H / Hkv). λ shared (reference) or one per head (per-head)."""
    bsz, n, _ = x.shape
    h, h_kv, d = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    n_rep = h // h_kv
    q = rope(linear(x, weights, "q_proj").view(bsz, n, 2 * h, d), cfg["rope"], cfg["rope_theta"])
    k = rope(linear(x, weights, "k_proj").view(bsz, n, 2 * h_kv, d), cfg["rope"],
             cfg["rope_theta"])
    v = linear(x, weights, "v_proj").view(bsz, n, h_kv, 2 * d)
    q = q.view(bsz, n, h, 2, d)
    k = k.view(bsz, n, h_kv, 2, d)
    q1, q2 = q[:, :, :, 0].transpose(1, 2), q[:, :, :, 1].transpose(1, 2)
    k1 = repeat_heads(k[:, :, :, 0].transpose(1, 2), n_rep)
    k2 = repeat_heads(k[:, :, :, 1].transpose(1, 2), n_rep)
    v = repeat_heads(v.transpose(1, 2), n_rep)
    p1 = attention_probabilities(q1, k1, cfg["causal"])
    p2 = attention_probabilities(q2, k2, cfg["causal"])

    lam_init = lambda_init(cfg["layer"])
    lam1 = torch.exp(torch.sum(weights["lambda_q1"] * weights["lambda_k1"], dim=-1))
    lam2 = torch.exp(torch.sum(weights["lambda_q2"] * weights["lambda_k2"], dim=-1))
    lam = lam1 - lam2 + lam_init  # [] or [H]
    if lam.dim() == 1:
        lam = lam.view(1, h, 1, 1)
    attn = torch.matmul(p1 - lam * p2, v)  # [B, H, N, 2d]
    attn = rms_norm(attn, weights["subln.weight"], 1e-5)
    attn = attn * (1 - lam_init)
    attn = attn.transpose(1, 2).reshape(bsz, n, h * 2 * d)
    return linear(attn, weights, "out_proj")


def diff_block_v2(cfg, weights, x):
    """Diff-Transformer-V2/multihead_flashdiffv2.py: 2H query heads of width d attend with
    GQA over Hkv kv heads (query head j reads kv head j // (2H / Hkv), so heads 2i and
    2i+1 share one); λ = sigmoid(x·Wλᵀ) per token and head; no RMSNorm, no λ_init."""
    bsz, n, _ = x.shape
    h, h_kv, d = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = rope(linear(x, weights, "q_proj").view(bsz, n, 2 * h, d), cfg["rope"], cfg["rope_theta"])
    k = rope(linear(x, weights, "k_proj").view(bsz, n, h_kv, d), cfg["rope"], cfg["rope_theta"])
    v = linear(x, weights, "v_proj").view(bsz, n, h_kv, d)
    q = q.transpose(1, 2)
    k = repeat_heads(k.transpose(1, 2), 2 * h // h_kv)
    v = repeat_heads(v.transpose(1, 2), 2 * h // h_kv)
    attn = torch.matmul(attention_probabilities(q, k, cfg["causal"]), v)  # [B, 2H, N, d]
    attn1, attn2 = attn[:, 0::2], attn[:, 1::2]
    lam = torch.sigmoid(linear(x, weights, "lambda_proj"))  # [B, N, H]
    attn = attn1 - lam.transpose(1, 2).unsqueeze(-1) * attn2
    attn = attn.transpose(1, 2).reshape(bsz, n, h * d)
    return linear(attn, weights, "o_proj")


def make_weights(cfg, generator):
    """Weights as the reference modules initialise them (nn.Linear: uniform ±1/√fan_in;
    λ vectors: normal(0, 0.1)), except subln.weight, drawn around 1 so that a block that
    ignored it would fail, and biases uniform ±1/√fan_in where the fixture has them."""
    e, h, h_kv, d = EMBED, cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    if cfg["block"] == "standard":
        shapes = {"q_proj": (h * d, e), "k_proj": (h_kv * d, e), "v_proj": (h_kv * d, e),
                  "out_proj": (e, h * d)}
    elif cfg["lambda_mode"] == "v2":
        shapes = {"q_proj": (2 * h * d, e), "k_proj": (h_kv * d, e), "v_proj": (h_kv * d, e),
                  "o_proj": (e, h * d), "lambda_proj": (h, e)}
    else:
        shapes = {"q_proj": (2 * h * d, e), "k_proj": (2 * h_kv * d, e),
                  "v_proj": (2 * h_kv * d, e), "out_proj": (e, 2 * h * d)}
    weights = {}
    for name, (out_features, in_features) in shapes.items():
        bound = in_features ** -0.5
        weights[name + ".weight"] = (torch.rand(out_features, in_features, generator=generator)
                                     * 2 - 1) * bound
        if cfg.get("bias") and name != "lambda_proj":
            weights[name + ".bias"] = (torch.rand(out_features, generator=generator) * 2 - 1) * bound
    if cfg["block"] == "diff" and cfg["lambda_mode"] != "v2":
        shape = (h, d) if cfg["lambda_mode"] == "per-head" else (d,)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            weights[name] = torch.randn(*shape, generator=generator) * 0.1
        weights["subln.weight"] = 1 + 0.25 * (torch.rand(2 * d, generator=generator) * 2 - 1)
    return weights


def run_block(cfg, weights, x):
    if cfg["block"] == "standard":
        return standard_block(cfg, weights, x)
    if cfg["lambda_mode"] == "v2":
        return diff_block_v2(cfg, weights, x)
    return diff_block_v1(cfg, weights, x)


def resolve(cfg):
    cfg = dict(cfg)
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("layer", 1)
    cfg.setdefault("prefix", "")
    per_head_width = 1 if cfg["block"] == "standard" else 2
    if not cfg.get("head_dim"):
        cfg["head_dim"] = EMBED // (per_head_width * cfg["heads"])
    cfg["embed_dim"] = EMBED
    return cfg


def save_safetensors(path, tensors, metadata):
    """The safetensors format: u64 little-endian header length, JSON header (names sorted,
    padded with spaces to 8 bytes), then the row-major little-endian data."""
    dtypes = {torch.float32: "F32", torch.float64: "F64"}
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for index, (name, raw_cfg) in enumerate(FIXTURES.items()):
        cfg = resolve(raw_cfg)
        generator = torch.Generator().manual_seed(1000 + index)
        weights = make_weights(cfg, generator)
        x = torch.randn(BATCH, TOKENS, EMBED, generator=generator)
        with torch.no_grad():
            y = run_block(cfg, weights, x)
            y64 = run_block(cfg, {k: v.double() for k, v in weights.items()}, x.double())
        tensors = {cfg["prefix"] + k: v for k, v in weights.items()}
        tensors.update({"x": x, "y": y.float(), "y_f64": y64})
        metadata_cfg = {k: v for k, v in cfg.items() if k != "bias"}
        metadata_cfg["bias"] = bool(cfg.get("bias"))
        path = os.path.join(OUT_DIR, name + ".safetensors")
        save_safetensors(path, tensors, {"config": json.dumps(metadata_cfg, sort_keys=True),
                                         "generator": "scripts/make_fixtures.py",
                                         "torch": torch.__version__})
        err = (y.double() - y64).abs().max().item()
        print(f"{name}: {os.path.getsize(path)} bytes, max|y| = {y64.abs().max().item():.3f}, "
              f"max|y_f32 - y_f64| = {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
