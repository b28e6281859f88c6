//! The gradient-metrics paper's claims answered as the paper states them, each with the test
//! its wording needs: c1 "the same" → equivalence (two one-sided tests within ±margin); c2
//! "equally well or better" → non-inferiority (one-sided, −margin); c3 "raises" and c4
//! "improves" → superiority (one-sided, Holm within the claim). All at α = 0.05 on paired
//! differences over repetitions (the same meta-test rows for detector and baseline).

use super::{detector_of, task_of, ALPHA};
use crate::eval::Record;
use crate::stats;
use serde::{Deserialize, Serialize};

/// The answer to one claim of the paper, with the test its wording needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    /// `c1` … `c4`.
    pub name: String,
    /// The claim as the paper states it.
    pub statement: String,
    /// The paper's sentence, quoted where the issue gives it, else marked as a paraphrase.
    pub quote: String,
    /// The test: equivalence (TOST), non-inferiority or superiority, its margin and level.
    pub test: String,
    pub metric: String,
    /// `supported`, `partly (…)`, `not supported` or `not testable here (why)`.
    pub answer: String,
    /// One sentence of the numbers behind the answer.
    pub because: String,
    pub evidence: Vec<Evidence>,
}

/// One test of a claim: a detector against its baseline on one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub task: String,
    pub metric: String,
    pub detector: String,
    pub baseline: String,
    pub mean_diff: f64,
    /// t interval of the mean difference: 90% for the equivalence test (its decision is that
    /// interval inside the margin), 95% otherwise.
    pub ci_low: f64,
    pub ci_high: f64,
    /// The test's p-value (TOST: the larger one-sided p; superiority: Holm-adjusted within the
    /// claim).
    pub p: f64,
    /// `equivalent`, `non-inferior`, `superior`, `better`, `worse` or `undecided`.
    pub result: String,
    pub repetitions: usize,
}

/// Fewest repetitions for a claim's test to decide anything.
pub const MIN_REPETITIONS: usize = 5;

/// The claims: name, statement, the paper's words.
pub const CLAIMS: [(&str, &str, &str); 4] = [
    (
        "c1",
        "For several gradient metrics, thresholding the single metric detects the CNN's errors with the same AUROC as entropy.",
        "\u{201c}for several such metrics we achieve the same meta classification accuracy \u{2026} as for entropy thresholding\u{201d}",
    ),
    (
        "c2",
        "Logistic meta classifiers on entropy + gradient metrics detect errors equally well or better than the softmax baseline (MSP).",
        "\u{201c}the regression techniques perform equally well or better compared to the softmax baseline\u{201d}",
    ),
    (
        "c3",
        "Combining entropy with gradient metrics in a meta classifier raises AUROC and AUPR-Out over the softmax baseline for images of unknown concepts (OOD sets).",
        "for unknown concepts the paper reports an increase of the meta classifiers on gradient metrics and entropy over the softmax baseline (paraphrased)",
    ),
    (
        "c4",
        "The NN meta classifier trained with a few uniform-noise images (known unknowns, 200) improves AUPR-Out on unseen OOD sets (LASSO tested likewise).",
        "the paper's known-unknowns experiment: a few noise images in meta training improve the detection of unseen OOD data (paraphrased)",
    ),
];

/// Is `features` a group of entropy (softmax) and gradient metrics (e.g. `grad+softmax`)?
fn entropy_and_gradient(features: &str) -> bool {
    let parts: Vec<&str> = features.split('+').collect();
    parts.contains(&"softmax") && parts.iter().any(|p| p.starts_with("grad"))
}

fn rec_of<'a>(
    recs: &'a [Record],
    task: &str,
    metric: &str,
    pick: impl Fn(&Record) -> bool,
) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| task_of(r) == task && r.metric == metric && pick(r))
        .collect()
}

fn diffs(d: &Record, b: &Record) -> Vec<f64> {
    d.values.iter().zip(&b.values).map(|(x, y)| x - y).collect()
}

fn evidence(
    (task, metric): (&str, &str),
    det: &Record,
    base: &Record,
    level: f64,
    p: f64,
    result: &str,
) -> Evidence {
    let d = diffs(det, base);
    let (ci_low, ci_high) = stats::t_interval(&d, level);
    Evidence {
        task: task.into(),
        metric: metric.into(),
        detector: detector_of(det),
        baseline: detector_of(base),
        mean_diff: stats::mean(&d),
        ci_low,
        ci_high,
        p,
        result: result.into(),
        repetitions: d.len(),
    }
}

type Pair<'a> = (String, String, &'a Record, &'a Record);

/// Superiority tests (one-sided paired t, H0: detector − baseline ≤ 0) of `pairs`,
/// Holm-adjusted within the family.
fn superiority(pairs: &[Pair<'_>]) -> Vec<Evidence> {
    let raw: Vec<f64> = pairs
        .iter()
        .map(|(_, _, d, b)| stats::t_one_sided(&diffs(d, b), 0.0, true))
        .collect();
    let adj = stats::holm(&raw);
    pairs
        .iter()
        .zip(adj)
        .map(|((task, metric, d, b), p)| {
            let res = if p < ALPHA { "superior" } else { "undecided" };
            evidence((task, metric), d, b, 0.95, p, res)
        })
        .collect()
}

fn claim(
    k: usize,
    test: String,
    metric: &str,
    answer: String,
    because: String,
    ev: Vec<Evidence>,
) -> Claim {
    let (name, statement, quote) = CLAIMS[k];
    Claim {
        name: name.into(),
        statement: statement.into(),
        quote: quote.into(),
        test,
        metric: metric.into(),
        answer,
        because,
        evidence: ev,
    }
}

fn not_testable(k: usize, why: &str) -> Claim {
    claim(
        k,
        String::new(),
        "",
        format!("not testable here ({why})"),
        why.into(),
        vec![],
    )
}

fn ev_line(e: &Evidence) -> String {
    format!(
        "{} {} {}: {:+.4} [{:+.4}, {:+.4}] → {}",
        e.task.trim_start_matches("ood-"),
        e.metric,
        e.detector,
        e.mean_diff,
        e.ci_low,
        e.ci_high,
        e.result
    )
}

/// "a, b" or "none".
fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The four claims from a run's records (`single`: the single-metric table), its known-unknown
/// source, tasks and margin.
pub fn answer(
    recs: &[Record],
    single: &[Record],
    known_unknown: Option<&str>,
    tasks: &[String],
    margin: f64,
) -> Vec<Claim> {
    let reps = recs
        .iter()
        .find(|r| r.metric == "auroc")
        .map_or(0, |r| r.values.len());
    if reps < MIN_REPETITIONS {
        let why = format!(
            "{reps} repetitions; its tests need at least {MIN_REPETITIONS} (meta.repetitions)"
        );
        return (0..4).map(|k| not_testable(k, &why)).collect();
    }
    let ood: Vec<&String> = tasks.iter().filter(|t| t.starts_with("ood-")).collect();
    vec![
        c1(single, margin),
        c2(recs, margin),
        c3(recs, &ood),
        c4(recs, &ood, known_unknown),
    ]
}

/// c1: every gradient column's single-metric AUROC against entropy's: equivalence.
fn c1(single: &[Record], margin: f64) -> Claim {
    let entropy = single
        .iter()
        .find(|r| r.task == "error" && r.metric == "auroc" && r.features == "entropy");
    let grads: Vec<&Record> = single
        .iter()
        .filter(|r| r.task == "error" && r.metric == "auroc" && r.features.starts_with("grad_"))
        .collect();
    let Some(e) = entropy.filter(|_| !grads.is_empty()) else {
        return not_testable(
            0,
            "no single-metric table with entropy and gradient columns (single_metrics in metrics.json)",
        );
    };
    let ev: Vec<Evidence> = grads
        .iter()
        .map(|g| {
            let d = diffs(g, e);
            let p = stats::tost(&d, margin);
            let (_, pt) = stats::paired_t(&d);
            let m = stats::mean(&d);
            let res = if p < ALPHA {
                "equivalent"
            } else if pt < ALPHA && m > 0.0 {
                "better"
            } else if pt < ALPHA && m < 0.0 {
                "worse"
            } else {
                "undecided"
            };
            evidence(("error", "auroc"), g, e, 0.90, p, res)
        })
        .collect();
    let names = |r: &str| -> Vec<String> {
        ev.iter()
            .filter(|x| x.result == r)
            .map(|x| x.detector.split('/').nth(1).unwrap_or("").to_string())
            .collect()
    };
    let (eq, be, wo, un) = (
        names("equivalent"),
        names("better"),
        names("worse"),
        names("undecided"),
    );
    let same_or_better: Vec<String> = eq.iter().chain(&be).cloned().collect();
    let answer = match same_or_better.len() {
        0 => "not supported".to_string(),
        1 => format!("partly (only {})", same_or_better[0]),
        _ => "supported".to_string(),
    };
    claim(
        0,
        format!(
            "equivalence: two one-sided paired t tests (TOST) of the single-metric AUROC against entropy's, margin ±{margin} AUROC, α = {ALPHA} (the 90% interval inside the margin); otherwise better/worse by a two-sided paired t test at α = {ALPHA}; each column's sign fixed on meta-train rows"
        ),
        "auroc",
        answer,
        format!(
            "over {} repetitions: equivalent to entropy: {}; better: {}; worse: {}; undecided: {}",
            e.values.len(),
            list(&eq),
            list(&be),
            list(&wo),
            list(&un)
        ),
        ev,
    )
}

/// c2: per logistic model, its best entropy + gradient entry (group, transform) against MSP
/// on error detection: non-inferiority.
fn c2(recs: &[Record], margin: f64) -> Claim {
    let Some(msp) = recs
        .iter()
        .find(|r| r.task == "error" && r.metric == "auroc" && r.model == "msp")
    else {
        return not_testable(1, "no MSP baseline for error detection");
    };
    let mut ev = Vec::new();
    for m in ["glm", "lasso", "ridge", "elastic-net"] {
        let best = rec_of(recs, "error", "auroc", |r| {
            r.model == m
                && !r.known_unknowns
                && entropy_and_gradient(&r.features)
                && r.values.len() == msp.values.len()
        })
        .into_iter()
        .max_by(|a, b| a.mean.total_cmp(&b.mean));
        if let Some(b) = best {
            let p = stats::t_one_sided(&diffs(b, msp), -margin, true);
            let res = if p < ALPHA {
                "non-inferior"
            } else {
                "undecided"
            };
            ev.push(evidence(("error", "auroc"), b, msp, 0.95, p, res));
        }
    }
    if ev.is_empty() {
        return not_testable(
            1,
            "no logistic meta classifier on a group of entropy and gradient metrics (e.g. grad+softmax) in the grid",
        );
    }
    let ok: Vec<String> = ev
        .iter()
        .filter(|e| e.result == "non-inferior")
        .map(|e| e.detector.split('/').next().unwrap_or("").to_string())
        .collect();
    let answer = if ok.len() == ev.len() {
        "supported".to_string()
    } else if !ok.is_empty() {
        format!("partly ({} of {}: {})", ok.len(), ev.len(), ok.join(", "))
    } else {
        "not supported".to_string()
    };
    claim(
        1,
        format!(
            "non-inferiority: one-sided paired t test of H0: detector − MSP ≤ −{margin} AUROC, α = {ALPHA}, per logistic model (its best entropy + gradient group and transform, without known unknowns)"
        ),
        "auroc",
        answer,
        ev.iter().map(ev_line).collect::<Vec<_>>().join("; "),
        ev,
    )
}

/// c3: per OOD set, the best meta classifier on entropy + gradient metrics against MSP:
/// superiority on AUROC and AUPR-Out.
fn c3(recs: &[Record], ood: &[&String]) -> Claim {
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for task in ood {
        let Some(b) = rec_of(recs, task, "auroc", |r| {
            r.model != r.features && !r.known_unknowns && entropy_and_gradient(&r.features)
        })
        .into_iter()
        .max_by(|a, b| a.mean.total_cmp(&b.mean)) else {
            continue;
        };
        for metric in ["auroc", "aupr_out"] {
            let d = rec_of(recs, task, metric, |r| detector_of(r) == detector_of(b));
            let m = rec_of(recs, task, metric, |r| r.model == "msp");
            if let (Some(d), Some(m)) = (d.first(), m.first()) {
                if d.values.len() == m.values.len() {
                    pairs.push((task.to_string(), metric.to_string(), d, m));
                }
            }
        }
    }
    if pairs.is_empty() {
        return not_testable(
            2,
            "no OOD set, or no meta classifier on entropy and gradient metrics",
        );
    }
    let ev = superiority(&pairs);
    let both: Vec<String> = ood
        .iter()
        .filter(|t| {
            let e: Vec<&Evidence> = ev.iter().filter(|e| &e.task == **t).collect();
            e.len() == 2 && e.iter().all(|e| e.result == "superior")
        })
        .map(|t| t.trim_start_matches("ood-").to_string())
        .collect();
    let answer = if both.len() == ood.len() {
        "supported".to_string()
    } else if !both.is_empty() {
        format!("partly (both metrics higher on {})", both.join(", "))
    } else {
        "not supported".to_string()
    };
    claim(
        2,
        format!(
            "superiority: one-sided paired t test of H0: detector − MSP ≤ 0, Holm-adjusted over the claim's {} tests, α = {ALPHA}; detector = the best meta classifier on entropy + gradient metrics per set, without known unknowns (chosen on the repetitions it is tested on: optimistic)",
            ev.len()
        ),
        "auroc, aupr_out",
        answer,
        ev.iter().map(ev_line).collect::<Vec<_>>().join("; "),
        ev,
    )
}

/// c4: nn (and lasso) on entropy + gradient metrics with vs without known unknowns, per unseen
/// OOD set: superiority on AUPR-Out and AUROC.
fn c4(recs: &[Record], ood: &[&String], known_unknown: Option<&str>) -> Claim {
    let Some(ku) = known_unknown else {
        return not_testable(3, "the run has no known unknowns (known_unknowns.source)");
    };
    let unseen: Vec<&String> = ood
        .iter()
        .copied()
        .filter(|t| t.trim_start_matches("ood-") != ku)
        .collect();
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for model in ["nn", "lasso"] {
        // its group and transform: the best for error detection without known unknowns
        let Some(base) = rec_of(recs, "error", "auroc", |r| {
            r.model == model && !r.known_unknowns && entropy_and_gradient(&r.features)
        })
        .into_iter()
        .max_by(|a, b| a.mean.total_cmp(&b.mean)) else {
            continue;
        };
        for task in &unseen {
            for metric in ["aupr_out", "auroc"] {
                let pick = |with: bool| {
                    rec_of(recs, task, metric, |r| {
                        r.model == model
                            && r.features == base.features
                            && r.transform == base.transform
                            && r.known_unknowns == with
                    })
                    .first()
                    .copied()
                };
                if let (Some(w), Some(wo)) = (pick(true), pick(false)) {
                    if w.values.len() == wo.values.len() {
                        pairs.push((task.to_string(), metric.to_string(), w, wo));
                    }
                }
            }
        }
    }
    let ev: Vec<Evidence> = superiority(&pairs);
    let nn: Vec<&Evidence> = ev
        .iter()
        .filter(|e| e.detector.starts_with("nn/") && e.metric == "aupr_out")
        .collect();
    if nn.is_empty() {
        return not_testable(
            3,
            "no nn meta classifier on entropy + gradient metrics fitted with and without known unknowns, or no OOD set apart from the known-unknown source",
        );
    }
    let sup: Vec<String> = nn
        .iter()
        .filter(|e| e.result == "superior")
        .map(|e| e.task.trim_start_matches("ood-").to_string())
        .collect();
    let answer = if sup.len() == nn.len() {
        "supported".to_string()
    } else if !sup.is_empty() {
        format!("partly (nn's AUPR-Out higher on {})", sup.join(", "))
    } else {
        "not supported".to_string()
    };
    claim(
        3,
        format!(
            "superiority: one-sided paired t test of H0: with − without known unknowns ≤ 0, Holm-adjusted over the claim's {} tests, α = {ALPHA}; the same model, group and transform (the model's best for error detection) on every OOD set other than the known-unknown source; the answer follows nn's AUPR-Out, lasso is evidence",
            ev.len()
        ),
        "aupr_out, auroc",
        answer,
        ev.iter().map(ev_line).collect::<Vec<_>>().join("; "),
        ev,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        task: Option<&str>,
        model: &str,
        feats: &str,
        ku: bool,
        metric: &str,
        v: Vec<f64>,
    ) -> Record {
        Record {
            task: if task.is_some() { "ood" } else { "error" }.into(),
            ood_set: task.map(String::from),
            model: model.into(),
            features: feats.into(),
            known_unknowns: ku,
            transform: if model == feats || model == "single" {
                "none"
            } else {
                "log"
            }
            .into(),
            metric: metric.into(),
            mean: stats::mean(&v),
            std: stats::sd(&v),
            values: v,
        }
    }

    /// 10 repetitions of `b + d` with a jitter of ±j.
    fn vals(d: f64, j: f64) -> Vec<f64> {
        let b = [0.95, 0.96, 0.94, 0.95, 0.97, 0.96, 0.95, 0.94, 0.96, 0.95];
        b.iter()
            .enumerate()
            .map(|(i, x)| x + d + j * ((i % 3) as f64 - 1.0))
            .collect()
    }

    #[test]
    fn each_claim_gets_its_own_test() {
        let single = vec![
            rec(None, "single", "entropy", false, "auroc", vals(0.0, 0.0)),
            // within the margin, tight: equivalent
            rec(
                None,
                "single",
                "grad_all_l2",
                false,
                "auroc",
                vals(0.001, 0.0005),
            ),
            // clearly lower: worse
            rec(
                None,
                "single",
                "grad_fc_kurt",
                false,
                "auroc",
                vals(-0.02, 0.001),
            ),
            // the same on average but noisy: neither equivalent nor different
            rec(
                None,
                "single",
                "grad_conv1_l1",
                false,
                "auroc",
                vals(0.0, 0.02),
            ),
        ];
        let mut recs = Vec::new();
        for m in ["auroc", "aupr_out"] {
            recs.push(rec(None, "msp", "msp", false, m, vals(0.0, 0.0)));
            // glm: 0.001 below MSP, tight: non-inferior; lasso 0.02 below: not
            recs.push(rec(
                None,
                "glm",
                "grad+softmax",
                false,
                m,
                vals(-0.001, 0.0005),
            ));
            recs.push(rec(
                None,
                "lasso",
                "grad+softmax",
                false,
                m,
                vals(-0.02, 0.001),
            ));
            recs.push(rec(None, "nn", "grad+softmax", false, m, vals(0.01, 0.001)));
            for (set, gain, ku_gain) in [("letters", 0.03, 0.05), ("normal-noise", 0.0, 0.0)] {
                let s = Some(set);
                recs.push(rec(s, "msp", "msp", false, m, vals(0.0, 0.0)));
                recs.push(rec(s, "nn", "grad+softmax", false, m, vals(gain, 0.002)));
                recs.push(rec(
                    s,
                    "nn",
                    "grad+softmax",
                    true,
                    m,
                    vals(gain + ku_gain, 0.002),
                ));
            }
        }
        let tasks: Vec<String> = ["error", "ood-letters", "ood-normal-noise"]
            .map(String::from)
            .to_vec();
        let c = answer(&recs, &single, Some("uniform-noise"), &tasks, 0.005);
        assert_eq!(c.len(), 4);
        // c1: one equivalent column → partly
        assert_eq!(c[0].answer, "partly (only grad_all_l2)", "{:?}", c[0]);
        let res = |i: usize, det: &str| {
            c[i].evidence
                .iter()
                .find(|e| e.detector.contains(det))
                .map(|e| e.result.clone())
                .unwrap()
        };
        assert_eq!(res(0, "grad_fc_kurt"), "worse");
        assert_eq!(res(0, "grad_conv1_l1"), "undecided");
        // the equivalence decision is the 90% interval inside ±margin
        let e = c[0]
            .evidence
            .iter()
            .find(|e| e.detector.contains("grad_all_l2"))
            .unwrap();
        assert!(e.ci_low > -0.005 && e.ci_high < 0.005);
        // c2: glm non-inferior, lasso not
        assert_eq!(c[1].answer, "partly (1 of 2: glm)", "{:?}", c[1]);
        assert_eq!(res(1, "glm/"), "non-inferior");
        // c3: superior on letters (both metrics), not on normal noise
        assert_eq!(
            c[2].answer, "partly (both metrics higher on letters)",
            "{:?}",
            c[2]
        );
        // c4: the known-unknown source is not an unseen set; nn gains on letters only
        assert_eq!(
            c[3].answer, "partly (nn's AUPR-Out higher on letters)",
            "{:?}",
            c[3]
        );
        assert!(c[3]
            .evidence
            .iter()
            .all(|e| e.detector.ends_with("/with/log")));
        assert!(c
            .iter()
            .all(|x| !x.quote.is_empty() && !x.statement.is_empty()));
        // without known unknowns c4 is not testable
        let c = answer(&recs, &single, None, &tasks, 0.005);
        assert!(c[3].answer.starts_with("not testable here"));
    }
}
