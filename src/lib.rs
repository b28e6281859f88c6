//! metaclf: tells a CNN classifier's users when not to trust it. It trains a small CNN, computes
//! uncertainty features for every image (softmax, MC dropout, per-layer gradient metrics), fits
//! meta classifiers that detect wrong predictions and out-of-distribution inputs, and reports how
//! well each feature group does.
//!
//! Stages, one module each: [`config`] → [`data`] → [`model`] → [`features`] → [`meta`] →
//! [`eval`] → [`report`], and [`trust`] (the kept trust model) → [`score`] (new data);
//! [`runfolder`] writes files; [`pipeline`] chains the stages;
//! [`bench`] measures speed; [`fuzzing`] holds the fuzz targets' entry points.

// Numeric kernels index several arrays with one loop variable; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod arch;
pub mod bench;
pub mod cluster;
pub mod columns;
pub mod commands;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod extend;
pub mod features;
pub mod fuzzing;
pub mod meta;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod report;
pub mod review;
pub mod runfolder;
pub mod score;
pub mod stats;
pub mod trust;
pub mod verdicts;

pub use config::Config;
pub use error::{Error, Result};
