//! Benchmarks (`metaclf bench`): images per second of the forward pass, MC dropout, batched
//! per-sample gradient metrics, the naive batch-1 candle-autograd loop, and a training step, on
//! random input of a chosen shape (28×28×1 unless told) with the default architecture and random
//! weights; and the reference scripts (JAX, PyTorch) run at the same shape.

use crate::data::{stage_rng, Shape};
use crate::features::{grad_stats_batch, mc_dropout_probs};
use crate::model::net::{Arch, Net};
use crate::model::oracle::per_sample_grads_naive;
use crate::model::train::{train_step, Optimizer};
use rand::Rng;
use std::time::Instant;

/// Images per second of each measured operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub forward: f64,
    pub mc_dropout: f64,
    pub grad_batched: f64,
    pub grad_naive: f64,
    pub train_step: f64,
    pub threads: usize,
    /// Input shape as [C, H, W].
    pub shape: [usize; 3],
}

fn rate(n: usize, f: &mut dyn FnMut()) -> f64 {
    f(); // warm-up
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < 1.5 || reps < 2 {
        f();
        reps += 1;
    }
    (n * reps) as f64 / t.elapsed().as_secs_f64()
}

/// The benchmarks by name (`metaclf bench --only`).
pub const NAMES: [&str; 5] = ["forward", "mc", "grad", "naive", "train"];

/// Runs every benchmark at input `shape`.
pub fn run(seed: u64, shape: Shape) -> crate::Result<BenchResult> {
    run_only(seed, shape, &NAMES)
}

/// Runs the benchmarks named in `only` (the others report 0).
pub fn run_only(seed: u64, shape: Shape, only: &[&str]) -> crate::Result<BenchResult> {
    let on = |name: &str| only.contains(&name);
    let rate = |name: &str, n: usize, f: &mut dyn FnMut()| if on(name) { rate(n, f) } else { 0.0 };
    let mut rng = stage_rng(seed, "bench");
    let net = Net::new(Arch::paper_at(shape), &mut rng)?;
    let n = 256;
    let len = shape.len();
    let x: Vec<f32> = (0..n * len).map(|_| rng.gen::<f32>()).collect();
    let forward = rate("forward", n, &mut || {
        net.forward(&x, n, None, false);
    });
    let probs = crate::model::softmax(&net.forward(&x, n, None, false).logits, 10);
    let keys = crate::features::mc_keys(seed, &x, n);
    let mc_dropout = rate("mc", n, &mut || {
        mc_dropout_probs(&net, &x, n, 50, &keys, &probs);
    });
    let t_grad = rate("grad", n, &mut || {
        grad_stats_batch(&net, &x, n);
    });
    let m = 64;
    let grad_naive = rate("naive", m, &mut || {
        for i in 0..m {
            per_sample_grads_naive(&net, &x[i * len..(i + 1) * len]).expect("candle");
        }
    });
    let mut tnet = net.clone();
    let mut opt = Optimizer::sgd(&tnet, 0.9, 5e-4);
    let y: Vec<u32> = (0..128).map(|i| (i % 10) as u32).collect();
    let train = rate("train", 128, &mut || {
        train_step(&mut tnet, &mut opt, &x[..128 * len], &y, 0.01, &mut rng);
    });
    Ok(BenchResult {
        forward,
        mc_dropout,
        grad_batched: t_grad,
        grad_naive,
        train_step: train,
        threads: rayon::current_num_threads(),
        shape: [shape.c, shape.h, shape.w],
    })
}

/// Runs a reference script (`bench/reference_jax.py`, `bench/reference_torch.py`) with
/// `python` at `shape` (`--shape C,H,W`) and returns the JSON object it prints last: `name`,
/// `grad` (gradient metrics, images/s) and `train` (training step, images/s).
pub fn reference(
    python: &str,
    script: &std::path::Path,
    shape: Shape,
) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("--shape")
        .arg(format!("{},{},{}", shape.c, shape.h, shape.w))
        .output()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed: {}",
            script.display(),
            err.lines().last().unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .map_err(|e| format!("{}: not JSON ({e})", script.display()))
}
