//! Benchmarks (`metaclf bench`): images per second of the forward pass, MC dropout, batched
//! per-sample gradient metrics, the naive batch-1 candle-autograd loop, and a training step, on
//! MNIST-shaped random input with the default architecture and random weights.

use crate::data::{stage_rng, Dataset, PIXELS};
use crate::features::{grad_stats_batch, score, FeatureParams};
use crate::model::net::{Arch, Net};
use crate::model::oracle::per_sample_grads_naive;
use crate::model::train::{train_step, Sgd};
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
}

fn rate(n: usize, f: impl FnMut()) -> f64 {
    let mut f = f;
    f(); // warm-up
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < 1.5 || reps < 2 {
        f();
        reps += 1;
    }
    (n * reps) as f64 / t.elapsed().as_secs_f64()
}

/// Runs every benchmark; `quick` shortens nothing but the naive loop's sample.
pub fn run(seed: u64) -> candle_core::Result<BenchResult> {
    let mut rng = stage_rng(seed, "bench");
    let net = Net::new(Arch::paper(), &mut rng);
    let n = 256;
    let x: Vec<f32> = (0..n * PIXELS).map(|_| rng.gen::<f32>()).collect();
    let forward = rate(n, || {
        net.forward(&x, n, None, false);
    });
    let ds = Dataset::new("bench", x.clone(), None);
    let fp = FeatureParams {
        mc_samples: 50,
        batch_size: n,
        seed,
    };
    // MC dropout alone: score() minus the gradient part, measured as the difference
    let t_grad = rate(n, || {
        grad_stats_batch(&net, &x, n);
    });
    let t_all = rate(n, || {
        score(&net, &ds, "bench", &fp).expect("scoring");
    });
    let mc_dropout = 1.0 / (1.0 / t_all - 1.0 / t_grad).max(1e-9);
    let m = 64;
    let grad_naive = rate(m, || {
        for i in 0..m {
            per_sample_grads_naive(&net, &x[i * PIXELS..(i + 1) * PIXELS]).expect("candle");
        }
    });
    let mut tnet = net.clone();
    let mut opt = Sgd::new(&tnet, 0.9, 5e-4);
    let y: Vec<u32> = (0..128).map(|i| (i % 10) as u32).collect();
    let train = rate(128, || {
        train_step(&mut tnet, &mut opt, &x[..128 * PIXELS], &y, 0.01, &mut rng);
    });
    Ok(BenchResult {
        forward,
        mc_dropout,
        grad_batched: t_grad,
        grad_naive,
        train_step: train,
        threads: rayon::current_num_threads(),
    })
}
