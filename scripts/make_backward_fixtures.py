#!/usr/bin/python3
"""Writes tests/fixtures/backward/*.safetensors: the gradients of standard and
differential attention computed by PyTorch autograd, for tests/test_backward_fixtures.cpp.

Attention is written out with plain PyTorch ops (scaled q·kᵀ, the causal mask, an
explicit softmax, P·V; no SDPA), with the library's conventions: q [B, Hq, Nq, D],
k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv]; query head h reads kv head h // (Hq / Hkv); causal
is bottom-right aligned (query i sees keys j <= i + Nk − Nq) and a row that sees no key
gives zeros; scale 0 means 1/√D. Differential attention is
out = (softmax(s·q1·k1ᵀ) − λ·softmax(s·q2·k2ᵀ))·v, with λ per head [Hq|1] or per token
[B, Hq, Nq]. The loss is sum(out · dout) for a random dout.

Inputs are drawn in float32 and stored in float32; the forward and backward run in
float64 on those values upcast, so the stored gradients are the exact gradients of the
float32 inputs up to float64 rounding. Each file holds
  the inputs    q, k, v (standard) or q1, q2, k1, k2, v, lambda (differential; one k
                when the keys are shared, k1 = k2 = k), and dout, all float32
  out           the forward output, float64
  d<input>      each input's gradient, float64 (dk for shared keys is the sum of both
                maps' key gradients, as autograd gives for one tensor used twice)
and "__metadata__" with the case's configuration as JSON under "config" (causal, the
scale passed (0 = default) and the one used, the λ mode, layer and λ_init, shared_k, the
shapes). The reparametrized case (lambda_mode "reparam") stores instead of lambda the
four learned vectors lambda_q1, lambda_k1, lambda_q2, lambda_k2 [Hq, d_λ] (float32) and
their gradients, plus lambda (the λ they give) and dlambda (∂loss/∂λ), both float64,
to tell a wrong attention gradient from a wrong reparametrization gradient.

Run with Debian's PyTorch (no pip packages needed):
    apt-get install -y python3-torch && /usr/bin/python3 scripts/make_backward_fixtures.py
Seeds are fixed; a different PyTorch version may draw different random numbers, so the
files may change when regenerated, but they stay self-consistent.
"""

import json
import os
import sys

import torch

# The blocks' fixture script: the λ_init schedule and the safetensors writer.
from make_fixtures import lambda_init, save_safetensors

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "backward")

# name -> configuration. lambda_mode: "none" (standard attention), "reparam" (per head,
# λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init(layer)), "per_head" (a leaf of lambda_shape,
# [Hq] or [1]) or "per_token" (a leaf [B, Hq, Nq] in (0, 1), as sigmoid(x·w) gives).
FIXTURES = {
    "standard": dict(
        batch=2, q_heads=2, kv_heads=2, q_len=8, k_len=8, dim=8, v_dim=8, causal=False,
        lambda_mode="none"),
    "standard_gqa_causal": dict(
        batch=1, q_heads=4, kv_heads=2, q_len=7, k_len=12, dim=16, v_dim=8, causal=True,
        lambda_mode="none"),
    "diff_reparam_gqa_causal": dict(
        batch=2, q_heads=4, kv_heads=2, q_len=6, k_len=10, dim=8, v_dim=8, causal=True,
        lambda_mode="reparam", layer=3, lambda_dim=8),
    "diff_per_token_shared_k": dict(
        batch=2, q_heads=2, kv_heads=1, q_len=8, k_len=8, dim=8, v_dim=8, causal=False,
        scale=0.2, lambda_mode="per_token", shared_k=True),
    # Nq > Nk with causal: queries 0..3 see no key, so their rows get zero gradient and add
    # nothing to dk, dv or dλ; λ [1] is shared by both heads, so dλ sums over them.
    "diff_causal_empty_rows": dict(
        batch=1, q_heads=2, kv_heads=2, q_len=10, k_len=6, dim=4, v_dim=4, causal=True,
        lambda_mode="per_head", lambda_shape=[1]),
}


def attention_weights(q, k, scale, causal):
    """softmax(scale·q·kᵀ + mask) over the keys, kv heads repeated for GQA; rows that see
    no key are zero (and so pass no gradient back)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = scale * torch.matmul(q, k.transpose(-1, -2))
    n_q, n_k = logits.shape[-2], logits.shape[-1]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool)
    if causal:
        allowed = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)
    sees_a_key = allowed.any(dim=-1, keepdim=True)
    # An empty row is given every key (so its softmax is finite) and then zeroed.
    allowed = allowed | ~sees_a_key
    logits = logits.masked_fill(~allowed, float("-inf"))
    # The max is a constant shift: detached, so autograd differentiates the softmax alone.
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True) * sees_a_key.to(logits.dtype)


def standard_attention(t, cfg):
    p = attention_weights(t["q"], t["k"], cfg["scale_used"], cfg["causal"])
    v = t["v"].repeat_interleave(cfg["q_heads"] // cfg["kv_heads"], dim=1)
    return torch.matmul(p, v)


def reparam_lambda(t, cfg):
    """[Hq]: exp(λq1·λk1) − exp(λq2·λk2) + λ_init, one λ per head."""
    lam1 = torch.exp(torch.sum(t["lambda_q1"] * t["lambda_k1"], dim=-1))
    lam2 = torch.exp(torch.sum(t["lambda_q2"] * t["lambda_k2"], dim=-1))
    return lam1 - lam2 + cfg["lambda_init"]


def diff_attention(t, cfg, lam):
    """lam is [Hq|1] (per head) or [B, Hq, Nq] (per token)."""
    k1 = t["k"] if cfg["shared_k"] else t["k1"]
    k2 = t["k"] if cfg["shared_k"] else t["k2"]
    p1 = attention_weights(t["q1"], k1, cfg["scale_used"], cfg["causal"])
    p2 = attention_weights(t["q2"], k2, cfg["scale_used"], cfg["causal"])
    lam = lam.view(1, -1, 1, 1) if lam.dim() == 1 else lam.unsqueeze(-1)
    v = t["v"].repeat_interleave(cfg["q_heads"] // cfg["kv_heads"], dim=1)
    return torch.matmul(p1 - lam * p2, v)


def make_inputs(cfg, generator):
    """The float32 inputs (the leaves of the graph) and dout, by name."""
    b, hq, hkv = cfg["batch"], cfg["q_heads"], cfg["kv_heads"]
    nq, nk, d, dv = cfg["q_len"], cfg["k_len"], cfg["dim"], cfg["v_dim"]

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=generator) * std

    # Logits of a few units: the softmax is neither flat nor one-hot.
    t = {}
    if cfg["lambda_mode"] == "none":
        t["q"] = randn(b, hq, nq, d, std=1.5)
        t["k"] = randn(b, hkv, nk, d)
    else:
        t["q1"] = randn(b, hq, nq, d, std=1.5)
        t["q2"] = randn(b, hq, nq, d, std=1.5)
        if cfg["shared_k"]:
            t["k"] = randn(b, hkv, nk, d)
        else:
            t["k1"] = randn(b, hkv, nk, d)
            t["k2"] = randn(b, hkv, nk, d)
    t["v"] = randn(b, hkv, nk, dv)
    if cfg["lambda_mode"] == "reparam":
        # The reference code draws these from normal(0, 0.1); 0.25 gives dot products
        # of a few tenths, so that λ differs from λ_init by more than rounding.
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            t[name] = randn(hq, cfg["lambda_dim"], std=0.25)
    elif cfg["lambda_mode"] == "per_head":
        t["lambda"] = (torch.rand(*cfg["lambda_shape"], generator=generator) * 2 - 1) * 0.8
    elif cfg["lambda_mode"] == "per_token":
        t["lambda"] = torch.sigmoid(randn(b, hq, nq, std=2.0))
    dout = randn(b, hq, nq, dv)
    return t, dout


def run(cfg, inputs, dout, dtype):
    """Forward and backward in `dtype` from the float32 values: (out, gradients by input
    name, extra tensors: λ and ∂loss/∂λ of the reparametrized case)."""
    # clone(): for float32, to() would return the input itself, and make it a leaf.
    leaves = {name: x.to(dtype).clone().requires_grad_() for name, x in inputs.items()}
    extra = {}
    if cfg["lambda_mode"] == "none":
        out = standard_attention(leaves, cfg)
    else:
        if cfg["lambda_mode"] == "reparam":
            lam = reparam_lambda(leaves, cfg)
            lam.retain_grad()
        else:
            lam = leaves["lambda"]
        out = diff_attention(leaves, cfg, lam)
    torch.sum(out * dout.to(dtype)).backward()
    if cfg["lambda_mode"] == "reparam":
        extra = {"lambda": lam.detach(), "dlambda": lam.grad}
    grads = {"d" + name: x.grad for name, x in leaves.items()}
    return out.detach(), grads, extra


def resolve(cfg):
    cfg = dict(cfg)
    cfg.setdefault("scale", 0.0)
    cfg.setdefault("shared_k", False)
    cfg.setdefault("layer", 0)
    cfg["scale_used"] = cfg["scale"] if cfg["scale"] else cfg["dim"] ** -0.5
    cfg["lambda_init"] = lambda_init(cfg["layer"]) if cfg["lambda_mode"] == "reparam" else 0.0
    return cfg


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for index, (name, raw_cfg) in enumerate(FIXTURES.items()):
        cfg = resolve(raw_cfg)
        generator = torch.Generator().manual_seed(2000 + index)
        inputs, dout = make_inputs(cfg, generator)
        out64, grads64, extra64 = run(cfg, inputs, dout, torch.float64)
        _, grads32, _ = run(cfg, inputs, dout, torch.float32)

        tensors = dict(inputs)
        tensors["dout"] = dout
        tensors["out"] = out64
        tensors.update(grads64)
        tensors.update(extra64)
        path = os.path.join(OUT_DIR, name + ".safetensors")
        save_safetensors(path, tensors, {"config": json.dumps(cfg, sort_keys=True),
                                         "generator": "scripts/make_backward_fixtures.py",
                                         "torch": torch.__version__})
        # PyTorch's own float32 gradients against the float64 ones, relative to each
        # gradient's largest element: the scale of a float32 backward's rounding.
        errors = ", ".join(
            f"{g} {(grads32[g].double() - grads64[g]).abs().max().item() / grads64[g].abs().max().item():.1e}"
            for g in sorted(grads64))
        print(f"{name}: {os.path.getsize(path)} bytes; torch float32 vs float64, "
              f"max|err| / max|grad|: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
