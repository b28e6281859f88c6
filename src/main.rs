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
        /// Input shape C,H,W (e.g. 2,64,64; default 1,28,28, or the config's).
        #[arg(long, value_parser = parse_shape)]
        shape: Option<data::Shape>,
        /// Benchmark the network of this config's [model] (its layer list) instead of the
        /// paper's net.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Benchmark a finished run's network with its trained weights (RUN/config.toml and
        /// RUN/model.safetensors).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Images per batch (forward, MC dropout, gradient metrics; training takes ≤ 128).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Seconds each benchmark is timed for, after one warm-up call (longer: steadier
        /// figures, and a profile of the steady state under `perf`).
        #[arg(long, default_value_t = 1.5)]
        seconds: f64,
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
    keep_freed_pages();
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
    // The command runs on a worker of rayon's pool, so that the layers' parallel loops (one
    // or two per layer and batch) are split by work stealing from inside the pool; called
    // from the main thread, each loop was injected into the pool and waited for, two context
    // switches a loop (perf, batch 8: 38% of the forward pass in the scheduler; batch 256:
    // ~6% of the gradient features). Workers get the main thread's 8 MiB of stack.
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global()
    {
        tracing::warn!("rayon's thread pool: {e}");
    }
    match rayon::scope(|_| dispatch(cli.cmd)) {
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

/// Runs a command and prints its lines.
fn dispatch(cmd: Cmd) -> Result<()> {
    use metaclf::commands as c;
    let lines = match cmd {
        Cmd::Run { config, out, force } => c::run(&config, out, force)
            .with_context(|| format!("metaclf run {} failed", config.display()))?,
        Cmd::Check { config } => c::check(&config)?,
        Cmd::DumpConfig => vec![config::default_toml().trim_end().to_string()],
        Cmd::Data { cmd, data_dir } => match cmd {
            DataCmd::List => c::data_list(&data_dir)?,
            DataCmd::Fetch { names } => c::data_fetch(&data_dir, names)?,
            DataCmd::Export {
                spec,
                out,
                count,
                limit,
                seed,
                shape,
                resize,
            } => c::data_export(c::ExportArgs {
                spec,
                out,
                data_dir,
                count,
                limit,
                seed,
                shape,
                resize,
            })?,
        },
        Cmd::Features {
            run,
            data,
            out,
            count,
        } => {
            let n = pipeline::features_for(&run, &data, &out, count)?;
            vec![format!("{n} rows written to {}", out.display())]
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
            vec![s.line(), out.join("review.html").display().to_string()]
        }
        Cmd::Extend {
            run,
            labels,
            data,
            out,
            epochs,
            test_fraction,
            force,
        } => c::extend(&metaclf::extend::ExtendOptions {
            run,
            labels,
            data,
            out,
            epochs,
            test_fraction,
            force,
        })?,
        Cmd::Meta { run_dir, config } => {
            let cfg = Config::load(&config.unwrap_or_else(|| run_dir.join("config.toml")))?;
            let secs = pipeline::refit_meta(&run_dir, &cfg)?;
            vec![format!(
                "meta classifiers refitted in {secs:.1} s; {}",
                run_dir.join("report.html").display()
            )]
        }
        Cmd::Compare { runs, out } => {
            let (h, m) = metaclf::report::compare::build(&runs, &out)?;
            vec![
                std::fs::read_to_string(&m)?.trim_end().to_string(),
                h.display().to_string(),
                m.display().to_string(),
            ]
        }
        Cmd::Report { run_dir } => {
            metaclf::report::build(&run_dir)?;
            vec![run_dir.join("report.html").display().to_string()]
        }
        Cmd::Bench {
            json,
            reference,
            shape,
            python,
            only,
            config,
            model,
            batch,
            seconds,
        } => c::bench(&c::BenchArgs {
            json,
            reference,
            shape,
            python,
            only,
            config,
            model,
            batch,
            seconds,
        })?,
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_pages() {
    // SAFETY: sets an integer option of the allocator; called once at start-up.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn parse_shape(s: &str) -> Result<data::Shape, String> {
    data::Shape::parse(s)
}

// The per-batch buffers are large (tens of MB); glibc's malloc hands them back to the kernel
// after every batch, and the page faults and TLB shootdowns that follow cost ~15% of the
// gradient-feature time. mimalloc keeps them, and `keep_freed_pages` makes it never return
// them: its purge runs on a timer whether or not the freed pages were used again since
// (default every 10 ms), so every purge meant the next batch faulted its buffers in again and
// the kernel zeroed every page. Counted with `perf stat -e page-faults` over 12 s of
// `bench --only grad --shape 2,64,64`: 54,868 faults with a 500 ms delay, 5,745 with 5 s,
// 504 never (the first touch of each buffer only). In a virtual machine whose host backs
// memory lazily, the zeroing took 24-43% of the gradient metrics' time; on a quiet machine
// never purging measured +3-6% gradient and training throughput. The process keeps its
// high-water mark of freed memory (+43 MB peak on the default run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
