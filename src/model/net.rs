//! The CNN: its layers listed once (conv blocks with leaky ReLU, optional max pooling and
//! dropout, then one linear layer), the forward pass with a tape of what the backward needs, the
//! backward to every layer's output gradient, and safetensors checkpoints in PyTorch layout.

use super::layers::{self, ConvGeom};
use crate::config::Config;
use crate::error::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// The architecture, from the `[model]` config section and the number of classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub channels: Vec<usize>,
    pub kernel: usize,
    pub slope: f32,
    pub dropout: f32,
    /// Per conv layer: dropout after it (after activation and pooling).
    pub dropout_after: Vec<bool>,
    /// Per conv layer: max pooling after its activation.
    pub pool_after: Vec<bool>,
    pub pool: usize,
    pub classes: usize,
    /// Input shape (C, H, W): every layer size follows from it.
    pub input: crate::data::Shape,
}

impl Arch {
    pub fn from_config(cfg: &Config, classes: usize) -> Arch {
        let m = &cfg.model;
        let names = cfg.conv_names();
        Arch {
            channels: m.channels.clone(),
            kernel: m.kernel,
            slope: m.leaky_slope as f32,
            dropout: m.dropout as f32,
            dropout_after: names.iter().map(|n| m.dropout_after.contains(n)).collect(),
            pool_after: names.iter().map(|n| m.pool_after.contains(n)).collect(),
            pool: m.pool,
            classes,
            input: cfg.shape(),
        }
    }

    /// The paper's default net for 10 classes.
    pub fn paper() -> Arch {
        Arch {
            channels: vec![16, 16, 16],
            kernel: 3,
            slope: 0.01,
            dropout: 0.25,
            dropout_after: vec![true, false, true],
            pool_after: vec![true, true, false],
            pool: 2,
            classes: 10,
            input: crate::data::Shape::MNIST,
        }
    }

    /// The paper's net at another input shape.
    pub fn paper_at(input: crate::data::Shape) -> Arch {
        Arch {
            input,
            ..Arch::paper()
        }
    }
}

/// One step of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Conv layer i with bias and leaky ReLU.
    Conv(usize),
    /// Max pooling after conv layer i.
    Pool(usize),
    /// Dropout after conv layer i.
    Drop(usize),
    Fc,
}

/// A parameterised layer: weight (PyTorch layout) and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub w: Vec<f32>,
    pub w_shape: Vec<usize>,
    pub b: Vec<f32>,
}

impl Layer {
    pub fn len(&self) -> usize {
        self.w.len() + self.b.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The network: architecture, steps, geometry and parameters (conv layers, then `fc`).
#[derive(Debug, Clone)]
pub struct Net {
    pub arch: Arch,
    pub steps: Vec<Step>,
    pub geoms: Vec<ConvGeom>,
    /// Shape (c, h, w) of the input of each step.
    pub step_in: Vec<(usize, usize, usize)>,
    pub fc_in: usize,
    pub layers: Vec<Layer>,
}

/// What a step saved for the backward.
#[derive(Debug, Clone)]
pub enum Saved {
    /// The layer's input (unfolded again per sample when weight gradients are formed: the
    /// input is k² times smaller than its unfolded columns) and its activated output.
    Conv {
        input: Vec<f32>,
        act: Vec<f32>,
    },
    Pool {
        idx: Vec<u32>,
    },
    Drop {
        mask: Vec<f32>,
    },
    Fc {
        x: Vec<f32>,
    },
}

/// Where dropout masks come from in a forward pass.
pub enum Masks<'a> {
    /// Dropout off (the identity).
    Off,
    /// One stream for the whole batch, drawn in sample-major order (training).
    Stream(&'a mut ChaCha8Rng),
    /// One stream per row (`rows[r]` draws row r's mask elements, in order): MC dropout, where
    /// each image's masks come from the seed and that image alone.
    PerRow(&'a mut [ChaCha8Rng]),
}

impl<'a> From<Option<&'a mut ChaCha8Rng>> for Masks<'a> {
    fn from(r: Option<&'a mut ChaCha8Rng>) -> Masks<'a> {
        match r {
            Some(r) => Masks::Stream(r),
            None => Masks::Off,
        }
    }
}

/// A recorded forward pass over `n` samples.
#[derive(Debug, Clone)]
pub struct Tape {
    pub n: usize,
    pub saved: Vec<Saved>,
    pub logits: Vec<f32>,
}

/// Output gradients of every parameterised layer for a batch: per conv layer dL/d(pre-activation)
/// [n, cout, h·w], then the fc layer's dL/d(logits) [n, classes].
#[derive(Debug, Clone)]
pub struct OutGrads {
    pub conv: Vec<Vec<f32>>,
    pub fc: Vec<f32>,
}

impl Net {
    /// A net with He-uniform weights (bound √(6/fan_in)) and zero biases, drawn from `rng`.
    pub fn new(arch: Arch, rng: &mut ChaCha8Rng) -> Net {
        let mut steps = Vec::new();
        let mut geoms = Vec::new();
        let mut step_in = Vec::new();
        let crate::data::Shape {
            mut c,
            mut h,
            mut w,
        } = arch.input;
        let mut layers = Vec::new();
        for (i, &cout) in arch.channels.iter().enumerate() {
            let g = ConvGeom {
                cin: c,
                cout,
                k: arch.kernel,
                h,
                w,
            };
            geoms.push(g);
            steps.push(Step::Conv(i));
            step_in.push((c, h, w));
            c = cout;
            let fan_in = g.ckk();
            let bound = (6.0 / fan_in as f32).sqrt();
            layers.push(Layer {
                name: format!("conv{}", i + 1),
                w: (0..cout * fan_in)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect(),
                w_shape: vec![cout, g.cin, g.k, g.k],
                b: vec![0.0; cout],
            });
            if arch.pool_after[i] {
                steps.push(Step::Pool(i));
                step_in.push((c, h, w));
                h /= arch.pool;
                w /= arch.pool;
            }
            if arch.dropout_after[i] {
                steps.push(Step::Drop(i));
                step_in.push((c, h, w));
            }
        }
        let fc_in = c * h * w;
        steps.push(Step::Fc);
        step_in.push((c, h, w));
        let bound = (6.0 / fc_in as f32).sqrt();
        layers.push(Layer {
            name: "fc".into(),
            w: (0..arch.classes * fc_in)
                .map(|_| rng.gen_range(-bound..bound))
                .collect(),
            w_shape: vec![arch.classes, fc_in],
            b: vec![0.0; arch.classes],
        });
        Net {
            arch,
            steps,
            geoms,
            step_in,
            fc_in,
            layers,
        }
    }

    /// The net with `extra` more outputs: every conv layer and the old outputs' fc rows and
    /// biases as they are (so the old logits do not change), the new rows He-uniform from
    /// `rng`, their biases zero. How `metaclf extend` adds classes without renumbering any.
    pub fn grow(&self, extra: usize, rng: &mut ChaCha8Rng) -> Net {
        let arch = Arch {
            classes: self.arch.classes + extra,
            ..self.arch.clone()
        };
        let mut g = Net::new(arch, rng);
        let k = self.arch.classes;
        let last = g.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            if i < last {
                g.layers[i] = l.clone();
            } else {
                let fc = &mut g.layers[last];
                fc.w[..k * self.fc_in].copy_from_slice(&l.w);
                fc.b[..k].copy_from_slice(&l.b);
            }
        }
        g
    }

    /// Names of the parameterised layers (`conv1`, ..., `fc`).
    pub fn layer_names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn num_params(&self) -> usize {
        self.layers.iter().map(Layer::len).sum()
    }

    /// Index of the first dropout step, if any.
    pub fn first_dropout(&self) -> Option<usize> {
        self.steps.iter().position(|s| matches!(s, Step::Drop(_)))
    }

    fn len_in(&self, step: usize) -> usize {
        let (c, h, w) = self.step_in[step];
        c * h * w
    }

    /// Runs the steps in `range` on `x` (the input of the range's first step, `n` samples).
    /// Dropout draws its masks from `masks` (see [`Masks`]). With `keep`, everything the
    /// backward needs is recorded.
    pub fn forward_steps(
        &self,
        range: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        mut masks: Masks<'_>,
        keep: bool,
    ) -> Tape {
        let mut cur: Vec<f32> = x.to_vec();
        let mut saved: Vec<Saved> = Vec::new();
        let cl = self.layers.len() - 1;
        // A conv layer's activation is kept for the backward; when pooling follows, the pooled
        // copy is new memory and the activation itself moves into the tape (no copy).
        let mut act_pending = false;
        for (si, step) in self
            .steps
            .iter()
            .enumerate()
            .take(range.end)
            .skip(range.start)
        {
            match *step {
                Step::Conv(i) => {
                    let g = &self.geoms[i];
                    let l = &self.layers[i];
                    let y = layers::conv_leaky_forward(g, &l.w, &l.b, self.arch.slope, &cur, n);
                    let input = std::mem::replace(&mut cur, y);
                    if keep {
                        let pool_next = matches!(self.steps.get(si + 1), Some(Step::Pool(_)))
                            && si + 1 < range.end;
                        saved.push(Saved::Conv {
                            input,
                            act: if pool_next { Vec::new() } else { cur.clone() },
                        });
                        act_pending = pool_next;
                    }
                }
                Step::Pool(_) => {
                    let (c, h, w) = self.step_in[si];
                    let (y, idx) = layers::maxpool_forward(&cur, n, c, h, w, self.arch.pool);
                    let act = std::mem::replace(&mut cur, y);
                    if keep {
                        if act_pending {
                            if let Some(Saved::Conv { act: a, .. }) = saved.last_mut() {
                                *a = act;
                            }
                            act_pending = false;
                        }
                        saved.push(Saved::Pool { idx });
                    }
                }
                Step::Drop(_) => {
                    let p = self.arch.dropout;
                    let scale = 1.0 / (1.0 - p);
                    let draw = |r: &mut ChaCha8Rng| if r.gen::<f32>() < p { 0.0 } else { scale };
                    let mask: Option<Vec<f32>> = match &mut masks {
                        Masks::Off => None,
                        Masks::Stream(r) => Some((0..cur.len()).map(|_| draw(r)).collect()),
                        Masks::PerRow(rows) => {
                            assert_eq!(rows.len(), n, "one mask stream per row");
                            let per = cur.len() / n.max(1);
                            let mut m = Vec::with_capacity(cur.len());
                            for r in rows.iter_mut() {
                                m.extend((0..per).map(|_| draw(r)));
                            }
                            Some(m)
                        }
                    };
                    if let Some(mask) = mask {
                        for (v, m) in cur.iter_mut().zip(&mask) {
                            *v *= m;
                        }
                        if keep {
                            saved.push(Saved::Drop { mask });
                        }
                    } else if keep {
                        // dropout off: an empty mask is the identity
                        saved.push(Saved::Drop { mask: Vec::new() });
                    }
                }
                Step::Fc => {
                    let l = &self.layers[cl];
                    let y =
                        layers::linear_forward(&cur, &l.w, &l.b, n, self.fc_in, self.arch.classes);
                    if keep {
                        saved.push(Saved::Fc {
                            x: std::mem::take(&mut cur),
                        });
                    }
                    cur = y;
                }
            }
        }
        Tape {
            n,
            saved,
            logits: cur,
        }
    }

    /// Runs steps `..to` (exclusive) without dropout and without a tape: the deterministic
    /// prefix shared by every MC-dropout pass.
    pub fn forward_prefix(&self, x: &[f32], n: usize, to: usize) -> Vec<f32> {
        self.forward_steps(0..to, x, n, Masks::Off, false).logits
    }

    /// Full forward pass.
    pub fn forward(&self, x: &[f32], n: usize, rng: Option<&mut ChaCha8Rng>, keep: bool) -> Tape {
        self.forward_steps(0..self.steps.len(), x, n, rng.into(), keep)
    }

    /// Backward from dL/d(logits) through a full tape; returns every layer's output gradient.
    pub fn backward(&self, tape: &Tape, dlogits: Vec<f32>) -> OutGrads {
        let n = tape.n;
        let mut conv_dy: Vec<Vec<f32>> = vec![Vec::new(); self.geoms.len()];
        let mut cur = dlogits.clone();
        let fc = self.layers.last().unwrap();
        for (si, step) in self.steps.iter().enumerate().rev() {
            match (*step, &tape.saved[si]) {
                (Step::Fc, Saved::Fc { x }) => {
                    let (_, _, dx) = layers::linear_backward(
                        &cur,
                        x,
                        &fc.w,
                        n,
                        self.fc_in,
                        self.arch.classes,
                        true,
                    );
                    // the linear layer's weight gradients are formed by the caller from x and dlogits
                    cur = dx;
                }
                (Step::Drop(_), Saved::Drop { mask }) => {
                    // an empty mask: dropout was off (the identity)
                    for (d, m) in cur.iter_mut().zip(mask) {
                        *d *= m;
                    }
                }
                (Step::Pool(_), Saved::Pool { idx }) => {
                    cur = layers::maxpool_backward(&cur, idx, n, self.len_in(si));
                }
                (Step::Conv(i), Saved::Conv { act, .. }) => {
                    layers::leaky_backward(act, self.arch.slope, &mut cur);
                    let dy = std::mem::take(&mut cur);
                    if i > 0 {
                        cur = layers::conv_input_grad(&self.geoms[i], &self.layers[i].w, &dy, n);
                    }
                    conv_dy[i] = dy;
                }
                _ => unreachable!("tape does not match the steps"),
            }
        }
        OutGrads {
            conv: conv_dy,
            fc: dlogits,
        }
    }

    /// Gradients summed over the batch, per layer (weight, bias), from a tape and its output grads.
    pub fn summed_grads(&self, tape: &Tape, g: &OutGrads) -> Vec<(Vec<f32>, Vec<f32>)> {
        let mut out = Vec::new();
        let mut ci = 0;
        for s in &tape.saved {
            if let Saved::Conv { input, .. } = s {
                out.push(layers::conv_weight_grad(
                    &self.geoms[ci],
                    &g.conv[ci],
                    input,
                    tape.n,
                ));
                ci += 1;
            }
        }
        let Some(Saved::Fc { x }) = tape.saved.last() else {
            unreachable!("tape ends with fc")
        };
        let fc = self.layers.last().unwrap();
        let (dw, db, _) = layers::linear_backward(
            &g.fc,
            x,
            &fc.w,
            tape.n,
            self.fc_in,
            self.arch.classes,
            false,
        );
        out.push((dw, db));
        out
    }

    /// Saves the parameters as safetensors (`conv1.weight [16,1,3,3]`, `conv1.bias`, ...,
    /// `fc.weight [classes, fc_in]`, `fc.bias`), written to a temp file then renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        use candle_core::{Device, Tensor};
        let mut map = HashMap::new();
        for l in &self.layers {
            map.insert(
                format!("{}.weight", l.name),
                Tensor::from_vec(l.w.clone(), l.w_shape.as_slice(), &Device::Cpu)?,
            );
            map.insert(
                format!("{}.bias", l.name),
                Tensor::from_vec(l.b.clone(), l.b.len(), &Device::Cpu)?,
            );
        }
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }

    /// Loads parameters saved by [`Net::save`] into a net of architecture `arch`.
    pub fn load(arch: Arch, path: &Path) -> Result<Net> {
        use rand::SeedableRng;
        let net = Net::new(arch.clone(), &mut ChaCha8Rng::seed_from_u64(0));
        // the file is read whole: refuse one far larger than this architecture's weights
        let max = net.num_params() as u64 * 8 + (1 << 20);
        let len = std::fs::metadata(path)
            .map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?
            .len();
        if len > max {
            return Err(Error::Format {
                path: path.into(),
                msg: format!(
                    "{len} bytes is far more than the {} parameters of the config's model need",
                    net.num_params()
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Net::from_safetensors(arch, &bytes, path)
    }

    /// Parameters from the bytes of a safetensors file (`path` names it in errors): every tensor
    /// of the architecture must be there, with its shape, a float dtype and finite values.
    pub fn from_safetensors(arch: Arch, bytes: &[u8], path: &Path) -> Result<Net> {
        use rand::SeedableRng;
        let mut net = Net::new(arch, &mut ChaCha8Rng::seed_from_u64(0));
        let map = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu).map_err(
            |e| Error::Format {
                path: path.into(),
                msg: format!("not a readable safetensors file: {e}"),
            },
        )?;
        for l in net.layers.iter_mut() {
            for (suffix, shape, dst) in [
                ("weight", l.w_shape.clone(), &mut l.w),
                ("bias", vec![l.b.len()], &mut l.b),
            ] {
                let key = format!("{}.{suffix}", l.name);
                let t = map.get(&key).ok_or_else(|| Error::Format {
                    path: path.into(),
                    msg: format!("tensor {key} is missing"),
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::Format {
                        path: path.into(),
                        msg: format!(
                            "tensor {key} has shape {:?}, the config's model needs {shape:?}",
                            t.dims()
                        ),
                    });
                }
                if !t.dtype().is_float() {
                    return Err(Error::Format {
                        path: path.into(),
                        msg: format!("tensor {key} has dtype {:?}; weights are floats", t.dtype()),
                    });
                }
                *dst = t
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                if let Some(i) = dst.iter().position(|v| !v.is_finite()) {
                    return Err(Error::Format {
                        path: path.into(),
                        msg: format!(
                            "tensor {key} holds {} at element {i}; a model with NaN or infinite weights cannot score",
                            dst[i]
                        ),
                    });
                }
            }
        }
        Ok(net)
    }
}

/// Row-wise softmax of logits [n, k] in f64 → f32.
pub fn softmax(logits: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    for (row, o) in logits.chunks(k).zip(out.chunks_mut(k)) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
        for (o, &v) in o.iter_mut().zip(row) {
            *o = (((v - m) as f64).exp() / s) as f32;
        }
    }
    out
}

/// Index of the largest entry of each row (first on ties).
pub fn argmax_rows(x: &[f32], k: usize) -> Vec<u32> {
    x.chunks(k)
        .map(|r| {
            let mut b = 0;
            for (i, v) in r.iter().enumerate() {
                if *v > r[b] {
                    b = i;
                }
            }
            b as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::oracle::{per_sample_grads_naive, CandleNet};
    use super::*;
    use rand::SeedableRng;

    fn close(a: &[f32], b: &[f32], rel: f32) {
        let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-12);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= rel * scale.max(y.abs()),
                "entry {i}: {x} vs {y} (scale {scale})"
            );
        }
    }

    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        inputs_at(n, seed, crate::data::Shape::MNIST)
    }

    fn inputs_at(n: usize, seed: u64, s: crate::data::Shape) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n * s.len()).map(|_| r.gen::<f32>()).collect()
    }

    /// The shapes every oracle test runs at: MNIST, a 64×64 two-channel cell crop, and an odd
    /// size whose pools drop a row and a column.
    const SHAPES: [crate::data::Shape; 3] = [
        crate::data::Shape::MNIST,
        crate::data::Shape::new(2, 64, 64),
        crate::data::Shape::new(3, 33, 17),
    ];

    #[test]
    fn a_grown_net_keeps_the_old_logits() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let net = Net::new(Arch::paper(), &mut rng);
        let big = net.grow(3, &mut rng);
        assert_eq!(big.arch.classes, 13);
        let x = inputs(5, 1);
        let (a, b) = (
            net.forward(&x, 5, None, false).logits,
            big.forward(&x, 5, None, false).logits,
        );
        for i in 0..5 {
            // the first 10 outputs are the old net's, bit for bit
            assert_eq!(&b[i * 13..i * 13 + 10], &a[i * 10..i * 10 + 10]);
        }
        assert!(b.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn training_gradients_match_candle_autograd() {
        for shape in SHAPES {
            training_gradients_match_at(shape);
        }
    }

    fn training_gradients_match_at(shape: crate::data::Shape) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let net = Net::new(Arch::paper_at(shape), &mut rng);
        // fc input follows the shape: floor after each pool
        let (h, w) = (shape.h / 2 / 2, shape.w / 2 / 2);
        assert_eq!(net.fc_in, 16 * h * w);
        assert_eq!(net.layers[0].w_shape, vec![16, shape.c, 3, 3]);
        let n = 5;
        let x = inputs_at(n, 2, shape);
        let y: Vec<u32> = vec![3, 1, 4, 1, 5];
        let tape = net.forward(&x, n, Some(&mut rng), true);
        let masks: Vec<Vec<f32>> = tape
            .saved
            .iter()
            .filter_map(|s| {
                if let Saved::Drop { mask } = s {
                    Some(mask.clone())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(masks.len(), 2);
        let (d, _, _) = super::super::train::ce_grad(&tape.logits, &y, 10);
        let g = net.backward(&tape, d);
        let ours = net.summed_grads(&tape, &g);
        let c = CandleNet::new(&net).unwrap();
        let logits: Vec<f32> = c
            .logits(&x, n, Some(&masks))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        close(&tape.logits, &logits, 1e-5);
        let theirs = c.grads(&x, n, &y, 1.0 / n as f32, Some(&masks)).unwrap();
        for ((gw, gb), (tw, tb)) in ours.iter().zip(&theirs) {
            close(gw, tw, 2e-5);
            close(gb, tb, 2e-5);
        }
    }

    #[test]
    fn other_architectures_match_too() {
        // single dropout before the last layer, no pooling after conv1, 5×5 kernels, 3 classes
        let arch = Arch {
            channels: vec![4, 6],
            kernel: 5,
            slope: 0.1,
            dropout: 0.5,
            dropout_after: vec![false, true],
            pool_after: vec![false, true],
            pool: 2,
            classes: 3,
            input: crate::data::Shape::MNIST,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let net = Net::new(arch, &mut rng);
        let n = 3;
        let x = inputs(n, 4);
        let y = vec![0, 2, 1];
        let tape = net.forward(&x, n, Some(&mut rng), true);
        let masks: Vec<Vec<f32>> = tape
            .saved
            .iter()
            .filter_map(|s| {
                if let Saved::Drop { mask } = s {
                    Some(mask.clone())
                } else {
                    None
                }
            })
            .collect();
        let (d, _, _) = super::super::train::ce_grad(&tape.logits, &y, 3);
        let ours = net.summed_grads(&tape, &net.backward(&tape, d));
        let theirs = CandleNet::new(&net)
            .unwrap()
            .grads(&x, n, &y, 1.0 / n as f32, Some(&masks))
            .unwrap();
        for ((gw, gb), (tw, tb)) in ours.iter().zip(&theirs) {
            close(gw, tw, 1e-5);
            close(gb, tb, 1e-5);
        }
    }

    #[test]
    fn finite_differences_on_a_tiny_net() {
        let arch = Arch {
            channels: vec![2],
            kernel: 3,
            slope: 0.01,
            dropout: 0.0,
            dropout_after: vec![false],
            pool_after: vec![true],
            pool: 2,
            classes: 3,
            input: crate::data::Shape::MNIST,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let net = Net::new(arch, &mut rng);
        let x = inputs(1, 6);
        let loss = |n: &Net| -> f64 {
            let t = n.forward(&x, 1, None, false);
            let p = softmax(&t.logits, 3);
            -(p[1] as f64).ln()
        };
        let tape = net.forward(&x, 1, None, true);
        let mut d = softmax(&tape.logits, 3);
        d[1] -= 1.0;
        let g = net.summed_grads(&tape, &net.backward(&tape, d));
        let eps = 1e-3f32;
        for (li, (gw, _)) in g.iter().enumerate() {
            for wi in [0, 3, 7, gw.len() - 1] {
                let mut plus = net.clone();
                plus.layers[li].w[wi] += eps;
                let mut minus = net.clone();
                minus.layers[li].w[wi] -= eps;
                let fd = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
                let an = gw[wi] as f64;
                assert!(
                    (fd - an).abs() <= 3e-4 + 3e-2 * an.abs(),
                    "layer {li} weight {wi}: fd {fd} vs {an}"
                );
            }
        }
    }

    #[test]
    fn per_sample_stats_match_naive_candle_loop() {
        for shape in SHAPES {
            per_sample_stats_match_at(shape);
        }
    }

    fn per_sample_stats_match_at(shape: crate::data::Shape) {
        use crate::features::{grad_stats_batch, Moments};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let net = Net::new(Arch::paper_at(shape), &mut rng);
        let n = 6;
        let x = inputs_at(n, 8, shape);
        let (_, stats, _) = grad_stats_batch(&net, &x, n);
        let nl = net.layers.len() + 1;
        let len = shape.len();
        for s in 0..n {
            let g = per_sample_grads_naive(&net, &x[s * len..(s + 1) * len]).unwrap();
            let mut all: Vec<f32> = Vec::new();
            for (l, (w, b)) in g.iter().enumerate() {
                let vals: Vec<f32> = w.iter().chain(b).cloned().collect();
                all.extend_from_slice(&vals);
                check(
                    &stats[s * nl + l],
                    &vals,
                    &format!("{shape}: sample {s} layer {l}"),
                );
            }
            check(
                &stats[s * nl + nl - 1],
                &all,
                &format!("{shape}: sample {s} all"),
            );
        }
        fn check(ours: &[f64; 7], vals: &[f32], what: &str) {
            let e = Moments::of(vals).stats();
            let rms =
                (vals.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
            for (i, (a, b)) in ours.iter().zip(&e).enumerate() {
                // mean is near zero for fc (softmax − one-hot sums to zero): compare on the RMS scale
                let tol = if i == 4 {
                    1e-6 * rms + 1e-5 * b.abs()
                } else if i >= 5 {
                    // skewness and kurtosis are dimensionless: an absolute floor where near 0
                    1e-5 * b.abs().max(0.1)
                } else {
                    1e-5 * b.abs().max(1e-3) + 1e-6 * rms
                };
                assert!(
                    (a - b).abs() <= tol.max(1e-12),
                    "{what} stat {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn mc_prefix_suffix_equals_full_passes() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let net = Net::new(Arch::paper(), &mut rng);
        let n = 4;
        let x = inputs(n, 10);
        let fd = net.first_dropout().unwrap();
        let pre = net.forward_prefix(&x, n, fd);
        let rep: Vec<f32> = pre.iter().chain(&pre).cloned().collect();
        let xr: Vec<f32> = x.iter().chain(&x).cloned().collect();
        let a = net.forward_steps(
            fd..net.steps.len(),
            &rep,
            2 * n,
            Masks::Stream(&mut ChaCha8Rng::seed_from_u64(11)),
            false,
        );
        let b = net.forward(&xr, 2 * n, Some(&mut ChaCha8Rng::seed_from_u64(11)), false);
        assert_eq!(a.logits, b.logits);
        // dropout really changes something
        assert_ne!(b.logits, net.forward(&xr, 2 * n, None, false).logits);
    }

    #[test]
    fn save_load_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let net = Net::new(Arch::paper(), &mut rng);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        net.save(&p).unwrap();
        let back = Net::load(Arch::paper(), &p).unwrap();
        assert_eq!(back.layers, net.layers);
        let other = Arch {
            channels: vec![8, 16, 16],
            ..Arch::paper()
        };
        let e = Net::load(other, &p).unwrap_err().to_string();
        assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
        // a net for 2-channel 64×64 images is not the 28×28 one
        let e = Net::load(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
        let big = Net::new(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &mut rng);
        big.save(&p).unwrap();
        assert_eq!(big.layers[2].w_shape, vec![16, 16, 3, 3]);
        assert_eq!(big.layers[3].w_shape, vec![10, 16 * 16 * 16]);
        let back = Net::load(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &p).unwrap();
        assert_eq!(back.layers, big.layers);
    }
}
