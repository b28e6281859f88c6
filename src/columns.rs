//! Names: the feature columns metaclf writes (in CSV order), the meta-classifier names, and
//! the grammar of feature groups. A leaf module (it imports nothing from the crate), so the
//! config's validation can check names without depending on the stages that use them.

/// Score columns, in CSV order.
pub const SCORE_COLUMNS: [&str; 10] = [
    "msp",
    "entropy",
    "mc_pmax",
    "mc_entropy",
    "mc_std",
    "mc_mi",
    "energy",
    "max_logit",
    "gradnorm",
    "exgrad_fc",
];
/// Statistics of each layer's gradient, in CSV order.
pub const GRAD_STATS: [&str; 7] = ["l1", "l2", "min", "max", "mean", "skew", "kurt"];

/// Meta-classifier names accepted in `meta.models`.
pub const MODELS: [&str; 6] = ["glm", "lasso", "ridge", "elastic-net", "nn", "gb"];

/// Feature transforms accepted in `meta.transforms` (see `meta::transform`).
pub const TRANSFORMS: [&str; 2] = ["none", "log"];

/// A named set of feature columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureGroup {
    pub name: String,
    pub columns: Vec<String>,
}

impl FeatureGroup {
    /// Parses a group name: `softmax` (msp, entropy), `mc` (the MC-dropout statistics),
    /// `logits` (energy, max_logit), `gradnorm` (gradnorm, exgrad_fc), `grad-<layer>` (a
    /// parameterised layer of `layer_names`, or `all`; or a prefix naming several: `grad-block2`
    /// is every layer `block2.*`), `grad`, `all`, or several joined by `+` (e.g.
    /// `grad+softmax`).
    pub fn parse(name: &str, layer_names: &[String]) -> Result<FeatureGroup, String> {
        let mut layers: Vec<String> = layer_names.to_vec();
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
                p if p.starts_with("grad-")
                    && layers.iter().any(|l| l.starts_with(&format!("{}.", &p[5..]))) =>
                {
                    let prefix = format!("{}.", &p[5..]);
                    layers
                        .iter()
                        .filter(|l| l.starts_with(&prefix))
                        .flat_map(|l| grad_cols(l))
                        .collect()
                }
                p => {
                    return Err(format!(
                        "unknown feature group {p:?} in {name:?} (known: softmax, mc, logits, gradnorm, grad, all, grad-<layer> \
                         with layer one of {} or a prefix of several (grad-block2 = block2.*); join with '+')",
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
