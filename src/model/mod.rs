//! The classifier as a graph of layers: one file per layer kind (forward, backward, per-sample
//! weight-gradient statistics, its oracle test beside it), the graph runner, the network with
//! its parameters and checkpoints, its training, and a candle-autograd twin kept as the test
//! oracle and the naive baseline.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod crop;
pub mod dropout;
pub mod gemm;
pub mod graph;
pub mod implicit;
pub mod lanes;
pub mod linear;
pub mod moments;
pub mod net;
pub mod normalize;
pub mod oracle;
pub mod pool;
pub mod residual;
pub mod train;

pub use graph::{Layer, Node, ParamKind, Saved};
pub use net::{argmax_rows, softmax, Arch, Masks, Net, Tape};
pub use train::{evaluate, logits, EpochRecord, TrainParams, Trained};
