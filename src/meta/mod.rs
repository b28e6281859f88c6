//! Meta classifiers: which feature columns they see (named feature groups), the penalised
//! logistic-regression family (GLM, LASSO, ridge, elastic net) and the small NN, fitted on
//! meta-train rows and scoring any rows, and the feature transforms applied before them.

pub mod boost;
pub mod logistic;
pub mod nn;
pub mod transform;

pub use crate::columns::{FeatureGroup, MODELS};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand() {
        let convs: Vec<String> = vec!["conv1".into(), "conv2".into(), "fc".into()];
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
        // a prefix names every layer of a block
        let res: Vec<String> = ["stem", "block1.conv1", "block1.bn1", "block10.conv1", "fc"]
            .map(String::from)
            .to_vec();
        let g = FeatureGroup::parse("grad-block1", &res).unwrap();
        assert_eq!(g.columns.len(), 14);
        assert_eq!(g.columns[7], "grad_block1.bn1_l1");
        assert_eq!(
            FeatureGroup::parse("grad-block1.bn1", &res)
                .unwrap()
                .columns
                .len(),
            7
        );
        assert!(FeatureGroup::parse("grad-block", &res).is_err());
    }
}
