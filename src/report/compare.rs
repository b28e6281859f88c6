//! `metaclf compare RUN_DIR...`: the verdict lines of several runs side by side (tasks as rows,
//! runs as columns), as one HTML page and one markdown table, so a user sees whether a
//! conclusion holds across data sets.

use super::esc;
use crate::error::{Error, Result};
use crate::verdicts::{self, Verdicts};
use std::path::{Path, PathBuf};

/// One run's name, test accuracy and verdicts.
pub struct RunVerdicts {
    pub name: String,
    pub accuracy: Option<f64>,
    pub verdicts: Verdicts,
}

/// The verdicts of a finished run, computed from its metrics.json and run.json (as its report
/// does, so runs made before verdicts.json existed compare too).
pub fn load(dir: &Path) -> Result<RunVerdicts> {
    let files = super::files::read_run(dir)?;
    let run = &files.run;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunVerdicts {
        name,
        accuracy: run["test_accuracy"].as_f64(),
        verdicts: super::files::verdicts_of(dir, &files),
    })
}

/// A short cell: best detector, ΔAUROC with its interval, verdict.
fn cell(v: &Verdicts, task: &str) -> Option<(String, String)> {
    let x = verdicts::best(v, task)?;
    Some((
        format!(
            "{} {:.4} vs MSP {:.4}: Δ {:+.4} [{:+.4}, {:+.4}] → {}",
            x.detector,
            x.detector_mean,
            x.baseline_mean,
            x.mean_diff,
            x.ci_low,
            x.ci_high,
            x.verdict
        ),
        x.verdict.clone(),
    ))
}

/// The rows: every task of any run (in first-seen order), then the four claims.
fn rows(runs: &[RunVerdicts]) -> Vec<String> {
    let mut t: Vec<String> = Vec::new();
    for r in runs {
        for x in verdicts::tasks(&r.verdicts) {
            if !t.contains(&x) {
                t.push(x);
            }
        }
    }
    t
}

/// The markdown table.
pub fn markdown(runs: &[RunVerdicts]) -> String {
    let mut m = String::from("| task |");
    for r in runs {
        m.push_str(&format!(" {} |", r.name.replace('|', "\\|")));
    }
    m.push_str("\n|---|");
    m.push_str(&"---|".repeat(runs.len()));
    m.push('\n');
    m.push_str("| test accuracy |");
    for r in runs {
        m.push_str(&format!(
            " {} |",
            r.accuracy
                .map(|a| format!("{:.4}", a))
                .unwrap_or("–".into())
        ));
    }
    m.push('\n');
    for t in rows(runs) {
        m.push_str(&format!("| {} |", verdicts::task_label(&t)));
        for r in runs {
            m.push_str(&format!(
                " {} |",
                cell(&r.verdicts, &t).map(|c| c.0).unwrap_or("–".into())
            ));
        }
        m.push('\n');
    }
    for (i, label) in ["claim c1", "claim c2", "claim c3", "claim c4"]
        .iter()
        .enumerate()
    {
        m.push_str(&format!("| {label} |"));
        for r in runs {
            m.push_str(&format!(
                " {} |",
                r.verdicts
                    .claims
                    .get(i)
                    .map(|c| c.answer.clone())
                    .unwrap_or("–".into())
            ));
        }
        m.push('\n');
    }
    m
}

/// The HTML page.
pub fn html(runs: &[RunVerdicts]) -> String {
    let mut h = String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>metaclf compare</title><style>body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}td.better{background:#e6f6ea}td.worse{background:#fbe4e4}.how{color:#555;font-size:0.9em}</style></head><body><h1>metaclf compare</h1>");
    h.push_str("<p class=\"how\">Per task, each run's best detector against MSP on AUROC (mean over repetitions, Δ with its 95% t interval, verdict after Holm's correction within the run); the claims of the gradient-metrics paper below. Details: each run's verdicts.csv.</p><table><tr><th>task</th>");
    for r in runs {
        h.push_str(&format!("<th>{}</th>", esc(&r.name)));
    }
    h.push_str("</tr><tr><th>test accuracy</th>");
    for r in runs {
        h.push_str(&format!(
            "<td>{}</td>",
            r.accuracy
                .map(|a| format!("{:.4}", a))
                .unwrap_or("–".into())
        ));
    }
    h.push_str("</tr>");
    for t in rows(runs) {
        h.push_str(&format!("<tr><th>{}</th>", esc(&verdicts::task_label(&t))));
        for r in runs {
            match cell(&r.verdicts, &t) {
                Some((text, v)) => {
                    let cls = match v.as_str() {
                        "better" => "better",
                        "worse" => "worse",
                        _ => "same",
                    };
                    h.push_str(&format!("<td class=\"{cls}\">{}</td>", esc(&text)));
                }
                None => h.push_str("<td>–</td>"),
            }
        }
        h.push_str("</tr>");
    }
    for (i, label) in ["claim c1", "claim c2", "claim c3", "claim c4"]
        .iter()
        .enumerate()
    {
        h.push_str(&format!("<tr><th>{label}</th>"));
        for r in runs {
            let c = r.verdicts.claims.get(i);
            h.push_str(&format!(
                "<td title=\"{}\">{}</td>",
                esc(&c.map(|c| c.because.clone()).unwrap_or_default()),
                esc(&c.map(|c| c.answer.clone()).unwrap_or("–".into()))
            ));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></body></html>\n");
    h
}

/// Writes `compare.html` and `compare.md` into `out` (created if needed); returns their paths.
pub fn build(dirs: &[PathBuf], out: &Path) -> Result<(PathBuf, PathBuf)> {
    if dirs.is_empty() {
        return Err(Error::Other("compare needs at least one run folder".into()));
    }
    let runs = dirs.iter().map(|d| load(d)).collect::<Result<Vec<_>>>()?;
    let (h, m) = (out.join("compare.html"), out.join("compare.md"));
    crate::runfolder::write_atomic(&h, html(&runs).as_bytes())?;
    crate::runfolder::write_atomic(&m, markdown(&runs).as_bytes())?;
    Ok((h, m))
}
