#pragma once
/// \file
/// AttentionOptions: the knobs shared by every attention kernel.

#include <cstddef>

#include "diffattn/tensor.hpp"

namespace diffattn {

/// Options for softmax_attention and diff_attention. A plain aggregate:
/// `AttentionOptions<float> options; options.causal = true;`.
template <class T>
struct AttentionOptions {
  /// Multiplies q·kᵀ; 0 means 1/√D (D = the q/k width). Must be finite.
  double scale = 0;
  /// Query i sees keys j <= i + (Nk − Nq): bottom-right aligned, as when decoding
  /// with a KV cache. Rows that see no key give zeros.
  bool causal = false;
  /// Optional additive mask [B|1, Hq|1, Nq|1, Nk] added to the scaled logits; an
  /// extent of 1 (or a stride of 0) broadcasts. −inf masks a key. Empty view: no mask.
  TensorView<const T, 4> mask{};
  /// Worker threads; 0 means all cores. Results do not depend on it.
  int threads = 0;
  /// Cap on the scratch memory of one call, all threads together (bytes). Differential
  /// attention's two-pass method needs rows × Nk per thread; when even one tile's does
  /// not fit, it streams instead (1.5× the FLOPs, O(tile) memory). The standard kernel
  /// needs O(threads × tile) only and stays far below the default. The calling thread
  /// keeps its scratch for later calls; diffattn::release_scratch() frees it.
  std::size_t workspace_limit = std::size_t{64} << 20;
};

}  // namespace diffattn
