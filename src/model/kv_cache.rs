//! The KV cache of incremental forwards (greedy decoding, the chunked entropy pass): keys and
//! values of earlier positions, per layer, after RoPE.
//!
//! On the CPU kernel's device ([`super::flash::available`]) each layer keeps host buffers laid
//! out `[batch, kv_heads, capacity, head_dim]` and appends new positions in place, so a decoding
//! step copies only its own keys and values; the kernel reads the first `len` positions of each
//! head's block (`flash_attention_strided`). Elsewhere (CUDA, autodiff) a layer keeps burn
//! tensors `[batch, kv_heads, len, head_dim]` and concatenates. Both hold the same numbers and
//! give the same attention, bit for bit (tests/model/kv_cache.rs).

use burn::tensor::Tensor;

/// Keys and values of earlier positions, per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(super) layers: Vec<Option<LayerKv>>,
    pub(super) len: usize,
    /// Whether layers may keep host buffers (false: always tensors).
    pub(super) host: bool,
    /// Positions to allocate host buffers for on their first use.
    reserve: usize,
}

/// One layer's cached keys and values.
#[derive(Debug, Clone)]
// One per layer and cache: the size of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum LayerKv {
    /// `(k, v)`, each `[batch, kv_heads, len, head_dim]`.
    Tensors(Tensor<4>, Tensor<4>),
    /// Host buffers for the CPU kernel.
    Host(HostKv),
}

/// Host keys and values `[batch, kv_heads, capacity, head_dim]`, positions `0..len` filled.
#[derive(Debug, Clone)]
pub(super) struct HostKv {
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// `batch * kv_heads` blocks.
    blocks: usize,
    head_dim: usize,
    /// Positions allocated per block: the kernel's key stride.
    pub(super) capacity: usize,
    pub(super) len: usize,
}

impl HostKv {
    pub(super) fn new(blocks: usize, head_dim: usize, capacity: usize) -> Self {
        let size = blocks * capacity * head_dim;
        HostKv {
            k: vec![0.0; size],
            v: vec![0.0; size],
            blocks,
            head_dim,
            capacity,
            len: 0,
        }
    }

    /// Append `t` positions of each block from `k`, `v` `[blocks, t, head_dim]`, growing the
    /// capacity by at least a quarter when full (one copy of what is cached).
    pub(super) fn append(&mut self, k: &[f32], v: &[f32], t: usize) {
        let d = self.head_dim;
        assert_eq!(k.len(), self.blocks * t * d, "new keys");
        assert_eq!(v.len(), k.len(), "new values");
        if self.len + t > self.capacity {
            let capacity = (self.len + t).max(self.capacity + self.capacity / 4);
            let mut grown = HostKv::new(self.blocks, d, capacity);
            for (dst, src) in [(&mut grown.k, &self.k), (&mut grown.v, &self.v)] {
                for b in 0..self.blocks {
                    let (from, to) = (b * self.capacity * d, b * capacity * d);
                    dst[to..to + self.len * d].copy_from_slice(&src[from..from + self.len * d]);
                }
            }
            grown.len = self.len;
            *self = grown;
        }
        for (dst, src) in [(&mut self.k, k), (&mut self.v, v)] {
            for b in 0..self.blocks {
                let to = (b * self.capacity + self.len) * d;
                dst[to..to + t * d].copy_from_slice(&src[b * t * d..(b + 1) * t * d]);
            }
        }
        self.len += t;
    }
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers (host buffers on the CPU kernel's
    /// device, tensors elsewhere).
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
            host: true,
            reserve: 0,
        }
    }

    /// An empty cache that keeps burn tensors on every device and concatenates each step (what
    /// devices without the CPU kernel do; tests check that both caches give the same numbers).
    pub fn on_tensors(num_layers: usize) -> Self {
        KvCache {
            host: false,
            ..KvCache::new(num_layers)
        }
    }

    /// Allocate host buffers for `positions` in all, where known (the whole window, or the
    /// prompt plus the tokens to generate), so that appending never copies the cache.
    pub fn reserving(mut self, positions: usize) -> Self {
        self.reserve = positions;
        self
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `li`'s host buffers with `t` new positions of `k`, `v` `[blocks, t, head_dim]`
    /// appended.
    pub(super) fn append_host(
        &mut self,
        li: usize,
        k: &[f32],
        v: &[f32],
        (blocks, t, head_dim): (usize, usize, usize),
    ) -> &HostKv {
        let reserve = self.reserve.max(self.len + t);
        let layer = self.layers[li]
            .get_or_insert_with(|| LayerKv::Host(HostKv::new(blocks, head_dim, reserve)));
        let LayerKv::Host(host) = layer else {
            panic!("KV cache layer {li} holds tensors, not host buffers");
        };
        assert_eq!(host.len, self.len, "KV cache layer {li} out of step");
        host.append(k, v, t);
        host
    }
}

#[cfg(test)]
mod tests {
    use super::HostKv;

    #[test]
    fn appending_grows_and_keeps_every_position() {
        // 2 blocks, head_dim 3, capacity 2: the third and fifth positions grow it.
        let mut kv = HostKv::new(2, 3, 2);
        let mut want: Vec<Vec<f32>> = vec![Vec::new(); 2];
        for (step, t) in [(0, 1), (1, 2), (2, 1), (3, 3)] {
            let new: Vec<f32> = (0..2 * t * 3).map(|i| (step * 100 + i) as f32).collect();
            let neg: Vec<f32> = new.iter().map(|x| -x).collect();
            kv.append(&new, &neg, t);
            for (b, w) in want.iter_mut().enumerate() {
                w.extend_from_slice(&new[b * t * 3..(b + 1) * t * 3]);
            }
        }
        assert_eq!(kv.len, 7);
        assert!(kv.capacity >= 7);
        for (b, w) in want.iter().enumerate() {
            let at = b * kv.capacity * 3;
            assert_eq!(&kv.k[at..at + 21], &w[..]);
            let neg: Vec<f32> = w.iter().map(|x| -x).collect();
            assert_eq!(&kv.v[at..at + 21], &neg[..]);
        }
    }
}
