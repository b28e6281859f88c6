//! The same network built from candle ops with candle's autograd: the oracle the explicit
//! kernels are tested against, and the naive batch-1 per-sample-gradient baseline of the
//! benchmark.

use super::net::{Net, Step};
use candle_core::{DType, Device, Tensor, Var};

/// The net's parameters as candle variables (weight, bias per layer).
pub struct CandleNet<'a> {
    pub net: &'a Net,
    pub vars: Vec<(Var, Var)>,
}

impl<'a> CandleNet<'a> {
    pub fn new(net: &'a Net) -> candle_core::Result<CandleNet<'a>> {
        let dev = Device::Cpu;
        let vars = net
            .layers
            .iter()
            .map(|l| {
                Ok((
                    Var::from_tensor(&Tensor::from_vec(l.w.clone(), l.w_shape.as_slice(), &dev)?)?,
                    Var::from_tensor(&Tensor::from_vec(l.b.clone(), l.b.len(), &dev)?)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CandleNet { net, vars })
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
        let mut t = Tensor::from_vec(x.to_vec(), (n, 1, 28, 28), &Device::Cpu)?;
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
                        let mask = Tensor::from_vec(m[di].clone(), t.shape(), &Device::Cpu)?;
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
        let logits = self.logits(x, n, masks)?;
        let lsm = candle_nn::ops::log_softmax(&logits, 1)?;
        let idx = Tensor::from_vec(labels.to_vec(), (n, 1), &Device::Cpu)?;
        let picked = lsm.gather(&idx, 1)?;
        let loss = (picked.sum_all()? * (-(weight as f64)))?;
        let gs = loss.backward()?;
        self.vars
            .iter()
            .map(|(w, b)| {
                let f = |v: &Var| -> candle_core::Result<Vec<f32>> {
                    match gs.get(v.as_tensor()) {
                        Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1(),
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
