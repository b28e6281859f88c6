//! Training: SGD with momentum, Adam or AdamW; the learning rate cut when the validation loss
//! plateaus, on a cosine or in steps; batch norm on batch statistics with its running
//! statistics kept; augmentation of training images; the best-validation checkpoint kept;
//! evaluation in eval mode.

use super::graph::ParamKind;
use super::net::{argmax_rows, softmax, Net};
use crate::data::{stage_rng, Dataset};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;

/// The optimiser (`train.optimizer`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptKind {
    /// SGD with momentum (PyTorch's form), L2 added to the gradient.
    Sgd,
    /// Adam (Kingma & Ba), L2 added to the gradient (PyTorch's `Adam(weight_decay=…)`).
    Adam,
    /// AdamW (Loshchilov & Hutter): decay decoupled from the gradient.
    AdamW,
}

/// The learning-rate schedule (`train.schedule`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Cut by `factor` when the validation loss has not improved for `patience` epochs.
    Plateau,
    /// Cosine from `lr` to `min_lr` over all training steps (per batch).
    Cosine,
    /// Multiplied by `gamma` every `every` epochs.
    Step { every: usize, gamma: f64 },
}

/// Training-only augmentation (`[train.augment]`), off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    /// Random crop with this many zero pixels of padding on each side (a random shift).
    pub crop_padding: usize,
    pub flip_h: bool,
    pub flip_v: bool,
    /// Random rotation, uniform in ±this many degrees.
    pub rotate: f64,
}

impl Augment {
    pub fn is_off(&self) -> bool {
        *self == Augment::default()
    }

    /// Augments the images of `shape` in `x` in place; every draw from `rng`.
    pub fn apply(
        &self,
        x: &mut [f32],
        shape: crate::data::Shape,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) {
        use rand::Rng;
        let len = shape.len();
        let (h, w) = (shape.h, shape.w);
        for im in x.chunks_exact_mut(len) {
            if self.rotate > 0.0 {
                let deg = rng.gen_range(-self.rotate..=self.rotate);
                crate::data::transform::apply(
                    im,
                    shape,
                    &[crate::data::transform::Transform::Rotate(deg)],
                );
            }
            if self.crop_padding > 0 {
                let p = self.crop_padding as isize;
                let dy = rng.gen_range(-p..=p);
                let dx = rng.gen_range(-p..=p);
                let src = im.to_vec();
                for c in 0..shape.c {
                    for y in 0..h as isize {
                        for xx in 0..w as isize {
                            let (sy, sx) = (y + dy, xx + dx);
                            im[c * h * w + y as usize * w + xx as usize] =
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    0.0
                                } else {
                                    src[c * h * w + sy as usize * w + sx as usize]
                                };
                        }
                    }
                }
            }
            if self.flip_h && rng.gen::<bool>() {
                for row in im.chunks_exact_mut(w) {
                    row.reverse();
                }
            }
            if self.flip_v && rng.gen::<bool>() {
                for plane in im.chunks_exact_mut(h * w) {
                    for y in 0..h / 2 {
                        let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                        top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
                    }
                }
            }
        }
    }
}

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
    pub optimizer: OptKind,
    pub betas: (f64, f64),
    pub eps: f64,
    pub schedule: Schedule,
    pub augment: Augment,
}

impl TrainParams {
    pub fn from_config(c: &crate::config::Config) -> TrainParams {
        let t = &c.train;
        let a = &t.augment;
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
            optimizer: match t.optimizer.as_str() {
                "adam" => OptKind::Adam,
                "adamw" => OptKind::AdamW,
                _ => OptKind::Sgd,
            },
            betas: (t.betas[0], t.betas[1]),
            eps: t.eps,
            schedule: match t.schedule.as_str() {
                "cosine" => Schedule::Cosine,
                "step" => Schedule::Step {
                    every: t.step_every,
                    gamma: t.step_gamma,
                },
                _ => Schedule::Plateau,
            },
            augment: Augment {
                crop_padding: a.crop_padding,
                flip_h: a.flip_h,
                flip_v: a.flip_v,
                rotate: a.rotate,
            },
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
    // rows are independent: a smaller batch for a large net bounds memory, not the values
    let batch = net.eval_batch(batch.max(1));
    for start in (0..ds.len()).step_by(batch) {
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

/// The optimiser's state: SGD's velocity, or Adam's first and second moments, per layer
/// (weight, bias). Weight decay applies to conv and linear weights only, not to biases nor to
/// batch norm's γ and β.
#[derive(Debug, Clone)]
pub struct Optimizer {
    pub kind: OptKind,
    pub momentum: f32,
    pub weight_decay: f32,
    pub betas: (f64, f64),
    pub eps: f64,
    steps: u64,
    state: Vec<[Vec<f32>; 4]>,
}

impl Optimizer {
    /// SGD with momentum (PyTorch's form: v ← μv + g + λw; w ← w − lr·v).
    pub fn sgd(net: &Net, momentum: f64, weight_decay: f64) -> Optimizer {
        Optimizer::new(
            net,
            OptKind::Sgd,
            momentum,
            weight_decay,
            (0.9, 0.999),
            1e-8,
        )
    }

    pub fn new(
        net: &Net,
        kind: OptKind,
        momentum: f64,
        weight_decay: f64,
        betas: (f64, f64),
        eps: f64,
    ) -> Optimizer {
        let adam = kind != OptKind::Sgd;
        Optimizer {
            kind,
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
            betas,
            eps,
            steps: 0,
            state: net
                .layers
                .iter()
                .map(|l| {
                    let z = |n: usize, on: bool| if on { vec![0.0; n] } else { Vec::new() };
                    [
                        vec![0.0; l.w.len()],
                        vec![0.0; l.b.len()],
                        z(l.w.len(), adam),
                        z(l.b.len(), adam),
                    ]
                })
                .collect(),
        }
    }

    pub fn step(&mut self, net: &mut Net, grads: &[(Vec<f32>, Vec<f32>)], lr: f32) {
        self.steps += 1;
        let (b1, b2) = self.betas;
        let t = self.steps as i32;
        // bias corrections of Adam's moments
        let (c1, c2) = ((1.0 - b1.powi(t)) as f32, (1.0 - b2.powi(t)) as f32);
        let (b1, b2, eps) = (b1 as f32, b2 as f32, self.eps as f32);
        for ((layer, (gw, gb)), st) in net.layers.iter_mut().zip(grads).zip(self.state.iter_mut()) {
            let decay = if layer.kind == ParamKind::BatchNorm {
                0.0
            } else {
                self.weight_decay
            };
            let [vw, vb, sw, sb] = st;
            match self.kind {
                OptKind::Sgd => {
                    for ((w, g), v) in layer.w.iter_mut().zip(gw).zip(vw.iter_mut()) {
                        *v = self.momentum * *v + g + decay * *w;
                        *w -= lr * *v;
                    }
                    for ((b, g), v) in layer.b.iter_mut().zip(gb).zip(vb.iter_mut()) {
                        *v = self.momentum * *v + g;
                        *b -= lr * *v;
                    }
                }
                OptKind::Adam | OptKind::AdamW => {
                    let decoupled = self.kind == OptKind::AdamW;
                    let upd =
                        |p: &mut [f32], g: &[f32], m: &mut [f32], s: &mut [f32], decay: f32| {
                            for (((w, g), m), s) in
                                p.iter_mut().zip(g).zip(m.iter_mut()).zip(s.iter_mut())
                            {
                                let g = if decoupled { *g } else { g + decay * *w };
                                if decoupled {
                                    *w -= lr * decay * *w;
                                }
                                *m = b1 * *m + (1.0 - b1) * g;
                                *s = b2 * *s + (1.0 - b2) * g * g;
                                *w -= lr * (*m / c1) / ((*s / c2).sqrt() + eps);
                            }
                        };
                    upd(&mut layer.w, gw, vw, sw, decay);
                    upd(&mut layer.b, gb, vb, sb, 0.0);
                }
            }
        }
    }
}

/// One training step on a batch; returns (summed loss, hits).
pub fn train_step(
    net: &mut Net,
    opt: &mut Optimizer,
    x: &[f32],
    y: &[u32],
    lr: f32,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (f64, usize) {
    let n = y.len();
    let tape = net.forward(x, n, Some(rng), true);
    let (d, loss, hits) = ce_grad(&tape.logits, y, net.arch.classes);
    let grads = net.summed_grads(&tape, d);
    net.update_running(&tape);
    opt.step(net, &grads, lr);
    (loss, hits)
}

impl TrainParams {
    /// The learning rate of training step `step` of `total`: on the cosine schedule from `lr`
    /// to `min_lr`; otherwise the current rate `lr` (cut by the plateau or step rule per epoch).
    fn step_lr(&self, lr: f64, step: usize, total: usize) -> f64 {
        match self.schedule {
            Schedule::Cosine => {
                let f = step as f64 / total as f64;
                self.min_lr
                    + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
            }
            _ => lr,
        }
    }

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
        let bs = self.batch_size;
        let mut opt = Optimizer::new(
            &net,
            self.optimizer,
            self.momentum,
            self.weight_decay,
            self.betas,
            self.eps,
        );
        let mut aug_rng = stage_rng(self.seed, "augment");
        let total_steps = (self.epochs * train.len().div_ceil(bs.max(1))).max(1);
        let mut step = 0usize;
        let mut lr = self.lr;
        let mut best = (f64::INFINITY, net.clone(), 0usize);
        let mut since_best = 0usize;
        let mut plateau_ref = f64::INFINITY;
        let mut history = Vec::new();
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
            // the rate the epoch starts at (history.csv)
            let epoch_lr = self.step_lr(lr, step, total_steps);
            let (mut loss, mut hits) = (0f64, 0usize);
            for chunk in order.chunks(bs) {
                xb.clear();
                yb.clear();
                for &i in chunk {
                    xb.extend_from_slice(train.image(i));
                    yb.push(labels[i]);
                }
                if !self.augment.is_off() {
                    self.augment.apply(&mut xb, train.shape, &mut aug_rng);
                }
                let step_lr = self.step_lr(lr, step, total_steps);
                step += 1;
                let (l, h) = train_step(&mut net, &mut opt, &xb, &yb, step_lr as f32, &mut rng);
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
                lr: epoch_lr,
                train_loss: loss / n,
                train_acc: hits as f64 / n,
                val_loss,
                val_acc,
                seconds: t0.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "epoch {epoch}: lr {:.2e} train loss {:.4} acc {:.4} | val loss {val_loss:.4} acc {val_acc:.4} ({:.1}s)",
                rec.lr, rec.train_loss, rec.train_acc, rec.seconds
            );
            pb.set_message(format!("epoch {epoch} val acc {val_acc:.4}"));
            history.push(rec);
            if val_loss < best.0 {
                best = (val_loss, net.clone(), epoch);
            }
            if let Schedule::Step { every, gamma } = self.schedule {
                if epoch % every.max(1) == 0 {
                    lr = (lr * gamma).max(self.min_lr);
                }
                continue;
            }
            if self.schedule == Schedule::Cosine {
                continue;
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
