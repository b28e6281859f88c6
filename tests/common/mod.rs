//! Helpers shared by the integration tests: running the real binary, and small generated
//! IDX data sets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metaclf"))
}

pub fn run(args: &[&str], cwd: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command succeeded (showing its stderr if not) and returns its stdout.
pub fn succeeds(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The headless browser the page tests drive: $CHROMIUM or Debian's chromium.
pub fn chromium() -> String {
    let c = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&c).exists(),
        "{c} not found: install Debian's chromium (.ci/run does) or set CHROMIUM"
    );
    c
}

/// Chromium's flags for a quiet headless run that reaches nothing outside.
pub const HEADLESS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
];

pub fn fails_with(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

pub fn write_idx_images(path: &Path, px: &[u8]) {
    let n = (px.len() / 784) as u32;
    let mut b = Vec::new();
    for v in [0x803u32, n, 28, 28] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(px);
    std::fs::write(path, b).unwrap();
}

pub fn write_idx_labels(path: &Path, l: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0x801u32.to_be_bytes());
    b.extend_from_slice(&(l.len() as u32).to_be_bytes());
    b.extend_from_slice(l);
    std::fs::write(path, b).unwrap();
}

/// A learnable toy set: class k is a bright bar at rows 2+2k (with pixel noise).
pub fn toy(dir: &Path, name: &str, n: usize, seed: u32) -> (PathBuf, PathBuf) {
    let mut px = vec![0u8; n * 784];
    let mut labels = vec![0u8; n];
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    for i in 0..n {
        let k = (next() % 4) as usize;
        labels[i] = k as u8;
        let row = 4 + 5 * k;
        for c in 4..24 {
            px[i * 784 + row * 28 + c] = 200 + (next() % 56) as u8;
            px[i * 784 + (row + 1) * 28 + c] = 150;
        }
        for _ in 0..30 {
            px[i * 784 + (next() % 784) as usize] = (next() % 120) as u8;
        }
    }
    let ip = dir.join(format!("{name}-images"));
    let lp = dir.join(format!("{name}-labels"));
    write_idx_images(&ip, &px);
    write_idx_labels(&lp, &labels);
    (ip, lp)
}

/// Writes `dir/<name>.toml`: a run `name` with `seed`, its folder and data cache under `dir`,
/// trained on 400 [`toy`] images and tested on `test` more, then `body` (the other sections).
pub fn toy_run_config(dir: &Path, name: &str, seed: u64, test: usize, body: &str) -> PathBuf {
    let (ti, tl) = toy(dir, "train", 400, 1);
    let (vi, vl) = toy(dir, "test", test, 2);
    let text = format!(
        "[run]\nname = \"{name}\"\nseed = {seed}\nout_dir = \"{out}\"\n[data]\ndata_dir = \"{data}\"\n\
         train = \"idx:{ti},{tl}\"\ntest = \"idx:{vi},{vl}\"\n{body}",
        out = dir.join("reports").display(),
        data = dir.join("data").display(),
        ti = ti.display(),
        tl = tl.display(),
        vi = vi.display(),
        vl = vl.display(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Every file under `dir` (recursively) with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                m.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    m
}
