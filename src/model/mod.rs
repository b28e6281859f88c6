//! The classifier: the paper's small CNN with explicit forward/backward kernels (fast on CPU, and
//! reused for per-sample gradients), its training, checkpoints, and a candle-autograd twin kept
//! as the test oracle and the naive baseline.

pub mod layers;
pub mod net;
pub mod oracle;
pub mod train;

pub use net::{argmax_rows, softmax, Arch, Net, OutGrads, Step, Tape};
pub use train::{evaluate, logits, EpochRecord, TrainParams, Trained};
