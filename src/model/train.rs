//! Training: SGD with momentum and L2 weight decay, the learning rate cut when the validation
//! loss plateaus, the best-validation checkpoint kept; evaluation in eval mode.

use super::net::{argmax_rows, softmax, Net};
use crate::data::{stage_rng, Dataset};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;

/// Training hyper-parameters (the `[train]` config section).
#[derive(Debug, Clone)]
pub struct TrainParams {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub patience: usize,
    pub factor: f64,
    pub min_lr: f64,
    pub seed: u64,
}

impl TrainParams {
    pub fn from_config(c: &crate::config::Config) -> TrainParams {
        let t = &c.train;
        TrainParams {
            epochs: t.epochs,
            batch_size: t.batch_size,
            lr: t.lr,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            patience: t.plateau_patience,
            factor: t.plateau_factor,
            min_lr: t.min_lr,
            seed: c.run.seed,
        }
    }
}

/// One line of `history.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub seconds: f64,
}

/// A trained net with its history.
#[derive(Debug, Clone)]
pub struct Trained {
    pub net: Net,
    pub history: Vec<EpochRecord>,
    /// Epoch (1-based) whose weights were kept.
    pub best_epoch: usize,
}

/// The logits of every image of a data set (rows × classes), dropout off, in batches.
pub fn logits(net: &Net, ds: &Dataset, batch: usize) -> Result<Vec<f32>> {
    crate::features::check_shape(net, ds)?;
    let len = ds.shape.len();
    let mut out = Vec::with_capacity(ds.len() * net.arch.classes);
    for start in (0..ds.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(ds.len());
        let tape = net.forward(&ds.images[start * len..end * len], end - start, None, false);
        out.extend_from_slice(&tape.logits);
    }
    Ok(out)
}

/// Mean cross-entropy and accuracy of a net on labelled data, dropout off.
pub fn evaluate(net: &Net, ds: &Dataset, batch: usize) -> Result<(f64, f64)> {
    let labels = ds.labels.as_ref().ok_or_else(|| Error::Data {
        name: ds.name.clone(),
        msg: "has no labels to evaluate against".into(),
    })?;
    let k = net.arch.classes;
    let z = logits(net, ds, batch)?;
    let (p, pred) = (softmax(&z, k), argmax_rows(&z, k));
    let (mut loss, mut correct) = (0f64, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let y = y as usize;
        loss -= (p[i * k + y] as f64).max(1e-30).ln();
        correct += (pred[i] as usize == y) as usize;
    }
    let n = ds.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

/// dL/dlogits of the mean cross-entropy (softmax − one-hot)/n, and the summed loss and hits.
pub fn ce_grad(logits: &[f32], labels: &[u32], k: usize) -> (Vec<f32>, f64, usize) {
    let n = labels.len();
    let mut d = softmax(logits, k);
    let (mut loss, mut hits) = (0f64, 0usize);
    let pred = argmax_rows(logits, k);
    for i in 0..n {
        let y = labels[i] as usize;
        loss -= (d[i * k + y] as f64).max(1e-30).ln();
        hits += (pred[i] as usize == y) as usize;
        d[i * k + y] -= 1.0;
    }
    for v in d.iter_mut() {
        *v /= n as f32;
    }
    (d, loss, hits)
}

/// SGD with momentum (PyTorch's form: v ← μv + g + λw; w ← w − lr·v; L2 on weights only).
#[derive(Debug, Clone)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Sgd {
    pub fn new(net: &Net, momentum: f64, weight_decay: f64) -> Sgd {
        Sgd {
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
            velocity: net
                .layers
                .iter()
                .map(|l| (vec![0.0; l.w.len()], vec![0.0; l.b.len()]))
                .collect(),
        }
    }

    pub fn step(&mut self, net: &mut Net, grads: &[(Vec<f32>, Vec<f32>)], lr: f32) {
        for ((layer, (gw, gb)), (vw, vb)) in net
            .layers
            .iter_mut()
            .zip(grads)
            .zip(self.velocity.iter_mut())
        {
            for ((w, g), v) in layer.w.iter_mut().zip(gw).zip(vw.iter_mut()) {
                *v = self.momentum * *v + g + self.weight_decay * *w;
                *w -= lr * *v;
            }
            for ((b, g), v) in layer.b.iter_mut().zip(gb).zip(vb.iter_mut()) {
                *v = self.momentum * *v + g;
                *b -= lr * *v;
            }
        }
    }
}

/// One training step on a batch; returns (summed loss, hits).
pub fn train_step(
    net: &mut Net,
    opt: &mut Sgd,
    x: &[f32],
    y: &[u32],
    lr: f32,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (f64, usize) {
    let n = y.len();
    let tape = net.forward(x, n, Some(rng), true);
    let (d, loss, hits) = ce_grad(&tape.logits, y, net.arch.classes);
    let g = net.backward(&tape, d);
    let grads = net.summed_grads(&tape, &g);
    opt.step(net, &grads, lr);
    (loss, hits)
}

impl TrainParams {
    /// Trains `net` on `train`, selecting the checkpoint and cutting the rate on `val`.
    pub fn fit(&self, mut net: Net, train: &Dataset, val: &Dataset) -> Result<Trained> {
        let labels = train.labels.as_ref().ok_or_else(|| Error::Data {
            name: train.name.clone(),
            msg: "training data needs labels".into(),
        })?;
        if train.is_empty() {
            return Err(Error::Data {
                name: train.name.clone(),
                msg: "no training images".into(),
            });
        }
        let mut rng = stage_rng(self.seed, "train");
        let mut opt = Sgd::new(&net, self.momentum, self.weight_decay);
        let mut lr = self.lr;
        let mut best = (f64::INFINITY, net.clone(), 0usize);
        let mut since_best = 0usize;
        let mut plateau_ref = f64::INFINITY;
        let mut history = Vec::new();
        let bs = self.batch_size;
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut xb = Vec::with_capacity(bs * train.shape.len());
        let mut yb = Vec::with_capacity(bs);
        let pb = indicatif::ProgressBar::new((self.epochs * train.len().div_ceil(bs)) as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "training {bar:30} {pos}/{len} batches, {msg} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        for epoch in 1..=self.epochs {
            let t0 = std::time::Instant::now();
            order.shuffle(&mut rng);
            let (mut loss, mut hits) = (0f64, 0usize);
            for chunk in order.chunks(bs) {
                xb.clear();
                yb.clear();
                for &i in chunk {
                    xb.extend_from_slice(train.image(i));
                    yb.push(labels[i]);
                }
                let (l, h) = train_step(&mut net, &mut opt, &xb, &yb, lr as f32, &mut rng);
                loss += l;
                hits += h;
                pb.inc(1);
            }
            let n = train.len() as f64;
            let (val_loss, val_acc) = if val.is_empty() {
                (loss / n, hits as f64 / n)
            } else {
                evaluate(&net, val, 512)?
            };
            if !val_loss.is_finite() {
                return Err(Error::Model(format!(
                    "training diverged in epoch {epoch} (validation loss {val_loss}); lower train.lr (now {})",
                    self.lr
                )));
            }
            let rec = EpochRecord {
                epoch,
                lr,
                train_loss: loss / n,
                train_acc: hits as f64 / n,
                val_loss,
                val_acc,
                seconds: t0.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "epoch {epoch}: lr {lr:.2e} train loss {:.4} acc {:.4} | val loss {val_loss:.4} acc {val_acc:.4} ({:.1}s)",
                rec.train_loss, rec.train_acc, rec.seconds
            );
            pb.set_message(format!("epoch {epoch} val acc {val_acc:.4}"));
            history.push(rec);
            if val_loss < best.0 {
                best = (val_loss, net.clone(), epoch);
            }
            // ReduceLROnPlateau (mode min, relative threshold 1e-4)
            if val_loss < plateau_ref * (1.0 - 1e-4) {
                plateau_ref = val_loss;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best > self.patience {
                    let new = (lr * self.factor).max(self.min_lr);
                    if new < lr {
                        tracing::info!(
                            "validation loss plateaued: learning rate {lr:.2e} → {new:.2e}"
                        );
                    }
                    lr = new;
                    since_best = 0;
                }
            }
        }
        pb.finish_and_clear();
        Ok(Trained {
            net: best.1,
            history,
            best_epoch: best.2,
        })
    }
}
