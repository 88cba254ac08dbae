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

    /// `cos` and `sin` of the angles at positions `start..start+len`, `[len, head_dim]`.
    pub fn cos_sin(&self, start: i64, len: i64, kind: Kind) -> (Tensor, Tensor) {
        let positions = Tensor::arange_start(start, start + len, (Kind::Float, self.inv_freq.device()));
        let angles = positions.outer(&self.inv_freq);
        let angles = Tensor::cat(&[&angles, &angles], -1);
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

    /// `x` is `[batch, len, hidden]` at positions `cache.len()..`; its keys and values are
    /// appended to `cache`, and each position attends to everything before it and itself.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, cache: &mut LayerCache) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [batch, len, hidden]");
        let (nq, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // [b, t, nq + 2 nkv, d] → [b, nq + 2 nkv, t, d]
        let qkv = self.qkv_proj.forward(x).view([b, t, nq + 2 * nkv, d]).transpose(1, 2);
        // Queries and keys rotate together: one set of kernels per layer, not two.
        let qk = Rope::apply(&qkv.narrow(1, 0, nq + nkv), cos, sin);
        let q = qk.narrow(1, 0, nq);
        let k = qk.narrow(1, nq, nkv);
        let v = qkv.narrow(1, nq + nkv, nkv);

        let past = cache.len;
        let (k, v) = cache.append(&k, &v);
        let group = nq / nkv;

        if t == 1 {
            // One new position sees the whole cache, no mask. The query heads of each
            // key/value head become that head's rows, `[b, nkv, group, d]`: grouped-query
            // attention without copying the keys and values `group` times.
            let q = q.reshape([b, nkv, group, d]);
            let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, false);
            return self.o_proj.forward(&y.reshape([b, 1, nq * d]));
        }
        let (k, v) = (repeat_kv(&k, group), repeat_kv(&v, group));
        let y = if past == 0 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false)
        } else {
            // A block of new positions after cached ones needs the causal mask shifted by
            // `past`, which `is_causal` (aligned to the top-left corner) does not give.
            let total = past + t;
            let rows = Tensor::arange_start(past, total, (Kind::Int64, x.device())).unsqueeze(1);
            let cols = Tensor::arange(total, (Kind::Int64, x.device())).unsqueeze(0);
            let mask = cols.le_tensor(&rows);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false)
        };
        let y = y.transpose(1, 2).contiguous().view([b, t, nq * d]);
        self.o_proj.forward(&y)
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

/// Keys and values of one layer for the positions seen so far.
///
/// The buffers grow by doubling, so appending one position costs a copy of that position,
/// not of the whole history.
pub(crate) struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: i64,
}

impl LayerCache {
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let needed = self.len + t;
        let capacity = self.keys.as_ref().map_or(0, |k| k.size()[2]);
        if needed > capacity {
            let new_capacity = needed.max(capacity * 2).max(64);
            let grow = |old: &Option<Tensor>, like: &Tensor| {
                let mut shape = like.size();
                shape[2] = new_capacity;
                let buf = Tensor::zeros(&shape, (like.kind(), like.device()));
                if let Some(old) = old {
                    buf.narrow(2, 0, self.len).copy_(&old.narrow(2, 0, self.len));
                }
                buf
            };
            self.keys = Some(grow(&self.keys, k));
            self.values = Some(grow(&self.values, v));
        }
        let (keys, values) = (self.keys.as_ref().unwrap(), self.values.as_ref().unwrap());
        keys.narrow(2, self.len, t).copy_(k);
        values.narrow(2, self.len, t).copy_(v);
        self.len = needed;
        (keys.narrow(2, 0, needed), values.narrow(2, 0, needed))
    }
}

/// The key/value cache of one sequence, all layers.
pub(crate) struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache { layers: (0..num_layers).map(|_| LayerCache { keys: None, values: None, len: 0 }).collect() }
    }

    /// Number of positions cached.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.len)
    }
}
