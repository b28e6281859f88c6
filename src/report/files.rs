//! Reading a run folder's files for the report: strict CSV readers (history, meta scores)
//! that name the line and column of a bad value.

use super::*;
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A run-folder CSV as header and rows (csv crate); every row must have the header's field
/// count.
pub(crate) fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(path).at(path)?;
    let bad = |line: u64, msg: String| Error::Format {
        path: path.into(),
        msg: format!("line {line}: {msg}"),
    };
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut head: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| bad(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let r: Vec<String> = rec.iter().map(String::from).collect();
        match &head {
            None => head = Some(r),
            Some(h) if r.len() != h.len() => {
                let line = rec.position().map_or(0, |p| p.line());
                return Err(bad(
                    line,
                    format!("{} fields, header has {}", r.len(), h.len()),
                ));
            }
            Some(_) => rows.push(r),
        }
    }
    Ok((head.unwrap_or_default(), rows))
}

/// Field `col` of data row `row` (0-based, after the header) as a finite number, or an error
/// naming the file, line and column.
pub(crate) fn num(
    path: &Path,
    head: &[String],
    rows: &[Vec<String>],
    row: usize,
    col: usize,
) -> Result<f64> {
    let v = &rows[row][col];
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(Error::Format {
            path: path.into(),
            msg: format!(
                "line {}: column {}: {v:?} is not a finite number",
                row + 2,
                head.get(col).map(String::as_str).unwrap_or("?")
            ),
        }),
    }
}

/// Rows of meta_scores.csv grouped by scorer (model, features, known unknowns, transform):
/// (rep 0 only) → (set, target, score) lists, compactly: the set as an index into `sets` (16
/// bytes a row, where a String per row took ~70: meta_scores.csv holds millions of rows). The
/// score stays f64: f32 would tie trust scores within 6e-8 of 1 and change the curves.
#[derive(Debug, Default)]
pub(crate) struct Scores {
    pub sets: Vec<String>,
    pub by: BTreeMap<(String, String, bool, String), Vec<ScoreRow>>,
}

/// One scored row: set (index into [`Scores::sets`]), target (0/1), score.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScoreRow {
    pub score: f64,
    pub set: u16,
    pub target: u8,
}

impl Scores {
    pub fn get(&self, key: &(String, String, bool, String)) -> Option<&Vec<ScoreRow>> {
        self.by.get(key)
    }
    /// The index of set `name`, if any row has it.
    pub fn set_index(&self, name: &str) -> Option<u16> {
        self.sets.iter().position(|s| s == name).map(|i| i as u16)
    }
}

/// Reads meta_scores.csv record by record (the file can be hundreds of MB: only repetition 0's
/// rows are kept), strictly: a bad field names its line and column. Files from before
/// transforms (8 columns) read as transform "none".
pub(crate) fn read_scores(dir: &Path) -> Result<Scores> {
    let path = dir.join("meta_scores.csv");
    let bad = |line: u64, msg: String| Error::Format {
        path: path.clone(),
        msg: format!("line {line}: {msg}"),
    };
    let f = std::fs::File::open(&path).at(&path)?;
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, f));
    let head: Vec<String> = rd
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    if head.len() < 8 {
        return Err(bad(1, format!("{} columns, need at least 8", head.len())));
    }
    let mut out = Scores::default();
    let mut rec = csv::StringRecord::new();
    // the scorer of the previous row: rows come grouped, so its key is rarely built anew
    let mut last: Option<(String, String, bool, String)> = None;
    loop {
        match rd.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(bad(e.position().map_or(0, |p| p.line()), e.to_string())),
        }
        let line = rec.position().map_or(0, |p| p.line());
        if &rec[0] != "0" {
            continue;
        }
        let num = |c: usize| -> Result<f64> {
            match rec[c].parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(bad(
                    line,
                    format!("column {}: {:?} is not a finite number", head[c], &rec[c]),
                )),
            }
        };
        let score = num(7)?;
        let target = num(6)?;
        if target != 0.0 && target != 1.0 {
            return Err(bad(line, format!("target {target} is neither 0 nor 1")));
        }
        let tr = rec.get(8).unwrap_or("none");
        let set = match out.sets.iter().position(|s| s == &rec[4]) {
            Some(i) => i,
            None if out.sets.len() < u16::MAX as usize => {
                out.sets.push(rec[4].to_string());
                out.sets.len() - 1
            }
            None => return Err(bad(line, format!("more than {} sets", u16::MAX))),
        };
        let row = ScoreRow {
            score,
            set: set as u16,
            target: target as u8,
        };
        let same = last.as_ref().is_some_and(|k| {
            k.0 == rec[1] && k.1 == rec[2] && k.2 == (&rec[3] == "true") && k.3 == tr
        });
        if !same {
            last = Some((
                rec[1].to_string(),
                rec[2].to_string(),
                &rec[3] == "true",
                tr.to_string(),
            ));
        }
        let key = last.as_ref().expect("set above");
        match out.by.get_mut(key) {
            Some(v) => v.push(row),
            None => {
                out.by.insert(key.clone(), vec![row]);
            }
        }
    }
    for v in out.by.values_mut() {
        v.shrink_to_fit();
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn find<'a>(
    recs: &'a [Record],
    model: &str,
    feats: &str,
    ku: bool,
    tr: &str,
    task: &str,
    ood: Option<&str>,
    metric: &str,
) -> Option<&'a Record> {
    recs.iter().find(|r| {
        r.model == model
            && r.features == feats
            && r.known_unknowns == ku
            && r.transform == tr
            && r.task == task
            && r.ood_set.as_deref() == ood
            && r.metric == metric
    })
}

/// A run folder's run.json and metrics.json, and the metric records.
pub(crate) struct RunFiles {
    pub run: serde_json::Value,
    pub metrics: serde_json::Value,
    pub recs: Vec<crate::eval::Record>,
}

fn read_json(p: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).at(p)?).map_err(|e| Error::Format {
        path: p.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Reads run.json and metrics.json of a run folder.
/// Original label → class name, from run.json's `class_labels` and `class_names` (empty for
/// runs from before class names).
pub(crate) fn label_names(run: &serde_json::Value) -> std::collections::BTreeMap<u32, String> {
    let labels = run["class_labels"].as_array().cloned().unwrap_or_default();
    let names = run["class_names"].as_array().cloned().unwrap_or_default();
    labels
        .iter()
        .zip(&names)
        .filter_map(|(l, n)| Some((l.as_u64()? as u32, n.as_str()?.to_string())))
        .collect()
}

pub(crate) fn read_run(dir: &Path) -> Result<RunFiles> {
    let run = read_json(&dir.join("run.json"))?;
    let mj = dir.join("metrics.json");
    let metrics = read_json(&mj)?;
    let recs = serde_json::from_value(metrics["results"].clone()).map_err(|e| Error::Format {
        path: mj,
        msg: e.to_string(),
    })?;
    Ok(RunFiles { run, metrics, recs })
}

/// The verdicts of a run folder's files (its known-unknown source and seed from run.json, the
/// single-metric table from metrics.json, the margin from its config.toml).
pub(crate) fn verdicts_of(dir: &Path, f: &RunFiles) -> crate::verdicts::Verdicts {
    let RunFiles { run, metrics, recs } = f;
    let single: Vec<crate::eval::Record> =
        serde_json::from_value(metrics["single_metrics"].clone()).unwrap_or_default();
    let margin = crate::config::Config::load(&dir.join("config.toml"))
        .map(|c| c.verdicts.margin)
        .unwrap_or_else(|_| crate::config::VerdictsSection::default().margin);
    let ku = run["data"].as_array().and_then(|d| {
        d.iter().find_map(|s| {
            s["role"]
                .as_str()
                .and_then(|r| r.strip_prefix("known-unknown-"))
                .map(String::from)
        })
    });
    crate::verdicts::compute(
        recs,
        &single,
        ku.as_deref(),
        run["seed"].as_u64().unwrap_or(0),
        margin,
    )
}
