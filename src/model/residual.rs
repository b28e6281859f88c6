//! The residual block and the add: out = body(x) + shortcut(x) (after a residual block, its
//! ReLU is the next node; after an add, whatever the list says). Body and shortcut are node
//! lists run by the graph runner; the shortcut is the identity when empty. The parameters are
//! the parts' (conv, batch norm, linear): each part is its own layer in the gradient
//! statistics.

use super::graph::{backward_seq, forward_seq, Ctx, Layer, Node, Saved, Sink};
use rayon::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    pub body: Vec<Node>,
    /// Empty: the identity.
    pub shortcut: Vec<Node>,
}

/// body(x) + shortcut(x), then the activation of slope `act` if one follows (in the same
/// pass over memory: [`super::activation::apply`] on each sum).
pub fn forward(
    r: &Residual,
    layers: &[Layer],
    x: Arc<Vec<f32>>,
    n: usize,
    ctx: &mut Ctx<'_>,
    keep: bool,
    act: Option<f32>,
) -> (Arc<Vec<f32>>, Saved) {
    let (b, sb) = forward_seq(&r.body, layers, x.clone(), n, ctx, keep);
    let (s, ss) = if r.shortcut.is_empty() {
        (x, Vec::new())
    } else {
        forward_seq(&r.shortcut, layers, x, n, ctx, keep)
    };
    let mut y = Arc::try_unwrap(b).unwrap_or_else(|a| (*a).clone());
    y.par_chunks_mut(PAR)
        .zip(s.par_chunks(PAR))
        .for_each(|(y, s)| match act {
            None => add(y, s),
            Some(0.0) => add_act(y, s, 0.0),
            Some(slope) => add_act(y, s, slope),
        });
    let saved = if keep {
        Saved::Residual {
            body: sb,
            shortcut: ss,
        }
    } else {
        Saved::None
    };
    (Arc::new(y), saved)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    r: &Residual,
    layers: &[Layer],
    body: &[Saved],
    shortcut: &[Saved],
    dy: Vec<f32>,
    n: usize,
    need_dx: bool,
    sink: &mut Sink<'_>,
) -> Vec<f32> {
    // the body consumes dy: the shortcut's copy made in parallel
    let copy = |dy: &Vec<f32>| -> Vec<f32> { dy.par_iter().copied().collect() };
    let dxs = if r.shortcut.is_empty() {
        if need_dx {
            copy(&dy)
        } else {
            Vec::new()
        }
    } else {
        backward_seq(&r.shortcut, layers, shortcut, copy(&dy), n, need_dx, sink)
    };
    let mut dx = backward_seq(&r.body, layers, body, dy, n, need_dx, sink);
    if !need_dx {
        return Vec::new();
    }
    dx.par_chunks_mut(PAR)
        .zip(dxs.par_chunks(PAR))
        .for_each(|(d, s)| add(d, s));
    dx
}

/// Elements per parallel piece of the adds.
const PAR: usize = 1 << 14;

/// y += s.
#[inline(always)]
fn add(y: &mut [f32], s: &[f32]) {
    for (o, v) in y.iter_mut().zip(s) {
        *o += v;
    }
}

/// y = act(y + s).
#[inline(always)]
fn add_act(y: &mut [f32], s: &[f32], slope: f32) {
    for (o, v) in y.iter_mut().zip(s) {
        *o = super::activation::apply(slope, *o + v);
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::Spec;

    /// Blocks with the identity shortcut and with the 1×1 projection (stride 2 and a channel
    /// change), batch norm in both modes, against candle autograd.
    #[test]
    fn residual_blocks_match_candle() {
        super::super::oracle::check_specs(
            vec![
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
                    out: 4,
                    stride: 1,
                },
                Spec::Residual {
                    name: "block2".into(),
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
            crate::data::Shape::new(1, 10, 9),
            3,
        );
    }

    /// Adds as imports give them: a body with dropout and a leaky ReLU, a conv + batch norm
    /// shortcut, an add nested in a body, an identity shortcut, and an add of dense layers
    /// after flatten; no activation after the sums.
    #[test]
    fn adds_match_candle() {
        let conv = |n: &str, out, k, s| Spec::Conv {
            name: n.into(),
            out,
            kernel: k,
            stride: s,
            same: true,
            bias: true,
        };
        let lin = |n: &str, out| Spec::Linear {
            name: n.into(),
            out,
            bias: true,
        };
        super::super::oracle::check_specs(
            vec![
                conv("stem", 3, 3, 1),
                Spec::Add {
                    name: "a1".into(),
                    body: vec![
                        conv("a1.c1", 5, 3, 2),
                        Spec::Dropout {
                            name: "a1.d".into(),
                            rate: 0.3,
                        },
                        Spec::Act {
                            name: "a1.r".into(),
                            slope: 0.1,
                        },
                        Spec::Add {
                            name: "a1.inner".into(),
                            body: vec![conv("a1.inner.c", 5, 3, 1)],
                            shortcut: vec![],
                        },
                    ],
                    shortcut: vec![
                        conv("a1.proj", 5, 1, 2),
                        Spec::BatchNorm {
                            name: "a1.bn".into(),
                            eps: 1e-5,
                            momentum: 0.1,
                        },
                    ],
                },
                Spec::Flatten { name: "f".into() },
                lin("fc1", 7),
                Spec::Add {
                    name: "a2".into(),
                    body: vec![
                        Spec::Act {
                            name: "a2.r".into(),
                            slope: 0.0,
                        },
                        lin("a2.fc", 7),
                    ],
                    shortcut: vec![],
                },
                lin("fc", 0),
            ],
            crate::data::Shape::new(2, 7, 6),
            3,
        );
    }
}
