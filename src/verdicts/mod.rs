//! Verdicts: for every task (error detection, each OOD set), the best detector and the best of
//! each family (softmax, MC dropout, gradient features, combinations) compared with the MSP
//! baseline on the same meta-test rows of each repetition — paired differences in AUROC,
//! AUPR-Out and FPR95 with a t interval and a bootstrap interval over repetitions, the paired t
//! and Wilcoxon signed-rank tests, Holm's correction across every comparison of the run — and
//! the four claims of the gradient-metrics paper answered as it states them (`claims`). Reads
//! only metric records.

use crate::eval::Record;
use crate::stats;
use serde::{Deserialize, Serialize};

/// Metrics compared, with whether larger is better.
pub const COMPARED: [(&str, bool); 3] = [("auroc", true), ("aupr_out", true), ("fpr95", false)];
/// Significance level of the verdicts (after Holm's correction).
pub const ALPHA: f64 = 0.05;
/// Bootstrap resamples of the interval.
pub const BOOTSTRAP: usize = 10_000;

/// One paired comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// `error` or `ood-<set>`.
    pub task: String,
    pub metric: String,
    /// `model/features/known_unknowns` (`with` or `without`).
    pub detector: String,
    /// Why this detector is compared: `best`, `best softmax`, `best mc-dropout`, `best gradient`,
    /// `best combination`, several joined by `, `.
    pub role: String,
    /// The baseline it is compared with (`msp`).
    pub baseline: String,
    pub detector_mean: f64,
    pub baseline_mean: f64,
    /// Mean over repetitions of detector − baseline.
    pub mean_diff: f64,
    /// 95% t interval of the mean difference (the one shown).
    pub ci_low: f64,
    pub ci_high: f64,
    /// 95% percentile bootstrap interval over repetitions.
    pub boot_low: f64,
    pub boot_high: f64,
    pub p_wilcoxon: f64,
    pub p_ttest: f64,
    /// Holm-adjusted paired-t p-value over every comparison of the run.
    pub p_holm: f64,
    /// `better`, `worse` or `no detectable difference` (for FPR95 lower is better).
    pub verdict: String,
    pub repetitions: usize,
}

pub mod claims;
pub use claims::{Claim, Evidence, CLAIMS, MIN_REPETITIONS};

/// Everything `verdicts.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdicts {
    pub how: String,
    pub comparisons: Vec<Verdict>,
    pub claims: Vec<Claim>,
}

/// The family of a scorer: `softmax`, `logits` (energy, max logit), `mc-dropout`, `gradient`
/// (the gradient statistics, GradNorm, ExGrad), `combination` (or `other`).
pub fn family(model: &str, features: &str) -> &'static str {
    let baseline = model == features;
    if baseline {
        return match features {
            "msp" | "entropy" => "softmax",
            "energy" | "max_logit" => "logits",
            f if f.starts_with("mc_") => "mc-dropout",
            f if f.starts_with("grad") => "gradient",
            _ => "other",
        };
    }
    if features == "softmax" {
        "softmax"
    } else if features == "logits" {
        "logits"
    } else if features == "mc" {
        "mc-dropout"
    } else if features == "all" || features.contains('+') {
        "combination"
    } else if features.starts_with("grad") {
        "gradient"
    } else {
        "other"
    }
}

/// The task name of a record: `error`, or `ood-<set>`.
pub fn task_of(r: &Record) -> String {
    match &r.ood_set {
        Some(o) => format!("ood-{o}"),
        None => r.task.clone(),
    }
}

/// The detector name of a record: `model/features/with|without` for a baseline (a raw
/// score), `model/features/with|without/transform` for a fitted meta classifier (e.g.
/// `lasso/grad+softmax/without/log`).
pub fn detector_of(r: &Record) -> String {
    let ku = if r.known_unknowns { "with" } else { "without" };
    if r.model == r.features {
        format!("{}/{}/{ku}", r.model, r.features)
    } else {
        format!("{}/{}/{ku}/{}", r.model, r.features, r.transform)
    }
}

fn find<'a>(recs: &'a [Record], task: &str, metric: &str, det: &str) -> Option<&'a Record> {
    recs.iter()
        .find(|r| task_of(r) == task && r.metric == metric && detector_of(r) == det)
}

struct Pending {
    task: String,
    metric: String,
    detector: String,
    role: String,
    baseline: String,
    det: Vec<f64>,
    base: Vec<f64>,
    higher_better: bool,
}

/// Computes the verdicts from a run's metric records. `known_unknown` is the short name of the
/// known-unknown source (its OOD set, if also evaluated, is not "unseen" for claim c4); `seed`
/// fixes the bootstrap draws.
pub fn compute(
    recs: &[Record],
    single: &[Record],
    known_unknown: Option<&str>,
    seed: u64,
    margin: f64,
) -> Verdicts {
    let mut tasks: Vec<String> = Vec::new();
    for r in recs {
        let t = task_of(r);
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut push = |task: &str, det: &str, role: &str, base_det: &str, base_name: &str| {
        for (metric, hb) in COMPARED {
            let (Some(d), Some(b)) = (
                find(recs, task, metric, det),
                find(recs, task, metric, base_det),
            ) else {
                continue;
            };
            if d.values.len() != b.values.len() || d.values.is_empty() {
                continue;
            }
            pending.push(Pending {
                task: task.into(),
                metric: metric.into(),
                detector: det.into(),
                role: role.into(),
                baseline: base_name.into(),
                det: d.values.clone(),
                base: b.values.clone(),
                higher_better: hb,
            });
        }
    };
    let msp = "msp/msp/without";
    for task in &tasks {
        let auroc: Vec<&Record> = recs
            .iter()
            .filter(|r| &task_of(r) == task && r.metric == "auroc" && detector_of(r) != msp)
            .collect();
        let best_of = |fam: Option<&str>| {
            auroc
                .iter()
                .filter(|r| fam.is_none_or(|f| family(&r.model, &r.features) == f))
                .max_by(|a, b| a.mean.total_cmp(&b.mean))
                .map(|r| detector_of(r))
        };
        // detector → roles, in order: best first, then the families
        let mut chosen: Vec<(String, Vec<String>)> = Vec::new();
        let mut add = |det: Option<String>, role: &str| {
            if let Some(d) = det {
                match chosen.iter_mut().find(|(x, _)| *x == d) {
                    Some((_, roles)) => roles.push(role.into()),
                    None => chosen.push((d, vec![role.into()])),
                }
            }
        };
        add(best_of(None), "best");
        for fam in ["softmax", "logits", "mc-dropout", "gradient", "combination"] {
            add(best_of(Some(fam)), &format!("best {fam}"));
        }
        for (det, roles) in &chosen {
            push(task, det, &roles.join(", "), msp, "msp");
        }
    }
    // statistics, then Holm over every comparison
    let mut rng = crate::data::stage_rng(seed, "verdicts");
    let mut out: Vec<Verdict> = pending
        .into_iter()
        .map(|p| {
            let d: Vec<f64> = p.det.iter().zip(&p.base).map(|(a, b)| a - b).collect();
            let (ci_low, ci_high) = stats::t_interval(&d, 0.95);
            let (boot_low, boot_high) = stats::bootstrap_interval(&d, 0.95, BOOTSTRAP, &mut rng);
            Verdict {
                task: p.task,
                metric: p.metric,
                detector: p.detector,
                role: p.role,
                baseline: p.baseline,
                detector_mean: stats::mean(&p.det),
                baseline_mean: stats::mean(&p.base),
                mean_diff: stats::mean(&d),
                ci_low,
                ci_high,
                boot_low,
                boot_high,
                p_wilcoxon: stats::wilcoxon(&d).1,
                p_ttest: stats::paired_t(&d).1,
                p_holm: f64::NAN,
                verdict: if p.higher_better { "+" } else { "-" }.into(),
                repetitions: d.len(),
            }
        })
        .collect();
    let holm = stats::holm(&out.iter().map(|v| v.p_ttest).collect::<Vec<_>>());
    for (v, h) in out.iter_mut().zip(holm) {
        v.p_holm = h;
        let higher_better = v.verdict == "+";
        let sig = h < ALPHA && (v.ci_low > 0.0 || v.ci_high < 0.0);
        v.verdict = if !sig {
            "no detectable difference"
        } else if (v.mean_diff > 0.0) == higher_better {
            "better"
        } else {
            "worse"
        }
        .into();
    }
    let claims = claims::answer(recs, single, known_unknown, &tasks, margin);
    Verdicts {
        how: format!(
            "Each comparison pairs a detector with its baseline on the same meta-test rows of every \
             repetition (the values of the CNN seeds pooled). mean_diff = mean over repetitions of \
             detector − baseline; ci = 95% t interval of it (shown), boot = 95% percentile bootstrap \
             interval ({BOOTSTRAP} resamples over repetitions); p_ttest = paired t test, p_wilcoxon = \
             Wilcoxon signed-rank test (both two-sided); p_holm = Holm's correction of p_ttest over \
             all {} comparisons. Verdict: better/worse when p_holm < {ALPHA} and the interval excludes \
             0 (for FPR95 lower is better), else no detectable difference. The best detectors are \
             chosen on the same repetitions they are tested on, so their p-values are optimistic. \
             \"No detectable difference\" means the repetitions cannot tell detector and baseline apart \
             (the interval includes 0): it is not evidence that they are equal (the claims test \
             equivalence and non-inferiority for that, within ±{margin} AUROC), and with fewer than \
             {MIN_REPETITIONS} repetitions the tests decide nothing.",
            out.len()
        ),
        comparisons: out,
        claims,
    }
}

/// A p-value for display.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// verdicts.csv: the columns of the issue first, then role, the bootstrap interval, the means
/// and the number of repetitions.
pub fn to_csv(v: &Verdicts) -> String {
    crate::runfolder::csv_text(
        &[
            "task",
            "metric",
            "detector",
            "baseline",
            "mean_diff",
            "ci_low",
            "ci_high",
            "p_wilcoxon",
            "p_ttest",
            "p_holm",
            "verdict",
            "role",
            "boot_low",
            "boot_high",
            "detector_mean",
            "baseline_mean",
            "repetitions",
        ],
        v.comparisons.iter().map(|x| {
            vec![
                x.task.clone(),
                x.metric.clone(),
                x.detector.clone(),
                x.baseline.clone(),
                x.mean_diff.to_string(),
                x.ci_low.to_string(),
                x.ci_high.to_string(),
                x.p_wilcoxon.to_string(),
                x.p_ttest.to_string(),
                x.p_holm.to_string(),
                x.verdict.clone(),
                x.role.clone(),
                x.boot_low.to_string(),
                x.boot_high.to_string(),
                x.detector_mean.to_string(),
                x.baseline_mean.to_string(),
                x.repetitions.to_string(),
            ]
        }),
    )
}

/// A task's comparison of its best detector with MSP on AUROC.
pub fn best<'a>(v: &'a Verdicts, task: &str) -> Option<&'a Verdict> {
    v.comparisons
        .iter()
        .find(|x| x.task == task && x.metric == "auroc" && x.role.split(", ").any(|r| r == "best"))
}

/// The headline of a task: its [`best`] comparison, in one line.
pub fn headline(v: &Verdicts, task: &str) -> Option<String> {
    let x = best(v, task)?;
    Some(format!(
        "{}: best {} AUROC {:.4} vs MSP {:.4}, Δ {:+.4} [{:+.4}, {:+.4}], p_holm {} → {}",
        task_label(task),
        x.detector,
        x.detector_mean,
        x.baseline_mean,
        x.mean_diff,
        x.ci_low,
        x.ci_high,
        fmt_p(x.p_holm),
        x.verdict
    ))
}

/// "error detection" or "OOD: <set>".
pub fn task_label(task: &str) -> String {
    if let Some(s) = task.strip_prefix("ood-") {
        format!("OOD {s}")
    } else if let Some(s) = task.strip_prefix("shift-") {
        format!("errors under shift {s}")
    } else if task == "error" {
        "error detection".into()
    } else if task == "failure" {
        "failure detection (errors and OOD)".into()
    } else {
        task.into()
    }
}

/// A task's short name for narrow table headers: `errors`, `failure`, the OOD set's name,
/// `shift <name>`.
pub fn task_short(task: &str) -> String {
    if let Some(s) = task.strip_prefix("ood-") {
        s.into()
    } else if let Some(s) = task.strip_prefix("shift-") {
        format!("shift {s}")
    } else if task == "error" {
        "errors".into()
    } else {
        task.into()
    }
}

/// The tasks in the order the records have them.
pub fn tasks(v: &Verdicts) -> Vec<String> {
    let mut t: Vec<String> = Vec::new();
    for x in &v.comparisons {
        if !t.contains(&x.task) {
            t.push(x.task.clone());
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        task: &str,
        ood: Option<&str>,
        model: &str,
        feats: &str,
        ku: bool,
        metric: &str,
        v: &[f64],
    ) -> Record {
        Record {
            task: task.into(),
            ood_set: ood.map(String::from),
            model: model.into(),
            features: feats.into(),
            known_unknowns: ku,
            transform: "none".into(),
            metric: metric.into(),
            mean: stats::mean(v),
            std: stats::sd(v),
            values: v.to_vec(),
        }
    }

    fn grid() -> Vec<Record> {
        let mut r = Vec::new();
        let base = [0.90, 0.91, 0.92, 0.90, 0.91, 0.93, 0.92, 0.90, 0.91, 0.92];
        let plus = |d: f64, j: f64| -> Vec<f64> {
            base.iter()
                .enumerate()
                .map(|(i, b)| b + d + j * ((i % 3) as f64 - 1.0))
                .collect()
        };
        for (metric, sign) in [("auroc", 1.0), ("aupr_out", 1.0), ("fpr95", -1.0)] {
            let p = |d: f64, j: f64| plus(sign * d, j);
            r.push(rec("error", None, "msp", "msp", false, metric, &base));
            r.push(rec(
                "error",
                None,
                "entropy",
                "entropy",
                false,
                metric,
                &p(0.001, 0.002),
            ));
            r.push(rec(
                "error",
                None,
                "ridge",
                "grad+softmax",
                false,
                metric,
                &p(0.03, 0.001),
            ));
            r.push(rec(
                "error",
                None,
                "ridge",
                "mc",
                false,
                metric,
                &p(-0.02, 0.001),
            ));
            r.push(rec(
                "ood",
                Some("letters"),
                "msp",
                "msp",
                false,
                metric,
                &base,
            ));
            r.push(rec(
                "ood",
                Some("letters"),
                "ridge",
                "grad",
                false,
                metric,
                &p(0.001, 0.004),
            ));
            r.push(rec(
                "ood",
                Some("letters"),
                "ridge",
                "grad",
                true,
                metric,
                &p(0.05, 0.001),
            ));
        }
        r
    }

    #[test]
    fn verdicts_pick_the_best_and_decide() {
        let v = compute(&grid(), &[], Some("uniform-noise"), 1, 0.005);
        let best = v
            .comparisons
            .iter()
            .find(|x| x.task == "error" && x.metric == "auroc" && x.role.starts_with("best"))
            .unwrap();
        assert_eq!(best.detector, "ridge/grad+softmax/without/none");
        assert!(best.role.contains("best combination"));
        assert_eq!(best.verdict, "better");
        // 0.03 plus the jitter's mean, −0.001/10
        assert!((best.mean_diff - 0.0299).abs() < 1e-9, "{}", best.mean_diff);
        // FPR95: lower is better, and the detector's FPR95 is lower
        let f = v
            .comparisons
            .iter()
            .find(|x| {
                x.task == "error"
                    && x.metric == "fpr95"
                    && x.detector == best.detector
                    && x.baseline == "msp"
            })
            .unwrap();
        assert!(f.mean_diff < 0.0);
        assert_eq!(f.verdict, "better");
        // the MC detector is worse than MSP
        let mc = v
            .comparisons
            .iter()
            .find(|x| {
                x.task == "error" && x.metric == "auroc" && x.detector == "ridge/mc/without/none"
            })
            .unwrap();
        assert_eq!(mc.verdict, "worse");
        // entropy's tiny noisy gain: no detectable difference
        let e = v
            .comparisons
            .iter()
            .find(|x| {
                x.task == "error" && x.metric == "auroc" && x.detector == "entropy/entropy/without"
            })
            .unwrap();
        assert_eq!(e.verdict, "no detectable difference");
        // Holm never lowers a p-value
        assert!(v.comparisons.iter().all(|x| x.p_holm >= x.p_ttest));
        // claims: c1 has no single-metric table; c2 (ridge on grad+softmax, +0.03) holds; c3
        // has no entropy + gradient group on an OOD set; c4 has no nn
        let answers: Vec<&str> = v.claims.iter().map(|c| c.answer.as_str()).collect();
        assert!(answers[0].starts_with("not testable here"), "{answers:?}");
        assert_eq!(answers[1], "supported", "{:?}", v.claims[1]);
        assert!(answers[2].starts_with("not testable here"), "{answers:?}");
        assert!(answers[3].starts_with("not testable here"), "{answers:?}");
        assert!(headline(&v, "error").unwrap().contains("→ better"));
        let csv = to_csv(&v);
        assert!(csv.starts_with(
            "task,metric,detector,baseline,mean_diff,ci_low,ci_high,p_wilcoxon,p_ttest,p_holm,verdict,"
        ));
        // deterministic
        assert_eq!(v, compute(&grid(), &[], Some("uniform-noise"), 1, 0.005));
        // too few repetitions: nothing is testable
        let few: Vec<Record> = grid()
            .into_iter()
            .map(|mut r| {
                r.values.truncate(3);
                r
            })
            .collect();
        let v = compute(&few, &[], None, 1, 0.005);
        assert!(v.claims.iter().all(|c| c.answer.contains("3 repetitions")));
    }

    #[test]
    fn families() {
        assert_eq!(family("msp", "msp"), "softmax");
        assert_eq!(family("mc_entropy", "mc_entropy"), "mc-dropout");
        assert_eq!(family("grad_all_l2", "grad_all_l2"), "gradient");
        assert_eq!(family("lasso", "grad-conv1"), "gradient");
        assert_eq!(family("nn", "grad+softmax"), "combination");
        assert_eq!(family("nn", "all"), "combination");
        assert_eq!(family("glm", "softmax"), "softmax");
        assert_eq!(family("energy", "energy"), "logits");
        assert_eq!(family("gradnorm", "gradnorm"), "gradient");
        assert_eq!(family("lasso", "gradnorm"), "gradient");
        assert_eq!(family("lasso", "logits"), "logits");
    }
}
