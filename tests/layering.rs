//! The module boundaries of the design: the config's validated types do not depend on the
//! stages (meta, features, model, eval, report), `columns` is a leaf, and `data` does not read
//! the config. Checked on the sources, so a new `use` across a boundary fails here.

use std::path::Path;

fn source(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let p = root.join(rel);
    if p.is_dir() {
        let mut all = String::new();
        let mut stack = vec![p];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let q = e.unwrap().path();
                if q.is_dir() {
                    stack.push(q);
                } else if q.extension().is_some_and(|x| x == "rs") {
                    all.push_str(&std::fs::read_to_string(&q).unwrap());
                }
            }
        }
        all
    } else {
        std::fs::read_to_string(p).unwrap()
    }
}

fn refs(text: &str, module: &str) -> bool {
    text.contains(&format!("crate::{module}::"))
        || text.contains(&format!("crate::{module};"))
        || text.contains(&format!("crate::{module}}}"))
}

#[test]
fn config_depends_on_no_stage() {
    let c = source("config.rs");
    for m in [
        "meta", "features", "model", "eval", "report", "pipeline", "trust", "score",
    ] {
        assert!(!refs(&c, m), "config.rs refers to crate::{m}");
    }
}

#[test]
fn columns_is_a_leaf_and_data_does_not_read_the_config() {
    assert!(
        !source("columns.rs").contains("crate::"),
        "columns.rs imports from the crate"
    );
    // the layer lists: the config validates them and the model builds its graph from them
    assert!(
        !source("arch.rs").contains("crate::"),
        "arch.rs imports from the crate"
    );
    // the ONNX import: the config validates it before anything runs
    let o = source("onnx.rs");
    for line in o.lines().filter(|l| l.contains("crate::")) {
        assert!(
            line.contains("crate::arch") || line.contains("crate::error"),
            "onnx.rs imports more than arch and error: {line}"
        );
    }
    let d = source("data");
    for m in [
        "config", "meta", "features", "model", "eval", "report", "pipeline",
    ] {
        assert!(!refs(&d, m), "data/ refers to crate::{m}");
    }
}

#[test]
fn the_review_page_reads_only_its_own_input_and_cluster_is_a_leaf() {
    let r = source("review.rs");
    for m in ["score", "trust", "pipeline", "model", "features"] {
        assert!(!refs(&r, m), "review.rs refers to crate::{m}");
    }
    assert!(
        !source("cluster.rs").contains("crate::"),
        "cluster.rs imports from the crate"
    );
}
