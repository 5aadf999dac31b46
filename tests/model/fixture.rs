//! Reading the committed reference outputs of transformers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// Directory of one rope type's fixture (checkpoint + reference outputs).
pub fn dir(rope: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(rope)
}

/// Arrays of `reference.safetensors`, all as f64 (ids too), with shapes.
pub struct Reference {
    arrays: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub meta: serde_json::Value,
}

/// Every array of a safetensors file, as f64 (ids too), with shapes.
pub fn read_arrays(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut arrays = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        arrays.insert(name, (view.shape().to_vec(), values));
    }
    arrays
}

/// Largest |a - b| over the largest |b| (at least 1).
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

impl Reference {
    /// One rope type's forward-parity fixture (tests/fixtures/hf/<rope>).
    pub fn load(rope: &str) -> Self {
        Self::load_dir(&dir(rope))
    }

    /// `reference.safetensors` and `reference.json` of directory `d`.
    pub fn load_dir(d: &Path) -> Self {
        let arrays = read_arrays(&d.join("reference.safetensors"));
        let meta =
            serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap())
                .unwrap();
        Reference { arrays, meta }
    }

    /// The arrays of one safetensors file (no metadata).
    pub fn from_file(path: &Path) -> Self {
        Reference {
            arrays: read_arrays(path),
            meta: serde_json::Value::Null,
        }
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.arrays
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no `{name}`"))
    }

    pub fn values(&self, name: &str) -> &[f64] {
        &self.get(name).1
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.values(name).iter().map(|&x| x as u32).collect()
    }
}

/// Largest absolute difference.
pub fn max_abs(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// Largest relative difference.
pub fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / w.abs().max(1e-30))
        .fold(0.0, f64::max)
}
