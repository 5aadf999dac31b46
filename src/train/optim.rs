//! AdamW over the model's parameters by name, with global-norm gradient clipping, gradient
//! accumulation, per-parameter weight decay and frozen groups.
//!
//! burn's `ModuleOptimizer` keys its state by `ParamId`, a random id that a model reloaded from
//! safetensors does not keep, and clips gradients per tensor rather than by the global norm. A
//! resumable run needs state that survives a reload, so this optimizer keys everything by the
//! parameter's module path (`layers.0.self_attn.q_proj.weight`) and saves its moments as a
//! safetensors file. The update is PyTorch's `AdamW` (decoupled decay, bias-corrected moments,
//! `eps` added to the corrected root of the second moment).
//!
//! All optimizer tensors live on the plain (non-autodiff) device, flattened to one dimension.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::error::{Result, TrainError};
use super::params::TrainParams;
use crate::model::Llama;
use crate::model::llama::to_f32_vec;

/// Gradients by parameter path, flattened, on the plain device.
#[derive(Debug, Default)]
pub struct Grads {
    by_path: BTreeMap<String, Tensor<1>>,
}

impl Grads {
    /// Add the gradients of `model`'s trainable parameters in `grads` (summing over
    /// micro-batches).
    pub fn accumulate(&mut self, model: &Llama, grads: &mut Gradients) {
        let mut v = GradCollector {
            path: Vec::new(),
            grads,
            out: &mut self.by_path,
        };
        model.visit(&mut v);
    }

    /// Add the gradients of another shard of the same batch (same model, same paths).
    pub fn merge(&mut self, other: Grads) {
        for (path, g) in other.by_path {
            let sum = match self.by_path.remove(&path) {
                Some(prev) => prev + g,
                None => g,
            };
            self.by_path.insert(path, sum);
        }
    }

    /// The global L2 norm over every gradient, summed in f64 on the host in path and element
    /// order: a fixed order, so the norm (and the clipping it decides) does not depend on how a
    /// parallel reduction would split the sum over the threads there are.
    pub fn norm(&self) -> f64 {
        self.by_path
            .values()
            .map(|g| {
                to_f32_vec(g.clone())
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// Every gradient as (parameter path, flattened values), in path order.
    pub fn values(&self) -> Vec<(String, Vec<f32>)> {
        self.by_path
            .iter()
            .map(|(p, g)| (p.clone(), to_f32_vec(g.clone())))
            .collect()
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

struct GradCollector<'a> {
    path: Vec<String>,
    grads: &'a mut Gradients,
    out: &'a mut BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if let Some(g) = tensor.grad_remove(self.grads) {
            let n = g.shape().num_elements();
            let g = g.reshape([n]);
            let path = self.path.join(".");
            let sum = match self.out.remove(&path) {
                Some(prev) => prev + g,
                None => g,
            };
            self.out.insert(path, sum);
        }
    }
}

/// A visitor that tracks the module path and hands each float parameter to `f`.
struct PathVisitor<F> {
    path: Vec<String>,
    f: F,
}

impl<F: FnMut(&str, usize)> ModuleVisitor for PathVisitor<F> {
    fn enter_module(&mut self, name: &str, _c: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _c: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.val().shape().num_elements();
        (self.f)(&self.path.join("."), n);
    }
}

/// Module paths and element counts of the parameters of `model`, in visiting order.
pub fn param_sizes(model: &Llama) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut v = PathVisitor {
        path: Vec::new(),
        f: |p: &str, n: usize| out.push((p.to_string(), n)),
    };
    model.visit(&mut v);
    out
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW hyper-parameters of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWSettings {
    /// (beta1, beta2).
    pub betas: [f64; 2],
    /// Added to the root of the corrected second moment.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global-norm clipping threshold (0: none).
    pub grad_clip: f64,
}

/// AdamW with state by parameter path.
#[derive(Debug, Clone)]
pub struct AdamW {
    settings: AdamWSettings,
    /// Updates done so far (the bias-correction time).
    step: u64,
    state: BTreeMap<String, Moments>,
    /// Paths that get weight decay.
    decay: HashSet<String>,
}

/// What one optimiser step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor the gradients were scaled by (1 without clipping).
    pub clip_scale: f64,
}

const OPTIM_FORMAT: &str = "ropelens-adamw-1";

impl AdamW {
    /// A fresh optimizer for `model` as `params` configure it.
    pub fn new(params: &TrainParams, model: &Llama) -> Self {
        let decay = param_sizes(model)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| params.is_trainable(p) && params.decays(p))
            .collect();
        AdamW {
            settings: AdamWSettings {
                betas: params.betas,
                eps: params.eps,
                weight_decay: params.weight_decay,
                grad_clip: params.grad_clip,
            },
            step: 0,
            state: BTreeMap::new(),
            decay,
        }
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Whether the parameter at `path` gets weight decay.
    pub fn decays(&self, path: &str) -> bool {
        self.decay.contains(path)
    }

    /// Clip `grads` to the global norm `norm` (computed by [`Grads::norm`], checked finite by
    /// the caller) and update `model` with learning rate `lr`.
    pub fn step(&mut self, model: Llama, grads: Grads, lr: f64, norm: f64) -> (Llama, StepStats) {
        // torch.nn.utils.clip_grad_norm_: scale by min(1, clip / (norm + 1e-6)).
        let clip = self.settings.grad_clip;
        let clip_scale = if clip > 0.0 {
            (clip / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let [b1, b2] = self.settings.betas;
        let mut mapper = Updater {
            path: Vec::new(),
            grads: grads.by_path,
            opt: self,
            lr,
            clip_scale,
            bias1: 1.0 - b1.powi(t),
            bias2: 1.0 - b2.powi(t),
        };
        let model = model.map(&mut mapper);
        (
            model,
            StepStats {
                grad_norm: norm,
                clip_scale,
            },
        )
    }

    /// Write the moments and the step count to `path` (safetensors, f32, tensors `m.<param>`
    /// and `v.<param>`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, mo) in &self.state {
            for (kind, t) in [("m", &mo.m), ("v", &mo.v)] {
                let values = to_f32_vec(t.clone());
                let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                bufs.push((format!("{kind}.{name}"), vec![values.len()], bytes));
            }
        }
        let views = bufs
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| TrainError::checkpoint(path, format!("tensor `{n}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), OPTIM_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        safetensors::tensor::serialize_to_file(views, Some(meta), path)
            .map_err(|e| TrainError::checkpoint(path, format!("cannot write: {e}")))
    }

    /// Read moments and step count written by [`AdamW::save`] onto the plain `device`. Every
    /// saved tensor must belong to a parameter of `model` and have its size.
    pub fn load(&mut self, path: &Path, model: &Llama, device: &Device) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |m: String| TrainError::checkpoint(path, m);
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(OPTIM_FORMAT) {
            return Err(bad(format!(
                "not an optimizer state of this version (format {:?}, expected {OPTIM_FORMAT})",
                meta.get("format")
            )));
        }
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("metadata `step` is missing or not a number".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let sizes: HashMap<String, usize> = param_sizes(model).into_iter().collect();
        if let Some(n) = st.names().into_iter().find(|n| {
            let p = n.split_once('.').map_or("", |(_, p)| p);
            !sizes.contains_key(p)
        }) {
            return Err(bad(format!(
                "tensor `{n}` belongs to no parameter of the model"
            )));
        }
        let read = |key: &str, size: usize| -> Result<Option<Tensor<1>>> {
            let Ok(view) = st.tensor(key) else {
                return Ok(None);
            };
            if view.dtype() != Dtype::F32 || view.shape() != [size] {
                return Err(bad(format!(
                    "tensor `{key}` is {:?} {:?}, expected F32 [{size}]",
                    view.dtype(),
                    view.shape()
                )));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(Some(Tensor::from_data(TensorData::new(v, [size]), device)))
        };
        let mut state = BTreeMap::new();
        for (name, &size) in &sizes {
            match (
                read(&format!("m.{name}"), size)?,
                read(&format!("v.{name}"), size)?,
            ) {
                (Some(m), Some(v)) => {
                    state.insert(name.clone(), Moments { m, v });
                }
                (None, None) => {}
                _ => return Err(bad(format!("parameter `{name}` has only one moment"))),
            }
        }
        self.step = step;
        self.state = state;
        Ok(())
    }
}

struct Updater<'a> {
    path: Vec<String>,
    grads: BTreeMap<String, Tensor<1>>,
    opt: &'a mut AdamW,
    lr: f64,
    clip_scale: f64,
    bias1: f64,
    bias2: f64,
}

impl ModuleMapper for Updater<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some(g) = self.grads.remove(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let settings = &self.opt.settings;
        let [b1, b2] = settings.betas;
        let decay = self.opt.decay.contains(&path) && settings.weight_decay > 0.0;
        let k = UpdateCoefficients {
            clip: (self.clip_scale != 1.0).then_some(self.clip_scale as f32),
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            decay: decay.then_some((1.0 - self.lr * settings.weight_decay) as f32),
            root_bias2: self.bias2.sqrt() as f32,
            eps: settings.eps as f32,
            step_size: (self.lr / self.bias1) as f32,
        };
        let device = g.device();
        let g = to_f32_vec(g);
        let mut p = to_f32_vec(tensor.inner());
        let (mut m, mut v, first) = match self.opt.state.remove(&path) {
            Some(Moments { m, v }) => (to_f32_vec(m), to_f32_vec(v), false),
            None => (vec![0f32; g.len()], vec![0f32; g.len()], true),
        };
        k.apply(&mut p, &g, &mut m, &mut v, first);
        let n = g.len();
        let moments = |x: Vec<f32>| Tensor::from_data(TensorData::new(x, [n]), &device);
        let (m, v) = (moments(m), moments(v));
        self.opt.state.insert(path, Moments { m, v });
        let p = Tensor::<D>::from_data(TensorData::new(p, dims), &device);
        Param::from_mapped_value(id, Tensor::from_inner(p).require_grad(), mapper)
    }
}

/// The scalars of one parameter's AdamW update, as f32 (burn's scalar ops round an f64 scalar
/// to the tensor's f32 first, so these give the same numbers as the tensor formula did).
struct UpdateCoefficients {
    /// Gradient scale of global-norm clipping, if it clips.
    clip: Option<f32>,
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    /// `1 - lr * weight_decay` for a decayed parameter.
    decay: Option<f32>,
    /// `sqrt(1 - b2^t)`.
    root_bias2: f32,
    eps: f32,
    /// `lr / (1 - b1^t)`.
    step_size: f32,
}

/// Elements per parallel task of the update.
const UPDATE_CHUNK: usize = 1 << 15;

impl UpdateCoefficients {
    /// torch's AdamW on host slices, one pass: `g` clipped, the moments
    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2` (just the second terms on the `first`
    /// step), decoupled decay `p *= 1 - lr wd`, then
    /// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], first: bool) {
        use rayon::prelude::*;
        p.par_chunks_mut(UPDATE_CHUNK)
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .zip(g.par_chunks(UPDATE_CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = self.clip.map_or(g[i], |c| g[i] * c);
                    let (gm, gv) = (g * self.one_minus_b1, g * g * self.one_minus_b2);
                    if first {
                        (m[i], v[i]) = (gm, gv);
                    } else {
                        (m[i], v[i]) = (m[i] * self.b1 + gm, v[i] * self.b2 + gv);
                    }
                    let decayed = self.decay.map_or(p[i], |d| p[i] * d);
                    let denom = v[i].sqrt() / self.root_bias2 + self.eps;
                    p[i] = decayed - m[i] / denom * self.step_size;
                }
            });
    }
}

/// A mapper that tracks the module path and hands each float parameter to `f`.
struct PathMapper<F> {
    path: Vec<String>,
    f: F,
}

/// What [`PathMapper`] does to one parameter: keep it, freeze it, or replace its values.
enum Edit {
    Keep,
    Freeze,
    Values(Vec<f32>),
}

impl<F: FnMut(&str, usize) -> Edit> ModuleMapper for PathMapper<F> {
    fn enter_module(&mut self, name: &str, _c: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _c: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = param.val().shape().num_elements();
        match (self.f)(&self.path.join("."), n) {
            Edit::Keep => param,
            Edit::Freeze => param.set_require_grad(false),
            Edit::Values(values) => {
                let (id, tensor, mapper) = param.consume();
                let shape = tensor.shape();
                let device = tensor.device();
                let t = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
                let t = if device.is_autodiff() {
                    t.require_grad()
                } else {
                    t
                };
                Param::from_mapped_value(id, t, mapper)
            }
        }
    }
}

/// A copy of `model` whose trainable parameters are fresh autodiff leaves (same values, same
/// ids, frozen ones untouched). burn's autodiff keeps graphs that share a node in one graph
/// behind one mutex, so shards of a batch differentiated through the same leaves would run
/// their backward passes one at a time; through their own leaves they run in parallel.
pub fn fork_leaves(model: &Llama) -> Llama {
    model.clone().map(&mut LeafForker)
}

struct LeafForker;

impl ModuleMapper for LeafForker {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let leaf = Tensor::from_inner(tensor.inner()).require_grad();
        Param::from_mapped_value(id, leaf, mapper)
    }
}

/// `model` with every parameter outside `params.trainable` frozen (no gradient is computed for
/// it, so a frozen model also trains faster).
pub fn freeze(model: Llama, params: &TrainParams) -> Llama {
    if params.trainable.is_none() {
        return model;
    }
    model.map(&mut PathMapper {
        path: Vec::new(),
        f: |p: &str, _n: usize| {
            if params.is_trainable(p) {
                Edit::Keep
            } else {
                Edit::Freeze
            }
        },
    })
}

/// Overwrite the random weights of a freshly initialised `model` with Normal(0, 0.02) values
/// from a ChaCha8 stream seeded with `seed` (norm weights stay 1, biases 0), in parameter
/// order. burn's own random init draws from a process-wide generator, which concurrent stages
/// would interleave; this one depends on the seed alone.
pub fn seeded_init(model: Llama, seed: u64) -> Llama {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    model.map(&mut PathMapper {
        path: Vec::new(),
        f: |path: &str, n: usize| {
            if path.ends_with("norm.weight") || path.ends_with("bias") {
                return Edit::Keep;
            }
            let mut values = Vec::with_capacity(n + 1);
            while values.len() < n {
                // Box-Muller: two standard normals from two uniforms, u1 in (0, 1].
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let r = (-2.0 * u1.ln()).sqrt();
                let a = 2.0 * std::f64::consts::PI * u2;
                values.push((0.02 * r * a.cos()) as f32);
                values.push((0.02 * r * a.sin()) as f32);
            }
            values.truncate(n);
            Edit::Values(values)
        },
    })
}
