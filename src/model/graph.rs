//! The graph runner: the layer list built into nodes (geometry fixed by shape inference), a
//! forward pass over a range of nodes that records what each node's backward needs (buffers
//! shared, not copied, where a node's output is the next one's saved input), and a backward
//! that hands every parameterised layer its output gradient, once, to a sink (summed weight
//! gradients for training, per-sample statistics for features) before the gradient moves on.

use super::batchnorm::{self, BnGeom, BnStats, ChannelSums};
use super::conv::{self, ConvGeom};
use super::crop::{self, CropGeom};
use super::dropout::{self, Masks};
use super::normalize::{self, NormGeom};
use super::pool::{self, PoolGeom};
use super::residual::{self, Residual};
use super::{activation, linear};
use crate::arch::{Dims, Spec};
use std::sync::Arc;

/// A layer of the graph with its geometry; `p` indexes the net's parameterised layers.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Conv {
        g: ConvGeom,
        p: usize,
    },
    Bn {
        g: BnGeom,
        p: usize,
    },
    Act {
        slope: f32,
    },
    MaxPool(PoolGeom),
    AvgPool(PoolGeom),
    GlobalAvg {
        c: usize,
        hw: usize,
    },
    Flatten,
    Dropout {
        rate: f32,
    },
    Linear {
        inp: usize,
        out: usize,
        p: usize,
        bias: bool,
    },
    Residual(Residual),
    Crop(CropGeom),
    Normalize(NormGeom),
}

/// What kind of parameters a layer has (how it is initialised, decayed and saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Conv,
    BatchNorm,
    Linear,
}

/// A parameterised layer as the graph declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decl {
    pub name: String,
    pub kind: ParamKind,
    pub w_shape: Vec<usize>,
    pub b_len: usize,
    /// Inputs per output (He-uniform bound √(6/fan_in)); 0 for batch norm.
    pub fan_in: usize,
}

impl Node {
    pub fn has_params(&self) -> bool {
        matches!(
            self,
            Node::Conv { .. } | Node::Bn { .. } | Node::Linear { .. } | Node::Residual(_)
        )
    }
}

/// Builds the nodes of `specs` on input `d`, declaring parameterised layers into `decls` in
/// graph order. The specs must have passed [`crate::arch::plan`] (shapes fit).
pub fn build(specs: &[Spec], mut d: Dims, classes: usize, decls: &mut Vec<Decl>) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(specs.len());
    for s in specs {
        let (c, h, w) = d;
        let node = match s {
            Spec::Conv {
                name,
                out,
                kernel,
                stride,
                same,
                bias,
            } => {
                let g = ConvGeom::new(
                    c,
                    *out,
                    *kernel,
                    *stride,
                    if *same { kernel / 2 } else { 0 },
                    h,
                    w,
                    *bias,
                );
                decls.push(Decl {
                    name: name.clone(),
                    kind: ParamKind::Conv,
                    w_shape: vec![*out, c, *kernel, *kernel],
                    b_len: if *bias { *out } else { 0 },
                    fan_in: g.ckk(),
                });
                Node::Conv {
                    g,
                    p: decls.len() - 1,
                }
            }
            Spec::BatchNorm {
                name,
                eps,
                momentum,
            } => {
                decls.push(Decl {
                    name: name.clone(),
                    kind: ParamKind::BatchNorm,
                    w_shape: vec![c],
                    b_len: c,
                    fan_in: 0,
                });
                Node::Bn {
                    g: BnGeom {
                        c,
                        hw: h * w,
                        eps: *eps,
                        momentum: *momentum,
                    },
                    p: decls.len() - 1,
                }
            }
            Spec::Act { slope, .. } => Node::Act {
                slope: *slope as f32,
            },
            Spec::MaxPool { kernel, stride, .. } => {
                Node::MaxPool(PoolGeom::new(c, h, w, *kernel, *stride))
            }
            Spec::AvgPool { kernel, stride, .. } => {
                Node::AvgPool(PoolGeom::new(c, h, w, *kernel, *stride))
            }
            Spec::GlobalAvgPool { .. } => Node::GlobalAvg { c, hw: h * w },
            Spec::Flatten { .. } => Node::Flatten,
            Spec::Dropout { rate, .. } => Node::Dropout { rate: *rate as f32 },
            Spec::Linear { name, out, bias } => {
                let inp = c * h * w;
                let out = if *out == 0 { classes } else { *out };
                decls.push(Decl {
                    name: name.clone(),
                    kind: ParamKind::Linear,
                    w_shape: vec![out, inp],
                    b_len: if *bias { out } else { 0 },
                    fan_in: inp,
                });
                Node::Linear {
                    inp,
                    out,
                    p: decls.len() - 1,
                    bias: *bias,
                }
            }
            Spec::Residual { name, out, stride } => {
                let (body, short) = crate::arch::residual_parts(name, c, *out, *stride);
                let body = build(&body, d, classes, decls);
                let shortcut = build(&short, d, classes, decls);
                nodes.push(Node::Residual(Residual { body, shortcut }));
                // the block's ReLU after the sum
                Node::Act { slope: 0.0 }
            }
            Spec::Add { body, shortcut, .. } => Node::Residual(Residual {
                body: build(body, d, classes, decls),
                shortcut: build(shortcut, d, classes, decls),
            }),
            Spec::Normalize { mean, std, .. } => Node::Normalize(NormGeom {
                c,
                hw: h * w,
                mean: mean.iter().map(|&v| v as f32).collect(),
                std: std.iter().map(|&v| v as f32).collect(),
            }),
            Spec::Crop { h: ch, w: cw, .. } => Node::Crop(CropGeom {
                c,
                h,
                w,
                ch: *ch,
                cw: *cw,
            }),
        };
        d = crate::arch::out_dims_node(s, d, classes);
        nodes.push(node);
    }
    nodes
}

/// A layer's parameters: weight (PyTorch layout; γ for batch norm) and bias (β; empty when
/// the layer has none), and a batch norm's running statistics (empty otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub kind: ParamKind,
    pub w: Vec<f32>,
    pub w_shape: Vec<usize>,
    pub b: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

impl Layer {
    pub fn len(&self) -> usize {
        self.w.len() + self.b.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node saved for the backward.
#[derive(Debug, Clone)]
pub enum Saved {
    None,
    /// The node's input (conv, linear).
    Input(Arc<Vec<f32>>),
    /// The node's output (activations).
    Output(Arc<Vec<f32>>),
    /// Max pooling's argmax per output.
    Pool(Vec<u32>),
    /// Dropout's mask (empty: dropout was off, the identity).
    Mask(Vec<f32>),
    Bn {
        input: Arc<Vec<f32>>,
        stats: BnStats,
    },
    Residual {
        body: Vec<Saved>,
        shortcut: Vec<Saved>,
    },
}

/// How a forward pass runs: `train` selects batch statistics in batch norm and random crops;
/// `masks` drives dropout.
pub struct Ctx<'a> {
    pub train: bool,
    pub masks: Masks<'a>,
}

fn owned(x: Arc<Vec<f32>>) -> Vec<f32> {
    Arc::try_unwrap(x).unwrap_or_else(|a| (*a).clone())
}

/// Runs `nodes` on `x` (`n` samples); with `keep`, records what the backward needs.
pub fn forward_seq(
    nodes: &[Node],
    layers: &[Layer],
    x: Arc<Vec<f32>>,
    n: usize,
    ctx: &mut Ctx<'_>,
    keep: bool,
) -> (Arc<Vec<f32>>, Vec<Saved>) {
    let mut cur = x;
    let mut saved = Vec::with_capacity(if keep { nodes.len() } else { 0 });
    let mut i = 0;
    while i < nodes.len() {
        // a batch norm or a residual sum and the activation after it in one pass over
        // memory (the same operations on the same values); each node saves what it saved
        // alone
        let fused = match (&nodes[i], nodes.get(i + 1)) {
            (Node::Bn { .. } | Node::Residual(_), Some(Node::Act { slope })) => Some(*slope),
            _ => None,
        };
        if fused.is_some() {
            let (y, s) = match &nodes[i] {
                Node::Bn { g, p } => bn_forward(g, &layers[*p], cur, n, ctx, keep, fused),
                Node::Residual(r) => residual::forward(r, layers, cur, n, ctx, keep, fused),
                _ => unreachable!("only batch norms and residual sums take the activation"),
            };
            if keep {
                saved.push(s);
                saved.push(Saved::Output(y.clone()));
            }
            cur = y;
            i += 2;
            continue;
        }
        let (y, s) = forward_node(&nodes[i], layers, cur, n, ctx, keep);
        if keep {
            saved.push(s);
        }
        cur = y;
        i += 1;
    }
    (cur, saved)
}

/// A batch norm's forward (batch statistics in training, running ones otherwise), with the
/// activation of slope `act` applied to its output when it follows.
fn bn_forward(
    g: &BnGeom,
    l: &Layer,
    x: Arc<Vec<f32>>,
    n: usize,
    ctx: &Ctx<'_>,
    keep: bool,
    act: Option<f32>,
) -> (Arc<Vec<f32>>, Saved) {
    let stats = if ctx.train {
        batchnorm::batch_stats(g, &x, n)
    } else {
        batchnorm::eval_stats(g, &l.running_mean, &l.running_var)
    };
    let y = batchnorm::forward(g, &stats, &l.w, &l.b, &x, n, act);
    let s = if keep {
        Saved::Bn { input: x, stats }
    } else {
        Saved::None
    };
    (Arc::new(y), s)
}

fn forward_node(
    node: &Node,
    layers: &[Layer],
    x: Arc<Vec<f32>>,
    n: usize,
    ctx: &mut Ctx<'_>,
    keep: bool,
) -> (Arc<Vec<f32>>, Saved) {
    let keep_input = |x: Arc<Vec<f32>>| if keep { Saved::Input(x) } else { Saved::None };
    match node {
        Node::Conv { g, p } => {
            let l = &layers[*p];
            let y = conv::forward(g, &l.w, &l.b, &x, n);
            (Arc::new(y), keep_input(x))
        }
        Node::Bn { g, p } => bn_forward(g, &layers[*p], x, n, ctx, keep, None),
        Node::Act { slope } => {
            let mut v = owned(x);
            activation::forward(*slope, &mut v);
            let y = Arc::new(v);
            let s = if keep {
                Saved::Output(y.clone())
            } else {
                Saved::None
            };
            (y, s)
        }
        Node::Dropout { rate } => {
            let mut v = owned(x);
            let mask = dropout::forward(*rate, &mut v, n, &mut ctx.masks, keep);
            (
                Arc::new(v),
                if keep {
                    Saved::Mask(mask.unwrap_or_default())
                } else {
                    Saved::None
                },
            )
        }
        Node::MaxPool(g) => {
            let (y, idx) = pool::max_forward(g, &x, n);
            (
                Arc::new(y),
                if keep { Saved::Pool(idx) } else { Saved::None },
            )
        }
        Node::AvgPool(g) => (Arc::new(pool::avg_forward(g, &x, n)), Saved::None),
        Node::GlobalAvg { c, hw } => (Arc::new(pool::global_forward(*c, *hw, &x, n)), Saved::None),
        Node::Flatten => (x, Saved::None),
        Node::Linear { inp, out, p, .. } => {
            let l = &layers[*p];
            let y = linear::forward(&x, &l.w, &l.b, n, *inp, *out);
            (Arc::new(y), keep_input(x))
        }
        Node::Residual(r) => residual::forward(r, layers, x, n, ctx, keep, None),
        Node::Crop(g) => {
            let y = if ctx.train {
                crop::forward(g, &x, n, &mut ctx.masks)
            } else {
                crop::forward(g, &x, n, &mut Masks::Off)
            };
            (Arc::new(y), Saved::None)
        }
        Node::Normalize(g) => {
            let mut v = owned(x);
            normalize::forward(g, &mut v);
            (Arc::new(v), Saved::None)
        }
    }
}

/// Receives each parameterised layer's output gradient dL/d(output) [n, out_len] during the
/// backward: (layer index, its node, what it saved, the gradient, and for a batch norm in
/// training mode the batch's channel sums, which its dx needs as well).
pub type Sink<'a> = dyn FnMut(usize, &Node, &Saved, &[f32], Option<&ChannelSums>) + 'a;

/// Backward through `nodes` from `dy` (the gradient of their output); returns the gradient
/// of their input if `need_dx` (some layer before them has parameters), else an empty vec.
/// Stops as soon as no earlier node has parameters.
pub fn backward_seq(
    nodes: &[Node],
    layers: &[Layer],
    saved: &[Saved],
    dy: Vec<f32>,
    n: usize,
    need_dx: bool,
    sink: &mut Sink<'_>,
) -> Vec<f32> {
    assert_eq!(
        saved.len(),
        nodes.len(),
        "the tape does not match the graph"
    );
    let mut cur = dy;
    for i in (0..nodes.len()).rev() {
        let need = need_dx || nodes[..i].iter().any(Node::has_params);
        if !need && !nodes[i].has_params() {
            return Vec::new();
        }
        cur = backward_node(&nodes[i], layers, &saved[i], cur, n, need, sink);
        if !need {
            return Vec::new();
        }
    }
    cur
}

fn backward_node(
    node: &Node,
    layers: &[Layer],
    saved: &Saved,
    mut dy: Vec<f32>,
    n: usize,
    need_dx: bool,
    sink: &mut Sink<'_>,
) -> Vec<f32> {
    match (node, saved) {
        (Node::Conv { g, p }, Saved::Input(_)) => {
            sink(*p, node, saved, &dy, None);
            if need_dx {
                conv::input_grad(g, &layers[*p].w, &dy, n)
            } else {
                Vec::new()
            }
        }
        (Node::Bn { g, p }, Saved::Bn { input, stats }) => {
            // in training mode the channel sums serve (dγ, dβ) and dx: formed once
            let sums = stats
                .train
                .then(|| batchnorm::channel_sums(g, stats, &dy, input, n));
            sink(*p, node, saved, &dy, sums.as_ref());
            if need_dx {
                batchnorm::input_grad(g, stats, &layers[*p].w, &dy, input, n, sums.as_ref())
            } else {
                Vec::new()
            }
        }
        (Node::Act { slope }, Saved::Output(act)) => {
            activation::backward(act, *slope, &mut dy);
            dy
        }
        (Node::Dropout { .. }, Saved::Mask(mask)) => {
            dropout::backward(mask, &mut dy);
            dy
        }
        (Node::MaxPool(g), Saved::Pool(idx)) => pool::max_backward(&dy, idx, n, g.in_len()),
        (Node::AvgPool(g), _) => pool::avg_backward(g, &dy, n),
        (Node::GlobalAvg { c, hw }, _) => pool::global_backward(*c, *hw, &dy, n),
        (Node::Flatten, _) => dy,
        (Node::Linear { inp, out, p, .. }, Saved::Input(_)) => {
            sink(*p, node, saved, &dy, None);
            if need_dx {
                linear::input_grad(&dy, &layers[*p].w, n, *inp, *out)
            } else {
                Vec::new()
            }
        }
        (Node::Residual(r), Saved::Residual { body, shortcut }) => {
            residual::backward(r, layers, body, shortcut, dy, n, need_dx, sink)
        }
        (Node::Crop(_), _) => Vec::new(),
        (Node::Normalize(g), _) => {
            normalize::backward(g, &mut dy);
            dy
        }
        _ => unreachable!("the tape does not match the graph"),
    }
}

/// Dropout masks of a tape in forward order (for replaying them in the oracle).
pub fn masks_of(saved: &[Saved], out: &mut Vec<Vec<f32>>) {
    for s in saved {
        match s {
            Saved::Mask(m) => out.push(m.clone()),
            Saved::Residual { body, shortcut } => {
                masks_of(body, out);
                masks_of(shortcut, out);
            }
            _ => {}
        }
    }
}

/// Batch-norm layers of a tape with the statistics they normalised with: (layer index, its
/// geometry, the statistics), in forward order.
pub fn bn_stats_of<'a>(
    nodes: &[Node],
    saved: &'a [Saved],
    out: &mut Vec<(usize, BnGeom, &'a BnStats)>,
) {
    for (node, s) in nodes.iter().zip(saved) {
        match (node, s) {
            (Node::Bn { p, g }, Saved::Bn { stats, .. }) => out.push((*p, *g, stats)),
            (Node::Residual(r), Saved::Residual { body, shortcut }) => {
                bn_stats_of(&r.body, body, out);
                bn_stats_of(&r.shortcut, shortcut, out);
            }
            _ => {}
        }
    }
}
