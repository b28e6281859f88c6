//! The NN meta classifier: standardised features → linear → ReLU (hidden units) → linear →
//! sigmoid, trained with AdamW (weight decay) on full batches, with early stopping on a
//! held-out fifth of meta-train (best held-out loss kept).
//!
//! Forward, backward and the AdamW step are written out here (f32, the two products by the
//! layers' [`gemm`]) rather than run through candle's autograd: the net is one hidden layer on
//! a few thousand rows, where candle's per-op allocation, zeroing and threading cost more
//! than the arithmetic (the NN was a quarter of the default run's meta stage). candle still
//! holds the tensors the trust model saves, and the tests train the same net with candle's
//! autograd and `AdamW` as the oracle (gradients, and a whole fit).

use crate::data::stage_rng;
use crate::meta::logistic::standardise;
use crate::model::gemm::gemm;
use candle_core::{DType, Device, Tensor};
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

/// The weights: `w1` [hidden, p] row-major, `b1` [hidden], `w2` [hidden] (the output
/// layer's one row), `b2`.
#[derive(Debug, Clone, PartialEq)]
struct Weights {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: f32,
}

/// A fitted NN meta classifier.
pub struct Nn {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    w: Weights,
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

fn sigmoid32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Mean binary cross-entropy of the logits, softplus(l) − y·l, in f64.
fn bce(logits: &[f32], y: &[f32]) -> f64 {
    let s: f64 = logits
        .iter()
        .zip(y)
        .map(|(&l, &t)| {
            let l = l as f64;
            l.max(0.0) + (-l.abs()).exp().ln_1p() - t as f64 * l
        })
        .sum();
    s / logits.len().max(1) as f64
}

impl Weights {
    fn hidden(&self) -> usize {
        self.b1.len()
    }

    /// Hidden pre-activations `a` (n×hidden) and logits of the rows of `z` (n×p, f32).
    fn forward(&self, z: &[f32], n: usize, a: &mut Vec<f32>) -> Vec<f32> {
        let h = self.hidden();
        let p = self.w1.len() / h.max(1);
        a.resize(n * h, 0.0);
        // a = z · W1ᵀ: W1ᵀ read in place (row stride 1, column stride p)
        gemm(n, p, h, z, (p, 1), &self.w1, (1, p), 0.0, a, h);
        let mut logits = vec![0f32; n];
        for (row, l) in a.chunks_mut(h.max(1)).zip(&mut logits) {
            let mut s = 0f32;
            for ((v, &b), &w) in row.iter_mut().zip(&self.b1).zip(&self.w2) {
                *v += b;
                s += v.max(0.0) * w;
            }
            *l = s + self.b2;
        }
        logits
    }

    /// Gradients of the mean loss over the rows of `z` with respect to the weights (same
    /// layout), from the forward pass's `a` and logits; `da` is scratch.
    fn backward(
        &self,
        z: &[f32],
        y: &[f32],
        a: &[f32],
        logits: &[f32],
        da: &mut Vec<f32>,
    ) -> Weights {
        let n = y.len();
        let h = self.hidden();
        let p = self.w1.len() / h.max(1);
        let inv_n = 1.0 / n as f32;
        let mut g = Weights {
            w1: vec![0f32; h * p],
            b1: vec![0f32; h],
            w2: vec![0f32; h],
            b2: 0.0,
        };
        da.resize(n * h, 0.0);
        for i in 0..n {
            // ∂loss/∂logit of row i: (σ(l) − y)/n
            let dl = (sigmoid32(logits[i]) - y[i]) * inv_n;
            g.b2 += dl;
            let (arow, drow) = (&a[i * h..(i + 1) * h], &mut da[i * h..(i + 1) * h]);
            for j in 0..h {
                // the gradient passes at a ≥ 0, as candle's ReLU backward lets it
                let act = arow[j] >= 0.0;
                g.w2[j] += dl * if act { arow[j] } else { 0.0 };
                drow[j] = if act { dl * self.w2[j] } else { 0.0 };
            }
        }
        for row in da.chunks(h.max(1)) {
            for (b, &d) in g.b1.iter_mut().zip(row) {
                *b += d;
            }
        }
        // ∂W1 = daᵀ · z: daᵀ read in place (row stride 1, column stride h)
        gemm(h, n, p, da, (1, h), z, (p, 1), 0.0, &mut g.w1, p);
        g
    }

    fn parts_mut(&mut self) -> [&mut [f32]; 4] {
        [
            &mut self.w1,
            &mut self.b1,
            &mut self.w2,
            std::slice::from_mut(&mut self.b2),
        ]
    }

    fn parts(&self) -> [&[f32]; 4] {
        [&self.w1, &self.b1, &self.w2, std::slice::from_ref(&self.b2)]
    }
}

/// AdamW as candle's `AdamW` (β 0.9, 0.999, ε 1e-8; decoupled weight decay θ·(1 − lr·λ)
/// before the Adam step), with the same f32 operations in the same order.
struct AdamW {
    lr: f64,
    weight_decay: f64,
    t: i32,
    m: Weights,
    v: Weights,
}

impl AdamW {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(w: &Weights, lr: f64, weight_decay: f64) -> AdamW {
        let zero = Weights {
            w1: vec![0.0; w.w1.len()],
            b1: vec![0.0; w.b1.len()],
            w2: vec![0.0; w.w2.len()],
            b2: 0.0,
        };
        AdamW {
            lr,
            weight_decay,
            t: 0,
            m: zero.clone(),
            v: zero,
        }
    }

    fn step(&mut self, w: &mut Weights, g: &Weights) {
        self.t += 1;
        let (b1, b2) = (Self::BETA1 as f32, Self::BETA2 as f32);
        let (c1, c2) = ((1.0 - Self::BETA1) as f32, (1.0 - Self::BETA2) as f32);
        let scale_m = (1.0 / (1.0 - Self::BETA1.powi(self.t))) as f32;
        let scale_v = (1.0 / (1.0 - Self::BETA2.powi(self.t))) as f32;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, Self::EPS as f32);
        for (((th, gr), m), v) in w
            .parts_mut()
            .into_iter()
            .zip(g.parts())
            .zip(self.m.parts_mut())
            .zip(self.v.parts_mut())
        {
            for i in 0..th.len() {
                m[i] = m[i] * b1 + gr[i] * c1;
                v[i] = v[i] * b2 + gr[i] * gr[i] * c2;
                let (m_hat, v_hat) = (m[i] * scale_m, v[i] * scale_v);
                th[i] = th[i] * decay - m_hat / (v_hat.sqrt() + eps) * lr;
            }
        }
    }
}

impl Nn {
    /// The weights as named tensors (`l1.weight [hidden, p]`, `l1.bias`, `l2.weight [1, hidden]`,
    /// `l2.bias`), for saving as safetensors.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let h = self.w.hidden();
        let p = self.w.w1.len() / h.max(1);
        let t = |v: &[f32], shape: &[usize]| {
            Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).expect("shape matches the values")
        };
        vec![
            ("l1.weight".into(), t(&self.w.w1, &[h, p])),
            ("l1.bias".into(), t(&self.w.b1, &[h])),
            ("l2.weight".into(), t(&self.w.w2, &[1, h])),
            ("l2.bias".into(), t(&[self.w.b2], &[1])),
        ]
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
        let mut vals = Vec::new();
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
            vals.push(v);
        }
        let b2 = vals.pop().unwrap_or_default();
        let w2 = vals.pop().unwrap_or_default();
        let b1 = vals.pop().unwrap_or_default();
        let w1 = vals.pop().unwrap_or_default();
        Ok(Nn {
            mean,
            scale,
            w: Weights {
                w1,
                b1,
                w2,
                b2: b2.first().copied().unwrap_or(0.0),
            },
            epochs_run: 0,
        })
    }

    /// The rows of `x` (row-major, p columns) standardised with the fit's means and scales, as
    /// f32.
    fn standardised(&self, x: &[f64]) -> Vec<f32> {
        let p = self.mean.len();
        x.chunks(p.max(1))
            .flat_map(|r| {
                (0..p).map(|j| {
                    if self.scale[j] > 0.0 {
                        ((r[j] - self.mean[j]) / self.scale[j]) as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect()
    }

    /// P(target = 1) of each row (row-major, p columns).
    pub fn predict(&self, x: &[f64]) -> Result<Vec<f64>, String> {
        let p = self.mean.len();
        if p == 0 || !x.len().is_multiple_of(p) {
            return Err(format!("{} values for rows of {p} features", x.len()));
        }
        let n = x.len() / p;
        let z = self.standardised(x);
        let logits = self.w.forward(&z, n, &mut Vec::new());
        Ok(logits.into_iter().map(|l| sigmoid32(l) as f64).collect())
    }
}

impl NnParams {
    pub fn fit(&self, x: &[f64], y: &[f64]) -> Result<Nn, String> {
        let n = y.len();
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(format!("{} values for {n} rows", x.len()));
        }
        let p = x.len() / n;
        let (z, mean, scale) = standardise(x, n, p);
        let mut idx: Vec<usize> = (0..n).collect();
        let mut rng = stage_rng(self.seed, "meta/nn");
        idx.shuffle(&mut rng);
        let nv = if n >= 10 { n / 5 } else { 0 };
        let (val, tr) = idx.split_at(nv);
        let pick = |rows: &[usize]| -> (Vec<f32>, Vec<f32>) {
            let zz: Vec<f32> = rows
                .iter()
                .flat_map(|&i| z[i * p..(i + 1) * p].iter().map(|&v| v as f32))
                .collect();
            let yy: Vec<f32> = rows.iter().map(|&i| y[i] as f32).collect();
            (zz, yy)
        };
        let (xt, yt) = pick(tr);
        let (xv, yv) = pick(val);
        // the initial weights: uniform(±1/√fan_in) from the seed, variable by variable in
        // name order (l1.bias, l1.weight, l2.bias, l2.weight), as the candle version drew them
        let h = self.hidden;
        let mut draw = |count: usize, fan_in: usize| -> Vec<f32> {
            use rand::Rng;
            let bound = (1.0 / fan_in as f64).sqrt() as f32;
            (0..count).map(|_| rng.gen_range(-bound..bound)).collect()
        };
        let b1 = draw(h, p);
        let w1 = draw(h * p, p);
        let b2 = draw(1, h);
        let w2 = draw(h, h);
        let mut w = Weights {
            w1,
            b1,
            w2,
            b2: b2[0],
        };
        let mut opt = AdamW::new(&w, self.lr, self.weight_decay);
        let mut model_epochs = 0;
        let mut best: (f64, Option<Weights>, usize) = (f64::INFINITY, None, 0);
        let (mut a, mut da, mut av) = (Vec::new(), Vec::new(), Vec::new());
        for epoch in 0..self.epochs {
            let logits = w.forward(&xt, tr.len(), &mut a);
            let g = w.backward(&xt, &yt, &a, &logits, &mut da);
            opt.step(&mut w, &g);
            model_epochs = epoch + 1;
            if nv > 0 {
                let vl = bce(&w.forward(&xv, nv, &mut av), &yv);
                if vl < best.0 - 1e-6 {
                    best = (vl, Some(w.clone()), epoch);
                } else if epoch - best.2 > self.patience {
                    break;
                }
            }
        }
        if let Some(b) = best.1 {
            w = b;
        }
        if w.parts().iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            return Err("training produced non-finite weights".into());
        }
        Ok(Nn {
            mean,
            scale,
            w,
            epochs_run: model_epochs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
    use rand::{Rng, SeedableRng};

    fn data(n: usize, p: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f64> = (0..n * p).map(|_| rng.gen::<f64>() * 4.0 - 1.0).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| {
                let eta = x[i * p] * 1.5 - x[i * p + 1] * x[i * p + 1] + 0.5;
                (rng.gen::<f64>() < 1.0 / (1.0 + (-eta).exp())) as u8 as f64
            })
            .collect();
        (x, y)
    }

    fn candle_bce(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let sp = (logits.relu()? + ((logits.abs()? * -1.0)?.exp()? + 1.0)?.log()?)?;
        (sp - (y * logits)?)?.mean_all()
    }

    fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn gradients_equal_candle_autograd() {
        let (n, p, h) = (257, 7, 16);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut r = |k: usize| -> Vec<f32> { (0..k).map(|_| rng.gen::<f32>() - 0.5).collect() };
        let w = Weights {
            w1: r(h * p),
            b1: r(h),
            w2: r(h),
            b2: 0.1,
        };
        let z = r(n * p);
        let y: Vec<f32> = r(n).iter().map(|v| (*v > 0.0) as u8 as f32).collect();
        let mut a = Vec::new();
        let logits = w.forward(&z, n, &mut a);
        let g = w.backward(&z, &y, &a, &logits, &mut Vec::new());
        // candle: the same net and loss, differentiated by its autograd
        let vars = [
            candle_core::Var::from_tensor(&tensor(&w.w1, &[h, p])).unwrap(),
            candle_core::Var::from_tensor(&tensor(&w.b1, &[h])).unwrap(),
            candle_core::Var::from_tensor(&tensor(&w.w2, &[1, h])).unwrap(),
            candle_core::Var::from_tensor(&tensor(&[w.b2], &[1])).unwrap(),
        ];
        let l1 = candle_nn::Linear::new(
            vars[0].as_tensor().clone(),
            Some(vars[1].as_tensor().clone()),
        );
        let l2 = candle_nn::Linear::new(
            vars[2].as_tensor().clone(),
            Some(vars[3].as_tensor().clone()),
        );
        let xt = tensor(&z, &[n, p]);
        let out = l2
            .forward(&l1.forward(&xt).unwrap().relu().unwrap())
            .unwrap()
            .squeeze(1)
            .unwrap();
        close(&logits, &to_vec(&out), 1e-5, "logits");
        let loss = candle_bce(&out, &tensor(&y, &[n])).unwrap();
        assert!((bce(&logits, &y) - loss.to_scalar::<f32>().unwrap() as f64).abs() < 1e-5);
        let grads = loss.backward().unwrap();
        for (v, (mine, what)) in vars.iter().zip([
            (&g.w1[..], "w1"),
            (&g.b1[..], "b1"),
            (&g.w2[..], "w2"),
            (std::slice::from_ref(&g.b2), "b2"),
        ]) {
            close(mine, &to_vec(grads.get(v).unwrap()), 1e-4, what);
        }
    }

    #[test]
    fn adamw_step_equals_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let mut r = |k: usize| -> Vec<f32> { (0..k).map(|_| rng.gen::<f32>() - 0.5).collect() };
        let mut w = Weights {
            w1: r(6),
            b1: r(3),
            w2: r(3),
            b2: 0.3,
        };
        let var = candle_core::Var::from_tensor(&tensor(&w.w1, &[6])).unwrap();
        let mut opt = AdamW::new(&w, 0.03, 1e-2);
        let mut theirs = candle_nn::AdamW::new(
            vec![var.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.03,
                weight_decay: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        for step in 0..5 {
            let g = Weights {
                w1: r(6),
                b1: vec![0.0; 3],
                w2: vec![0.0; 3],
                b2: 0.0,
            };
            opt.step(&mut w, &g);
            // candle: a loss whose gradient is g.w1
            let loss = (var.as_tensor() * tensor(&g.w1, &[6]))
                .unwrap()
                .sum_all()
                .unwrap();
            theirs.backward_step(&loss).unwrap();
            assert_eq!(w.w1, to_vec(var.as_tensor()), "step {step}");
        }
    }

    /// The NN fitted with candle's autograd and `AdamW`: the implementation this module's
    /// replaced, kept as the oracle.
    fn candle_fit(q: &NnParams, x: &[f64], y: &[f64]) -> Vec<f32> {
        let n = y.len();
        let p = x.len() / n;
        let (z, _, _) = standardise(x, n, p);
        let mut idx: Vec<usize> = (0..n).collect();
        let mut rng = stage_rng(q.seed, "meta/nn");
        idx.shuffle(&mut rng);
        let nv = n / 5;
        let (val, tr) = idx.split_at(nv);
        let pick = |rows: &[usize]| {
            let zz: Vec<f32> = rows
                .iter()
                .flat_map(|&i| z[i * p..(i + 1) * p].iter().map(|&v| v as f32))
                .collect();
            let yy: Vec<f32> = rows.iter().map(|&i| y[i] as f32).collect();
            (tensor(&zz, &[rows.len(), p]), tensor(&yy, &[rows.len()]))
        };
        let (xt, yt) = pick(tr);
        let (xv, yv) = pick(val);
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let l1 = candle_nn::linear(p, q.hidden, vb.pp("l1")).unwrap();
        let l2 = candle_nn::linear(q.hidden, 1, vb.pp("l2")).unwrap();
        {
            let data = vm.data().lock().unwrap();
            let mut names: Vec<_> = data.keys().cloned().collect();
            names.sort();
            for name in names {
                let v = &data[&name];
                let fan_in = if name.starts_with("l1") { p } else { q.hidden } as f64;
                let bound = (1.0 / fan_in).sqrt() as f32;
                let vals: Vec<f32> = (0..v.elem_count())
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                v.set(&tensor(&vals, v.shape().dims())).unwrap();
            }
        }
        let mut opt = candle_nn::AdamW::new(
            vm.all_vars(),
            candle_nn::ParamsAdamW {
                lr: q.lr,
                weight_decay: q.weight_decay,
                ..Default::default()
            },
        )
        .unwrap();
        let logits = |x: &Tensor| {
            l2.forward(&l1.forward(x).unwrap().relu().unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap()
        };
        let mut best = (f64::INFINITY, Vec::new(), 0usize);
        for epoch in 0..q.epochs {
            opt.backward_step(&candle_bce(&logits(&xt), &yt).unwrap())
                .unwrap();
            let vl = candle_bce(&logits(&xv), &yv)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            if vl < best.0 - 1e-6 {
                let snap: Vec<Tensor> = vm
                    .all_vars()
                    .iter()
                    .map(|v| v.as_tensor().copy().unwrap())
                    .collect();
                best = (vl, snap, epoch);
            } else if epoch - best.2 > q.patience {
                break;
            }
        }
        for (v, t) in vm.all_vars().iter().zip(&best.1) {
            v.set(t).unwrap();
        }
        let (zall, _) = pick(&(0..n).collect::<Vec<_>>());
        to_vec(&candle_nn::ops::sigmoid(&logits(&zall)).unwrap())
    }

    #[test]
    fn fit_matches_the_candle_version() {
        let (n, p) = (600, 5);
        let (x, y) = data(n, p, 4);
        let q = NnParams {
            hidden: 16,
            epochs: 60,
            lr: 0.03,
            weight_decay: 1e-4,
            patience: 10,
            seed: 9,
        };
        let mine = q.fit(&x, &y).unwrap();
        let pm: Vec<f32> = mine
            .predict(&x)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let pc = candle_fit(&q, &x, &y);
        for (i, (a, b)) in pm.iter().zip(&pc).enumerate() {
            assert!((a - b).abs() < 1e-3, "row {i}: {a} vs {b}");
        }
        // it learnt something: the probabilities follow the targets
        let (mut s1, mut s0) = (0.0, 0.0);
        for (pr, t) in pm.iter().zip(&y) {
            if *t > 0.5 {
                s1 += *pr as f64;
            } else {
                s0 += *pr as f64;
            }
        }
        let k1 = y.iter().filter(|t| **t > 0.5).count() as f64;
        assert!(s1 / k1 > s0 / (n as f64 - k1) + 0.1);
        // saved and loaded, it predicts the same
        let map: std::collections::HashMap<String, Tensor> = mine.tensors().into_iter().collect();
        let back = Nn::from_tensors(mine.mean.clone(), mine.scale.clone(), &map).unwrap();
        assert_eq!(back.predict(&x).unwrap(), mine.predict(&x).unwrap());
    }
}
