//! The report's tables: HTML escaping, the per-class accuracy table, and the ablation as one
//! table per task.

use crate::features::FeatureTable;

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Accuracy per class of the in-distribution test rows (original labels), as screening labs
/// show it: class (its name from `names`, label → name), images, accuracy with its Wilson 95%
/// interval; the lowest accuracy is marked.
pub fn per_class_table(
    t: &FeatureTable,
    names: &std::collections::BTreeMap<u32, String>,
) -> String {
    let mut by: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    for r in 0..t.len() {
        if t.set[r] != "id-test" {
            continue;
        }
        if let Some(l) = t.label[r] {
            let e = by.entry(l).or_default();
            e.0 += 1;
            e.1 += (t.pred[r] == l) as usize;
        }
    }
    if by.is_empty() {
        return String::new();
    }
    let acc = |(n, k): (usize, usize)| k as f64 / n.max(1) as f64;
    let worst = by.values().map(|&v| acc(v)).fold(f64::INFINITY, f64::min);
    let mut h = String::from(
        "<h3>Per-class accuracy (test set)</h3><table><tr><th>label</th><th>class</th><th>images</th><th>correct</th><th>accuracy [95% Wilson interval]</th></tr>",
    );
    for (c, &(n, k)) in &by {
        let a = acc((n, k));
        let (lo, hi) = crate::stats::wilson(k, n);
        h.push_str(&format!(
            "<tr><td>{c}</td><td>{}</td><td>{n}</td><td>{k}</td><td{}>{:.2}% [{:.2}%, {:.2}%]</td></tr>",
            esc(&names.get(c).cloned().unwrap_or_else(|| c.to_string())),
            if a == worst && by.len() > 1 {
                " class=\"best\" title=\"lowest\""
            } else {
                ""
            },
            100.0 * a,
            100.0 * lo,
            100.0 * hi
        ));
    }
    h.push_str("</table>");
    h
}

/// The paper's single-metric table, compact: for every task the ten feature columns with the
/// highest mean AUROC as threshold classifiers (sign fixed on meta-train rows), value and
/// spread; every column and metric is in single_metrics.csv.
pub fn single_table(single: &[crate::eval::Record]) -> String {
    use crate::verdicts::{task_label, task_of};
    let mut tasks: Vec<String> = Vec::new();
    for r in single.iter().filter(|r| r.metric == "auroc") {
        let t = task_of(r);
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    if tasks.is_empty() {
        return String::new();
    }
    let top: Vec<Vec<&crate::eval::Record>> = tasks
        .iter()
        .map(|t| {
            let mut v: Vec<&crate::eval::Record> = single
                .iter()
                .filter(|r| r.metric == "auroc" && &task_of(r) == t)
                .collect();
            v.sort_by(|a, b| b.mean.total_cmp(&a.mean));
            v.truncate(10);
            v
        })
        .collect();
    let mut h = String::from("<h3>Single metrics: the ten best feature columns per task</h3><p class=\"how\">Each feature column thresholded on its own (its sign fixed on each repetition's meta-train rows), mean AUROC ± sd over repetitions on the meta-test rows; every column with AUPR-In, AUPR-Out and FPR95: single_metrics.csv.</p><div class=\"scroll\"><table><tr><th>#</th>");
    for t in &tasks {
        h.push_str(&format!("<th>{}</th>", esc(&task_label(t))));
    }
    h.push_str("</tr>");
    for i in 0..10 {
        if top.iter().all(|v| v.len() <= i) {
            break;
        }
        h.push_str(&format!("<tr><th>{}</th>", i + 1));
        for v in &top {
            match v.get(i) {
                Some(r) => h.push_str(&format!(
                    "<td title=\"± {:.4}\"><code>{}</code> {:.4}</td>",
                    r.std,
                    esc(&r.features),
                    r.mean
                )),
                None => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></div>");
    h
}

/// The ablation as one table per task: rows are the baselines, then each feature group (with
/// and without known unknowns), columns the meta classifiers; a cell is the mean AUROC over
/// repetitions (its spread and the other metrics in the cell's title); the best cell of each
/// table is highlighted. Narrow enough for the page; every number is in ablation.csv.
pub fn ablation_by_task(recs: &[crate::eval::Record]) -> String {
    use crate::verdicts::{task_label, task_of};
    let mut tasks: Vec<String> = Vec::new();
    let mut models: Vec<String> = Vec::new();
    for r in recs {
        let t = task_of(r);
        if !tasks.contains(&t) {
            tasks.push(t);
        }
        if r.model != r.features && !models.contains(&r.model) {
            models.push(r.model.clone());
        }
    }
    let get = |task: &str, model: &str, feats: &str, ku: bool, tr: &str, metric: &str| {
        recs.iter().find(|r| {
            task_of(r) == task
                && r.model == model
                && r.features == feats
                && r.known_unknowns == ku
                && r.transform == tr
                && r.metric == metric
        })
    };
    let mut h = String::new();
    for task in &tasks {
        // rows: (label, features, ku, transform, is baseline)
        let mut rows: Vec<(String, String, bool, String, bool)> = Vec::new();
        for r in recs
            .iter()
            .filter(|r| &task_of(r) == task && r.metric == "auroc")
        {
            let base = r.model == r.features;
            let mut label = if base {
                format!("{} (baseline)", r.features)
            } else if r.known_unknowns {
                format!("{} + known unknowns", r.features)
            } else {
                r.features.clone()
            };
            if !base && r.transform != "none" {
                label.push_str(&format!(", {}", r.transform));
            }
            if !rows.iter().any(|x| x.0 == label) {
                rows.push((
                    label,
                    r.features.clone(),
                    r.known_unknowns,
                    r.transform.clone(),
                    base,
                ));
            }
        }
        rows.sort_by_key(|x| !x.4);
        let best = recs
            .iter()
            .filter(|r| &task_of(r) == task && r.metric == "auroc")
            .map(|r| r.mean)
            .fold(f64::NEG_INFINITY, f64::max);
        h.push_str(&format!(
            "<h3>{}</h3><div class=\"scroll\"><table><tr><th>features</th><th>raw score</th>",
            esc(&task_label(task))
        ));
        for m in &models {
            h.push_str(&format!("<th>{}</th>", esc(m)));
        }
        h.push_str("</tr>");
        for (label, feats, ku, tr, base) in &rows {
            h.push_str(&format!("<tr><th>{}</th>", esc(label)));
            let cols: Vec<Option<&str>> =
                std::iter::once(if *base { Some(feats.as_str()) } else { None })
                    .chain(models.iter().map(|m| (!*base).then_some(m.as_str())))
                    .collect();
            for model in cols {
                let cell =
                    model.and_then(|m| get(task, m, feats, *ku, tr, "auroc").map(|r| (m, r)));
                match cell {
                    Some((m, r)) => {
                        let other = |metric: &str| {
                            get(task, m, feats, *ku, tr, metric)
                                .map(|x| format!("; {metric} {:.4} ± {:.4}", x.mean, x.std))
                                .unwrap_or_default()
                        };
                        h.push_str(&format!(
                            "<td{} title=\"AUROC {:.4} ± {:.4}{}{}{}\">{:.4}</td>",
                            if r.mean == best {
                                " class=\"best\""
                            } else {
                                ""
                            },
                            r.mean,
                            r.std,
                            other("aupr_in"),
                            other("aupr_out"),
                            other("fpr95"),
                            r.mean
                        ));
                    }
                    None => h.push_str("<td></td>"),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</table></div>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Record;

    fn rec(
        ood: Option<&str>,
        model: &str,
        feats: &str,
        ku: bool,
        metric: &str,
        mean: f64,
    ) -> Record {
        Record {
            task: if ood.is_some() { "ood" } else { "error" }.into(),
            ood_set: ood.map(String::from),
            model: model.into(),
            features: feats.into(),
            known_unknowns: ku,
            transform: "none".into(),
            metric: metric.into(),
            mean,
            std: 0.01,
            values: vec![mean],
        }
    }

    #[test]
    fn ablation_is_one_narrow_table_per_task() {
        let mut recs = Vec::new();
        for ood in [None, Some("letters")] {
            recs.push(rec(ood, "msp", "msp", false, "auroc", 0.90));
            for (m, v) in [("glm", 0.91), ("nn", 0.95)] {
                recs.push(rec(ood, m, "grad", false, "auroc", v));
                recs.push(rec(ood, m, "grad", true, "auroc", v - 0.01));
                recs.push(rec(ood, m, "grad", false, "fpr95", 0.3));
            }
        }
        let h = ablation_by_task(&recs);
        assert_eq!(h.matches("<table>").count(), 2);
        assert!(h.contains("<h3>error detection</h3>") && h.contains("<h3>OOD letters</h3>"));
        // header: features, raw score, glm, nn
        assert!(h.contains("<tr><th>features</th><th>raw score</th><th>glm</th><th>nn</th></tr>"));
        // baseline row first, then grad and grad + known unknowns
        let (b, g, k) = (
            h.find("msp (baseline)").unwrap(),
            h.find("<th>grad</th>").unwrap(),
            h.find("grad + known unknowns").unwrap(),
        );
        assert!(b < g && g < k);
        assert!(h.contains(
            "class=\"best\" title=\"AUROC 0.9500 ± 0.0100; fpr95 0.3000 ± 0.0100\">0.9500"
        ));
    }
}
