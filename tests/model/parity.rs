//! Parity with Hugging Face transformers for all seven RoPE types at a short length (within
//! the original 64) and a long one (160): inv_freq (1e-6 relative), cos/sin, logits, NLL,
//! attention probabilities and entropy (1e-4 absolute), the distance profile, greedy decoding
//! with the KV cache against HF `generate`, and cached decoding against full forwards.

use burn::tensor::Device;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::rope::cos_sin;
use ropelens::model::{
    AttentionBlocks, GreedyOptions, KvCache, Llama, greedy_decode, ids_tensor, load_llama,
};

use super::fixture::{Reference, dir, max_abs, max_rel};

const TOL: f64 = 1e-4;

fn check_length(model: &Llama, r: &Reference, tag: &str, device: &Device) {
    let c = model.config();
    let ids = r.ids(&format!("{tag}.input_ids"));
    let t = ids.len();
    let x = ids_tensor(std::slice::from_ref(&ids), device).unwrap();

    let freqs = c.rope.frequencies(c.head_dim, c.max_position_embeddings, t);
    let rel = max_rel(&freqs.inv_freq, r.values(&format!("{tag}.inv_freq")));
    assert!(rel <= 1e-6, "{tag} inv_freq rel diff {rel:e}");
    let (cos, sin) = cos_sin(&freqs, 0..t);
    let d = max_abs(&cos, r.values(&format!("{tag}.cos")));
    assert!(d <= 1e-5, "{tag} cos diff {d:e}");
    let d = max_abs(&sin, r.values(&format!("{tag}.sin")));
    assert!(d <= 1e-5, "{tag} sin diff {d:e}");

    let logits = to_f32_vec(model.forward(x.clone()).unwrap());
    let d = max_abs(&logits, r.values(&format!("{tag}.logits")));
    assert!(d <= TOL, "{tag} logits diff {d:e}");

    let nll = to_f32_vec(model.nll(x.clone(), 7).unwrap());
    let d = max_abs(&nll, r.values(&format!("{tag}.nll")));
    assert!(d <= TOL, "{tag} nll diff {d:e}");

    // Small blocks so that the long input spans several query and key blocks.
    let blocks = AttentionBlocks { query: 48, key: 40 };
    let out = model.forward_entropy(x.clone(), blocks).unwrap();
    let d = max_abs(
        &to_f32_vec(model.head(out.hidden.clone())),
        r.values(&format!("{tag}.logits")),
    );
    assert!(d <= TOL, "{tag} entropy-forward logits diff {d:e}");
    let nll = to_f32_vec(model.nll_from_hidden(out.hidden, x.clone(), 64).unwrap());
    let d = max_abs(&nll, r.values(&format!("{tag}.nll")));
    assert!(d <= TOL, "{tag} entropy-forward nll diff {d:e}");
    // [layers, 1, heads, t] vs [layers, heads, t]
    let d = max_abs(
        &to_f32_vec(out.entropy),
        r.values(&format!("{tag}.entropy")),
    );
    assert!(d <= TOL, "{tag} entropy diff {d:e}");

    let (shape, want) = r.get(&format!("{tag}.probs"));
    let rows = shape[2];
    let probs = model.attention_probs(x.clone()).unwrap(); // [layers, 1, heads, t, t]
    let probs = to_f32_vec(probs.narrow(3, t - rows, rows));
    let d = max_abs(&probs, want);
    assert!(d <= TOL, "{tag} probs diff {d:e}");

    let edges: Vec<usize> = r.meta["distance_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let prof = model.attention_distance(x, &edges, blocks).unwrap();
    // The same pass's entropy: [layers][1, heads, t] vs [layers, heads, t]
    let entropy: Vec<f32> = prof.entropy.iter().flatten().copied().collect();
    let d = max_abs(&entropy, r.values(&format!("{tag}.entropy")));
    assert!(d <= TOL, "{tag} distance-pass entropy diff {d:e}");
    let mean: Vec<f32> = prof
        .mean()
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v as f32)
        .collect();
    let d = max_abs(&mean, r.values(&format!("{tag}.distance")));
    assert!(d <= 1e-5, "{tag} distance diff {d:e}");
}

fn check_generation(model: &Llama, r: &Reference) {
    let prompt = r.ids("gen.prompt");
    let want = r.ids("gen.tokens");
    let out = greedy_decode(
        model,
        &prompt,
        &GreedyOptions {
            max_new_tokens: want.len(),
            stop_tokens: vec![],
            record_logits: true,
            record_entropy: true,
        },
    )
    .unwrap();
    assert_eq!(out.tokens, want, "greedy tokens differ from HF generate");
    let logits: Vec<f32> = out.logits.into_iter().flatten().collect();
    let d = max_abs(&logits, r.values("gen.scores"));
    assert!(d <= TOL, "generate logits diff {d:e}");
    let c = model.config();
    assert_eq!(out.entropy.len(), want.len());
    assert!(out.entropy.iter().all(|s| {
        s.len() == c.num_hidden_layers
            && s.iter()
                .all(|h| h.len() == c.num_attention_heads && h.iter().all(|e| *e >= 0.0))
    }));
}

/// Token-by-token decoding with the cache reproduces a full forward's logits and entropy.
fn check_cache_vs_full(model: &Llama, r: &Reference, device: &Device) {
    let ids: Vec<u32> = r.ids("long.input_ids")[..40].to_vec();
    let x = ids_tensor(std::slice::from_ref(&ids), device).unwrap();
    let full = model
        .forward_entropy(x, AttentionBlocks::default())
        .unwrap();
    let full_logits = to_f32_vec(model.head(full.hidden));
    let full_ent = to_f32_vec(full.entropy); // [layers, 1, heads, 40]
    let c = model.config();
    let (layers, heads, v) = (c.num_hidden_layers, c.num_attention_heads, c.vocab_size);
    let mut cache = KvCache::new(layers);
    // A 10-token prefill, then single tokens.
    let mut pos = 0;
    while pos < ids.len() {
        let n = if pos == 0 { 10 } else { 1 };
        let step = ids_tensor(&[ids[pos..pos + n].to_vec()], device).unwrap();
        let (logits, ent) = model
            .forward_cached(step, &mut cache, Some(AttentionBlocks { query: 4, key: 8 }))
            .unwrap();
        let logits = to_f32_vec(logits);
        let ent = to_f32_vec(ent.unwrap()); // [layers, 1, heads, n]
        for i in 0..n {
            let want: Vec<f64> = full_logits[(pos + i) * v..(pos + i + 1) * v]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let d = max_abs(&logits[i * v..(i + 1) * v], &want);
            assert!(d <= 1e-5, "cached logits at {} differ by {d:e}", pos + i);
            for l in 0..layers {
                for h in 0..heads {
                    let got = ent[(l * heads + h) * n + i];
                    let want = full_ent[(l * heads + h) * 40 + pos + i];
                    assert!((got - want).abs() <= 1e-5, "cached entropy at {}", pos + i);
                }
            }
        }
        pos += n;
    }
    assert_eq!(cache.len(), 40);
}

fn parity(rope: &str) {
    let device = Device::flex();
    let model = load_llama(&dir(rope), &device).unwrap();
    assert_eq!(model.config().rope.rope_type(), rope);
    let r = Reference::load(rope);
    check_length(&model, &r, "short", &device);
    check_length(&model, &r, "long", &device);
    check_generation(&model, &r);
    check_cache_vs_full(&model, &r, &device);
}

#[test]
fn parity_default() {
    parity("default");
}

#[test]
fn parity_linear() {
    parity("linear");
}

#[test]
fn parity_ntk() {
    parity("ntk");
}

#[test]
fn parity_dynamic() {
    parity("dynamic");
}

#[test]
fn parity_yarn() {
    parity("yarn");
}

#[test]
fn parity_llama3() {
    parity("llama3");
}

#[test]
fn parity_longrope() {
    parity("longrope");
}
