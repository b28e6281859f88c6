//! Meta classifiers: which feature columns they see (named feature groups), the penalised
//! logistic-regression family (GLM, LASSO, ridge, elastic net) and the small NN, fitted on
//! meta-train rows and scoring any rows.

pub mod logistic;
pub mod nn;

use crate::features::{GRAD_STATS, SCORE_COLUMNS};

/// Meta-classifier names accepted in `meta.models`.
pub const MODELS: [&str; 5] = ["glm", "lasso", "ridge", "elastic-net", "nn"];

/// A named set of feature columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureGroup {
    pub name: String,
    pub columns: Vec<String>,
}

impl FeatureGroup {
    /// Parses a group name: `softmax` (msp, entropy), `mc` (the MC-dropout statistics),
    /// `logits` (energy, max_logit), `gradnorm` (gradnorm, exgrad_fc), `grad-<layer>` (a conv
    /// layer, `fc` or `all`), `grad`, `all`, or several joined by `+` (e.g. `grad+softmax`).
    pub fn parse(name: &str, conv_names: &[String]) -> Result<FeatureGroup, String> {
        let mut layers: Vec<String> = conv_names.to_vec();
        layers.push("fc".into());
        layers.push("all".into());
        let grad_cols = |layer: &str| -> Vec<String> {
            GRAD_STATS
                .iter()
                .map(|s| format!("grad_{layer}_{s}"))
                .collect()
        };
        let mut columns: Vec<String> = Vec::new();
        for part in name.split('+') {
            let cols: Vec<String> = match part {
                "softmax" => SCORE_COLUMNS[..2].iter().map(|s| s.to_string()).collect(),
                "mc" => SCORE_COLUMNS[2..6].iter().map(|s| s.to_string()).collect(),
                "logits" => SCORE_COLUMNS[6..8].iter().map(|s| s.to_string()).collect(),
                "gradnorm" => SCORE_COLUMNS[8..10].iter().map(|s| s.to_string()).collect(),
                "grad" => layers.iter().flat_map(|l| grad_cols(l)).collect(),
                "all" => SCORE_COLUMNS
                    .iter()
                    .map(|s| s.to_string())
                    .chain(layers.iter().flat_map(|l| grad_cols(l)))
                    .collect(),
                p if p.starts_with("grad-") && layers.iter().any(|l| l == &p[5..]) => grad_cols(&p[5..]),
                p => {
                    return Err(format!(
                        "unknown feature group {p:?} in {name:?} (known: softmax, mc, logits, gradnorm, grad, all, grad-<layer> \
                         with layer one of {}; join with '+')",
                        layers.join(", ")
                    ))
                }
            };
            for c in cols {
                if !columns.contains(&c) {
                    columns.push(c);
                }
            }
        }
        Ok(FeatureGroup {
            name: name.to_string(),
            columns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand() {
        let convs: Vec<String> = vec!["conv1".into(), "conv2".into()];
        let g = FeatureGroup::parse("grad+softmax", &convs).unwrap();
        assert_eq!(g.columns.len(), 4 * 7 + 2);
        assert_eq!(g.columns[0], "grad_conv1_l1");
        assert!(g.columns.contains(&"msp".to_string()));
        assert_eq!(
            FeatureGroup::parse("all", &convs).unwrap().columns.len(),
            10 + 28
        );
        assert_eq!(
            FeatureGroup::parse("logits+gradnorm", &convs)
                .unwrap()
                .columns,
            vec!["energy", "max_logit", "gradnorm", "exgrad_fc"]
        );
        assert_eq!(
            FeatureGroup::parse("grad-fc", &convs).unwrap().columns[6],
            "grad_fc_kurt"
        );
        assert!(FeatureGroup::parse("grad-conv3", &convs).is_err());
        assert_eq!(
            FeatureGroup::parse("mc+mc", &convs).unwrap().columns.len(),
            4
        );
    }
}
