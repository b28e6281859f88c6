//! The first screen of report.html: the verdict of every task in one line, the four claims of
//! the gradient-metrics paper answered with the tests their wording needs, and one heatmap of
//! the best AUROC per feature group and task.

use super::esc;
use crate::eval::Record;
use crate::verdicts::{self, Verdicts};

/// The headline block: one verdict line per task, then the claims.
pub fn block(v: &Verdicts) -> String {
    let mut h = String::from("<h2>Answer</h2><p class=\"how\">Does anything beat the softmax (MSP)? For each task, the best detector against MSP on the same meta-test rows of every repetition (details and every family's best in verdicts.csv).</p><ul class=\"verdicts\">");
    for t in verdicts::tasks(v) {
        if let (Some(line), Some(x)) = (verdicts::headline(v, &t), verdicts::best(v, &t)) {
            let cls = match x.verdict.as_str() {
                "better" => "better",
                "worse" => "worse",
                _ => "same",
            };
            h.push_str(&format!("<li class=\"{cls}\">{}</li>", esc(&line)));
        }
    }
    h.push_str("</ul><h3>The paper's claims, as it states them</h3><ul class=\"claims\">");
    for c in &v.claims {
        h.push_str(&format!(
            "<li><b>{} {}</b> <span class=\"how\">({})</span><br>Answer: <b>{}</b>.<details><summary class=\"how\">evidence and test</summary>{}{}</details></li>",
            esc(&c.name),
            esc(&c.statement),
            esc(&c.quote),
            esc(&c.answer),
            esc(&c.because),
            if c.test.is_empty() {
                String::new()
            } else {
                format!("<br><span class=\"how\">Test: {}.</span>", esc(&c.test))
            }
        ));
    }
    h.push_str(&format!("</ul><p class=\"how\">{}</p>", esc(&v.how)));
    h
}

/// The heatmap: rows are the baselines, then the feature groups; columns the tasks; a cell is
/// the best mean AUROC over models (and known-unknown settings), coloured, value printed.
pub fn heatmap(recs: &[Record]) -> String {
    let auroc: Vec<&Record> = recs.iter().filter(|r| r.metric == "auroc").collect();
    let mut tasks: Vec<String> = Vec::new();
    // rows: (features, transform, baseline)
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    for r in &auroc {
        let t = verdicts::task_of(r);
        if !tasks.contains(&t) {
            tasks.push(t);
        }
        let key = (
            r.features.clone(),
            r.transform.clone(),
            r.model == r.features,
        );
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    // baselines first, each part in the order met; a group's transforms side by side
    rows.sort_by_key(|(_, _, base)| !*base);
    let order: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    rows.sort_by_key(|(f, _, base)| (!*base, order.iter().position(|o| o == f)));
    let best = |feat: &str, tr: &str, task: &str| {
        auroc
            .iter()
            .filter(|r| r.features == feat && r.transform == tr && verdicts::task_of(r) == task)
            .map(|r| r.mean)
            .fold(f64::NAN, f64::max)
    };
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|(f, tr, _)| tasks.iter().map(move |t| (f, tr, t)))
        .map(|(f, tr, t)| best(f, tr, t))
        .filter(|v| v.is_finite())
        .collect();
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min).min(0.99);
    let hi = vals
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-9);
    let mut h = String::from("<h3>Best AUROC per feature group and task</h3><p class=\"how\">Rows: the baselines (a raw score each), then the meta classifiers' feature groups; a cell is the best mean AUROC over models and known-unknown settings (rows ending in \", log\": the meta classifiers on log-transformed features); darker is higher (scale from the table's lowest to its highest value).</p><div class=\"scroll\"><table class=\"heat\"><tr><th>features</th>");
    for t in &tasks {
        h.push_str(&format!(
            "<th title=\"{}\">{}</th>",
            esc(&verdicts::task_label(t)),
            esc(&verdicts::task_short(t))
        ));
    }
    h.push_str("</tr>");
    for (f, tr, base) in &rows {
        h.push_str(&format!(
            "<tr><th>{}{}{}</th>",
            esc(f),
            if tr == "none" {
                String::new()
            } else {
                format!(", {}", esc(tr))
            },
            if *base { " (baseline)" } else { "" }
        ));
        for t in &tasks {
            let v = best(f, tr, t);
            if v.is_finite() {
                let x = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
                // white → blue; text turns white on the dark end
                let (r, g, b) = ((255.0 - x * 200.0) as u8, (255.0 - x * 140.0) as u8, 255u8);
                let fg = if x > 0.6 { "#fff" } else { "#222" };
                h.push_str(&format!(
                    "<td style=\"background:rgb({r},{g},{b});color:{fg}\">{v:.4}</td>"
                ));
            } else {
                h.push_str("<td>–</td>");
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></div>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ood: Option<&str>, model: &str, feats: &str, mean: f64) -> Record {
        Record {
            task: if ood.is_some() { "ood" } else { "error" }.into(),
            ood_set: ood.map(String::from),
            model: model.into(),
            features: feats.into(),
            known_unknowns: false,
            transform: "none".into(),
            metric: "auroc".into(),
            mean,
            std: 0.0,
            values: vec![mean],
        }
    }

    #[test]
    fn heatmap_takes_the_best_model_and_puts_baselines_first() {
        let recs = vec![
            rec(None, "ridge", "grad", 0.95),
            rec(None, "nn", "grad", 0.97),
            rec(None, "msp", "msp", 0.96),
            rec(Some("letters"), "ridge", "grad", 0.90),
            rec(Some("letters"), "msp", "msp", 0.80),
        ];
        let h = heatmap(&recs);
        let msp = h.find("msp (baseline)").unwrap();
        let grad = h.find("<th>grad</th>").unwrap();
        assert!(msp < grad);
        assert!(h.contains(">0.9700</td>") && !h.contains(">0.9500</td>"));
        assert!(h.contains("<th title=\"OOD letters\">letters</th>"));
    }
}
