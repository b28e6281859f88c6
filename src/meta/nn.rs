//! The NN meta classifier: standardised features → linear → ReLU (hidden units) → linear →
//! sigmoid, trained in candle with AdamW (weight decay) on full batches, with early stopping on a
//! held-out fifth of meta-train (best held-out loss kept).

use crate::data::stage_rng;
use crate::meta::logistic::standardise;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;

/// Settings of the NN meta classifier.
#[derive(Debug, Clone)]
pub struct NnParams {
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Epochs without held-out improvement before stopping.
    pub patience: usize,
    pub seed: u64,
}

/// A fitted NN meta classifier.
pub struct Nn {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    l1: candle_nn::Linear,
    l2: candle_nn::Linear,
    pub epochs_run: usize,
}

impl std::fmt::Debug for Nn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Nn {{ inputs: {}, epochs_run: {} }}",
            self.mean.len(),
            self.epochs_run
        )
    }
}

fn to_tensor(z: &[f64], n: usize, p: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(
        z.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
        (n, p),
        &Device::Cpu,
    )
}

impl Nn {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l2
            .forward(&self.l1.forward(x)?.relu()?)?
            .squeeze(D::Minus1)
    }

    /// The weights as named tensors (`l1.weight [hidden, p]`, `l1.bias`, `l2.weight [1, hidden]`,
    /// `l2.bias`), for saving as safetensors.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (name, l) in [("l1", &self.l1), ("l2", &self.l2)] {
            v.push((format!("{name}.weight"), l.weight().clone()));
            if let Some(b) = l.bias() {
                v.push((format!("{name}.bias"), b.clone()));
            }
        }
        v
    }

    /// A model from the standardisation and tensors written by [`Nn::tensors`]; shapes are
    /// checked against the number of inputs.
    pub fn from_tensors(
        mean: Vec<f64>,
        scale: Vec<f64>,
        t: &std::collections::HashMap<String, Tensor>,
    ) -> Result<Nn, String> {
        let get = |k: &str| -> Result<Tensor, String> {
            let x = t.get(k).ok_or(format!("tensor {k} is missing"))?;
            x.to_dtype(DType::F32)
                .map_err(|e| format!("tensor {k}: {e}"))
        };
        let (w1, b1, w2, b2) = (
            get("l1.weight")?,
            get("l1.bias")?,
            get("l2.weight")?,
            get("l2.bias")?,
        );
        let p = mean.len();
        let h = b1.elem_count();
        if scale.len() != p
            || w1.dims() != [h, p]
            || b1.dims() != [h]
            || w2.dims() != [1, h]
            || b2.dims() != [1]
        {
            return Err(format!(
                "tensor shapes {:?} {:?} {:?} {:?} do not fit {p} inputs",
                w1.dims(),
                b1.dims(),
                w2.dims(),
                b2.dims()
            ));
        }
        for (k, x) in [
            ("l1.weight", &w1),
            ("l1.bias", &b1),
            ("l2.weight", &w2),
            ("l2.bias", &b2),
        ] {
            let v: Vec<f32> = x
                .flatten_all()
                .and_then(|f| f.to_vec1())
                .map_err(|e| format!("tensor {k}: {e}"))?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("tensor {k} holds a non-finite value"));
            }
        }
        Ok(Nn {
            mean,
            scale,
            l1: candle_nn::Linear::new(w1, Some(b1)),
            l2: candle_nn::Linear::new(w2, Some(b2)),
            epochs_run: 0,
        })
    }

    /// P(target = 1) of each row (row-major, p columns).
    pub fn predict(&self, x: &[f64]) -> candle_core::Result<Vec<f64>> {
        let p = self.mean.len();
        let n = x.len() / p.max(1);
        let z: Vec<f64> = x
            .chunks(p.max(1))
            .flat_map(|r| {
                (0..p)
                    .map(|j| {
                        if self.scale[j] > 0.0 {
                            (r[j] - self.mean[j]) / self.scale[j]
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let s = candle_nn::ops::sigmoid(&self.logits(&to_tensor(&z, n, p)?)?)?;
        Ok(s.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }
}

fn bce(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    // mean of softplus(l) − y·l, written with stable primitives
    let sp = (logits.relu()? + ((logits.abs()? * -1.0)?.exp()? + 1.0)?.log()?)?;
    (sp - (y * logits)?)?.mean_all()
}

impl NnParams {
    pub fn fit(&self, x: &[f64], y: &[f64]) -> candle_core::Result<Nn> {
        let n = y.len();
        let p = x.len() / n.max(1);
        let (z, mean, scale) = standardise(x, n, p);
        let mut idx: Vec<usize> = (0..n).collect();
        let mut rng = stage_rng(self.seed, "meta/nn");
        idx.shuffle(&mut rng);
        let nv = if n >= 10 { n / 5 } else { 0 };
        let (val, tr) = idx.split_at(nv);
        let pick = |rows: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
            let zz: Vec<f64> = rows
                .iter()
                .flat_map(|&i| z[i * p..(i + 1) * p].to_vec())
                .collect();
            let yy: Vec<f32> = rows.iter().map(|&i| y[i] as f32).collect();
            Ok((
                to_tensor(&zz, rows.len(), p)?,
                Tensor::from_vec(yy, rows.len(), &Device::Cpu)?,
            ))
        };
        let (xt, yt) = pick(tr)?;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        // candle's default init draws from its own global RNG; re-draw every variable from the seed
        let l1 = candle_nn::linear(p, self.hidden, vb.pp("l1"))?;
        let l2 = candle_nn::linear(self.hidden, 1, vb.pp("l2"))?;
        {
            use rand::Rng;
            let data = vm.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<_> = data.keys().cloned().collect();
            names.sort();
            for name in names {
                let v = &data[&name];
                let fan_in = if name.starts_with("l1") {
                    p
                } else {
                    self.hidden
                } as f64;
                let bound = (1.0 / fan_in).sqrt() as f32;
                let vals: Vec<f32> = (0..v.elem_count())
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu)?)?;
            }
        }
        let mut opt = candle_nn::AdamW::new(
            vm.all_vars(),
            candle_nn::ParamsAdamW {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
        )?;
        let mut model = Nn {
            mean,
            scale,
            l1,
            l2,
            epochs_run: 0,
        };
        let valset = if nv > 0 { Some(pick(val)?) } else { None };
        let mut best = (f64::INFINITY, Vec::new(), 0usize);
        for epoch in 0..self.epochs {
            let loss = bce(&model.logits(&xt)?, &yt)?;
            opt.backward_step(&loss)?;
            model.epochs_run = epoch + 1;
            if let Some((xv, yv)) = &valset {
                let vl = bce(&model.logits(xv)?, yv)?.to_scalar::<f32>()? as f64;
                if vl < best.0 - 1e-6 {
                    let snap: Vec<Tensor> = vm
                        .all_vars()
                        .iter()
                        .map(|v| v.as_tensor().copy())
                        .collect::<candle_core::Result<_>>()?;
                    best = (vl, snap, epoch);
                } else if epoch - best.2 > self.patience {
                    break;
                }
            }
        }
        if !best.1.is_empty() {
            for (v, t) in vm.all_vars().iter().zip(&best.1) {
                v.set(t)?;
            }
        }
        Ok(model)
    }
}
