//! Building blocks shared by the decoder architectures: linear maps, RMSNorm, rotary position
//! embeddings, the gated MLP, grouped-query attention and its key/value cache.
//!
//! Numerics follow transformers' reference code where it matters for matching its output:
//! RMSNorm and the RoPE angles are computed in f32 whatever the weight dtype, and the
//! attention softmax runs inside `scaled_dot_product_attention`.
//!
//! For speed at batch 1 on CPUs, where every matrix product is a memory-bound matrix-vector
//! product with its own thread fork/join: q/k/v and gate/up are each loaded as one fused
//! projection (rows concatenated; each output is still one dot product over the same inputs),
//! queries and keys are rotated together, f32 RMSNorm is the fused `rms_norm` op, and a
//! single decoding step attends with the query heads folded onto their key/value head
//! instead of copying the cache `heads / kv_heads` times (see benches/README.md).

use tch::{Kind, Tensor};

use crate::config::{RopeConfig, RopeScaling};
use crate::error::{Result, TorchError};
use crate::weights::Weights;

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as in PyTorch.
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, prefix: &str, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(w.get(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Several projections of the same input as one (their outputs concatenated in order):
    /// one matrix product instead of several, which matters when decoding one token, where
    /// every product is a memory-bound matrix-vector product with its own thread fork/join.
    pub fn load_fused(w: &Weights, prefixes: &[String], in_dim: i64, out_dims: &[i64], bias: bool) -> Result<Linear> {
        let parts: Vec<Linear> = prefixes
            .iter()
            .zip(out_dims)
            .map(|(p, &out)| Linear::load(w, p, in_dim, out, bias))
            .collect::<Result<_>>()?;
        let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0);
        let bias = bias.then(|| Tensor::cat(&parts.iter().map(|l| l.bias.as_ref().unwrap()).collect::<Vec<_>>(), 0));
        Ok(Linear { weight, bias })
    }

    pub fn from_weight(weight: Tensor) -> Linear {
        Linear { weight, bias: None }
    }

    pub fn with_bias(weight: Tensor, bias: Tensor) -> Linear {
        Linear { weight, bias: Some(bias) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Root-mean-square layer norm (Zhang & Sennrich 2019): `x / rms(x) * g`, computed in f32.
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: i64, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: w.get(&format!("{name}.weight"), &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float && self.weight.kind() == Kind::Float {
            // One fused kernel; the same arithmetic as below in f32.
            let dim = *x.size().last().expect("at least 1-d");
            return x.rms_norm([dim], Some(&self.weight), self.eps);
        }
        let x = x.to_kind(Kind::Float);
        let mean_square = x.square().mean_dim(-1, true, Kind::Float);
        let normed = x * (mean_square + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Rotary position embeddings (Su et al. 2021) in the "rotate half" layout of the
/// Hugging Face checkpoints: the first and second halves of each head form the pairs.
pub(crate) struct Rope {
    /// `θ_i` for i in 0..head_dim/2, f32 on the model's device.
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: i64, device: tch::Device) -> Rope {
        let exponents =
            Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(cfg.theta, &exponents).reciprocal();
        let inv_freq = match cfg.scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            } => {
                // Wavelengths longer than the original context are interpolated by `factor`,
                // shorter than old_len/high_freq_factor are kept, and those in between blend
                // smoothly (Llama 3.1's "llama3" rope type).
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * old_len - low_freq_factor) / (high_freq_factor - low_freq_factor);
                let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
        };
        Rope { inv_freq }
    }

    /// `cos` and `sin` of the angles at `positions` (`[rows, len]`, f32), shaped
    /// `[rows, 1, len, head_dim]` to broadcast over the heads of `[rows, heads, len, head_dim]`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let angles = positions.unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&angles, &angles], -1).unsqueeze(1);
        (angles.cos().to_kind(kind), angles.sin().to_kind(kind))
    }

    /// Rotates `x` (`[batch, heads, len, head_dim]`) by the angles of its positions.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x * cos + rotated * sin
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Activation {
    Silu,
    Gelu,
    GeluTanh,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => Err(TorchError::Unsupported(format!("activation function {other:?}"))),
        }
    }

    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
        }
    }
}

/// The gated feed-forward block of Llama-family models (Shazeer 2020's SwiGLU):
/// `down(act(gate(x)) ⊙ up(x))`.
pub(crate) struct GatedMlp {
    /// `gate_proj` and `up_proj` as one projection, `[2 * intermediate, hidden]`.
    gate_up_proj: Linear,
    down_proj: Linear,
    act: Activation,
    intermediate_size: i64,
}

impl GatedMlp {
    pub fn load(w: &Weights, prefix: &str, spec: &DecoderSpec) -> Result<GatedMlp> {
        let (h, i, bias) = (spec.hidden_size, spec.intermediate_size, spec.mlp_bias);
        Ok(GatedMlp {
            gate_up_proj: Linear::load_fused(
                w,
                &[format!("{prefix}.gate_proj"), format!("{prefix}.up_proj")],
                h,
                &[i, i],
                bias,
            )?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), i, h, bias)?,
            act: spec.activation,
            intermediate_size: i,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let gate_up = self.gate_up_proj.forward(x);
        let i = self.intermediate_size;
        let gate = self.act.forward(&gate_up.narrow(-1, 0, i));
        self.down_proj.forward(&(gate * gate_up.narrow(-1, i, i)))
    }
}

/// The shape and options of a Llama-style decoder, filled in from each architecture's config.
#[derive(Debug, Clone)]
pub(crate) struct DecoderSpec {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub activation: Activation,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: i64,
}

impl DecoderSpec {
    pub fn validate(&self) -> Result<()> {
        if self.num_heads <= 0 || self.num_kv_heads <= 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(TorchError::Unsupported(format!(
                "{} attention heads cannot share {} key/value heads evenly",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(TorchError::Unsupported(format!("odd head_dim {}", self.head_dim)));
        }
        Ok(())
    }
}

/// Multi-head attention with grouped key/value heads (Ainslie et al. 2023): each key/value
/// head serves `num_heads / num_kv_heads` query heads; 1 is plain multi-head attention.
pub(crate) struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` as one projection, `[(heads + 2 kv_heads) head_dim, hidden]`.
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    pub fn load(w: &Weights, prefix: &str, spec: &DecoderSpec) -> Result<Attention> {
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let q_out = spec.num_heads * d;
        let kv_out = spec.num_kv_heads * d;
        let names = ["q_proj", "k_proj", "v_proj"].map(|n| format!("{prefix}.{n}"));
        Ok(Attention {
            qkv_proj: Linear::load_fused(w, &names, h, &[q_out, kv_out, kv_out], spec.qkv_bias)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), q_out, h, spec.o_bias)?,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: d,
        })
    }

    /// Queries, keys and values of `x` (`[rows, len, hidden]`), queries and keys rotated:
    /// `[rows, heads, len, head_dim]`, `[rows, kv_heads, len, head_dim]` twice.
    fn project(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, t, _) = x.size3().expect("attention input is [rows, len, hidden]");
        let (nq, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // [b, t, nq + 2 nkv, d] → [b, nq + 2 nkv, t, d]
        let qkv = self.qkv_proj.forward(x).view([b, t, nq + 2 * nkv, d]).transpose(1, 2);
        // Queries and keys rotate together: one set of kernels per layer, not two.
        let qk = Rope::apply(&qkv.narrow(1, 0, nq + nkv), cos, sin);
        (qk.narrow(1, 0, nq), qk.narrow(1, nq, nkv), qkv.narrow(1, nq + nkv, nkv))
    }

    /// Prefill: `x` is `[rows, len, hidden]`, every row starting from an empty cache. `mask`
    /// (`[rows, 1, len, len]`, true where a query may look) is `None` when no row is padded:
    /// then each position attends causally to itself and everything before it. Returns the
    /// output and the keys and values to cache, `[rows, kv_heads, len, head_dim]`.
    pub fn prefill(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> (Tensor, Tensor, Tensor) {
        let (b, t, _) = x.size3().expect("attention input is [rows, len, hidden]");
        let (q, k, v) = self.project(x, cos, sin);
        let group = self.num_heads / self.num_kv_heads;
        let (kr, vr) = (repeat_kv(&k, group), repeat_kv(&v, group));
        let y = Tensor::scaled_dot_product_attention(&q, &kr, &vr, mask, 0.0, mask.is_none(), None, false);
        let y = y.transpose(1, 2).contiguous().view([b, t, self.num_heads * self.head_dim]);
        (self.o_proj.forward(&y), k.contiguous(), v.contiguous())
    }

    /// One decoding step: `x` is `[rows, 1, hidden]`, one new position per row of `cache`;
    /// its key and value are written at column `width` of every row, and it attends to the
    /// row's cached positions and itself. `mask` (`[rows, 1, 1, width + 1]`) is `None` when no
    /// row is padded.
    pub fn decode(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &LayerCache,
        width: i64,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let b = x.size()[0];
        let (nq, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = self.project(x, cos, sin);
        cache.keys.narrow(2, width, 1).copy_(&k);
        cache.values.narrow(2, width, 1).copy_(&v);
        let (k, v) = (cache.keys.narrow(2, 0, width + 1), cache.values.narrow(2, 0, width + 1));
        // The query heads of each key/value head become that head's rows, `[b, nkv, group,
        // d]`: grouped-query attention without copying the keys and values `group` times.
        let q = q.reshape([b, nkv, nq / nkv, d]);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, false);
        self.o_proj.forward(&y.reshape([b, 1, nq * d]))
    }
}

/// `[b, kv_heads, s, d]` → `[b, kv_heads * group, s, d]`, each key/value head repeated for the
/// query heads of its group.
fn repeat_kv(x: &Tensor, group: i64) -> Tensor {
    if group == 1 {
        return x.shallow_clone();
    }
    let (b, h, s, d) = x.size4().expect("[batch, heads, len, head_dim]");
    x.unsqueeze(2).expand([b, h, group, s, d], false).reshape([b, h * group, s, d])
}

/// Keys and values of one layer for every row of a batch, `[rows, kv_heads, capacity,
/// head_dim]` each.
pub(crate) struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

/// The key/value cache of a batch of sequences of different lengths, all layers.
///
/// Rows are right-aligned: row `i` holds its `lens[i]` positions in columns
/// `width - lens[i] .. width`, and the columns before are padding that the attention masks
/// out. `width` is always the longest row's length. A decoding step writes every row's new
/// position at column `width`, so rows that were admitted together or apart, with prompts
/// of any length, step together. Rows join ([`BatchCache::append`]) and leave
/// ([`BatchCache::retain`]) between steps; both copy the cache once. Nothing is ever
/// re-computed to line rows up.
pub(crate) struct BatchCache {
    layers: Vec<LayerCache>,
    lens: Vec<i64>,
    width: i64,
    capacity: i64,
}

impl BatchCache {
    pub fn empty() -> BatchCache {
        BatchCache { layers: Vec::new(), lens: Vec::new(), width: 0, capacity: 0 }
    }

    /// The cache of freshly prefilled rows: per layer `[rows, kv_heads, width, head_dim]`
    /// keys and values, row `i` left-padded by `width - lens[i]`.
    pub fn from_prefill(layers: Vec<(Tensor, Tensor)>, lens: Vec<i64>, width: i64) -> BatchCache {
        let layers = layers.into_iter().map(|(keys, values)| LayerCache { keys, values }).collect();
        BatchCache { layers, lens, width, capacity: width }
    }

    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Positions cached for each row.
    pub fn lens(&self) -> &[i64] {
        &self.lens
    }

    pub fn width(&self) -> i64 {
        self.width
    }

    pub(crate) fn layer(&self, i: usize) -> &LayerCache {
        &self.layers[i]
    }

    /// Room for one more position in every row, growing the buffers when full.
    pub fn reserve_step(&mut self) {
        if self.width < self.capacity {
            return;
        }
        let capacity = self.width + headroom(self.width);
        self.rebuild(None, capacity, self.width);
    }

    /// Called after every layer has written its step at column `width`.
    pub fn advance(&mut self) {
        self.width += 1;
        for len in &mut self.lens {
            *len += 1;
        }
    }

    /// Adds `other`'s rows after this cache's rows.
    pub fn append(&mut self, other: BatchCache) {
        if other.rows() == 0 {
            return;
        }
        if self.rows() == 0 {
            *self = other;
            return;
        }
        let width = self.width.max(other.width);
        let capacity = width + headroom(width);
        let (rows_a, rows_b) = (self.rows() as i64, other.rows() as i64);
        self.layers = self
            .layers
            .iter()
            .zip(&other.layers)
            .map(|(a, b)| {
                let merge = |a: &Tensor, b: &Tensor| {
                    let mut shape = a.size();
                    shape[0] = rows_a + rows_b;
                    shape[2] = capacity;
                    let buf = Tensor::zeros(&shape, (a.kind(), a.device()));
                    buf.narrow(0, 0, rows_a)
                        .narrow(2, width - self.width, self.width)
                        .copy_(&a.narrow(2, 0, self.width));
                    buf.narrow(0, rows_a, rows_b).narrow(2, width - other.width, other.width).copy_(&b.narrow(
                        2,
                        0,
                        other.width,
                    ));
                    buf
                };
                LayerCache { keys: merge(&a.keys, &b.keys), values: merge(&a.values, &b.values) }
            })
            .collect();
        self.lens.extend(other.lens);
        self.width = width;
        self.capacity = capacity;
    }

    /// Keeps the rows whose `keep` is true, in order, and drops the columns no kept row uses.
    pub fn retain(&mut self, keep: &[bool]) {
        debug_assert_eq!(keep.len(), self.rows());
        if keep.iter().all(|&k| k) {
            return;
        }
        let rows: Vec<i64> = (0..keep.len() as i64).filter(|&i| keep[i as usize]).collect();
        self.lens = rows.iter().map(|&i| self.lens[i as usize]).collect();
        if rows.is_empty() {
            *self = BatchCache::empty();
            return;
        }
        let width = self.lens.iter().copied().max().unwrap_or(0);
        self.rebuild(Some(&rows), width + headroom(width), width);
    }

    /// Copies the last `width` columns of the rows `rows` (all when `None`) into new buffers
    /// of `capacity` columns.
    fn rebuild(&mut self, rows: Option<&[i64]>, capacity: i64, width: i64) {
        let shift = self.width - width;
        let device = self.layers.first().map(|l| l.keys.device());
        let index = rows.zip(device).map(|(r, d)| Tensor::from_slice(r).to_device(d));
        let copy = |t: &Tensor| {
            let src = match &index {
                Some(i) => t.index_select(0, i),
                None => t.shallow_clone(),
            };
            let mut shape = src.size();
            shape[2] = capacity;
            let buf = Tensor::zeros(&shape, (src.kind(), src.device()));
            buf.narrow(2, 0, width).copy_(&src.narrow(2, shift, width));
            buf
        };
        for layer in &mut self.layers {
            *layer = LayerCache { keys: copy(&layer.keys), values: copy(&layer.values) };
        }
        self.width = width;
        self.capacity = capacity;
    }
}

/// Spare columns to allocate beyond `width`, so that growing one column a step copies the
/// cache only now and then.
fn headroom(width: i64) -> i64 {
    (width / 2).max(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer cache whose rows hold `lens` positions valued `base + position + 1` (so
    /// padding, which is 0, is told apart from data), `[rows, 1 head, width, 1 dim]`.
    fn cache(lens: &[i64], base: f32) -> BatchCache {
        let width = *lens.iter().max().unwrap();
        let mut data = vec![0f32; lens.len() * width as usize];
        for (r, &len) in lens.iter().enumerate() {
            for p in 0..len {
                data[r * width as usize + (width - len + p) as usize] = base + p as f32 + 1.0;
            }
        }
        let t = Tensor::from_slice(&data).view([lens.len() as i64, 1, width, 1]);
        BatchCache::from_prefill(vec![(t.copy(), t)], lens.to_vec(), width)
    }

    /// Each row's columns `0..width`, as the attention sees them.
    fn rows(c: &BatchCache) -> Vec<Vec<f32>> {
        let keys = c.layer(0).keys.narrow(2, 0, c.width()).reshape([c.rows() as i64, c.width()]);
        Vec::<Vec<f32>>::try_from(&keys).unwrap()
    }

    #[test]
    fn rows_stay_right_aligned_as_they_join_step_and_leave() {
        let mut c = cache(&[2, 3], 0.0);
        c.append(cache(&[5], 10.0));
        assert_eq!(c.lens(), &[2, 3, 5]);
        assert_eq!(c.width(), 5);
        assert_eq!(rows(&c), vec![vec![0., 0., 0., 1., 2.], vec![0., 0., 1., 2., 3.], vec![11., 12., 13., 14., 15.]]);

        // A step writes column `width` of every row.
        c.reserve_step();
        let step = Tensor::from_slice(&[7f32, 8., 9.]).view([3, 1, 1, 1]);
        c.layer(0).keys.narrow(2, c.width(), 1).copy_(&step);
        c.advance();
        assert_eq!(c.lens(), &[3, 4, 6]);
        assert_eq!(rows(&c)[0], vec![0., 0., 0., 1., 2., 7.]);

        // The widest row leaves: the columns only it used go with it.
        c.retain(&[true, true, false]);
        assert_eq!(c.lens(), &[3, 4]);
        assert_eq!(c.width(), 4);
        assert_eq!(rows(&c), vec![vec![0., 1., 2., 7.], vec![1., 2., 3., 8.]]);

        c.retain(&[false, false]);
        assert_eq!(c.rows(), 0);
        c.append(cache(&[1], 20.0));
        assert_eq!(rows(&c), vec![vec![21.]]);
    }
}
