//! The `metaclf` command line: parses arguments, sets up logging, calls the library, and maps
//! errors to an exit code with the whole error chain.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use metaclf::{config, data, pipeline, Config};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

#[derive(Parser)]
#[command(
    name = "metaclf",
    version,
    about = "Tells a CNN classifier's users when not to trust it"
)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the whole pipeline and writes a run folder.
    Run {
        config: PathBuf,
        /// Run folder (default: <run.out_dir>/<run.name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write into an existing run folder.
        #[arg(long)]
        force: bool,
    },
    /// Validates a config (and that its data is cached or fetchable) without running.
    Check { config: PathBuf },
    /// Prints the default config with every key.
    DumpConfig,
    /// Known data sets: list them or fetch them into the cache.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
        /// Cache folder.
        #[arg(long, default_value = "data", global = true)]
        data_dir: PathBuf,
    },
    /// Scores any data set with a finished run's model and writes a features CSV.
    Features {
        #[arg(long)]
        run: PathBuf,
        /// Data spec (e.g. fashion-mnist, folder:PATH, idx:IMAGES[,LABELS]).
        #[arg(long)]
        data: String,
        #[arg(long)]
        out: PathBuf,
        /// Images to draw from generated or sampled sets (0 = the set's default).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Scores new images with a finished run's trust model: which predictions not to trust
    /// (scores.csv, summary.json, review.html in --out).
    Score {
        /// The run folder (its trust_model.json, model and config).
        #[arg(long, required_unless_present = "merge")]
        run: Option<PathBuf>,
        /// Data spec (e.g. folder:PATH, idx:IMAGES[,LABELS], fashion-mnist:test).
        #[arg(long, required_unless_present = "merge")]
        data: Option<String>,
        /// Output folder (refused if it exists, unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Operating point: keep95, reject_fraction or target_accuracy (default: the run's
        /// score.threshold).
        #[arg(long)]
        threshold: Option<String>,
        /// Least trustworthy images shown in review.html (default: the run's score.top).
        #[arg(long)]
        top: Option<usize>,
        /// Score the K-th (0-based) of N contiguous parts, e.g. 0/4 (for job arrays).
        #[arg(long, value_parser = metaclf::score::parse_shard, conflicts_with = "merge")]
        shard: Option<(usize, usize)>,
        /// Join shard output folders (in any order) into --out.
        #[arg(long, num_args = 1.., conflicts_with_all = ["run", "data"])]
        merge: Vec<PathBuf>,
        /// Replace an existing output folder of an earlier scoring.
        #[arg(long)]
        force: bool,
        /// Unreadable image files: stop with an error, or skip them (listed in summary.json).
        #[arg(long, value_enum, default_value = "stop")]
        on_error: OnErrorArg,
        /// Images to draw from generated or sampled sets (0 = the set's default).
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Read a folder's subfolders without taking their names as labels (the images are
        /// unlabelled). Without it, every subfolder must be one of the run's classes.
        #[arg(long)]
        unlabeled: bool,
        /// Also write `ecotaxa.tsv`, an EcoTaxa import table (predicted categories, metaclf's
        /// scores as object_metaclf_* columns; image paths relative to the output folder).
        #[arg(long, conflicts_with = "merge")]
        ecotaxa: bool,
    },
    /// Adds the classes a user labelled to a finished run: the CNN warm-started from RUN's
    /// weights with its output layer grown, fine-tuned on RUN's training images plus the
    /// labelled ones, then features, meta classifiers, trust model and a report comparing
    /// with RUN (extend.json).
    Extend {
        /// The run to extend.
        run: PathBuf,
        /// review.html's labels.csv, or an EcoTaxa export TSV (its validated rows).
        #[arg(long)]
        labels: PathBuf,
        /// The images the labels name (the data that was scored).
        #[arg(long)]
        data: String,
        /// The new run folder (refused if it exists, unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Fine-tuning epochs.
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        /// Share of a new class's labelled images kept for testing (when RUN's test set has
        /// no held-out images of that class).
        #[arg(long, default_value_t = 0.3)]
        test_fraction: f64,
        #[arg(long)]
        force: bool,
    },
    /// Refits the meta classifiers of a finished run from its features.csv (optionally with the
    /// [meta] section of another config) and rebuilds metrics, ablation and report.
    Meta {
        run_dir: PathBuf,
        /// Config whose [meta] and [known_unknowns] sections to use (default: the run's own).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Rebuilds plots and report.html of a run folder from its files.
    Report { run_dir: PathBuf },
    /// The verdicts of several runs side by side: compare.html and compare.md.
    Compare {
        /// Finished run folders.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Folder the two files are written into.
        #[arg(long, default_value = "reports/compare")]
        out: PathBuf,
    },
    /// Measures images/s of forward, MC dropout, gradient metrics, the naive loop and training.
    Bench {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also run this reference script (bench/reference_jax.py, bench/reference_torch.py;
        /// repeat for several) at the same shape in the same run, and report the ratios.
        #[arg(long)]
        reference: Vec<PathBuf>,
        /// Input shape C,H,W (e.g. 2,64,64).
        #[arg(long, default_value = "1,28,28", value_parser = parse_shape)]
        shape: data::Shape,
        /// Python interpreter for the reference scripts.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Only these benchmarks (forward, mc, grad, naive, train; comma-separated), e.g. to
        /// profile one.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnErrorArg {
    Stop,
    Skip,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Lists the named data sets and whether they are cached.
    List,
    /// Fetches named data sets (all when none is named).
    Fetch { names: Vec<String> },
    /// Writes the images of a data spec as PNG files into a folder (one subfolder per class
    /// when the data has labels), e.g. to build a test batch for `metaclf score`.
    Export {
        spec: String,
        out: PathBuf,
        /// Images to draw from generated or sampled sets (0 = the set's default).
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// At most this many images (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Seed of generated and sampled sets.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Shape C,H,W the images are brought to (PNG holds 1 to 4 channels).
        #[arg(long, default_value = "1,28,28", value_parser = parse_shape)]
        shape: data::Shape,
        /// Resize policy: fit, stretch, center-crop, mnist (default: mnist at 28×28×1, else fit).
        #[arg(long, value_parser = data::Resize::parse)]
        resize: Option<data::Resize>,
    },
}

fn main() -> ExitCode {
    // metaclf parallelises over batches and repetitions itself (rayon); candle's own thread
    // pool busy-waits at every op and fights it (measured: ~35% of the meta stage spinning),
    // so candle runs single-threaded inside those tasks unless the user says otherwise.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .without_time(),
        )
        .with(
            fmt::layer()
                .with_writer(metaclf::runfolder::LogWriter)
                .with_ansi(false)
                .with_target(false),
        )
        .with(filter)
        .init();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // the whole chain on one line, outermost first: what failed, then why (a cause
            // whose text its parent already ends with is not repeated)
            let mut line = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if line.ends_with(&c) {
                    continue;
                }
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&c);
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run { config, out, force } => {
            let cfg = Config::load(&config)?;
            let s = pipeline::run(&cfg, &pipeline::RunOptions { out, force })
                .with_context(|| format!("metaclf run {} failed", config.display()))?;
            println!("run folder: {}", s.folder.display());
            println!(
                "test accuracy: {:.4} after {} epochs",
                s.test_accuracy, s.epochs
            );
            for (stage, secs) in &s.stage_seconds {
                println!("  {stage:<9} {secs:>8.1} s");
            }
        }
        Cmd::Check { config } => {
            let cfg = Config::load(&config)?;
            let mut specs = vec![cfg.data.train.clone(), cfg.data.test.clone()];
            specs.extend(cfg.ood.sets.iter().cloned());
            if !cfg.known_unknowns.source.is_empty() {
                specs.push(cfg.known_unknowns.source.clone());
            }
            for spec in specs {
                println!("{spec}: {}", data_status(&cfg.data.data_dir, &spec)?);
            }
            for line in metaclf::pipeline::check_lines(&cfg)? {
                println!("{line}");
            }
            println!("{}: ok", config.display());
        }
        Cmd::DumpConfig => print!("{}", config::default_toml()),
        Cmd::Data { cmd, data_dir } => match cmd {
            DataCmd::List => {
                for name in data::NAMED {
                    println!("{name:<14} {}", data_status(&data_dir, name)?);
                }
                println!("\nspecs: {}", data::SPEC_HELP);
            }
            DataCmd::Fetch { names } => {
                let names: Vec<String> = if names.is_empty() {
                    data::NAMED.iter().map(|s| s.to_string()).collect()
                } else {
                    names
                };
                for n in &names {
                    if !data::NAMED.contains(&n.as_str()) {
                        anyhow::bail!("unknown data set {n:?} (known: {})", data::NAMED.join(", "));
                    }
                }
                for n in names {
                    data::fetch::fetch(&data_dir, &n)?;
                    println!("{n}: {}", data_status(&data_dir, &n)?);
                }
            }
            DataCmd::Export {
                spec,
                out,
                count,
                limit,
                seed,
                shape,
                resize,
            } => {
                let resize = resize.unwrap_or_else(|| data::Resize::default_for(shape));
                anyhow::ensure!(
                    resize != data::Resize::Mnist || shape.c == 1,
                    "--resize mnist needs one channel (--shape 1,H,W)"
                );
                let ctx = data::LoadCtx {
                    data_dir,
                    seed,
                    count,
                    stage: "export".into(),
                    prep: data::Prep { shape, resize },
                    folder_labels: Default::default(),
                };
                let n = data::stream::export_png(&spec, &ctx, &out, limit)?;
                println!("{n} images written to {}", out.display());
            }
        },
        Cmd::Features {
            run,
            data,
            out,
            count,
        } => {
            let n = pipeline::features_for(&run, &data, &out, count)?;
            println!("{n} rows written to {}", out.display());
        }
        Cmd::Score {
            run,
            data,
            out,
            threshold,
            top,
            shard,
            merge,
            force,
            on_error,
            count,
            unlabeled,
            ecotaxa,
        } => {
            let s = if merge.is_empty() {
                let (Some(run), Some(data)) = (run, data) else {
                    anyhow::bail!("--run and --data are needed (or --merge)");
                };
                metaclf::score::score(&metaclf::score::ScoreOptions {
                    run,
                    data,
                    out: out.clone(),
                    threshold,
                    top,
                    shard,
                    force,
                    on_error: match on_error {
                        OnErrorArg::Stop => metaclf::data::stream::OnError::Stop,
                        OnErrorArg::Skip => metaclf::data::stream::OnError::Skip,
                    },
                    count,
                    unlabeled,
                    ecotaxa,
                })?
            } else {
                metaclf::score::merge(&merge, &out, force, top)?
            };
            println!("{}", s.line());
            println!("{}", out.join("review.html").display());
        }
        Cmd::Extend {
            run,
            labels,
            data,
            out,
            epochs,
            test_fraction,
            force,
        } => {
            if !(0.0..1.0).contains(&test_fraction) {
                anyhow::bail!("--test-fraction {test_fraction}: must be in [0, 1)");
            }
            let s = metaclf::extend::extend(&metaclf::extend::ExtendOptions {
                run,
                labels,
                data,
                out,
                epochs,
                test_fraction,
                force,
            })?;
            println!(
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
            );
            println!("{}", s.folder.join("report.html").display());
        }
        Cmd::Meta { run_dir, config } => {
            let cfg = Config::load(&config.unwrap_or_else(|| run_dir.join("config.toml")))?;
            let secs = pipeline::refit_meta(&run_dir, &cfg)?;
            println!(
                "meta classifiers refitted in {secs:.1} s; {}",
                run_dir.join("report.html").display()
            );
        }
        Cmd::Compare { runs, out } => {
            let (h, m) = metaclf::report::compare::build(&runs, &out)?;
            print!("{}", std::fs::read_to_string(&m)?);
            println!("{}\n{}", h.display(), m.display());
        }
        Cmd::Report { run_dir } => {
            metaclf::report::build(&run_dir)?;
            println!("{}", run_dir.join("report.html").display());
        }
        Cmd::Bench {
            json,
            reference,
            shape,
            python,
            only,
        } => {
            for o in &only {
                anyhow::ensure!(
                    metaclf::bench::NAMES.contains(&o.as_str()),
                    "--only {o:?}: not one of {}",
                    metaclf::bench::NAMES.join(", ")
                );
            }
            let only: Vec<&str> = if only.is_empty() {
                metaclf::bench::NAMES.to_vec()
            } else {
                only.iter().map(String::as_str).collect()
            };
            let r = metaclf::bench::run_only(42, shape, &only)?;
            let refs = reference
                .iter()
                .map(|p| metaclf::bench::reference(&python, p, shape))
                .collect::<Result<Vec<_>, String>>()
                .map_err(anyhow::Error::msg)?;
            if json {
                let mut v = serde_json::to_value(&r)?;
                v["reference"] = serde_json::Value::Array(refs.clone());
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "images/s on {} threads (default net, random weights, {shape} input):",
                    r.threads
                );
                for (k, v) in [
                    ("forward (batch 256)", r.forward),
                    ("MC dropout (T=50)", r.mc_dropout),
                    ("grad metrics, batched", r.grad_batched),
                    ("grad metrics, naive batch-1 candle", r.grad_naive),
                    ("training step (batch 128)", r.train_step),
                ] {
                    println!("  {k:<36} {v:>10.0}");
                }
                if r.grad_batched > 0.0 && r.grad_naive > 0.0 {
                    println!(
                        "  batched / naive gradient metrics: {:.1}×",
                        r.grad_batched / r.grad_naive
                    );
                }
                for (rv, p) in refs.iter().zip(&reference) {
                    let g = rv["grad"].as_f64().unwrap_or(f64::NAN);
                    let t = rv["train"].as_f64().unwrap_or(f64::NAN);
                    let name = rv["name"].as_str().unwrap_or("reference");
                    println!("reference {name} ({}):", p.display());
                    println!(
                        "  grad metrics, per-sample vmap(grad)  {g:>10.0}   metaclf/{name} {:.2}×",
                        r.grad_batched / g
                    );
                    println!(
                        "  training step (batch 128)            {t:>10.0}   metaclf/{name} {:.2}×",
                        r.train_step / t
                    );
                }
            }
        }
    }
    Ok(())
}

fn parse_shape(s: &str) -> Result<data::Shape, String> {
    data::Shape::parse(s)
}

/// "cached", "generated", "missing (fetched on first use)" or what is wrong, for a spec.
fn data_status(data_dir: &std::path::Path, spec: &str) -> Result<String> {
    let src = data::Source::parse(spec).map_err(anyhow::Error::msg)?;
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
                anyhow::ensure!(p.exists(), "{spec}: {} does not exist", p.display());
            }
            return Ok("user files (checked in full when loaded)".into());
        }
        data::Source::Folder(p) | data::Source::FolderFlat(p) => {
            anyhow::ensure!(p.is_dir(), "{spec}: {} is not a folder", p.display());
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

// The per-batch buffers are large (tens of MB); glibc's malloc hands them back to the kernel
// after every batch, and the page faults and TLB shootdowns that follow cost ~15% of the
// gradient-feature time. mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
