//! Benchmarks (`metaclf bench`): images per second of the forward pass, MC dropout, batched
//! per-sample gradient metrics, the naive batch-1 candle-autograd loop, and a training step, on
//! random input of a chosen shape (28×28×1 unless told) with the default architecture or any
//! configured one (`--config`) and random weights, with each benchmark's peak memory; and the
//! reference scripts (JAX, PyTorch) run at the same shape on the same architecture.

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
    /// Parameters of the benchmarked net.
    pub params: usize,
    /// Images per batch of the forward, MC and gradient benchmarks.
    pub batch: usize,
    /// Peak resident memory (MB) of the process during each benchmark (the high-water mark
    /// reset before it), by name.
    pub peak_mb: std::collections::BTreeMap<String, f64>,
    /// Achieved GFLOP/s of each benchmark, by name: images/s × the floating-point operations
    /// one image costs ([`crate::arch::forward_flops`] F of the forward pass; MC dropout: F
    /// once + T = 50 × the part from the first dropout on; gradient metrics and the naive
    /// loop: 3F (forward, input gradients, weight gradients) + 8 per parameter (the moments);
    /// a training step: 3F).
    pub gflops: std::collections::BTreeMap<String, f64>,
}

/// Resets the process's peak-RSS mark (Linux: `/proc/self/clear_refs`); false if it cannot.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak RSS in MB since the last reset (`VmHWM`), if readable.
pub fn peak_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn rate(n: usize, secs: f64, f: &mut dyn FnMut()) -> f64 {
    f(); // warm-up
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < secs || reps < 2 {
        f();
        reps += 1;
    }
    (n * reps) as f64 / t.elapsed().as_secs_f64()
}

/// The benchmarks by name (`metaclf bench --only`).
pub const NAMES: [&str; 5] = ["forward", "mc", "grad", "naive", "train"];

/// Runs every benchmark of the paper's net at input `shape`.
pub fn run(seed: u64, shape: Shape) -> crate::Result<BenchResult> {
    run_only(seed, &Arch::paper_at(shape), None, 256, &NAMES, 1.5)
}

/// Runs the benchmarks named in `only` (the others report 0) on a net of `arch` with random
/// weights (or those of the checkpoint `weights`), `n` images per batch (the training step
/// takes min(n, 128)).
pub fn run_only(
    seed: u64,
    arch: &Arch,
    weights: Option<&std::path::Path>,
    n: usize,
    only: &[&str],
    secs: f64,
) -> crate::Result<BenchResult> {
    let on = |name: &str| only.contains(&name);
    let mut peaks = std::collections::BTreeMap::new();
    let mut rate = |name: &str, n: usize, f: &mut dyn FnMut()| {
        if !on(name) {
            return 0.0;
        }
        let reset = reset_peak();
        let r = rate(n, secs, f);
        if let (true, Some(p)) = (reset, peak_mb()) {
            peaks.insert(name.to_string(), p);
        }
        r
    };
    let mut rng = stage_rng(seed, "bench");
    let net = match weights {
        Some(p) => Net::load(arch.clone(), p)?,
        None => Net::new(arch.clone(), &mut rng)?,
    };
    let shape = arch.input;
    let k = arch.classes;
    let len = shape.len();
    let x: Vec<f32> = (0..n * len).map(|_| rng.gen::<f32>()).collect();
    let forward = rate("forward", n, &mut || {
        net.forward(&x, n, None, false);
    });
    let probs = crate::model::softmax(&net.forward(&x, n, None, false).logits, k);
    let keys = crate::features::mc_keys(seed, &x, n);
    let mc_dropout = rate("mc", n, &mut || {
        mc_dropout_probs(&net, &x, n, 50, &keys, &probs);
    });
    let t_grad = rate("grad", n, &mut || {
        grad_stats_batch(&net, &x, n);
    });
    let m = 64.min(n);
    let grad_naive = rate("naive", m, &mut || {
        for i in 0..m {
            per_sample_grads_naive(&net, &x[i * len..(i + 1) * len]).expect("candle");
        }
    });
    let mut tnet = net.clone();
    let mut opt = Optimizer::sgd(&tnet, 0.9, 5e-4);
    let tb = n.min(128);
    let y: Vec<u32> = (0..tb).map(|i| (i % k) as u32).collect();
    let train = rate("train", tb, &mut || {
        train_step(&mut tnet, &mut opt, &x[..tb * len], &y, 0.01, &mut rng);
    });
    let (f, suffix) =
        crate::arch::forward_flops(&arch.specs, (shape.c, shape.h, shape.w), arch.classes);
    let p = net.num_params() as f64;
    let mut gflops = std::collections::BTreeMap::new();
    for (name, r, per) in [
        ("forward", forward, f),
        ("mc", mc_dropout, f + 50.0 * suffix),
        ("grad", t_grad, 3.0 * f + 8.0 * p),
        ("naive", grad_naive, 3.0 * f + 8.0 * p),
        ("train", train, 3.0 * f),
    ] {
        if r > 0.0 {
            gflops.insert(name.to_string(), r * per / 1e9);
        }
    }
    Ok(BenchResult {
        gflops,
        forward,
        mc_dropout,
        grad_batched: t_grad,
        grad_naive,
        train_step: train,
        threads: rayon::current_num_threads(),
        shape: [shape.c, shape.h, shape.w],
        params: net.num_params(),
        batch: n,
        peak_mb: peaks,
    })
}

/// The architecture as the reference scripts read it (`--arch FILE`): input shape, classes
/// and the layer list ([`crate::arch::spec_json`]).
pub fn arch_json(arch: &Arch) -> serde_json::Value {
    serde_json::json!({
        "input": [arch.input.c, arch.input.h, arch.input.w],
        "classes": arch.classes,
        "layers": arch.specs.iter().map(crate::arch::spec_json).collect::<Vec<_>>(),
    })
}

/// Runs a reference script (`bench/reference_jax.py`, `bench/reference_torch.py`) with
/// `python` on `arch` (`--arch FILE`, a JSON of [`arch_json`], and `--shape C,H,W`) at batch
/// `batch`, and returns the JSON object it prints last: `name`, `grad` (gradient metrics,
/// images/s) and `train` (training step, images/s).
pub fn reference(
    python: &str,
    script: &std::path::Path,
    arch: &Arch,
    batch: usize,
) -> Result<serde_json::Value, String> {
    let shape = arch.input;
    let file = std::env::temp_dir().join(format!("metaclf-bench-arch-{}.json", std::process::id()));
    std::fs::write(&file, arch_json(arch).to_string())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("--shape")
        .arg(format!("{},{},{}", shape.c, shape.h, shape.w))
        .arg("--arch")
        .arg(&file)
        .arg("--batch")
        .arg(batch.to_string())
        .output()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()));
    let _ = std::fs::remove_file(&file);
    let out = out?;
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
