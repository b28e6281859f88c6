//! The bodies of the `metaclf` commands: each takes the parsed arguments as typed values,
//! calls the stages and returns the lines the command prints, so `main.rs` only parses
//! arguments, sets up logging, prints and maps errors to an exit code.

use crate::config::Config;
use crate::data;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// `metaclf run`.
pub fn run(config: &Path, out: Option<PathBuf>, force: bool) -> Result<Vec<String>> {
    let cfg = Config::load(config)?;
    let s = crate::pipeline::run(&cfg, &crate::pipeline::RunOptions { out, force })?;
    let mut lines = vec![
        format!("run folder: {}", s.folder.display()),
        format!(
            "test accuracy: {:.4} after {} epochs",
            s.test_accuracy, s.epochs
        ),
    ];
    for (stage, secs) in &s.stage_seconds {
        lines.push(format!("  {stage:<9} {secs:>8.1} s"));
    }
    Ok(lines)
}

/// `metaclf check`: every data spec's state, the class map and the folders' contents.
pub fn check(config: &Path) -> Result<Vec<String>> {
    let cfg = Config::load(config)?;
    let mut specs = vec![cfg.data.train.clone(), cfg.data.test.clone()];
    specs.extend(cfg.ood.sets.iter().cloned());
    if !cfg.known_unknowns.source.is_empty() {
        specs.push(cfg.known_unknowns.source.clone());
    }
    let mut lines = Vec::new();
    for spec in specs {
        lines.push(format!(
            "{spec}: {}",
            data_status(&cfg.data.data_dir, &spec)?
        ));
    }
    lines.extend(crate::pipeline::check_lines(&cfg)?);
    lines.push(format!("{}: ok", config.display()));
    Ok(lines)
}

/// `metaclf data list`.
pub fn data_list(data_dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for name in data::NAMED {
        lines.push(format!("{name:<14} {}", data_status(data_dir, name)?));
    }
    lines.push(format!("\nspecs: {}", data::SPEC_HELP));
    Ok(lines)
}

/// `metaclf data fetch [NAMES]` (all named sets when none is given).
pub fn data_fetch(data_dir: &Path, names: Vec<String>) -> Result<Vec<String>> {
    let names: Vec<String> = if names.is_empty() {
        data::NAMED.iter().map(|s| s.to_string()).collect()
    } else {
        names
    };
    for n in &names {
        if !data::NAMED.contains(&n.as_str()) {
            return Err(other(format!(
                "unknown data set {n:?} (known: {})",
                data::NAMED.join(", ")
            )));
        }
    }
    let mut lines = Vec::new();
    for n in names {
        data::fetch::fetch(data_dir, &n)?;
        lines.push(format!("{n}: {}", data_status(data_dir, &n)?));
    }
    Ok(lines)
}

/// What `metaclf data export` writes.
pub struct ExportArgs {
    pub spec: String,
    pub out: PathBuf,
    pub data_dir: PathBuf,
    pub count: usize,
    pub limit: usize,
    pub seed: u64,
    pub shape: data::Shape,
    pub resize: Option<data::Resize>,
}

/// `metaclf data export`.
pub fn data_export(a: ExportArgs) -> Result<Vec<String>> {
    let resize = a
        .resize
        .unwrap_or_else(|| data::Resize::default_for(a.shape));
    if resize == data::Resize::Mnist && a.shape.c != 1 {
        return Err(other("--resize mnist needs one channel (--shape 1,H,W)"));
    }
    let ctx = data::LoadCtx {
        data_dir: a.data_dir,
        seed: a.seed,
        count: a.count,
        stage: "export".into(),
        prep: data::Prep {
            shape: a.shape,
            resize,
        },
        folder_labels: Default::default(),
    };
    let n = data::stream::export_png(&a.spec, &ctx, &a.out, a.limit)?;
    Ok(vec![format!("{n} images written to {}", a.out.display())])
}

/// `metaclf extend`.
pub fn extend(opts: &crate::extend::ExtendOptions) -> Result<Vec<String>> {
    if !(0.0..1.0).contains(&opts.test_fraction) {
        return Err(other(format!(
            "--test-fraction {}: must be in [0, 1)",
            opts.test_fraction
        )));
    }
    let s = crate::extend::extend(opts)?;
    Ok(vec![
        format!(
            "{} labels, new classes {}: accuracy on the old classes {:.2}% → {:.2}%{}",
            s.labels,
            if s.new_classes.is_empty() {
                "none".to_string()
            } else {
                s.new_classes.join(", ")
            },
            100.0 * s.old_before,
            100.0 * s.old_after,
            s.new_after
                .map(|a| format!(", on the new classes {:.2}%", 100.0 * a))
                .unwrap_or_default()
        ),
        s.folder.join("report.html").display().to_string(),
    ])
}

/// What `metaclf bench` measures and against what.
pub struct BenchArgs {
    pub json: bool,
    pub reference: Vec<PathBuf>,
    /// Input shape (None: the config's, or 28×28×1).
    pub shape: Option<data::Shape>,
    pub python: String,
    pub only: Vec<String>,
    /// The net of this config's `[model]` (None: the paper's net).
    pub config: Option<PathBuf>,
    /// A run folder: its config's net with its trained weights.
    pub model: Option<PathBuf>,
    /// Images per batch of the forward, MC and gradient benchmarks.
    pub batch: usize,
    /// Seconds each benchmark is timed for (after one warm-up call).
    pub seconds: f64,
}

/// `metaclf bench`: the throughput table (or one JSON object), with the reference scripts'
/// figures and ratios.
pub fn bench(a: &BenchArgs) -> Result<Vec<String>> {
    for o in &a.only {
        if !crate::bench::NAMES.contains(&o.as_str()) {
            return Err(other(format!(
                "--only {o:?}: not one of {}",
                crate::bench::NAMES.join(", ")
            )));
        }
    }
    let only: Vec<&str> = if a.only.is_empty() {
        crate::bench::NAMES.to_vec()
    } else {
        a.only.iter().map(String::as_str).collect()
    };
    let config = match (&a.config, &a.model) {
        (Some(_), Some(_)) => return Err(other("give --config or --model, not both")),
        (c, None) => c.clone(),
        (None, Some(run)) => Some(run.join("config.toml")),
    };
    let weights = a.model.as_ref().map(|r| r.join("model.safetensors"));
    if weights.is_some() && a.shape.is_some() {
        return Err(other(
            "--shape: a trained model (--model) takes the shape it was trained at",
        ));
    }
    let arch = match &config {
        None => crate::model::Arch::paper_at(a.shape.unwrap_or(data::Shape::MNIST)),
        Some(p) => {
            let cfg = Config::load(p)?;
            let classes = cfg.known_class_count().unwrap_or(10);
            let mut arch = crate::model::Arch::from_config(&cfg, classes);
            if let Some(s) = a.shape {
                arch.input = s;
            }
            arch.plan()?;
            arch
        }
    };
    if a.batch == 0 || a.batch > crate::config::MAX_BATCH {
        return Err(other(format!(
            "--batch {}: must be 1..={}",
            a.batch,
            crate::config::MAX_BATCH
        )));
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 3600.0) {
        return Err(other(format!(
            "--seconds {}: must be above 0 and at most 3600",
            a.seconds
        )));
    }
    let r = crate::bench::run_only(42, &arch, weights.as_deref(), a.batch, &only, a.seconds)?;
    let refs = a
        .reference
        .iter()
        .map(|p| crate::bench::reference(&a.python, p, &arch, a.batch))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(other)?;
    if a.json {
        let mut v = serde_json::to_value(&r).map_err(|e| other(e.to_string()))?;
        v["reference"] = serde_json::Value::Array(refs.clone());
        return Ok(vec![v.to_string()]);
    }
    let mut lines = vec![format!(
        "images/s on {} threads ({}, {} parameters, {} input, batch {}):",
        r.threads,
        match (&a.model, &config) {
            (Some(m), _) => format!("the trained net of {}", m.display()),
            (None, Some(p)) => format!("the net of {}", p.display()),
            (None, None) => "default net".into(),
        },
        r.params,
        arch.input,
        r.batch
    )];
    for (k, name, v) in [
        (
            &*format!("forward (batch {})", r.batch),
            "forward",
            r.forward,
        ),
        ("MC dropout (T=50)", "mc", r.mc_dropout),
        ("grad metrics, batched", "grad", r.grad_batched),
        ("grad metrics, naive batch-1 candle", "naive", r.grad_naive),
        (
            &*format!("training step (batch {})", r.batch.min(128)),
            "train",
            r.train_step,
        ),
    ] {
        lines.push(match r.gflops.get(name) {
            Some(g) => format!("  {k:<36} {v:>10.0}   {g:6.1} GFLOP/s"),
            None => format!("  {k:<36} {v:>10.0}"),
        });
    }
    if r.grad_batched > 0.0 && r.grad_naive > 0.0 {
        lines.push(format!(
            "  batched / naive gradient metrics: {:.1}×",
            r.grad_batched / r.grad_naive
        ));
    }
    for (rv, p) in refs.iter().zip(&a.reference) {
        let name = rv["name"].as_str().unwrap_or("reference");
        lines.push(format!("reference {name} ({}):", p.display()));
        // a row per benchmark both sides ran (the JAX reference has no MC benchmark)
        for (label, key, ours) in [
            (
                "grad metrics, per-sample vmap(grad)",
                "grad",
                r.grad_batched,
            ),
            ("MC dropout (T=50), prefix once", "mc", r.mc_dropout),
            (
                &*format!("training step (batch {})", r.batch.min(128)),
                "train",
                r.train_step,
            ),
        ] {
            if let (Some(v), true) = (rv[key].as_f64(), ours > 0.0) {
                lines.push(format!(
                    "  {label:<36} {v:>10.0}   metaclf/{name} {:.2}×",
                    ours / v
                ));
            }
        }
    }
    Ok(lines)
}

/// "cached", "generated", "missing (fetched on first use)" or what is wrong, for a spec.
pub fn data_status(data_dir: &Path, spec: &str) -> Result<String> {
    let src = data::Source::parse(spec).map_err(|msg| Error::Data {
        name: spec.into(),
        msg,
    })?;
    let missing = |p: &Path, what: &str| Error::Data {
        name: spec.into(),
        msg: format!("{} {what}", p.display()),
    };
    let named = match &src {
        data::Source::Mnist(_) => "mnist",
        data::Source::FashionMnist(_) => "fashion-mnist",
        data::Source::Letters => "letters",
        data::Source::GrayNatural => "gray-natural",
        data::Source::UniformNoise | data::Source::NormalNoise => {
            return Ok("generated from the seed".into())
        }
        data::Source::Emnist(variant, split) => {
            let (img, lab) = data::emnist_files(data_dir, spec, variant, *split)?;
            return Ok(format!(
                "user files {} and {}",
                img.display(),
                lab.display()
            ));
        }
        data::Source::Idx { images, labels } | data::Source::Npy { images, labels } => {
            for p in std::iter::once(images).chain(labels.iter()) {
                if !p.exists() {
                    return Err(missing(p, "does not exist"));
                }
            }
            return Ok("user files (checked in full when loaded)".into());
        }
        data::Source::Folder(p) | data::Source::FolderFlat(p) => {
            if !p.is_dir() {
                return Err(missing(p, "is not a folder"));
            }
            return Ok("user image folder".into());
        }
    };
    Ok(match data::fetch::state(data_dir, named)? {
        data::fetch::CacheState::Cached => format!(
            "cached in {}",
            data::fetch::dir_of(data_dir, named).display()
        ),
        data::fetch::CacheState::Missing => "not cached (fetched on first use)".into(),
        data::fetch::CacheState::Corrupt(why) => {
            format!("damaged cache, will be re-fetched: {why}")
        }
        data::fetch::CacheState::Generated => "generated".into(),
    })
}
