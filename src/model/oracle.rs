//! The same network built from candle ops with candle's autograd: the oracle the explicit
//! kernels are tested against, and the naive batch-1 per-sample-gradient baseline of the
//! benchmark.

use super::net::{Net, Step};
use candle_core::{DType, Device, Tensor, Var};

/// The net's parameters as candle variables (weight, bias per layer).
pub struct CandleNet<'a> {
    pub net: &'a Net,
    pub vars: Vec<(Var, Var)>,
    /// F32 (the oracle of the kernels) or F64 (the precision reference of the features).
    pub dtype: DType,
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
                Ok((
                    Var::from_tensor(
                        &Tensor::from_vec(l.w.clone(), l.w_shape.as_slice(), &dev)?
                            .to_dtype(dtype)?,
                    )?,
                    Var::from_tensor(
                        &Tensor::from_vec(l.b.clone(), l.b.len(), &dev)?.to_dtype(dtype)?,
                    )?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CandleNet { net, vars, dtype })
    }

    /// Logits [n, classes]; `masks` (one per dropout step, each n × that step's size) applied
    /// when given, dropout off otherwise.
    pub fn logits(
        &self,
        x: &[f32],
        n: usize,
        masks: Option<&[Vec<f32>]>,
    ) -> candle_core::Result<Tensor> {
        let a = &self.net.arch;
        let mut t = Tensor::from_vec(
            x.to_vec(),
            (n, a.input.c, a.input.h, a.input.w),
            &Device::Cpu,
        )?
        .to_dtype(self.dtype)?;
        let mut di = 0;
        for step in &self.net.steps {
            match *step {
                Step::Conv(i) => {
                    let (w, b) = &self.vars[i];
                    let p = a.kernel / 2;
                    t = t.conv2d(w.as_tensor(), p, 1, 1, 1)?;
                    t = t.broadcast_add(&b.as_tensor().reshape((1, b.dims()[0], 1, 1))?)?;
                    t = candle_nn::ops::leaky_relu(&t, a.slope as f64)?;
                }
                Step::Pool(_) => {
                    // Not `Tensor::max_pool2d`: candle 0.11's backward of it scales the gradient
                    // by 1/(window area) (found by this project's tests), so the oracle pools
                    // with a reshape and two max reductions, whose backward is right.
                    let (b, c, h, w) = t.dims4()?;
                    let (oh, ow) = (h / a.pool, w / a.pool);
                    t = t.narrow(2, 0, oh * a.pool)?.narrow(3, 0, ow * a.pool)?;
                    t = t.reshape((b, c, oh, a.pool, ow, a.pool))?.max(5)?.max(3)?;
                }
                Step::Drop(_) => {
                    if let Some(m) = masks {
                        let mask = Tensor::from_vec(m[di].clone(), t.shape(), &Device::Cpu)?
                            .to_dtype(self.dtype)?;
                        t = (t * mask)?;
                    }
                    di += 1;
                }
                Step::Fc => {
                    let (w, b) = self.vars.last().unwrap();
                    t = t.flatten_from(1)?;
                    t = t
                        .matmul(&w.as_tensor().t()?)?
                        .broadcast_add(b.as_tensor())?;
                }
            }
        }
        Ok(t)
    }

    /// Gradients of Σ_i w_i · (−log softmax(f(x_i))_{y_i}) with respect to every parameter.
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
        self.vars
            .iter()
            .map(|(w, b)| {
                let f = |v: &Var| -> candle_core::Result<Vec<f64>> {
                    match gs.get(v.as_tensor()) {
                        Some(g) => g.flatten_all()?.to_dtype(DType::F64)?.to_vec1(),
                        None => Ok(vec![0.0; v.elem_count()]),
                    }
                };
                Ok((f(w)?, f(b)?))
            })
            .collect()
    }
}

/// The naive per-sample gradient: one batch-1 candle backward per image, at the predicted label.
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
/// logits. Returns (pred, 1 − p_pred from the f64 softmax, per-layer (weight, bias) gradients).
/// Its own rounding is ~1e-16 absolute at the predicted logit, so it is a reference to 1e-4
/// relative wherever 1 − p_pred ≥ 1e-11.
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
