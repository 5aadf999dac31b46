//! The host KV cache (the CPU kernel reads it in place; a step copies only its own keys and
//! values) gives the same numbers, bit for bit, as the tensor cache that concatenates each
//! step (the path before it, and the one other devices take): greedy tokens, logits and
//! attention entropy of the needle task's decoding, and chunked feeding with entropy.

use burn::tensor::Device;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::{
    AttentionBlocks, GreedyOptions, KvCache, Llama, greedy_decode, ids_tensor, load_llama,
};

use super::fixture::{Reference, dir};

/// Greedy decoding as `greedy_decode` does it, on a cache that keeps tensors.
fn greedy_on_tensors(model: &Llama, prompt: &[u32], new: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let device = Device::flex();
    let n = prompt.len();
    let mut cache = KvCache::on_tensors(model.config().num_hidden_layers);
    let ids = ids_tensor(&[prompt[..n - 1].to_vec()], &device).unwrap();
    model
        .forward_cached_hidden(ids, &mut cache, None, Some(n))
        .unwrap();
    let (mut tokens, mut logits, mut entropy) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = prompt[n - 1];
    for _ in 0..new {
        let ids = ids_tensor(&[vec![next]], &device).unwrap();
        let (l, e) = model
            .forward_cached(ids, &mut cache, Some(AttentionBlocks::default()))
            .unwrap();
        let l = to_f32_vec(l);
        // First maximum, as greedy_decode.
        let mut best = 0;
        for (i, x) in l.iter().enumerate() {
            if *x > l[best] {
                best = i;
            }
        }
        next = best as u32;
        tokens.push(next);
        logits.extend(l);
        entropy.extend(to_f32_vec(e.unwrap()));
    }
    (tokens, logits, entropy)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn host_cache_decodes_bit_for_bit_as_the_tensor_cache() {
    let device = Device::flex();
    // dynamic: the RoPE length of the prompt matters; longrope: long factors past 64.
    for rope in ["default", "dynamic", "longrope"] {
        let model = load_llama(&dir(rope), &device).unwrap();
        let r = Reference::load(rope);
        let prompt = r.ids("long.input_ids")[..90].to_vec();
        let new = 12;
        let out = greedy_decode(
            &model,
            &prompt,
            &GreedyOptions {
                max_new_tokens: new,
                stop_tokens: vec![],
                record_logits: true,
                record_entropy: true,
            },
        )
        .unwrap();
        let (tokens, logits, entropy) = greedy_on_tensors(&model, &prompt, new);
        assert_eq!(out.tokens, tokens, "{rope}: tokens");
        let got: Vec<f32> = out.logits.into_iter().flatten().collect();
        assert_eq!(bits(&got), bits(&logits), "{rope}: logits");
        let got: Vec<f32> = out.entropy.into_iter().flatten().flatten().collect();
        assert_eq!(bits(&got), bits(&entropy), "{rope}: entropy");
    }
}

#[test]
fn host_cache_feeds_chunks_bit_for_bit_as_the_tensor_cache() {
    let device = Device::flex();
    let model = load_llama(&dir("yarn"), &device).unwrap();
    let r = Reference::load("yarn");
    let ids = r.ids("long.input_ids");
    let layers = model.config().num_hidden_layers;
    // A small reservation so that the host buffers grow (and copy) on the way.
    let mut host = KvCache::new(layers).reserving(20);
    let mut tensors = KvCache::on_tensors(layers);
    let mut pos = 0;
    for (i, n) in [33, 1, 17, 1, 1, 40, 5].into_iter().enumerate() {
        let part = ids_tensor(&[ids[pos..pos + n].to_vec()], &device).unwrap();
        // Entropy on every other chunk (the chunked entropy pass); the rest the plain kernel.
        let blocks = (i % 2 == 0).then_some(AttentionBlocks { query: 8, key: 16 });
        let rope_len = Some(ids.len());
        let (h1, e1) = model
            .forward_cached_hidden(part.clone(), &mut host, blocks, rope_len)
            .unwrap();
        let (h2, e2) = model
            .forward_cached_hidden(part, &mut tensors, blocks, rope_len)
            .unwrap();
        assert_eq!(
            bits(&to_f32_vec(h1)),
            bits(&to_f32_vec(h2)),
            "hidden at {pos}"
        );
        assert_eq!(
            e1.map(|e| bits(&to_f32_vec(e))),
            e2.map(|e| bits(&to_f32_vec(e))),
            "entropy at {pos}"
        );
        pos += n;
    }
    assert_eq!((host.len(), tensors.len()), (pos, pos));
}
