//! The same network built from candle ops with candle's autograd: the oracle the explicit
//! kernels are tested against (every layer kind's test runs [`check_specs`]), and the naive
//! batch-1 per-sample-gradient baseline of the benchmark.

use super::graph::Node;
#[cfg(test)]
use super::graph::ParamKind;
use super::net::Net;
use candle_core::{DType, Device, Tensor, Var};

/// The net's parameters as candle variables (weight, bias per layer; the bias None when the
/// layer has none).
pub struct CandleNet<'a> {
    pub net: &'a Net,
    pub vars: Vec<(Var, Option<Var>)>,
    /// F32 (the oracle of the kernels) or F64 (the precision reference of the features).
    pub dtype: DType,
}

/// Max or average over k×k windows at a stride (no padding), by gathering each window's
/// pixels with `index_select` (whose backward is a scatter-add) and reducing: candle 0.11's
/// own `max_pool2d` backward scales the gradient by 1/(window area) (found by this project's
/// tests), so the oracle does not use it.
fn pool(t: &Tensor, k: usize, s: usize, max: bool) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = t.dims4()?;
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut idx = Vec::with_capacity(oh * ow * k * k);
    for oy in 0..oh {
        for ox in 0..ow {
            for dy in 0..k {
                for dx in 0..k {
                    idx.push(((oy * s + dy) * w + ox * s + dx) as u32);
                }
            }
        }
    }
    let idx = Tensor::from_vec(idx, oh * ow * k * k, t.device())?;
    let g = t
        .reshape((b, c, h * w))?
        .index_select(&idx, 2)?
        .reshape((b, c, oh * ow, k * k))?;
    let r = if max { g.max(3)? } else { g.mean(3)? };
    r.reshape((b, c, oh, ow))
}

impl<'a> CandleNet<'a> {
    pub fn new(net: &'a Net) -> candle_core::Result<CandleNet<'a>> {
        Self::with_dtype(net, DType::F32)
    }

    /// The net with its (f32) parameters converted to `dtype`.
    pub fn with_dtype(net: &'a Net, dtype: DType) -> candle_core::Result<CandleNet<'a>> {
        let dev = Device::Cpu;
        let vars = net
            .layers
            .iter()
            .map(|l| {
                let w = Var::from_tensor(
                    &Tensor::from_vec(l.w.clone(), l.w_shape.as_slice(), &dev)?.to_dtype(dtype)?,
                )?;
                let b = if l.b.is_empty() {
                    None
                } else {
                    Some(Var::from_tensor(
                        &Tensor::from_vec(l.b.clone(), l.b.len(), &dev)?.to_dtype(dtype)?,
                    )?)
                };
                Ok((w, b))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CandleNet { net, vars, dtype })
    }

    fn konst(&self, v: &[f32], shape: &[usize]) -> candle_core::Result<Tensor> {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(self.dtype)
    }

    fn seq(
        &self,
        nodes: &[Node],
        mut t: Tensor,
        train: bool,
        masks: Option<&[Vec<f32>]>,
        di: &mut usize,
    ) -> candle_core::Result<Tensor> {
        for node in nodes {
            t = match node {
                Node::Conv { g, p } => {
                    let (w, b) = &self.vars[*p];
                    // A strided conv as the stride-1 conv sampled every `stride` pixels: candle
                    // 0.11's conv2d backward drops the output padding of a strided conv on an
                    // even-sized input (its input gradient comes out a pixel short; found by
                    // this project's tests).
                    let mut y = t.conv2d(w.as_tensor(), g.pad, 1, 1, 1)?;
                    if g.stride > 1 {
                        let pick = |n: usize| {
                            Tensor::from_vec(
                                (0..n).map(|i| (i * g.stride) as u32).collect::<Vec<_>>(),
                                n,
                                &Device::Cpu,
                            )
                        };
                        y = y
                            .index_select(&pick(g.oh)?, 2)?
                            .index_select(&pick(g.ow)?, 3)?;
                    }
                    match b {
                        Some(b) => y.broadcast_add(&b.as_tensor().reshape((1, g.cout, 1, 1))?)?,
                        None => y,
                    }
                }
                Node::Bn { g, p } => {
                    let (w, b) = &self.vars[*p];
                    let l = &self.net.layers[*p];
                    let dims = t.dims().to_vec();
                    let n = dims[0];
                    let x = t.reshape((n, g.c, g.hw))?;
                    let (mean, var) = if train {
                        let mean = x.mean_keepdim(2)?.mean_keepdim(0)?;
                        let d = x.broadcast_sub(&mean)?;
                        let var = d.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
                        (mean, var)
                    } else {
                        (
                            self.konst(&l.running_mean, &[1, g.c, 1])?,
                            self.konst(&l.running_var, &[1, g.c, 1])?,
                        )
                    };
                    let xh = x
                        .broadcast_sub(&mean)?
                        .broadcast_div(&(var + g.eps)?.sqrt()?)?;
                    let y = xh
                        .broadcast_mul(&w.as_tensor().reshape((1, g.c, 1))?)?
                        .broadcast_add(
                            &b.as_ref()
                                .expect("bn has β")
                                .as_tensor()
                                .reshape((1, g.c, 1))?,
                        )?;
                    y.reshape(dims)?
                }
                Node::Act { slope } => {
                    if *slope == 0.0 {
                        t.relu()?
                    } else {
                        candle_nn::ops::leaky_relu(&t, *slope as f64)?
                    }
                }
                Node::MaxPool(g) => pool(&t, g.k, g.stride, true)?,
                Node::AvgPool(g) => pool(&t, g.k, g.stride, false)?,
                Node::GlobalAvg { .. } => t.flatten_from(2)?.mean(2)?,
                Node::Flatten => t.flatten_from(1)?,
                Node::Dropout { .. } => {
                    let r = match masks {
                        Some(m) if !m[*di].is_empty() => {
                            let mask = Tensor::from_vec(m[*di].clone(), t.shape(), &Device::Cpu)?
                                .to_dtype(self.dtype)?;
                            (t * mask)?
                        }
                        _ => t,
                    };
                    *di += 1;
                    r
                }
                Node::Linear { p, .. } => {
                    let (w, b) = &self.vars[*p];
                    let y = t.flatten_from(1)?.matmul(&w.as_tensor().t()?)?;
                    match b {
                        Some(b) => y.broadcast_add(b.as_tensor())?,
                        None => y,
                    }
                }
                Node::Residual(r) => {
                    let body = self.seq(&r.body, t.clone(), train, masks, di)?;
                    let short = self.seq(&r.shortcut, t, train, masks, di)?;
                    (body + short)?
                }
                Node::Crop(g) => {
                    let (oy, ox) = ((g.h - g.ch) / 2, (g.w - g.cw) / 2);
                    t.narrow(2, oy, g.ch)?.narrow(3, ox, g.cw)?
                }
                Node::Normalize(g) => {
                    let m = self.konst(&g.mean, &[1, g.c, 1, 1])?;
                    let sd = self.konst(&g.std, &[1, g.c, 1, 1])?;
                    t.broadcast_sub(&m)?.broadcast_div(&sd)?
                }
            };
        }
        Ok(t)
    }

    /// Logits [n, classes]; `masks` (one per dropout node in forward order, each n × that
    /// node's size) applied when given, dropout off otherwise; `train`: batch norm on batch
    /// statistics.
    pub fn logits_mode(
        &self,
        x: &[f32],
        n: usize,
        masks: Option<&[Vec<f32>]>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let a = &self.net.arch;
        let t = Tensor::from_vec(
            x.to_vec(),
            (n, a.input.c, a.input.h, a.input.w),
            &Device::Cpu,
        )?
        .to_dtype(self.dtype)?;
        self.seq(&self.net.nodes, t, train, masks, &mut 0)
    }

    /// Evaluation-mode logits (dropout masks applied when given).
    pub fn logits(
        &self,
        x: &[f32],
        n: usize,
        masks: Option<&[Vec<f32>]>,
    ) -> candle_core::Result<Tensor> {
        self.logits_mode(x, n, masks, masks.is_some() && self.net.has_batch_norm())
    }

    /// Gradients of Σ_i w_i · (−log softmax(f(x_i))_{y_i}) with respect to every parameter
    /// (batch norm in training mode when `masks` are given: a training step).
    pub fn grads(
        &self,
        x: &[f32],
        n: usize,
        labels: &[u32],
        weight: f32,
        masks: Option<&[Vec<f32>]>,
    ) -> candle_core::Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let g = self.grads_f64(x, n, labels, weight, masks)?;
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Ok(g.into_iter().map(|(w, b)| (f(w), f(b))).collect())
    }

    /// [`CandleNet::grads`] as f64 values (exact for an F32 net, the F64 result for an F64 one).
    pub fn grads_f64(
        &self,
        x: &[f32],
        n: usize,
        labels: &[u32],
        weight: f32,
        masks: Option<&[Vec<f32>]>,
    ) -> candle_core::Result<Vec<(Vec<f64>, Vec<f64>)>> {
        let logits = self.logits(x, n, masks)?;
        let lsm = candle_nn::ops::log_softmax(&logits, 1)?;
        let idx = Tensor::from_vec(labels.to_vec(), (n, 1), &Device::Cpu)?;
        let picked = lsm.gather(&idx, 1)?;
        let loss = (picked.sum_all()? * (-(weight as f64)))?;
        let gs = loss.backward()?;
        let f = |v: &Var| -> candle_core::Result<Vec<f64>> {
            match gs.get(v.as_tensor()) {
                Some(g) => g.flatten_all()?.to_dtype(DType::F64)?.to_vec1(),
                None => Ok(vec![0.0; v.elem_count()]),
            }
        };
        self.vars
            .iter()
            .map(|(w, b)| {
                Ok((
                    f(w)?,
                    match b {
                        Some(b) => f(b)?,
                        None => Vec::new(),
                    },
                ))
            })
            .collect()
    }
}

/// The naive per-sample gradient: one batch-1 candle backward per image, at the predicted label
/// (evaluation mode).
pub fn per_sample_grads_naive(
    net: &Net,
    x: &[f32],
) -> candle_core::Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let c = CandleNet::new(net)?;
    let logits = c.logits(x, 1, None)?;
    let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let pred = super::net::argmax_rows(&row, row.len())[0];
    c.grads(x, 1, &[pred], 1.0, None)
}

/// The float64 reference of the per-sample gradient: the net's f32 parameters and the image
/// converted to f64, one batch-1 candle backward in f64 at the label predicted by the f64
/// logits (evaluation mode). Returns (pred, 1 − p_pred from the f64 softmax, per-layer
/// (weight, bias) gradients). Its own rounding is ~1e-16 absolute at the predicted logit, so
/// it is a reference to 1e-4 relative wherever 1 − p_pred ≥ 1e-11.
pub fn per_sample_grads_f64(net: &Net, x: &[f32]) -> candle_core::Result<F64Grads> {
    let c = CandleNet::with_dtype(net, DType::F64)?;
    let logits: Vec<f64> = c.logits(x, 1, None)?.flatten_all()?.to_vec1()?;
    let mut pred = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[pred] {
            pred = i;
        }
    }
    let others: f64 = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pred)
        .map(|(_, v)| (v - logits[pred]).exp())
        .sum();
    let one_minus_msp = others / (1.0 + others);
    let g = c.grads_f64(x, 1, &[pred as u32], 1.0, None)?;
    Ok((pred as u32, one_minus_msp, g))
}

/// (pred, 1 − msp, per-layer (weight, bias) gradients) of [`per_sample_grads_f64`].
pub type F64Grads = (u32, f64, Vec<(Vec<f64>, Vec<f64>)>);

/// [l1, l2, min, max, mean, skew, kurt] of values, the plain two-pass way in f64.
pub fn naive_stats(v: &[f64]) -> [f64; 7] {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let c = |k: i32| v.iter().map(|x| (x - mean).powi(k)).sum::<f64>() / n;
    let (c2, c3, c4) = (c(2), c(3), c(4));
    let (skew, kurt) = if c2 > 0.0 {
        (c3 / c2.powf(1.5), c4 / (c2 * c2) - 3.0)
    } else {
        (0.0, 0.0)
    };
    [
        v.iter().map(|x| x.abs()).sum(),
        v.iter().map(|x| x * x).sum::<f64>().sqrt(),
        v.iter().cloned().fold(f64::INFINITY, f64::min),
        v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        mean,
        skew,
        kurt,
    ]
}

/// 1e-4 relative; near-zero values get a floor on their natural scale: the mean on l2/n,
/// skewness (unitless, O(1)) on 0.1, excess kurtosis relative to the kurtosis itself (excess
/// + 3: the moment ratio the value is computed as).
pub fn tolerance(stat: usize, want: &[f64; 7], n: usize) -> f64 {
    let v = match stat {
        4 => want[4].abs().max(want[1] / n as f64),
        5 => want[5].abs().max(0.1),
        6 => want[6].abs().max((want[6] + 3.0).abs()),
        s => want[s].abs(),
    };
    1e-4 * v
}

/// The oracle test every layer kind runs: a net of `specs` on `shape` with `classes` outputs,
/// random weights, batch-norm parameters and running statistics, checked against candle
/// autograd (1) in a training step (dropout masks replayed, batch norm on batch statistics):
/// logits and summed gradients of every layer, and the running statistics after it; and (2)
/// in evaluation mode, per sample at the predicted label in float64: all 7 statistics of every
/// layer and of the whole net within 1e-4 relative, on rows made confident by scaling the last
/// layer (1 − msp down to ~1e-9) as well as on plain ones.
#[cfg(test)]
pub fn check_specs(specs: Vec<crate::arch::Spec>, shape: crate::data::Shape, classes: usize) {
    use super::net::Arch;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let arch = Arch {
        input: shape,
        classes,
        specs,
    };
    let mut net = Net::new(arch, &mut rng).unwrap();
    for l in net.layers.iter_mut() {
        if l.kind == ParamKind::BatchNorm {
            for v in l.w.iter_mut() {
                *v = rng.gen_range(0.5..1.5);
            }
            for v in l.b.iter_mut() {
                *v = rng.gen_range(-0.3..0.3);
            }
            for v in l.running_mean.iter_mut() {
                *v = rng.gen_range(-0.2..0.2);
            }
            for v in l.running_var.iter_mut() {
                *v = rng.gen_range(0.5..1.5);
            }
        } else {
            for v in l.b.iter_mut() {
                *v = rng.gen_range(-0.1..0.1);
            }
        }
    }
    let close = |a: &[f32], b: &[f32], rel: f32, what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-12);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= rel * scale,
                "{what} entry {i}: {x} vs {y} (scale {scale})"
            );
        }
    };
    // (1) a training step
    let n = 6;
    let len = shape.len();
    let x: Vec<f32> = (0..n * len).map(|_| rng.gen::<f32>()).collect();
    let y: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let tape = net.forward(&x, n, Some(&mut rng), true);
    let masks = tape.masks();
    let (d, _, _) = super::train::ce_grad(&tape.logits, &y, classes);
    let ours = net.summed_grads(&tape, d);
    let c = CandleNet::new(&net).unwrap();
    let want: Vec<f32> = c
        .logits_mode(&x, n, Some(&masks), true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    close(&tape.logits, &want, 1e-5, "training logits");
    let theirs = c.grads(&x, n, &y, 1.0 / n as f32, Some(&masks)).unwrap();
    for (l, ((gw, gb), (tw, tb))) in ours.iter().zip(&theirs).enumerate() {
        let name = &net.layers[l].name;
        close(gw, tw, 1e-4, &format!("training grad of {name}.weight"));
        // a bias before batch norm has a zero gradient (the norm removes it): the bias is
        // compared on the scale of its layer's weight gradient too
        let top = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = top(tb).max(1e-2 * top(tw));
        for (i, (a, b)) in gb.iter().zip(tb).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "training grad of {name}.bias entry {i}: {a} vs {b}"
            );
        }
    }
    // running statistics follow the batch (PyTorch's rule, checked by hand for the first)
    let mut after = net.clone();
    after.update_running(&tape);
    for (a, b) in after.layers.iter().zip(&net.layers) {
        if a.kind == ParamKind::BatchNorm {
            assert_ne!(
                a.running_mean, b.running_mean,
                "{}: running mean moved",
                a.name
            );
        }
    }
    // (2) per-sample statistics in evaluation mode, plain and confident rows
    let m = 5;
    let xs: Vec<f32> = (0..m * len).map(|_| rng.gen::<f32>()).collect();
    let mut confident = 0;
    // confident rows from a raised bias (logits of moderate size, as in a trained net, with
    // gaps of 10–25 nats) and from scaled weights
    for (scale, bias) in [
        (1.0f32, 0.0f32),
        (10.0, 0.0),
        (1.0, 14.0),
        (3.0, 20.0),
        (1.0, 25.0),
    ] {
        let mut net = net.clone();
        let last = net.layers.last_mut().unwrap();
        for w in last.w.iter_mut() {
            *w *= scale;
        }
        if bias > 0.0 {
            if last.b.is_empty() {
                continue;
            }
            last.b[1] += bias;
        }
        let (_, stats, _) = crate::features::grad_stats_batch(&net, &xs, m);
        let nl = net.layers.len() + 1;
        for s in 0..m {
            let (_, one_minus, g) =
                per_sample_grads_f64(&net, &xs[s * len..(s + 1) * len]).unwrap();
            if one_minus < 1e-11 {
                continue;
            }
            confident += (one_minus < 1e-5) as usize;
            let mut all = Vec::new();
            for (l, (w, b)) in g.iter().enumerate() {
                let v: Vec<f64> = w.iter().chain(b).cloned().collect();
                all.extend_from_slice(&v);
                let want = naive_stats(&v);
                let got = stats[s * nl + l];
                for j in 0..7 {
                    assert!(
                        (got[j] - want[j]).abs() <= tolerance(j, &want, v.len()),
                        "scale {scale} row {s} (1-msp {one_minus:.1e}) layer {} stat {j}: {} vs f64 {}",
                        net.layers[l].name,
                        got[j],
                        want[j]
                    );
                }
            }
            let want = naive_stats(&all);
            let got = stats[s * nl + nl - 1];
            for j in 0..7 {
                assert!(
                    (got[j] - want[j]).abs() <= tolerance(j, &want, all.len()),
                    "scale {scale} row {s} all stat {j}: {} vs f64 {}",
                    got[j],
                    want[j]
                );
            }
        }
    }
    assert!(
        confident >= 2,
        "only {confident} confident rows were checked"
    );
}
