//! Numeric code against values computed once by reference tools (scikit-learn, scipy);
//! `tests/fixtures/make_fixtures.py` made `tests/fixtures/reference.json`.

use metaclf::eval;
use metaclf::features::Moments;
use metaclf::meta::logistic::LogisticParams;
use serde_json::Value;

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

#[test]
fn detection_metrics_match_sklearn() {
    for c in fixture()["metrics"].as_array().unwrap() {
        let pos = bools(&c["pos"]);
        let s = f64s(&c["score"]);
        let m = eval::detection_metrics(&pos, &s).unwrap();
        for (i, name) in eval::METRICS.iter().enumerate() {
            let want = c[*name].as_f64().unwrap();
            assert!(
                (m[i] - want).abs() < 1e-12,
                "{name} on n={}: {} vs {want}",
                pos.len(),
                m[i]
            );
        }
    }
}

#[test]
fn skew_and_kurtosis_match_scipy() {
    for c in fixture()["moments"].as_array().unwrap() {
        let x: Vec<f32> = f64s(&c["x"]).into_iter().map(|v| v as f32).collect();
        // scipy ran on f64 values; compare on the same f32-rounded data within f32 precision
        let st = Moments::of(&x).stats();
        for (i, key) in [(5, "skew"), (6, "kurt")] {
            let want = c[key].as_f64().unwrap();
            assert!(
                (st[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{key}: {} vs {want}",
                st[i]
            );
        }
    }
}

#[test]
fn calibration_matches_sklearn_calibration_curve() {
    let c = &fixture()["calibration"];
    let (ece, mce, _) = eval::calibration(&f64s(&c["conf"]), &bools(&c["correct"]), 15);
    assert!(
        (ece - c["ece"].as_f64().unwrap()).abs() < 1e-12,
        "ece {ece}"
    );
    assert!(
        (mce - c["mce"].as_f64().unwrap()).abs() < 1e-12,
        "mce {mce}"
    );
}

#[test]
fn logistic_family_matches_sklearn() {
    let f = fixture();
    let l = &f["logistic"];
    let x: Vec<f64> = l["x"].as_array().unwrap().iter().flat_map(f64s).collect();
    let y = f64s(&l["y"]);
    for c in l["cases"].as_array().unwrap() {
        let alpha = c["alpha"].as_f64().unwrap();
        let lambda = c["lambda"].as_f64().unwrap();
        let m = LogisticParams {
            tol: 1e-12,
            max_iter: 1000,
            ..LogisticParams::new(alpha, Some(lambda))
        }
        .fit(&x, &y)
        .unwrap();
        let want = f64s(&c["coef"]);
        for (j, (a, b)) in m.coef.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 1e-4,
                "alpha {alpha} lambda {lambda} coef {j}: {a} vs {b}"
            );
            if *b == 0.0 {
                assert_eq!(*a, 0.0, "sparse solution: coef {j} should be exactly 0");
            }
        }
        let b0 = c["intercept"].as_f64().unwrap();
        assert!(
            (m.intercept - b0).abs() < 1e-4,
            "intercept {} vs {b0}",
            m.intercept
        );
    }
    // the sparse cases really are sparse
    assert!(l["cases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| f64s(&c["coef"]).contains(&0.0)));
}

#[test]
fn glm_and_ridge_agree_with_linfa_logistic() {
    use linfa::prelude::*;
    use linfa_logistic::LogisticRegression;
    use ndarray::{Array1, Array2};
    let f = fixture();
    let l = &f["logistic"];
    let x: Vec<f64> = l["x"].as_array().unwrap().iter().flat_map(f64s).collect();
    let y = f64s(&l["y"]);
    let n = y.len();
    let p = x.len() / n;
    let (z, _, _) = metaclf::meta::logistic::standardise(&x, n, p);
    let zx = Array2::from_shape_vec((n, p), z).unwrap();
    let targets: Array1<usize> = y.iter().map(|&v| v as usize).collect();
    for lambda in [0.0, 0.01, 0.1] {
        let ours = LogisticParams {
            tol: 1e-12,
            max_iter: 1000,
            ..LogisticParams::new(0.0, Some(lambda))
        }
        .fit(&x, &y)
        .unwrap();
        // linfa minimises Σ logloss + α/2 ‖w‖², ours (1/N) Σ logloss + λ/2 ‖w‖² (ridge): α = Nλ
        let ds = Dataset::new(zx.clone(), targets.clone());
        let fit = LogisticRegression::default()
            .alpha(n as f64 * lambda)
            .gradient_tolerance(1e-10)
            .max_iterations(10_000)
            .fit(&ds)
            .unwrap();
        let sign = if fit.labels().pos.class == 1 {
            1.0
        } else {
            -1.0
        };
        for (j, (a, b)) in ours.coef.iter().zip(fit.params().iter()).enumerate() {
            assert!(
                (a - sign * b).abs() < 1e-4,
                "lambda {lambda} coef {j}: ours {a} linfa {}",
                sign * b
            );
        }
        assert!((ours.intercept - sign * fit.intercept()).abs() < 1e-4);
    }
}
