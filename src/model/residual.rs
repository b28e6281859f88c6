//! The residual block: out = body(x) + shortcut(x) (the ReLU after it is the next node). Its
//! body and shortcut are node lists run by the graph runner; the shortcut is the identity when
//! empty. Its parameters are its parts' (conv, batch norm): each part is its own layer in the
//! gradient statistics.

use super::graph::{backward_seq, forward_seq, Ctx, Layer, Node, Saved, Sink};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    pub body: Vec<Node>,
    /// Empty: the identity.
    pub shortcut: Vec<Node>,
}

pub fn forward(
    r: &Residual,
    layers: &[Layer],
    x: Arc<Vec<f32>>,
    n: usize,
    ctx: &mut Ctx<'_>,
    keep: bool,
) -> (Arc<Vec<f32>>, Saved) {
    let (b, sb) = forward_seq(&r.body, layers, x.clone(), n, ctx, keep);
    let (s, ss) = if r.shortcut.is_empty() {
        (x, Vec::new())
    } else {
        forward_seq(&r.shortcut, layers, x, n, ctx, keep)
    };
    let mut y = Arc::try_unwrap(b).unwrap_or_else(|a| (*a).clone());
    for (o, v) in y.iter_mut().zip(s.iter()) {
        *o += v;
    }
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
    let dxs = if r.shortcut.is_empty() {
        if need_dx {
            dy.clone()
        } else {
            Vec::new()
        }
    } else {
        backward_seq(&r.shortcut, layers, shortcut, dy.clone(), n, need_dx, sink)
    };
    let mut dx = backward_seq(&r.body, layers, body, dy, n, need_dx, sink);
    if !need_dx {
        return Vec::new();
    }
    for (d, s) in dx.iter_mut().zip(&dxs) {
        *d += s;
    }
    dx
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
}
