//! Feature transforms applied before a meta classifier standardises its columns. Exact
//! gradient statistics span ~20 orders of magnitude (a confident image's gradient is ~1e-20), so
//! on the raw scale a few large rows dominate each standardised column; `log` puts every column
//! on a scale where distances mean something. Every parameter is fitted on meta-train rows only
//! and kept with the trust model.
//!
//! The rule per column (`log`):
//!
//! | columns | transform |
//! |---|---|
//! | gradient `l1`, `l2`, `max`; `gradnorm`, `exgrad_fc`, `entropy`, `mc_std`, `mc_mi`, `mc_entropy` | ln(max(x, 0) + ε) |
//! | gradient `min` (≤ 0) | ln(max(−x, 0) + ε) |
//! | gradient `mean`, `skew`, `kurt` | asinh(x / s) |
//! | `msp`, `mc_pmax` | ln(max(1 − x, 0) + ε) |
//! | `energy`, `max_logit` (already on a log scale) | x |
//!
//! ε = half the smallest positive value of the quantity (x, −x or 1 − x) on the meta-train rows
//! (f32's smallest normal number when there is none), so that 0 maps to a finite value just
//! below every observed one; s = the median of |x| on the meta-train rows (1 when that is 0).

use serde::{Deserialize, Serialize};

pub use crate::columns::TRANSFORMS;

/// How one column is transformed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Rule {
    /// x as it is.
    Identity,
    /// ln(max(x, 0) + eps).
    Log { eps: f64 },
    /// ln(max(−x, 0) + eps).
    LogNeg { eps: f64 },
    /// ln(max(1 − x, 0) + eps).
    LogOneMinus { eps: f64 },
    /// asinh(x / scale).
    Asinh { scale: f64 },
}

impl Rule {
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Rule::Identity => x,
            Rule::Log { eps } => (x.max(0.0) + eps).ln(),
            Rule::LogNeg { eps } => ((-x).max(0.0) + eps).ln(),
            Rule::LogOneMinus { eps } => ((1.0 - x).max(0.0) + eps).ln(),
            Rule::Asinh { scale } => (x / scale).asinh(),
        }
    }
}

/// What the `log` transform does to a column, by its name (see the module's table); `None` for
/// the identity.
fn kind(column: &str) -> Kind {
    match column {
        "msp" | "mc_pmax" => Kind::OneMinus,
        "entropy" | "mc_entropy" | "mc_std" | "mc_mi" | "gradnorm" | "exgrad_fc" => Kind::Magnitude,
        "energy" | "max_logit" => Kind::Identity,
        c if c.starts_with("grad_") => match c.rsplit('_').next() {
            Some("l1" | "l2" | "max") => Kind::Magnitude,
            Some("min") => Kind::Negative,
            Some("mean" | "skew" | "kurt") => Kind::Signed,
            _ => Kind::Identity,
        },
        _ => Kind::Identity,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Identity,
    Magnitude,
    Negative,
    OneMinus,
    Signed,
}

/// Half the smallest positive value of `v`, or f32's smallest normal number.
fn eps_of(v: impl Iterator<Item = f64>) -> f64 {
    let m = v
        .filter(|x| *x > 0.0 && x.is_finite())
        .fold(f64::INFINITY, f64::min);
    if m.is_finite() {
        m / 2.0
    } else {
        f32::MIN_POSITIVE as f64
    }
}

/// A fitted transform of a design matrix's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted {
    /// "none" or "log".
    pub name: String,
    /// One rule per column, in the design's order.
    pub rules: Vec<Rule>,
}

impl Default for Fitted {
    /// The identity (trust models from before transforms).
    fn default() -> Fitted {
        Fitted::none(0)
    }
}

impl Fitted {
    /// The identity on `p` columns.
    pub fn none(p: usize) -> Fitted {
        Fitted {
            name: "none".into(),
            rules: vec![Rule::Identity; p],
        }
    }

    /// Fits transform `name` to the row-major `x` (rows × `columns.len()`), the meta-train rows.
    pub fn fit(name: &str, columns: &[String], x: &[f64]) -> Result<Fitted, String> {
        let p = columns.len();
        match name {
            "none" => return Ok(Fitted::none(p)),
            "log" => {}
            o => {
                return Err(format!(
                    "unknown transform {o:?} (known: {})",
                    TRANSFORMS.join(", ")
                ))
            }
        }
        let col = |j: usize| x.chunks_exact(p.max(1)).map(move |r| r[j]);
        let rules = columns
            .iter()
            .enumerate()
            .map(|(j, c)| match kind(c) {
                Kind::Identity => Rule::Identity,
                Kind::Magnitude => Rule::Log {
                    eps: eps_of(col(j)),
                },
                Kind::Negative => Rule::LogNeg {
                    eps: eps_of(col(j).map(|v| -v)),
                },
                Kind::OneMinus => Rule::LogOneMinus {
                    eps: eps_of(col(j).map(|v| 1.0 - v)),
                },
                Kind::Signed => {
                    let mut a: Vec<f64> = col(j).map(f64::abs).filter(|v| v.is_finite()).collect();
                    a.sort_by(f64::total_cmp);
                    let med = if a.is_empty() {
                        0.0
                    } else if a.len() % 2 == 1 {
                        a[a.len() / 2]
                    } else {
                        (a[a.len() / 2 - 1] + a[a.len() / 2]) / 2.0
                    };
                    Rule::Asinh {
                        scale: if med > 0.0 { med } else { 1.0 },
                    }
                }
            })
            .collect();
        Ok(Fitted {
            name: name.into(),
            rules,
        })
    }

    /// The transformed copy of row-major `x` (rows × rules).
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        if self.rules.iter().all(|r| *r == Rule::Identity) {
            return x.to_vec();
        }
        let p = self.rules.len().max(1);
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(p) {
            for (v, r) in row.iter_mut().zip(&self.rules) {
                *v = r.apply(*v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rules_by_hand() {
        let cols: Vec<String> = [
            "grad_all_l2",
            "grad_fc_min",
            "grad_conv1_skew",
            "msp",
            "energy",
        ]
        .map(String::from)
        .to_vec();
        // three meta-train rows
        let x = [
            1e-20, -4e-21, 2.0, 1.0, 3.0, //
            1e-2, 0.0, -6.0, 0.75, 4.0, //
            0.0, -2e-3, 4.0, 0.5, 5.0,
        ];
        let f = Fitted::fit("log", &cols, &x).unwrap();
        assert_eq!(
            f.rules,
            vec![
                Rule::Log { eps: 0.5e-20 },
                Rule::LogNeg { eps: 2e-21 },
                // median of |2|, |−6|, |4| = 4
                Rule::Asinh { scale: 4.0 },
                // 1 − msp: 0, 0.25, 0.5 → ε = 0.125
                Rule::LogOneMinus { eps: 0.125 },
                Rule::Identity,
            ]
        );
        let y = f.apply(&x);
        assert!((y[0] - (1.5e-20f64).ln()).abs() < 1e-12);
        assert!((y[1] - (6e-21f64).ln()).abs() < 1e-12);
        assert!((y[2] - (0.5f64).asinh()).abs() < 1e-15);
        assert!((y[3] - (0.125f64).ln()).abs() < 1e-15);
        assert_eq!(y[4], 3.0);
        // a value below every meta-train one still maps to a finite number
        assert!(f.rules[0].apply(-1.0).is_finite());
        assert_eq!(
            Fitted::fit("none", &cols, &x).unwrap().apply(&x),
            x.to_vec()
        );
        assert!(Fitted::fit("sqrt", &cols, &x).is_err());
        // the transform is monotone per column: single-column AUROC cannot change
        assert!(f.rules[0].apply(1e-21) < f.rules[0].apply(1e-20));
        assert!(f.rules[3].apply(0.99) > f.rules[3].apply(0.999));
    }
}
