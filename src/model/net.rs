//! The network: its architecture (input shape, classes, layer list), the graph built from it
//! and the parameters of its layers, the forward pass with a tape of what the backward needs,
//! the backward to every layer's output gradient, and safetensors checkpoints with PyTorch's
//! names and layouts (`conv1.weight`, `block2.bn1.running_mean`, …).

pub use super::dropout::Masks;
use super::graph::{self, Ctx, Decl, Layer, Node, ParamKind, Saved};
use crate::arch::Spec;
use crate::config::Config;
use crate::error::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The architecture: input shape (C, H, W), number of classes and the layer list.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub input: crate::data::Shape,
    pub classes: usize,
    pub specs: Vec<Spec>,
}

impl Arch {
    /// From the `[model]` config section (its layer list, or the legacy keys' paper net).
    pub fn from_config(cfg: &Config, classes: usize) -> Arch {
        Arch {
            input: cfg.net_input(),
            classes,
            specs: cfg.layer_specs(),
        }
    }

    /// The paper's default net for 10 classes.
    pub fn paper() -> Arch {
        Arch::paper_at(crate::data::Shape::MNIST)
    }

    /// The paper's net at another input shape.
    pub fn paper_at(input: crate::data::Shape) -> Arch {
        Arch {
            input,
            classes: 10,
            specs: crate::arch::legacy(
                &[16, 16, 16],
                3,
                0.01,
                0.25,
                &[true, true, false],
                &[true, false, true],
                2,
            ),
        }
    }

    /// Shape inference; errors name the layer (`model.layers[i]`) and the shapes.
    pub fn plan(&self) -> Result<crate::arch::Plan> {
        let s = self.input;
        crate::arch::plan(&self.specs, (s.c, s.h, s.w), self.classes)
            .map_err(|(i, m)| crate::error::cfg(&format!("model.layers[{i}]"), m))
    }
}

/// The network: architecture, graph and parameters (in graph order).
#[derive(Debug, Clone)]
pub struct Net {
    pub arch: Arch,
    pub nodes: Vec<Node>,
    pub layers: Vec<Layer>,
}

/// A recorded forward pass over `n` samples.
#[derive(Debug, Clone)]
pub struct Tape {
    pub n: usize,
    pub saved: Vec<Saved>,
    pub logits: Vec<f32>,
    /// Batch norm ran on batch statistics (training mode).
    pub train: bool,
}

impl Tape {
    /// The input of the last (linear) layer: the penultimate activations, [n, last_in].
    pub fn last_input(&self) -> &[f32] {
        match self.saved.last() {
            Some(Saved::Input(x)) => x,
            _ => unreachable!("a tape ends with the linear layer's input"),
        }
    }

    /// The dropout masks, in forward order.
    pub fn masks(&self) -> Vec<Vec<f32>> {
        let mut m = Vec::new();
        graph::masks_of(&self.saved, &mut m);
        m
    }
}

impl Net {
    /// A net with He-uniform weights (bound √(6/fan_in)), zero biases, batch norms at γ = 1,
    /// β = 0, running mean 0 and variance 1, drawn from `rng` (weights in graph order).
    pub fn new(arch: Arch, rng: &mut ChaCha8Rng) -> Result<Net> {
        arch.plan()?;
        let s = arch.input;
        let mut decls: Vec<Decl> = Vec::new();
        let nodes = graph::build(&arch.specs, (s.c, s.h, s.w), arch.classes, &mut decls);
        let layers = decls
            .into_iter()
            .map(|d| {
                let len: usize = d.w_shape.iter().product();
                let (w, rm, rv) = match d.kind {
                    ParamKind::BatchNorm => (vec![1.0; len], vec![0.0; len], vec![1.0; len]),
                    _ => {
                        let bound = (6.0 / d.fan_in as f32).sqrt();
                        (
                            (0..len).map(|_| rng.gen_range(-bound..bound)).collect(),
                            Vec::new(),
                            Vec::new(),
                        )
                    }
                };
                Layer {
                    name: d.name,
                    kind: d.kind,
                    w,
                    w_shape: d.w_shape,
                    b: vec![0.0; d.b_len],
                    running_mean: rm,
                    running_var: rv,
                }
            })
            .collect();
        Ok(Net {
            arch,
            nodes,
            layers,
        })
    }

    /// The net with `extra` more outputs: every other layer and the old outputs' rows and
    /// biases of the last layer as they are (so the old logits do not change), the new rows
    /// He-uniform from `rng`, their biases zero. How `metaclf extend` adds classes without
    /// renumbering any.
    pub fn grow(&self, extra: usize, rng: &mut ChaCha8Rng) -> Result<Net> {
        let arch = Arch {
            classes: self.arch.classes + extra,
            ..self.arch.clone()
        };
        let mut g = Net::new(arch, rng)?;
        let k = self.arch.classes;
        let last = g.layers.len() - 1;
        let inp = self.last_in();
        for (i, l) in self.layers.iter().enumerate() {
            if i < last {
                g.layers[i] = l.clone();
            } else {
                let fc = &mut g.layers[last];
                fc.w[..k * inp].copy_from_slice(&l.w);
                if !l.b.is_empty() {
                    fc.b[..k].copy_from_slice(&l.b);
                }
            }
        }
        Ok(g)
    }

    /// Names of the parameterised layers in graph order (`conv1`, ..., `fc`).
    /// Dropout layers anywhere in the graph (the MC-dropout sites).
    pub fn dropout_layers(&self) -> usize {
        crate::arch::count_dropout(&self.arch.specs)
    }

    pub fn layer_names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn num_params(&self) -> usize {
        self.layers.iter().map(Layer::len).sum()
    }

    /// Inputs of the last (linear) layer.
    pub fn last_in(&self) -> usize {
        match self.nodes.last() {
            Some(Node::Linear { inp, .. }) => *inp,
            _ => unreachable!("a net ends with a linear layer"),
        }
    }

    /// Most images per batch for a forward pass without a tape: the largest layer output times
    /// the batch stays ≤ 2²⁴ values (64 MB), capped at `want`. (The paper's net at 28×28 takes
    /// 1,337; DeepLoc at 60×60, 72.)
    pub fn eval_batch(&self, want: usize) -> usize {
        let s = self.arch.input;
        let largest = self
            .arch
            .plan()
            .map(|p| p.dims.iter().map(|(c, h, w)| c * h * w).max().unwrap_or(1))
            .unwrap_or(1)
            .max(s.len())
            .max(1);
        want.min((1usize << 24) / largest).max(1)
    }

    /// Index of the first node that is a dropout layer or holds one (an add's branch), if any.
    pub fn first_dropout(&self) -> Option<usize> {
        fn has(n: &Node) -> bool {
            match n {
                Node::Dropout { .. } => true,
                Node::Residual(r) => r.body.iter().chain(&r.shortcut).any(has),
                _ => false,
            }
        }
        self.nodes.iter().position(has)
    }

    /// Whether the net has batch norm (whose running statistics training must update).
    pub fn has_batch_norm(&self) -> bool {
        self.layers.iter().any(|l| l.kind == ParamKind::BatchNorm)
    }

    /// The layer list in one line, for the log.
    pub fn describe(&self) -> String {
        self.arch
            .specs
            .iter()
            .map(|s| format!("{} {}", s.kind(), s.name()))
            .collect::<Vec<_>>()
            .join(" → ")
    }

    /// Runs the nodes in `range` on `x` (the input of the range's first node, `n` samples) in
    /// evaluation mode (batch norm on running statistics, centre crops); dropout draws its
    /// masks from `masks` (see [`Masks`]). With `keep`, everything the backward needs is
    /// recorded.
    pub fn forward_steps(
        &self,
        range: std::ops::Range<usize>,
        x: &[f32],
        n: usize,
        masks: Masks<'_>,
        keep: bool,
    ) -> Tape {
        self.forward_steps_owned(range, x.to_vec(), n, masks, keep)
    }

    /// [`Net::forward_steps`] on an input it may overwrite (saves a copy of a large batch,
    /// e.g. MC dropout's passes).
    pub fn forward_steps_owned(
        &self,
        range: std::ops::Range<usize>,
        x: Vec<f32>,
        n: usize,
        masks: Masks<'_>,
        keep: bool,
    ) -> Tape {
        self.run(
            range,
            x,
            n,
            Ctx {
                train: false,
                masks,
            },
            keep,
        )
    }

    fn run(
        &self,
        range: std::ops::Range<usize>,
        x: Vec<f32>,
        n: usize,
        mut ctx: Ctx<'_>,
        keep: bool,
    ) -> Tape {
        let train = ctx.train;
        let (y, saved) = graph::forward_seq(
            &self.nodes[range],
            &self.layers,
            Arc::new(x),
            n,
            &mut ctx,
            keep,
        );
        Tape {
            n,
            saved,
            logits: Arc::try_unwrap(y).unwrap_or_else(|a| (*a).clone()),
            train,
        }
    }

    /// Runs nodes `..to` (exclusive) without dropout and without a tape: the deterministic
    /// prefix shared by every MC-dropout pass.
    pub fn forward_prefix(&self, x: &[f32], n: usize, to: usize) -> Vec<f32> {
        self.forward_steps(0..to, x, n, Masks::Off, false).logits
    }

    /// The penultimate activations (the last layer's input), evaluation mode.
    pub fn embed(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.forward_prefix(x, n, self.nodes.len() - 1)
    }

    /// Full forward pass: with `rng`, training mode (dropout masks drawn from it, batch norm
    /// on batch statistics, random crops); without, evaluation mode.
    pub fn forward(&self, x: &[f32], n: usize, rng: Option<&mut ChaCha8Rng>, keep: bool) -> Tape {
        let train = rng.is_some();
        self.run(
            0..self.nodes.len(),
            x.to_vec(),
            n,
            Ctx {
                train,
                masks: rng.into(),
            },
            keep,
        )
    }

    /// Backward from dL/d(logits) through a full tape: `sink` gets every parameterised
    /// layer's output gradient (see [`graph::Sink`]).
    pub fn backward_with(&self, tape: &Tape, dlogits: Vec<f32>, sink: &mut graph::Sink<'_>) {
        graph::backward_seq(
            &self.nodes,
            &self.layers,
            &tape.saved,
            dlogits,
            tape.n,
            false,
            sink,
        );
    }

    /// Gradients summed over the batch, per layer (weight, bias), from a tape and dL/d(logits).
    pub fn summed_grads(&self, tape: &Tape, dlogits: Vec<f32>) -> Vec<(Vec<f32>, Vec<f32>)> {
        let n = tape.n;
        let mut out: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.layers.len()];
        self.backward_with(tape, dlogits, &mut |p, node, saved, dy, sums| {
            out[p] = match (node, saved) {
                (Node::Conv { g, .. }, Saved::Input(x)) => super::conv::weight_grad(g, dy, x, n),
                (Node::Linear { inp, out, bias, .. }, Saved::Input(x)) => {
                    super::linear::weight_grad(dy, x, n, *inp, *out, *bias)
                }
                (Node::Bn { g, .. }, Saved::Bn { input, stats }) => {
                    super::batchnorm::weight_grad(g, stats, dy, input, n, sums)
                }
                _ => unreachable!("only parameterised layers reach the sink"),
            };
        });
        out
    }

    /// After a training-mode pass: every batch norm's running statistics follow the batch's.
    pub fn update_running(&mut self, tape: &Tape) {
        if !tape.train {
            return;
        }
        let mut stats = Vec::new();
        graph::bn_stats_of(&self.nodes, &tape.saved, &mut stats);
        for (p, g, st) in stats {
            let l = &mut self.layers[p];
            super::batchnorm::update_running(&g, st, &mut l.running_mean, &mut l.running_var);
        }
    }

    /// The tensors of the checkpoint: name, shape, values (f32), in graph order.
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push((format!("{}.weight", l.name), l.w_shape.clone(), &l.w[..]));
            if !l.b.is_empty() {
                v.push((format!("{}.bias", l.name), vec![l.b.len()], &l.b[..]));
            }
            if l.kind == ParamKind::BatchNorm {
                v.push((
                    format!("{}.running_mean", l.name),
                    vec![l.running_mean.len()],
                    &l.running_mean[..],
                ));
                v.push((
                    format!("{}.running_var", l.name),
                    vec![l.running_var.len()],
                    &l.running_var[..],
                ));
            }
        }
        v
    }

    /// Saves the parameters as safetensors with PyTorch's names and layouts
    /// (`conv1.weight [16,1,3,3]`, `conv1.bias`, …, `bn1.running_mean`, `bn1.running_var`,
    /// `bn1.num_batches_tracked`, …, `fc.weight [classes, inputs]`), written to a temp file
    /// then renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        use candle_core::{Device, Tensor};
        let mut map = HashMap::new();
        for (name, shape, v) in self.tensors() {
            map.insert(
                name,
                Tensor::from_vec(v.to_vec(), shape.as_slice(), &Device::Cpu)?,
            );
        }
        for l in self
            .layers
            .iter()
            .filter(|l| l.kind == ParamKind::BatchNorm)
        {
            // PyTorch's BatchNorm keeps this counter in its state dict (load_state_dict wants it)
            map.insert(
                format!("{}.num_batches_tracked", l.name),
                Tensor::new(0i64, &Device::Cpu)?,
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
        let net = Net::new(arch.clone(), &mut ChaCha8Rng::seed_from_u64(0))?;
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
    /// of the architecture must be there, with its shape, a float dtype and finite values, and
    /// no tensor of another architecture may be.
    pub fn from_safetensors(arch: Arch, bytes: &[u8], path: &Path) -> Result<Net> {
        let map = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu).map_err(
            |e| Error::Format {
                path: path.into(),
                msg: format!("not a readable safetensors file: {e}"),
            },
        )?;
        let mut tensors = HashMap::new();
        for (key, t) in map {
            if key.ends_with(".num_batches_tracked") {
                continue;
            }
            if !t.dtype().is_float() {
                return Err(Error::Format {
                    path: path.into(),
                    msg: format!("tensor {key} has dtype {:?}; weights are floats", t.dtype()),
                });
            }
            let v: Vec<f32> = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            tensors.insert(key, (t.dims().to_vec(), v));
        }
        Net::from_named(arch, tensors, path)
    }

    /// A net of `arch` with the weights of `tensors` (checkpoint name → shape and values):
    /// every tensor the net needs present with its shape and none other, all finite, variances
    /// ≥ 0; errors name `path` (the checkpoint or the imported model).
    pub fn from_named(
        arch: Arch,
        mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
        path: &Path,
    ) -> Result<Net> {
        use rand::SeedableRng;
        let mut net = Net::new(arch, &mut ChaCha8Rng::seed_from_u64(0))?;
        let want: Vec<(String, Vec<usize>)> =
            net.tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !want.iter().any(|(n, _)| n == *k))
            .collect();
        extra.sort();
        if let Some(k) = extra.first() {
            return Err(Error::Format {
                path: path.into(),
                msg: format!(
                    "tensor {k} is not in the config's model (its layers: {}); is the checkpoint from another architecture?",
                    net.layer_names().join(", ")
                ),
            });
        }
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        for (key, shape) in &want {
            let (dims, v) = tensors.remove(key).ok_or_else(|| Error::Format {
                path: path.into(),
                msg: format!("tensor {key} is missing"),
            })?;
            if dims != *shape {
                return Err(Error::Format {
                    path: path.into(),
                    msg: format!(
                        "tensor {key} has shape {dims:?}, the config's model needs {shape:?}"
                    ),
                });
            }
            if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                return Err(Error::Format {
                    path: path.into(),
                    msg: format!(
                        "tensor {key} holds {} at element {i}; a model with NaN or infinite weights cannot score",
                        v[i]
                    ),
                });
            }
            if key.ends_with(".running_var") {
                if let Some(i) = v.iter().position(|v| *v < 0.0) {
                    return Err(Error::Format {
                        path: path.into(),
                        msg: format!(
                            "tensor {key} holds a negative variance {} at element {i}",
                            v[i]
                        ),
                    });
                }
            }
            values.insert(key.clone(), v);
        }
        for l in net.layers.iter_mut() {
            let mut take = |suffix: &str, dst: &mut Vec<f32>| {
                if let Some(v) = values.remove(&format!("{}.{suffix}", l.name)) {
                    *dst = v;
                }
            };
            take("weight", &mut l.w);
            take("bias", &mut l.b);
            take("running_mean", &mut l.running_mean);
            take("running_var", &mut l.running_var);
        }
        Ok(net)
    }

    /// The net of an ONNX import (its layers, with the config's normalisation and MC-dropout
    /// sites, in `arch`) holding the import's weights.
    pub fn from_import(arch: Arch, imported: &crate::onnx::Imported, path: &Path) -> Result<Net> {
        let tensors = imported
            .tensors
            .iter()
            .map(|(n, s, v)| (n.clone(), (s.clone(), v.clone())))
            .collect();
        Net::from_named(arch, tensors, path)
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
    use super::super::oracle::per_sample_grads_naive;
    use super::*;
    use crate::arch::Spec;
    use rand::SeedableRng;

    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        inputs_at(n, seed, crate::data::Shape::MNIST)
    }

    fn inputs_at(n: usize, seed: u64, s: crate::data::Shape) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n * s.len()).map(|_| r.gen::<f32>()).collect()
    }

    /// The shapes every oracle test of the paper's net runs at: MNIST, a 64×64 two-channel
    /// cell crop, and an odd size whose pools drop a row and a column.
    const SHAPES: [crate::data::Shape; 3] = [
        crate::data::Shape::MNIST,
        crate::data::Shape::new(2, 64, 64),
        crate::data::Shape::new(3, 33, 17),
    ];

    #[test]
    fn a_grown_net_keeps_the_old_logits() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let net = Net::new(Arch::paper(), &mut rng).unwrap();
        let big = net.grow(3, &mut rng).unwrap();
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
    fn the_paper_net_matches_candle_at_every_shape() {
        for shape in SHAPES {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let net = Net::new(Arch::paper_at(shape), &mut rng).unwrap();
            // the last layer's input follows the shape: floor after each pool
            assert_eq!(net.last_in(), 16 * (shape.h / 4) * (shape.w / 4));
            assert_eq!(net.layers[0].w_shape, vec![16, shape.c, 3, 3]);
            super::super::oracle::check_specs(net.arch.specs.clone(), shape, 10);
        }
    }

    #[test]
    fn other_legacy_architectures_match_too() {
        // single dropout before the last layer, no pooling after conv1, 5×5 kernels, 3 classes
        let specs = crate::arch::legacy(&[4, 6], 5, 0.1, 0.5, &[false, true], &[false, true], 2);
        super::super::oracle::check_specs(specs, crate::data::Shape::MNIST, 3);
    }

    #[test]
    fn finite_differences_on_a_tiny_net() {
        let arch = Arch {
            input: crate::data::Shape::MNIST,
            classes: 3,
            specs: crate::arch::legacy(&[2], 3, 0.01, 0.0, &[true], &[false], 2),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let net = Net::new(arch, &mut rng).unwrap();
        let x = inputs(1, 6);
        let loss = |n: &Net| -> f64 {
            let t = n.forward(&x, 1, None, false);
            let p = softmax(&t.logits, 3);
            -(p[1] as f64).ln()
        };
        let tape = net.forward(&x, 1, None, true);
        let mut d = softmax(&tape.logits, 3);
        d[1] -= 1.0;
        let g = net.summed_grads(&tape, d);
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
        use crate::features::{grad_stats_batch, Moments};
        for shape in SHAPES {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let net = Net::new(Arch::paper_at(shape), &mut rng).unwrap();
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
        let net = Net::new(Arch::paper(), &mut rng).unwrap();
        let n = 4;
        let x = inputs(n, 10);
        let fd = net.first_dropout().unwrap();
        let pre = net.forward_prefix(&x, n, fd);
        let rep: Vec<f32> = pre.iter().chain(&pre).cloned().collect();
        let xr: Vec<f32> = x.iter().chain(&x).cloned().collect();
        let a = net.forward_steps(
            fd..net.nodes.len(),
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
        let net = Net::new(Arch::paper(), &mut rng).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        net.save(&p).unwrap();
        let back = Net::load(Arch::paper(), &p).unwrap();
        assert_eq!(back.layers, net.layers);
        let other = Arch {
            specs: crate::arch::legacy(
                &[8, 16, 16],
                3,
                0.01,
                0.25,
                &[true, true, false],
                &[true, false, true],
                2,
            ),
            ..Arch::paper()
        };
        let e = Net::load(other, &p).unwrap_err().to_string();
        assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
        // a net for 2-channel 64×64 images is not the 28×28 one
        let e = Net::load(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
        let big = Net::new(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &mut rng).unwrap();
        big.save(&p).unwrap();
        assert_eq!(big.layers[2].w_shape, vec![16, 16, 3, 3]);
        assert_eq!(big.layers[3].w_shape, vec![10, 16 * 16 * 16]);
        let back = Net::load(Arch::paper_at(crate::data::Shape::new(2, 64, 64)), &p).unwrap();
        assert_eq!(back.layers, big.layers);
    }

    fn small_resnet() -> Arch {
        Arch {
            input: crate::data::Shape::new(1, 12, 12),
            classes: 4,
            specs: vec![
                Spec::Conv {
                    name: "stem".into(),
                    out: 4,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: false,
                },
                Spec::BatchNorm {
                    name: "bn".into(),
                    eps: 1e-5,
                    momentum: 0.1,
                },
                Spec::Act {
                    name: "r".into(),
                    slope: 0.0,
                },
                Spec::Residual {
                    name: "block1".into(),
                    out: 6,
                    stride: 2,
                },
                Spec::GlobalAvgPool { name: "g".into() },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
        }
    }

    #[test]
    fn checkpoints_keep_pytorch_names_and_refuse_other_architectures() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut net = Net::new(small_resnet(), &mut rng).unwrap();
        net.layers[1].running_mean[0] = 0.25;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        net.save(&p).unwrap();
        let map = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in [
            "stem.weight",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
            "block1.conv1.weight",
            "block1.bn2.running_var",
            "block1.shortcut.0.weight",
            "block1.shortcut.1.bias",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(keys.iter().any(|x| *x == k), "{k} missing from {keys:?}");
        }
        // no bias tensor for a conv without bias
        assert!(!keys.iter().any(|x| *x == "stem.bias"));
        let back = Net::load(small_resnet(), &p).unwrap();
        assert_eq!(back.layers, net.layers);
        // the paper's net refuses this checkpoint, naming a tensor it does not have
        let e = Net::load(
            Arch {
                input: crate::data::Shape::new(1, 12, 12),
                classes: 4,
                ..Arch::paper()
            },
            &p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not in the config's model") || e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn batch_norm_features_do_not_depend_on_the_batch() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let net = Net::new(small_resnet(), &mut rng).unwrap();
        let s = net.arch.input;
        let x = inputs_at(6, 15, s);
        let (pa, sa, la) = crate::features::grad_stats_batch(&net, &x, 6);
        let (pb, sb, lb) = crate::features::grad_stats_batch(&net, &x[2 * s.len()..3 * s.len()], 1);
        assert_eq!(&pa[2 * 4..3 * 4], &pb[..]);
        let nl = net.layers.len() + 1;
        assert_eq!(&sa[2 * nl..3 * nl], &sb[..]);
        assert_eq!(la[2], lb[0]);
    }
}

#[cfg(test)]
mod torch_tests {
    use super::*;
    use crate::arch::Spec;

    /// Every gradient statistic of every layer of a small residual + batch-norm net, plain and
    /// confident rows (1 − msp to ~4e-9), within 1e-4 relative of PyTorch's torch.func in
    /// float64 (tests/fixtures/torch_grad_stats.json, made by
    /// tests/fixtures/make_torch_grad_fixtures.py with the same weights).
    #[test]
    fn gradient_statistics_equal_torch_func() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/torch_grad_stats.json"
        ))
        .unwrap();
        let f: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bn = |n: &str| Spec::BatchNorm {
            name: n.into(),
            eps: 1e-5,
            momentum: 0.1,
        };
        let relu = |n: &str| Spec::Act {
            name: n.into(),
            slope: 0.0,
        };
        let arch = Arch {
            input: crate::data::Shape::new(1, 10, 10),
            classes: 3,
            specs: vec![
                Spec::Conv {
                    name: "stem".into(),
                    out: 4,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: false,
                },
                bn("stem_bn"),
                relu("relu"),
                Spec::Residual {
                    name: "block1".into(),
                    out: 6,
                    stride: 2,
                },
                Spec::Residual {
                    name: "block2".into(),
                    out: 6,
                    stride: 1,
                },
                Spec::GlobalAvgPool {
                    name: "pool".into(),
                },
                Spec::Linear {
                    name: "fc1".into(),
                    out: 8,
                    bias: true,
                },
                bn("bn_fc1"),
                relu("relu_fc1"),
                Spec::Dropout {
                    name: "drop".into(),
                    rate: 0.5,
                },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
        };
        use rand::SeedableRng;
        let mut base = Net::new(arch, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let names: Vec<String> = f["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            base.layer_names(),
            names,
            "the same layers in the same order as PyTorch's"
        );
        let state = &f["state"];
        let vals = |k: &str| -> Vec<f32> {
            state[k]["values"]
                .as_array()
                .unwrap_or_else(|| panic!("{k} in the fixture"))
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        for l in base.layers.iter_mut() {
            l.w = vals(&format!("{}.weight", l.name));
            if !l.b.is_empty() {
                l.b = vals(&format!("{}.bias", l.name));
            }
            if l.kind == ParamKind::BatchNorm {
                l.running_mean = vals(&format!("{}.running_mean", l.name));
                l.running_var = vals(&format!("{}.running_var", l.name));
            }
        }
        let x: Vec<f32> = f["x"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let rows = f["rows"].as_array().unwrap();
        let nl = base.layers.len() + 1;
        let mut confident = 0;
        for (g, chunk) in rows.chunks(8).enumerate() {
            let mut net = base.clone();
            let raise = chunk[0]["fc_bias_raise"].as_f64().unwrap() as f32;
            net.layers.last_mut().unwrap().b[1] += raise;
            let (_, stats, _) = crate::features::grad_stats_batch(&net, &x, 8);
            let logits = net.forward(&x, 8, None, false).logits;
            for (i, r) in chunk.iter().enumerate() {
                let z: Vec<f64> = r["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                for (a, b) in logits[i * 3..i * 3 + 3].iter().zip(&z) {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "group {g} row {i}: logit {a} vs {b}"
                    );
                }
                assert_eq!(
                    argmax_rows(&logits[i * 3..i * 3 + 3], 3)[0] as u64,
                    r["pred"].as_u64().unwrap()
                );
                confident += (r["one_minus_msp"].as_f64().unwrap() < 1e-6) as usize;
                for (l, want) in r["stats"].as_array().unwrap().iter().enumerate() {
                    let want: [f64; 7] = std::array::from_fn(|j| want[j].as_f64().unwrap());
                    let n = if l + 1 < nl {
                        net.layers[l].len()
                    } else {
                        net.num_params()
                    };
                    for j in 0..7 {
                        let got = stats[i * nl + l][j];
                        assert!(
                            (got - want[j]).abs() <= super::super::oracle::tolerance(j, &want, n),
                            "group {g} row {i} layer {} stat {}: {got} vs torch {}",
                            names.get(l).map_or("all", |s| s.as_str()),
                            crate::features::GRAD_STATS[j],
                            want[j]
                        );
                    }
                }
            }
        }
        assert!(confident >= 6, "{confident} confident rows");
    }
}
