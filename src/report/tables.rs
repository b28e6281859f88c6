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

/// Selective classification per task (error detection, failure detection, each shift): the
/// msp and entropy baselines, the lowest-AURC detector and the lowest-AURC gradient detector,
/// with AURC, e-AURC and AUGRC (shown ×1000, as FD-Shifts does; the files keep 0–1).
pub fn selective_table(recs: &[crate::eval::Record]) -> String {
    use crate::verdicts::{detector_of, family, task_label, task_of};
    let mut tasks: Vec<String> = Vec::new();
    for r in recs.iter().filter(|r| r.metric == "aurc") {
        let t = task_of(r);
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    if tasks.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h3>Selective classification: AURC, e-AURC, AUGRC (×1000, lower is better)</h3><p class=\"how\">Risk = share of wrong predictions among the kept (failure: wrong or OOD), images kept from the most trusted down, ties in the score grouped. Per task: the msp and entropy baselines, the detector with the lowest mean AURC and the lowest-AURC gradient detector (without known unknowns or with). Values ×1000 here; metrics.json keeps the 0–1 scale. e-AURC subtracts the perfect ranking's r + (1 − r)·ln(1 − r); a scorer with large ties (boosted trees) can fall below it, since the trapezoid across a tied group is a straight line under the perfect ranking's curved risk (e.g. two tied groups that separate perfectly give r²/2).</p><div class=\"scroll\"><table><tr><th>task</th><th>detector</th><th>AURC</th><th>e-AURC</th><th>AUGRC</th></tr>");
    for t in &tasks {
        let of = |det: &str, m: &str| {
            recs.iter()
                .find(|r| &task_of(r) == t && r.metric == m && detector_of(r) == det)
                .map(|r| r.mean)
        };
        let mut rows: Vec<(String, String)> = vec![
            ("msp".into(), "msp/msp/without".into()),
            ("entropy".into(), "entropy/entropy/without".into()),
        ];
        let best = |fam: Option<&str>| {
            recs.iter()
                .filter(|r| &task_of(r) == t && r.metric == "aurc" && r.mean.is_finite())
                .filter(|r| fam.is_none_or(|f| family(&r.model, &r.features) == f))
                .min_by(|a, b| a.mean.total_cmp(&b.mean))
                .map(detector_of)
        };
        for (role, fam) in [
            ("lowest AURC", None),
            ("lowest-AURC gradient", Some("gradient")),
        ] {
            if let Some(d) = best(fam) {
                if !rows.iter().any(|r| r.1 == d) {
                    rows.push((role.into(), d));
                }
            }
        }
        for (i, (role, det)) in rows.iter().enumerate() {
            let Some(aurc) = of(det, "aurc") else {
                continue;
            };
            let f = |v: Option<f64>| v.map(|x| format!("{:.2}", 1000.0 * x)).unwrap_or_default();
            h.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code> ({})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if i == 0 { esc(&task_label(t)) } else { String::new() },
                esc(det),
                esc(role),
                f(Some(aurc)),
                f(of(det, "eaurc")),
                f(of(det, "augrc"))
            ));
        }
    }
    h.push_str("</table></div>");
    h
}

/// The "extended from" section of a run made by `metaclf extend` (its extend.json): accuracy
/// per class before and after with Wilson intervals, how many labels it took, and the OOD
/// detection of the sets both runs have.
pub fn extend_section(v: &serde_json::Value) -> String {
    let pct = |x: &serde_json::Value| {
        x.as_f64()
            .map(|a| format!("{:.2}%", 100.0 * a))
            .unwrap_or_else(|| "–".into())
    };
    let ci = |x: &serde_json::Value| match x.as_array() {
        Some(a) if a.len() == 2 => format!(
            " [{:.2}%, {:.2}%]",
            100.0 * a[0].as_f64().unwrap_or(0.0),
            100.0 * a[1].as_f64().unwrap_or(0.0)
        ),
        _ => String::new(),
    };
    let o = &v["old_classes"];
    let mut h = format!(
        "<h2>Extended from <code>{}</code></h2><p class=\"lead\">{} labels added the classes <b>{}</b>. Accuracy on the old classes {}{} → <b>{}</b>{} ({} test images){}.</p><p class=\"how\">{} Fine-tuned {} epochs at lr {:.2e}, labelled images repeated {}×.</p>",
        esc(v["run"].as_str().unwrap_or("")),
        v["labels"],
        esc(&v["new_classes"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
        pct(&o["before"]),
        ci(&o["before_ci"]),
        pct(&o["after"]),
        ci(&o["after_ci"]),
        o["images"],
        match v["new_classes_accuracy"].as_object() {
            Some(n) => format!(
                "; on the new classes <b>{}</b>{} ({} test images)",
                pct(&n["after"]),
                ci(&n["after_ci"]),
                n["images"]
            ),
            None => String::new(),
        },
        esc(v["how"].as_str().unwrap_or("")),
        v["epochs"],
        v["lr"].as_f64().unwrap_or(0.0),
        v["repeat"]
    );
    h.push_str("<table><tr><th>class</th><th>status</th><th>labels</th><th>test images</th><th>accuracy before</th><th>accuracy after</th></tr>");
    for c in v["classes"].as_array().cloned().unwrap_or_default() {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}{}</td></tr>",
            esc(c["name"].as_str().unwrap_or("")),
            esc(c["status"].as_str().unwrap_or("")),
            c["labels"],
            c["test_images"],
            pct(&c["accuracy_before"]),
            ci(&c["accuracy_before_ci"]),
            pct(&c["accuracy_after"]),
            ci(&c["accuracy_after_ci"])
        ));
    }
    h.push_str("</table>");
    if let Some(ood) = v["ood"].as_array().filter(|a| !a.is_empty()) {
        h.push_str("<h3>OOD detection before and after (msp baseline AUROC)</h3><table><tr><th>set</th><th>before</th><th>after</th></tr>");
        for r in ood {
            let f = |x: &serde_json::Value| {
                x.as_f64()
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "– (not evaluated: its classes are known now)".into())
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(r["set"].as_str().unwrap_or("")),
                f(&r["msp_auroc_before"]),
                f(&r["msp_auroc_after"])
            ));
        }
        h.push_str("</table>");
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
