//! Config: the raw TOML structs (serde, `deny_unknown_fields`, every key has a default), their
//! validation into [`Config`] with errors naming the dotted key, and the resolved dump.

use crate::error::{cfg, Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The raw config as written in TOML. Every key is optional; defaults are the paper's set-up.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub run: RunSection,
    pub data: DataSection,
    pub model: ModelSection,
    pub train: TrainSection,
    pub features: FeaturesSection,
    pub ood: OodSection,
    pub known_unknowns: KnownUnknownsSection,
    pub meta: MetaSection,
    pub score: ScoreSection,
    pub shift: ShiftSection,
    pub verdicts: VerdictsSection,
}

/// How the report's verdicts and the paper's claims are tested.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictsSection {
    /// Equivalence / non-inferiority margin in AUROC (and AUPR-Out) for the claims that say
    /// "the same" or "equally well or better".
    pub margin: f64,
}

impl Default for VerdictsSection {
    fn default() -> Self {
        Self { margin: 0.005 }
    }
}

/// Error detection under shift: labelled sets of the known classes, each a task `shift-<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShiftSection {
    /// `SPEC[@rotate=DEG][@blur=SIGMA][@thicken=PX][@scale=FACTOR]`, SPEC = `test` (the run's
    /// in-distribution test set) or a labelled data spec of the known classes.
    pub sets: Vec<String>,
}

impl Default for ShiftSection {
    fn default() -> Self {
        Self {
            sets: vec!["test@rotate=25".into(), "test@thicken=1".into()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run folder name under `out_dir`.
    pub name: String,
    /// Seed for every random draw of the run.
    pub seed: u64,
    /// Root folder of run folders.
    pub out_dir: PathBuf,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "mnist".into(),
            seed: 42,
            out_dir: "reports".into(),
        }
    }
}

/// A class in `data.classes` / `data.unknown_classes`: a label index or a class name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum ClassRef {
    Index(u32),
    Name(String),
}

impl std::fmt::Display for ClassRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassRef::Index(i) => write!(f, "{i}"),
            ClassRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// The label indices of resolved class references (names left out: they are resolved to
/// indices, against `data.class_names`, before a run loads its data).
pub fn class_ids(v: &[ClassRef]) -> Vec<u32> {
    v.iter()
        .filter_map(|c| match c {
            ClassRef::Index(i) => Some(*i),
            ClassRef::Name(_) => None,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Download cache and user-provided files.
    pub data_dir: PathBuf,
    /// Training source (see `metaclf data list` for the spec syntax).
    pub train: String,
    /// Test source.
    pub test: String,
    /// Fraction of the training images held out for validation (plateau, checkpoint).
    pub val_fraction: f64,
    /// Keep only these classes (empty = all), by name or label index; the network sees them as
    /// 0..k in this order, and every output maps back to these labels. The run's config.toml
    /// holds them as label indices.
    pub classes: Vec<ClassRef>,
    /// Classes held out of training, validation and the in-distribution test set (names or
    /// label indices); their test images become the OOD set `unknown-classes`.
    pub unknown_classes: Vec<ClassRef>,
    /// Names of the labels 0, 1, 2, … (empty = the training source's own: a folder's
    /// subfolder names in sorted order, a built-in set's names; else the label numbers). Image
    /// folders anywhere in the run (test, shift, score) are labelled by matching their
    /// subfolder names against this list. The run's config.toml always holds the list.
    pub class_names: Vec<String>,
    /// Image height and width every image is brought to.
    pub image_size: [usize; 2],
    /// Channels per image (a folder of RGB images with 1 channel is converted to gray).
    pub channels: usize,
    /// How images of another size are brought to `image_size`: "fit", "stretch",
    /// "center-crop" or "mnist" ("" = mnist for 28×28 grayscale, fit otherwise; the resolved
    /// config names the choice).
    pub resize: String,
    /// Use at most this many training images (0 = all), drawn at random from the seed.
    pub train_limit: usize,
    /// Use at most this many test images (0 = all), the first ones in file order.
    pub test_limit: usize,
    /// Transpose every image of data.train and data.test (files stored column-major). The
    /// `emnist-*` sources are transposed when loaded, wherever they are loaded, so this stays
    /// false for them.
    pub transpose: bool,
    /// Per-channel normalisation the network expects, (x − mean) / std on pixels in [0, 1]
    /// (PyTorch's transforms.Normalize); applied as the net's first layer, so images, plots
    /// and shifts stay in [0, 1]. Absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<NormalizeSection>,
}

/// `[data] normalize = {mean = [...], std = [...]}`, one value per channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizeSection {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            data_dir: "data".into(),
            train: "mnist:train".into(),
            test: "mnist:test".into(),
            val_fraction: 0.1,
            classes: vec![],
            unknown_classes: vec![],
            class_names: vec![],
            image_size: [28, 28],
            channels: 1,
            resize: String::new(),
            train_limit: 0,
            test_limit: 0,
            transpose: false,
            normalize: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Output channels of each conv layer (`conv1`, `conv2`, ...).
    pub channels: Vec<usize>,
    /// Square kernel size (odd; padding keeps the size).
    pub kernel: usize,
    /// Slope of the leaky ReLU for negative inputs.
    pub leaky_slope: f64,
    /// Dropout rate.
    pub dropout: f64,
    /// Layers after which dropout sits (after their activation and pooling).
    pub dropout_after: Vec<String>,
    /// Conv layers followed by max pooling.
    pub pool_after: Vec<String>,
    /// Pooling window and stride.
    pub pool: usize,
    /// The network as a list of layers (`[[model.layers]]`, see the README); when given, the
    /// keys above stay at their defaults and mean nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<crate::arch::RawLayer>,
    /// A trained classifier to import instead (README "Bring your own model"): an ONNX file,
    /// relative to the config file's folder or absolute. Training is skipped
    /// (`train.epochs` = 0); the run's folder keeps a copy as `model.onnx`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub onnx: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            channels: vec![16, 16, 16],
            kernel: 3,
            leaky_slope: 0.01,
            dropout: 0.25,
            dropout_after: vec!["conv1".into(), "conv3".into()],
            pool_after: vec!["conv1".into(), "conv2".into()],
            pool: 2,
            layers: Vec::new(),
            onnx: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    /// L2 penalty, added to the gradient as `weight_decay * w` (PyTorch's SGD convention).
    pub weight_decay: f64,
    /// Epochs without a validation-loss improvement before the learning rate is cut.
    pub plateau_patience: usize,
    /// Factor the learning rate is multiplied by on a plateau.
    pub plateau_factor: f64,
    pub min_lr: f64,
    /// "sgd" (with momentum), "adam" or "adamw" (decay decoupled).
    pub optimizer: String,
    /// Adam's β1, β2.
    pub betas: [f64; 2],
    /// Adam's ε.
    pub eps: f64,
    /// Learning-rate schedule: "plateau" (cut by plateau_factor after plateau_patience epochs
    /// without a better validation loss), "cosine" (lr to min_lr over all steps) or "step"
    /// (× step_gamma every step_every epochs).
    pub schedule: String,
    pub step_every: usize,
    pub step_gamma: f64,
    /// Augmentation of training images (off by default).
    pub augment: AugmentSection,
}

/// Random changes to each training image every time it is drawn (never to validation, test
/// or scored images).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    /// Zero padding on each side for a random crop back to the image size (a random shift of
    /// up to this many pixels).
    pub crop_padding: usize,
    /// Flip left-right with probability ½.
    pub flip_h: bool,
    /// Flip upside down with probability ½.
    pub flip_v: bool,
    /// Rotate by a uniform angle in ±this many degrees.
    pub rotate: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 15,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            plateau_patience: 1,
            plateau_factor: 0.3,
            min_lr: 1e-4,
            optimizer: "sgd".into(),
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: "plateau".into(),
            step_every: 10,
            step_gamma: 0.1,
            augment: AugmentSection::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesSection {
    /// MC-dropout passes T.
    pub mc_samples: usize,
    /// Images per batch when scoring.
    pub batch_size: usize,
    /// An imported model (`model.onnx`) without dropout layers: layers after which MC dropout
    /// (rate `mc_rate`) is inserted, by their imported names (`metaclf check` lists them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mc_dropout_after: Vec<String>,
    /// Dropout rate of the layers `mc_dropout_after` inserts.
    pub mc_rate: f64,
}

impl Default for FeaturesSection {
    fn default() -> Self {
        Self {
            mc_samples: 50,
            batch_size: 256,
            mc_dropout_after: Vec::new(),
            mc_rate: 0.25,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OodSection {
    /// Out-of-distribution sets scored and evaluated.
    pub sets: Vec<String>,
    /// Images per OOD set (0 = all the set has; generated sets need a count).
    pub count: usize,
}

impl Default for OodSection {
    fn default() -> Self {
        Self {
            sets: vec![
                "letters".into(),
                "fashion-mnist".into(),
                "gray-natural".into(),
                "uniform-noise".into(),
                "normal-noise".into(),
            ],
            count: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KnownUnknownsSection {
    /// Source of the known unknowns ("" = none).
    pub source: String,
    pub count: usize,
}

impl Default for KnownUnknownsSection {
    fn default() -> Self {
        Self {
            source: "uniform-noise".into(),
            count: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSection {
    pub repetitions: usize,
    /// Fraction of in-distribution test rows in meta-test.
    pub test_fraction: f64,
    pub models: Vec<String>,
    pub groups: Vec<String>,
    /// Feature transforms, each a grid dimension: "none" (raw values) and "log" (log of
    /// magnitudes, asinh of signed statistics, log(1 − p) of probabilities; fitted on
    /// meta-train rows). See the README's table.
    pub transforms: Vec<String>,
    /// Elastic-net mixing α of the `elastic-net` model.
    pub alpha: f64,
    /// Fixed penalty λ; negative = choose by cross-validation.
    pub lambda: f64,
    pub cv_folds: usize,
    /// Penalties tried on the path.
    pub n_lambda: usize,
    pub nn_hidden: usize,
    pub nn_epochs: usize,
    pub nn_weight_decay: f64,
    pub nn_lr: f64,
    /// Repetitions whose per-row scores go to meta_scores.csv (every row of every repetition is
    /// large: ~15,000 rows × 65 scorers per repetition for MNIST).
    pub score_repetitions: usize,
    /// CNNs trained (seeds run.seed, run.seed+1, ...); each gets `repetitions` splits and the
    /// metrics pool all of them.
    pub cnn_seeds: usize,
}

impl Default for MetaSection {
    fn default() -> Self {
        Self {
            repetitions: 10,
            test_fraction: 0.5,
            models: ["glm", "lasso", "ridge", "elastic-net", "nn", "gb"]
                .map(String::from)
                .to_vec(),
            groups: [
                "softmax",
                "mc",
                "logits",
                "gradnorm",
                "grad-all",
                "grad",
                "grad+softmax",
                "all",
            ]
            .map(String::from)
            .to_vec(),
            transforms: vec!["none".into(), "log".into()],
            alpha: 0.5,
            lambda: -1.0,
            cv_folds: 3,
            n_lambda: 10,
            nn_hidden: 64,
            nn_epochs: 100,
            nn_weight_decay: 1e-4,
            nn_lr: 0.03,
            score_repetitions: 1,
            cnn_seeds: 1,
        }
    }
}

/// The trust model that `metaclf run` keeps (`trust_model.json`) and `metaclf score` applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreSection {
    /// Meta classifier of the trust model ("" = the one with the best mean error-detection
    /// AUROC in this run's grid; ties go to the simpler model, in the order of `meta.models`'
    /// known names: glm, lasso, ridge, elastic-net, nn, gb).
    pub model: String,
    /// Its feature group ("" = the best for the model, as above; ties to fewer columns).
    pub features: String,
    /// Known unknowns in its training set: "auto" (as the best grid entry), "with", "without".
    pub known_unknowns: String,
    /// Its feature transform: "" (as the best grid entry), "none" or "log".
    pub transform: String,
    /// The `reject_fraction` operating point flags this fraction of in-distribution images.
    pub reject_fraction: f64,
    /// The `target_accuracy` operating point: kept predictions reach this accuracy.
    pub target_accuracy: f64,
    /// Operating point `metaclf score` uses unless told: keep95, reject_fraction or
    /// target_accuracy.
    pub threshold: String,
    /// Folds of the out-of-fold scores the operating points are chosen on.
    pub folds: usize,
    /// Images per chunk when scoring (memory is bounded by the chunk).
    pub chunk: usize,
    /// Least trustworthy images shown in review.html.
    pub top: usize,
}

impl Default for ScoreSection {
    fn default() -> Self {
        Self {
            model: String::new(),
            features: String::new(),
            known_unknowns: "auto".into(),
            transform: String::new(),
            reject_fraction: 0.05,
            target_accuracy: 0.999,
            threshold: "keep95".into(),
            folds: 5,
            chunk: 4096,
            top: 48,
        }
    }
}

/// Operating points of a trust model, in the order they are written.
pub const THRESHOLDS: [&str; 3] = ["keep95", "reject_fraction", "target_accuracy"];

/// A validated config. The raw form is kept for saving (`config.toml` of a run).
#[derive(Debug, Clone)]
pub struct Config {
    pub raw: RawConfig,
    /// The imported model of `model.onnx` (read and checked when the config is validated).
    pub onnx: Option<std::sync::Arc<crate::onnx::Imported>>,
}

impl std::ops::Deref for Config {
    type Target = RawConfig;
    fn deref(&self) -> &RawConfig {
        &self.raw
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config> {
        let len = std::fs::metadata(path).at(path)?.len();
        if len > 1 << 20 {
            return Err(Error::ConfigParse {
                file: path.to_path_buf(),
                msg: format!("{len} bytes is too large for a config (at most 1 MiB)"),
            });
        }
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| Error::ConfigParse {
            file: file.to_path_buf(),
            msg: e.to_string().trim().replace('\n', " "),
        })?;
        // an ONNX path is relative to the config file's folder
        if !raw.model.onnx.is_empty() && Path::new(&raw.model.onnx).is_relative() {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                raw.model.onnx = dir.join(&raw.model.onnx).to_string_lossy().into_owned();
            }
        }
        // an imported model's input shape comes from its graph where [data] does not say
        let onnx = raw.model.import()?.map(std::sync::Arc::new);
        if let Some(imp) = &onnx {
            let data = toml::from_str::<toml::Table>(text)
                .ok()
                .and_then(|t| t.get("data").and_then(|d| d.as_table()).cloned())
                .unwrap_or_default();
            let (c, h, w) = imp.input;
            if !data.contains_key("channels") {
                raw.data.channels = c;
            }
            if !data.contains_key("image_size") {
                raw.data.image_size = [h, w];
            }
        }
        Self::validate_with(raw, onnx)
    }

    /// Checks every value, each section its own keys; errors name the dotted key and the bad
    /// value.
    pub fn validate(raw: RawConfig) -> Result<Config> {
        let onnx = raw.model.import()?.map(std::sync::Arc::new);
        Self::validate_with(raw, onnx)
    }

    /// [`Config::validate`] of `raw`, a changed copy of this config's: the imported model is
    /// this config's (the file is not read again) while `raw` names the same one.
    pub fn revalidate(&self, raw: RawConfig) -> Result<Config> {
        if raw.model.onnx == self.model.onnx {
            Self::validate_with(raw, self.onnx.clone())
        } else {
            Self::validate(raw)
        }
    }

    /// [`Config::validate`] with the import of `raw.model.onnx` already read.
    fn validate_with(
        raw: RawConfig,
        onnx: Option<std::sync::Arc<crate::onnx::Imported>>,
    ) -> Result<Config> {
        raw.run.check()?;
        let (shape, resize, transpose) = raw.data.check()?;
        raw.verdicts.check()?;
        let specs = raw.model.check(shape, onnx.as_deref())?;
        let specs = raw.features.check(specs, onnx.is_some())?;
        let layers = plan_names(&raw.data.with_normalize(specs, shape)?, shape)?;
        raw.train.check(onnx.is_some())?;
        raw.ood.check()?;
        raw.shift.check()?;
        raw.known_unknowns.check()?;
        raw.meta.check(&layers)?;
        raw.score.check(&layers)?;
        if let Some(imp) = &onnx {
            if raw.meta.cnn_seeds > 1 {
                return Err(cfg(
                    "meta.cnn_seeds",
                    format!(
                        "{}: an imported model is one trained CNN (more seeds would mean training it again); set 1",
                        raw.meta.cnn_seeds
                    ),
                ));
            }
            if let Some(k) = known_classes(&raw.data) {
                if k != imp.classes {
                    return Err(cfg(
                        "data.classes",
                        format!(
                            "the config names {k} classes; the ONNX model {} outputs {}",
                            raw.model.onnx, imp.classes
                        ),
                    ));
                }
            }
        }
        let mut raw = raw;
        raw.data.resize = resize.name().to_string();
        raw.data.transpose = transpose;
        if onnx.is_some() {
            raw.train.epochs = 0;
        }
        Ok(Config { raw, onnx })
    }

    /// The image shape (C, H, W) of the run.
    pub fn shape(&self) -> crate::data::Shape {
        let [h, w] = self.data.image_size;
        crate::data::Shape::new(self.data.channels, h, w)
    }

    /// The preprocessing every image of the run goes through.
    pub fn prep(&self) -> crate::data::Prep {
        crate::data::Prep {
            shape: self.shape(),
            resize: crate::data::Resize::parse(&self.data.resize).expect("validated"),
        }
    }

    /// The resolved config as TOML (every key, defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).expect("config serializes")
    }

    /// The number of classes the network outputs, where the config says it without reading
    /// data: `data.classes`, or `data.class_names` less `data.unknown_classes`.
    pub fn known_class_count(&self) -> Option<usize> {
        known_classes(&self.data).or(self.onnx.as_ref().map(|i| i.classes))
    }

    /// The layer list of the net (validated): the config's or the imported one, with the
    /// MC-dropout sites `features.mc_dropout_after` inserts and `data.normalize` in front.
    pub fn layer_specs(&self) -> Vec<crate::arch::Spec> {
        let specs = match &self.onnx {
            Some(imp) => imp.specs.clone(),
            None => self.model.specs(),
        };
        let specs = self
            .features
            .check(specs, self.onnx.is_some())
            .expect("validated");
        self.data
            .with_normalize(specs, self.shape())
            .expect("validated")
    }

    /// The imported model and the ONNX file it was read from (`model.onnx`), if there is one.
    pub fn imported(&self) -> Option<(&crate::onnx::Imported, &Path)> {
        self.onnx
            .as_deref()
            .map(|imp| (imp, Path::new(&self.model.onnx)))
    }

    /// The shape of the net's input: the images' (an input crop is the net's first layer).
    pub fn net_input(&self) -> crate::data::Shape {
        self.shape()
    }

    /// Names of the parameterised layers in graph order (`conv1`, …, `fc`): the layers of
    /// the gradient columns `grad_<layer>_<stat>`.
    pub fn layer_names(&self) -> Vec<String> {
        plan_names(&self.layer_specs(), self.shape()).expect("validated")
    }
}

impl RunSection {
    /// Checks `[run]`.
    pub fn check(&self) -> Result<()> {
        let r = self;
        if r.name.is_empty() || r.name.contains(['/', '\\']) || r.name == ".." {
            return Err(cfg(
                "run.name",
                format!("{:?} is not a plain folder name", r.name),
            ));
        }
        Ok(())
    }
}

impl DataSection {
    /// `specs` with `normalize` (checked here: one finite mean and one positive std per
    /// channel) as the net's first layer, after an input crop if there is one.
    pub fn with_normalize(
        &self,
        mut specs: Vec<crate::arch::Spec>,
        shape: crate::data::Shape,
    ) -> Result<Vec<crate::arch::Spec>> {
        let Some(n) = &self.normalize else {
            return Ok(specs);
        };
        for (key, v) in [
            ("data.normalize.mean", &n.mean),
            ("data.normalize.std", &n.std),
        ] {
            if v.len() != shape.c {
                return Err(cfg(
                    key,
                    format!(
                        "{} values for images of {} channel{}: give one per channel",
                        v.len(),
                        shape.c,
                        if shape.c == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
        if let Some(m) = n.mean.iter().find(|m| !m.is_finite()) {
            return Err(cfg("data.normalize.mean", format!("{m} is not finite")));
        }
        if let Some(v) = n.std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(cfg("data.normalize.std", format!("{v}: must be > 0")));
        }
        let at = usize::from(matches!(
            specs.first(),
            Some(crate::arch::Spec::Crop { .. })
        ));
        specs.insert(
            at,
            crate::arch::Spec::Normalize {
                name: "normalize".into(),
                mean: n.mean.clone(),
                std: n.std.clone(),
            },
        );
        Ok(specs)
    }

    /// Checks `[data]`; returns the image shape, the resize rule and the resolved transpose.
    pub fn check(&self) -> Result<(crate::data::Shape, crate::data::Resize, bool)> {
        let r = self;
        if !(0.0..1.0).contains(&r.val_fraction) {
            return Err(cfg(
                "data.val_fraction",
                format!("{} is outside [0, 1)", r.val_fraction),
            ));
        }
        for (key, spec) in [("data.train", &r.train), ("data.test", &r.test)] {
            crate::data::Source::parse(spec).map_err(|m| cfg(key, m))?;
        }
        let mut seen = std::collections::HashSet::new();
        for c in &r.classes {
            if !seen.insert(c) {
                return Err(cfg("data.classes", format!("class {c} is listed twice")));
            }
        }
        if r.classes.len() == 1 {
            return Err(cfg("data.classes", "a classifier needs at least 2 classes"));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &r.unknown_classes {
            if !seen.insert(c) {
                return Err(cfg(
                    "data.unknown_classes",
                    format!("class {c} is listed twice"),
                ));
            }
            if r.classes.contains(c) {
                return Err(cfg(
                    "data.unknown_classes",
                    format!("class {c} is also in data.classes; a class is known or unknown"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in &r.class_names {
            if n.trim().is_empty() || n.chars().any(char::is_control) || n.len() > 200 {
                return Err(cfg(
                    "data.class_names",
                    format!("{n:?}: a class name must be 1–200 printable characters"),
                ));
            }
            if !seen.insert(n) {
                return Err(cfg("data.class_names", format!("{n:?} is listed twice")));
            }
        }
        let [ih, iw] = r.image_size;
        if !(1..=MAX_SIDE).contains(&ih) || !(1..=MAX_SIDE).contains(&iw) {
            return Err(cfg(
                "data.image_size",
                format!("[{ih}, {iw}]: height and width must be 1..={MAX_SIDE}"),
            ));
        }
        if !(1..=MAX_IMAGE_CHANNELS).contains(&r.channels) {
            return Err(cfg(
                "data.channels",
                format!("{} is outside 1..={MAX_IMAGE_CHANNELS}", r.channels),
            ));
        }
        let shape = crate::data::Shape::new(r.channels, ih, iw);
        let resize = if r.resize.is_empty() {
            crate::data::Resize::default_for(shape)
        } else {
            crate::data::Resize::parse(&r.resize).map_err(|m| cfg("data.resize", m))?
        };
        if resize == crate::data::Resize::Mnist && shape.c != 1 {
            return Err(cfg(
                "data.resize",
                format!(
                    "\"mnist\" normalises grayscale ink; with data.channels = {} use fit, stretch or center-crop",
                    shape.c
                ),
            ));
        }
        let emnist = |s: &str| s.starts_with("emnist-");
        let transpose = r.transpose && !(emnist(&r.train) && emnist(&r.test));
        if r.transpose && !transpose {
            tracing::warn!(
                "data.transpose: emnist-* sources are transposed when loaded; the key is resolved to false"
            );
        }
        Ok((shape, resize, transpose))
    }
}

impl VerdictsSection {
    /// Checks `[verdicts]`.
    pub fn check(&self) -> Result<()> {
        if !(self.margin > 0.0 && self.margin < 0.5) {
            return Err(cfg(
                "verdicts.margin",
                format!("{} is outside (0, 0.5)", self.margin),
            ));
        }
        Ok(())
    }
}

impl ModelSection {
    /// The first of the paper net's keys (channels, kernel, …) set to other than its default:
    /// they mean nothing beside a layer list or an import.
    fn paper_key_set(&self) -> Option<&'static str> {
        let (m, d) = (self, ModelSection::default());
        [
            ("model.channels", m.channels == d.channels),
            ("model.kernel", m.kernel == d.kernel),
            ("model.leaky_slope", m.leaky_slope == d.leaky_slope),
            ("model.dropout", m.dropout == d.dropout),
            ("model.dropout_after", m.dropout_after == d.dropout_after),
            ("model.pool_after", m.pool_after == d.pool_after),
            ("model.pool", m.pool == d.pool),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(key, _)| key)
    }

    /// The ONNX model of `onnx`, read and checked (None without one).
    pub fn import(&self) -> Result<Option<crate::onnx::Imported>> {
        if self.onnx.is_empty() {
            return Ok(None);
        }
        let p = Path::new(&self.onnx);
        if !p.is_file() {
            let why = if p.exists() {
                "not a regular file"
            } else {
                "no such file"
            };
            return Err(cfg("model.onnx", format!("{}: {why}", p.display())));
        }
        crate::onnx::load(p)
            .map(Some)
            .map_err(|e| cfg("model.onnx", e.to_string()))
    }

    /// Checks `[model]`: the imported model `onnx` (its input against `shape`, no other net
    /// keys beside it), the layer list (every entry's keys, then the shapes through the net on
    /// images of `shape`), or the legacy keys of the paper's net. Returns the net's layers.
    pub fn check(
        &self,
        shape: crate::data::Shape,
        onnx: Option<&crate::onnx::Imported>,
    ) -> Result<Vec<crate::arch::Spec>> {
        let m = self;
        if let Some(imp) = onnx {
            let key = if m.layers.is_empty() {
                m.paper_key_set()
            } else {
                Some("model.layers")
            };
            if let Some(key) = key {
                return Err(cfg(
                    key,
                    "is set beside model.onnx: the imported model is the network",
                ));
            }
            let (c, h, w) = imp.input;
            if (c, h, w) != (shape.c, shape.h, shape.w) {
                return Err(cfg(
                    "data.image_size",
                    format!(
                        "the ONNX model {} takes {c}×{h}×{w} images (C×H×W); the config brings images to {}×{}×{}: set data.channels = {c} and data.image_size = [{h}, {w}]",
                        m.onnx, shape.c, shape.h, shape.w
                    ),
                ));
            }
            return Ok(imp.specs.clone());
        }
        if !m.layers.is_empty() {
            if let Some(key) = m.paper_key_set() {
                return Err(cfg(
                    key,
                    "is set beside model.layers: give the net either as a layer list or with the paper net's keys (channels, kernel, …), not both",
                ));
            }
            let specs = crate::arch::parse_layers(&m.layers)
                .map_err(|(i, msg)| cfg(&format!("model.layers[{i}]"), msg))?;
            plan_names(&specs, shape)?;
            return Ok(specs);
        }
        if m.channels.is_empty() || m.channels.contains(&0) {
            return Err(cfg(
                "model.channels",
                format!(
                    "{:?}: need at least one conv layer, each with ≥ 1 channel",
                    m.channels
                ),
            ));
        }
        if m.kernel == 0 || m.kernel.is_multiple_of(2) || m.kernel > 9 {
            return Err(cfg(
                "model.kernel",
                format!("{} must be odd and between 1 and 9", m.kernel),
            ));
        }
        if !(m.leaky_slope.is_finite() && (0.0..1.0).contains(&m.leaky_slope)) {
            return Err(cfg(
                "model.leaky_slope",
                format!("{} is outside [0, 1)", m.leaky_slope),
            ));
        }
        if !(m.dropout.is_finite() && (0.0..1.0).contains(&m.dropout)) {
            return Err(cfg(
                "model.dropout",
                format!("{} is outside [0, 1)", m.dropout),
            ));
        }
        let conv_names: Vec<String> = (1..=m.channels.len()).map(|i| format!("conv{i}")).collect();
        for (key, list) in [
            ("model.dropout_after", &m.dropout_after),
            ("model.pool_after", &m.pool_after),
        ] {
            for l in list {
                if !conv_names.contains(l) {
                    return Err(cfg(
                        key,
                        format!("{l:?} is not a conv layer (have {})", conv_names.join(", ")),
                    ));
                }
            }
        }
        if m.pool < 2 {
            return Err(cfg("model.pool", format!("{} must be ≥ 2", m.pool)));
        }
        let pools = conv_names
            .iter()
            .filter(|n| m.pool_after.contains(n))
            .count() as u32;
        let min_side = (m.pool as u64).saturating_pow(pools);
        if (shape.h.min(shape.w) as u64) < min_side {
            return Err(cfg(
                "data.image_size",
                format!(
                    "[{}, {}] is too small for the {pools} pooling layer{} of window {}: \
                     height and width must be at least {min_side}",
                    shape.h,
                    shape.w,
                    if pools == 1 { "" } else { "s" },
                    m.pool
                ),
            ));
        }
        for (key, v, max) in [("model.channels", m.channels.len(), MAX_LAYERS)] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        if let Some(c) = m.channels.iter().find(|&&c| c > MAX_CHANNELS) {
            return Err(cfg(
                "model.channels",
                format!("{c} channels is more than the limit of {MAX_CHANNELS}"),
            ));
        }
        let specs = m.specs();
        plan_names(&specs, shape)?;
        Ok(specs)
    }

    /// The layer list: `layers` validated, or the paper's net from the legacy keys.
    pub fn specs(&self) -> Vec<crate::arch::Spec> {
        if self.layers.is_empty() {
            let names: Vec<String> = (1..=self.channels.len())
                .map(|i| format!("conv{i}"))
                .collect();
            crate::arch::legacy(
                &self.channels,
                self.kernel,
                self.leaky_slope,
                self.dropout,
                &names
                    .iter()
                    .map(|n| self.pool_after.contains(n))
                    .collect::<Vec<_>>(),
                &names
                    .iter()
                    .map(|n| self.dropout_after.contains(n))
                    .collect::<Vec<_>>(),
                self.pool,
            )
        } else {
            crate::arch::parse_layers(&self.layers).expect("validated")
        }
    }
}

/// The `[model]` section of a run with an imported model written as the layer list of that
/// model (MC-dropout sites included, the last linear layer meaning "the classes"): for a run
/// whose net grows away from the ONNX file (`metaclf extend`).
pub fn imported_as_layers(cfg: &Config) -> Result<ModelSection> {
    let Some(imp) = &cfg.onnx else {
        return Ok(cfg.model.clone());
    };
    let specs = cfg.features.check(imp.specs.clone(), true)?;
    let mut layers: Vec<crate::arch::RawLayer> = specs.iter().map(crate::arch::to_raw).collect();
    if let Some(last) = layers.last_mut() {
        last.out = None;
    }
    Ok(ModelSection {
        layers,
        ..ModelSection::default()
    })
}

/// The number of classes `[data]` names without reading data: `data.classes`, or
/// `data.class_names` less `data.unknown_classes`.
fn known_classes(d: &DataSection) -> Option<usize> {
    match (d.class_names.is_empty(), d.classes.len()) {
        (true, _) => None,
        (false, 0) => Some(d.class_names.len().saturating_sub(d.unknown_classes.len())),
        (false, k) => Some(k),
    }
}

/// Shape inference through `specs` on images of `shape` (the input crop, if any, included);
/// the parameterised layers' names, or the error naming `model.layers[i]` and the shapes.
fn plan_names(specs: &[crate::arch::Spec], shape: crate::data::Shape) -> Result<Vec<String>> {
    // the number of classes is the data's
    crate::arch::plan_for(specs, (shape.c, shape.h, shape.w), None)
        .map(|p| p.params)
        .map_err(|(i, msg)| cfg(&format!("model.layers[{i}]"), msg))
}

impl TrainSection {
    /// Checks `[train]`; an imported model (`imported`) is not trained, so any epochs do.
    pub fn check(&self, imported: bool) -> Result<()> {
        let t = self;
        if t.epochs == 0 && !imported {
            return Err(cfg(
                "train.epochs",
                "0: must be ≥ 1 (only an imported model, model.onnx, runs untrained)",
            ));
        }
        if t.batch_size == 0 {
            return Err(cfg("train.batch_size", "0: must be ≥ 1"));
        }
        positive("train.lr", t.lr)?;
        positive("train.min_lr", t.min_lr)?;
        if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
            return Err(cfg(
                "train.momentum",
                format!("{} is outside [0, 1)", t.momentum),
            ));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(cfg(
                "train.weight_decay",
                format!("{} must be ≥ 0", t.weight_decay),
            ));
        }
        if !(t.plateau_factor > 0.0 && t.plateau_factor < 1.0) {
            return Err(cfg(
                "train.plateau_factor",
                format!("{} is outside (0, 1)", t.plateau_factor),
            ));
        }
        if !["sgd", "adam", "adamw"].contains(&t.optimizer.as_str()) {
            return Err(cfg(
                "train.optimizer",
                format!("{:?} is not sgd, adam or adamw", t.optimizer),
            ));
        }
        for (i, b) in t.betas.iter().enumerate() {
            if !(b.is_finite() && (0.0..1.0).contains(b)) {
                return Err(cfg(
                    "train.betas",
                    format!("β{} = {b} is outside [0, 1)", i + 1),
                ));
            }
        }
        positive("train.eps", t.eps)?;
        if !["plateau", "cosine", "step"].contains(&t.schedule.as_str()) {
            return Err(cfg(
                "train.schedule",
                format!("{:?} is not plateau, cosine or step", t.schedule),
            ));
        }
        if t.step_every == 0 {
            return Err(cfg("train.step_every", "0: must be ≥ 1"));
        }
        if !(t.step_gamma > 0.0 && t.step_gamma <= 1.0) {
            return Err(cfg(
                "train.step_gamma",
                format!("{} is outside (0, 1]", t.step_gamma),
            ));
        }
        let a = &t.augment;
        if !(a.rotate.is_finite() && (0.0..=180.0).contains(&a.rotate)) {
            return Err(cfg(
                "train.augment.rotate",
                format!("{} is outside [0, 180] degrees", a.rotate),
            ));
        }
        if a.crop_padding > 64 {
            return Err(cfg(
                "train.augment.crop_padding",
                format!("{} is more than the limit of 64", a.crop_padding),
            ));
        }
        for (key, v, max) in [
            ("train.epochs", t.epochs, 100_000),
            ("train.batch_size", t.batch_size, MAX_BATCH),
        ] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        Ok(())
    }
}

impl FeaturesSection {
    /// Checks `[features]` for the net's layers `specs`; returns them with the MC-dropout
    /// layers of `mc_dropout_after` inserted (an imported model only).
    pub fn check(
        &self,
        specs: Vec<crate::arch::Spec>,
        imported: bool,
    ) -> Result<Vec<crate::arch::Spec>> {
        if self.mc_samples < 2 {
            return Err(cfg(
                "features.mc_samples",
                format!("{}: MC dropout needs ≥ 2 passes", self.mc_samples),
            ));
        }
        if self.batch_size == 0 {
            return Err(cfg("features.batch_size", "0: must be ≥ 1"));
        }
        for (key, v, max) in [
            ("features.batch_size", self.batch_size, MAX_BATCH),
            ("features.mc_samples", self.mc_samples, 100_000),
        ] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        let mc_rows = self.batch_size * self.mc_samples;
        if mc_rows > MAX_MC_ROWS {
            return Err(cfg(
                "features.mc_samples",
                format!(
                    "{} passes × features.batch_size {} = {mc_rows} probability rows per batch, \
                     more than the limit of {MAX_MC_ROWS}; lower one of them",
                    self.mc_samples, self.batch_size
                ),
            ));
        }
        if self.mc_dropout_after.is_empty() {
            return Ok(specs);
        }
        if !imported {
            return Err(cfg(
                "features.mc_dropout_after",
                "is for an imported model (model.onnx); in a layer list, put dropout layers where they belong",
            ));
        }
        if !(self.mc_rate.is_finite() && self.mc_rate > 0.0 && self.mc_rate < 1.0) {
            return Err(cfg(
                "features.mc_rate",
                format!("{} is outside (0, 1)", self.mc_rate),
            ));
        }
        let mut specs = specs;
        for name in &self.mc_dropout_after {
            if !insert_dropout_after(&mut specs, name, self.mc_rate) {
                let all: Vec<&str> = crate::arch::all_layers(&specs)
                    .iter()
                    .map(|s| s.name())
                    .collect();
                return Err(cfg(
                    "features.mc_dropout_after",
                    format!(
                        "{name:?} is not a layer of the imported model (its layers: {})",
                        all.join(", ")
                    ),
                ));
            }
        }
        Ok(specs)
    }
}

/// Inserts dropout (`mc_drop_<layer>`) right after the layer `name`, at any depth; false if
/// there is no such layer.
fn insert_dropout_after(specs: &mut Vec<crate::arch::Spec>, name: &str, rate: f64) -> bool {
    use crate::arch::Spec;
    if let Some(i) = specs.iter().position(|s| s.name() == name) {
        specs.insert(
            i + 1,
            Spec::Dropout {
                name: format!("mc_drop_{name}"),
                rate,
            },
        );
        return true;
    }
    specs.iter_mut().any(|s| match s {
        Spec::Add { body, shortcut, .. } => {
            insert_dropout_after(body, name, rate) || insert_dropout_after(shortcut, name, rate)
        }
        _ => false,
    })
}

impl OodSection {
    /// Checks `[ood]`.
    pub fn check(&self) -> Result<()> {
        for s in &self.sets {
            crate::data::Source::parse(s).map_err(|m| cfg("ood.sets", m))?;
        }
        for (key, v, max) in [("ood.count", self.count, MAX_IMAGES)] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        Ok(())
    }
}

impl ShiftSection {
    /// Checks `[shift]`.
    pub fn check(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for s in &self.sets {
            let sh =
                crate::data::transform::ShiftSpec::parse(s).map_err(|m| cfg("shift.sets", m))?;
            if !names.insert(sh.name.clone()) {
                return Err(cfg(
                    "shift.sets",
                    format!("{s:?}: a second set named shift-{}", sh.name),
                ));
            }
        }
        Ok(())
    }
}

impl KnownUnknownsSection {
    /// Checks `[known_unknowns]`.
    pub fn check(&self) -> Result<()> {
        if !self.source.is_empty() {
            crate::data::Source::parse(&self.source)
                .map_err(|m| cfg("known_unknowns.source", m))?;
            if self.count == 0 {
                return Err(cfg(
                    "known_unknowns.count",
                    "0: must be ≥ 1 when a source is set",
                ));
            }
        }
        for (key, v, max) in [("known_unknowns.count", self.count, MAX_IMAGES)] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        Ok(())
    }
}

impl MetaSection {
    /// Checks `[meta]`; `layers` are the net's parameterised layers (for `grad-<layer>` groups).
    pub fn check(&self, layers: &[String]) -> Result<()> {
        let me = self;
        if me.repetitions == 0 {
            return Err(cfg("meta.repetitions", "0: must be ≥ 1"));
        }
        if !(me.test_fraction > 0.0 && me.test_fraction < 1.0) {
            return Err(cfg(
                "meta.test_fraction",
                format!("{} is outside (0, 1)", me.test_fraction),
            ));
        }
        for model in &me.models {
            if !crate::columns::MODELS.contains(&model.as_str()) {
                return Err(cfg(
                    "meta.models",
                    format!(
                        "unknown model {model:?} (known: {})",
                        crate::columns::MODELS.join(", ")
                    ),
                ));
            }
        }
        for g in &me.groups {
            crate::columns::FeatureGroup::parse(g, layers).map_err(|m| cfg("meta.groups", m))?;
        }
        if me.transforms.is_empty() {
            return Err(cfg(
                "meta.transforms",
                "is empty: give \"none\", \"log\" or both",
            ));
        }
        for (i, tr) in me.transforms.iter().enumerate() {
            if !crate::columns::TRANSFORMS.contains(&tr.as_str()) {
                return Err(cfg(
                    "meta.transforms",
                    format!(
                        "unknown transform {tr:?} (known: {})",
                        crate::columns::TRANSFORMS.join(", ")
                    ),
                ));
            }
            if me.transforms[..i].contains(tr) {
                return Err(cfg("meta.transforms", format!("{tr:?} is listed twice")));
            }
        }
        if !(me.alpha.is_finite() && (0.0..=1.0).contains(&me.alpha)) {
            return Err(cfg("meta.alpha", format!("{} is outside [0, 1]", me.alpha)));
        }
        if !me.lambda.is_finite() {
            return Err(cfg("meta.lambda", format!("{} is not finite", me.lambda)));
        }
        if me.cv_folds < 2 {
            return Err(cfg("meta.cv_folds", format!("{} must be ≥ 2", me.cv_folds)));
        }
        if me.n_lambda < 2 {
            return Err(cfg("meta.n_lambda", format!("{} must be ≥ 2", me.n_lambda)));
        }
        if me.cnn_seeds == 0 {
            return Err(cfg("meta.cnn_seeds", "0: must be ≥ 1"));
        }
        if me.nn_hidden == 0 {
            return Err(cfg("meta.nn_hidden", "0: must be ≥ 1"));
        }
        if me.nn_epochs == 0 {
            return Err(cfg("meta.nn_epochs", "0: must be ≥ 1"));
        }
        positive("meta.nn_lr", me.nn_lr)?;
        if !(me.nn_weight_decay.is_finite() && me.nn_weight_decay >= 0.0) {
            return Err(cfg(
                "meta.nn_weight_decay",
                format!("{} must be ≥ 0", me.nn_weight_decay),
            ));
        }
        for (key, v, max) in [
            ("meta.repetitions", me.repetitions, 100_000),
            ("meta.cv_folds", me.cv_folds, 100),
            ("meta.n_lambda", me.n_lambda, 10_000),
            ("meta.nn_hidden", me.nn_hidden, 65_536),
            ("meta.nn_epochs", me.nn_epochs, 1_000_000),
            ("meta.cnn_seeds", me.cnn_seeds, 1_000),
        ] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        Ok(())
    }
}

impl ScoreSection {
    /// Checks `[score]`; `layers` as for `[meta]`.
    pub fn check(&self, layers: &[String]) -> Result<()> {
        let sc = self;
        if !sc.model.is_empty() && !crate::columns::MODELS.contains(&sc.model.as_str()) {
            return Err(cfg(
                "score.model",
                format!(
                    "unknown model {:?} (known: {}; \"\" = best of the grid)",
                    sc.model,
                    crate::columns::MODELS.join(", ")
                ),
            ));
        }
        if !sc.features.is_empty() {
            crate::columns::FeatureGroup::parse(&sc.features, layers)
                .map_err(|m| cfg("score.features", m))?;
        }
        if !["auto", "with", "without"].contains(&sc.known_unknowns.as_str()) {
            return Err(cfg(
                "score.known_unknowns",
                format!("{:?} is not auto, with or without", sc.known_unknowns),
            ));
        }
        if !sc.transform.is_empty() && !crate::columns::TRANSFORMS.contains(&sc.transform.as_str())
        {
            return Err(cfg(
                "score.transform",
                format!(
                    "{:?} is not \"\" (as the grid's best), {}",
                    sc.transform,
                    crate::columns::TRANSFORMS.join(" or ")
                ),
            ));
        }
        if !(sc.reject_fraction > 0.0 && sc.reject_fraction < 1.0) {
            return Err(cfg(
                "score.reject_fraction",
                format!("{} is outside (0, 1)", sc.reject_fraction),
            ));
        }
        if !(sc.target_accuracy > 0.0 && sc.target_accuracy <= 1.0) {
            return Err(cfg(
                "score.target_accuracy",
                format!("{} is outside (0, 1]", sc.target_accuracy),
            ));
        }
        if !THRESHOLDS.contains(&sc.threshold.as_str()) {
            return Err(cfg(
                "score.threshold",
                format!("{:?} is not one of {}", sc.threshold, THRESHOLDS.join(", ")),
            ));
        }
        if !(2..=20).contains(&sc.folds) {
            return Err(cfg(
                "score.folds",
                format!("{} is outside 2..=20", sc.folds),
            ));
        }
        if sc.chunk == 0 {
            return Err(cfg("score.chunk", "0: must be ≥ 1"));
        }
        for (key, v, max) in [
            ("score.chunk", sc.chunk, 1 << 20),
            ("score.top", sc.top, 10_000),
        ] {
            if v > max {
                return Err(cfg(key, format!("{v} is more than the limit of {max}")));
            }
        }
        Ok(())
    }
}

/// Most conv layers a config may ask for.
pub const MAX_LAYERS: usize = 16;
/// Largest image height or width.
pub const MAX_SIDE: usize = 2048;
/// Most channels of an input image.
pub const MAX_IMAGE_CHANNELS: usize = 64;
/// Most channels of one conv layer.
pub const MAX_CHANNELS: usize = 1024;
/// Largest training or scoring batch.
pub const MAX_BATCH: usize = 65_536;
pub use crate::data::MAX_IMAGES;
/// Most MC-dropout probability rows (batch × passes) held for one scoring batch.
pub const MAX_MC_ROWS: usize = 1 << 22;

fn positive(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(cfg(key, format!("{v} must be > 0")))
    }
}

/// The default config, every key written out, and (commented out) the same network as a
/// `[[model.layers]]` list: the syntax for any other net.
pub fn default_toml() -> String {
    let mut text = toml::to_string_pretty(&RawConfig::default()).expect("config serializes");
    #[derive(Serialize)]
    struct Layers {
        layers: Vec<crate::arch::RawLayer>,
    }
    #[derive(Serialize)]
    struct Model {
        model: Layers,
    }
    let m = Model {
        model: Layers {
            layers: ModelSection::default()
                .specs()
                .iter()
                .map(crate::arch::to_raw)
                .collect(),
        },
    };
    text.push_str(
        "\n# The [model] keys above (channels, kernel, …) mean the paper's net. The same net as a\n\
         # layer list, the form for any other (kinds: conv, batchnorm, relu, leaky_relu, maxpool,\n\
         # avgpool, global_avgpool, flatten, dropout, linear, residual, crop, add; see the\n\
         # README); with model.layers, leave the keys above unset:\n#\n",
    );
    for line in toml::to_string_pretty(&m)
        .expect("layers serialize")
        .lines()
    {
        text.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
    }
    text.push_str(
        "#\n# Or a classifier trained elsewhere, imported (README \"Bring your own model\"; not\n\
         # trained, so train.epochs is 0), with the normalisation it expects and, when its export\n\
         # has no dropout, MC-dropout sites after named layers:\n#\n\
         # [model]\n# onnx = \"model.onnx\"             # relative to this file\n\
         # [data]\n# normalize = { mean = [0.1307], std = [0.3081] }\n\
         # [features]\n# mc_dropout_after = [\"fc1\"]\n# mc_rate = 0.25\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s, Path::new("t.toml"))
    }

    /// `[model] onnx`: resolved against the config's folder; the checks of what goes with it.
    #[test]
    fn onnx_configs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let at = |text: &str| Config::parse(text, &root.join("configs/x.toml"));
        let base = "[model]\nonnx = \"../tests/fixtures/onnx/small_resnet.onnx\"\n";
        let c = at(base).unwrap();
        assert!(
            Path::new(&c.model.onnx).is_absolute()
                || c.model.onnx.starts_with(root.to_str().unwrap())
        );
        assert_eq!(c.train.epochs, 0, "an imported model is not trained");
        assert_eq!(c.layer_names()[0], "stem");
        assert_eq!(c.known_class_count(), Some(10));
        let err = |text: &str| at(text).unwrap_err().to_string();
        let e = err("[model]\nonnx = \"nope.onnx\"\n");
        assert!(e.contains("model.onnx") && e.contains("nope.onnx"), "{e}");
        let e = err(&format!("{base}[data]\nimage_size = [32, 32]\n"));
        assert!(
            e.contains("data.image_size") && e.contains("1×28×28"),
            "{e}"
        );
        // unsaid, the shape is the graph's
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.onnx"), crate::onnx::tiny_model(3, 12, 10)).unwrap();
        let c = Config::parse("[model]\nonnx = \"m.onnx\"\n", &d.path().join("c.toml")).unwrap();
        assert_eq!((c.data.channels, c.data.image_size), (3, [12, 10]));
        assert_eq!(c.data.resize, "fit");
        let e = Config::parse(
            "[data]\nchannels = 1\n[model]\nonnx = \"m.onnx\"\n",
            &d.path().join("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("3×12×10") && e.contains("data.channels = 3"),
            "{e}"
        );
        let e = err(&format!("{base}channels = [8]\n"));
        assert!(
            e.contains("model.channels") && e.contains("beside model.onnx"),
            "{e}"
        );
        let e = err(&format!("{base}[features]\nmc_dropout_after = [\"fc9\"]\n"));
        assert!(
            e.contains("features.mc_dropout_after") && e.contains("block1.conv1"),
            "{e}"
        );
        let e = err(&format!("{base}[meta]\ncnn_seeds = 2\n"));
        assert!(e.contains("meta.cnn_seeds"), "{e}");
        let e = err(&format!("{base}[data]\nclass_names = [\"a\", \"b\"]\n"));
        assert!(
            e.contains("data.classes") && e.contains("outputs 10"),
            "{e}"
        );
        // MC dropout inserted after a named layer, in front of it the normalisation
        let c = at(&format!(
            "{base}[features]\nmc_dropout_after = [\"fc1\", \"block2.conv1\"]\n[data]\nnormalize = {{ mean = [0.5], std = [0.25] }}\n"
        ))
        .unwrap();
        let specs = c.layer_specs();
        assert_eq!(specs[0].kind(), "normalize");
        assert_eq!(crate::arch::count_dropout(&specs), 2);
        // without an import
        let e = parse("[features]\nmc_dropout_after = [\"conv1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("features.mc_dropout_after") && e.contains("imported model"),
            "{e}"
        );
        let e = parse("[train]\nepochs = 0\n").unwrap_err().to_string();
        assert!(e.contains("train.epochs"), "{e}");
        let e = parse("[data]\nnormalize = { mean = [0.5, 0.5], std = [1.0, 1.0] }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.normalize.mean") && e.contains("one per channel"),
            "{e}"
        );
        let e = parse("[data]\nnormalize = { mean = [0.5], std = [0.0] }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.normalize.std"), "{e}");
        // the paper's net with normalisation: the first layer
        let c = parse("[data]\nnormalize = { mean = [0.1307], std = [0.3081] }\n").unwrap();
        assert_eq!(c.layer_specs()[0].kind(), "normalize");
        assert_eq!(c.layer_names(), ["conv1", "conv2", "conv3", "fc"]);
    }

    #[test]
    fn the_dumped_layer_list_is_the_paper_net() {
        let text = default_toml();
        assert!(parse(&text).is_ok());
        let layers: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("# [[model.layers]]"))
            .take_while(|l| !l.starts_with("# Or a classifier"))
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect();
        let c = parse(&layers.join("\n")).unwrap();
        assert_eq!(c.layer_specs(), ModelSection::default().specs());
        assert_eq!(c.layer_names(), ["conv1", "conv2", "conv3", "fc"]);
    }

    /// An add written in TOML: its branches as nested tables, an empty shortcut the identity.
    #[test]
    fn an_add_layer_in_toml() {
        let c = parse(
            "[[model.layers]]\nkind = \"conv\"\nname = \"stem\"\nout = 4\n\
             [[model.layers]]\nkind = \"add\"\nname = \"res\"\n\
             [[model.layers.body]]\nkind = \"conv\"\nname = \"res.a\"\nout = 4\n\
             [[model.layers.body]]\nkind = \"relu\"\n\
             [[model.layers.body]]\nkind = \"conv\"\nname = \"res.b\"\nout = 4\n\
             [[model.layers]]\nkind = \"add\"\nname = \"down\"\n\
             [[model.layers.body]]\nkind = \"conv\"\nname = \"down.a\"\nout = 8\nstride = 2\n\
             [[model.layers.shortcut]]\nkind = \"conv\"\nname = \"down.proj\"\nout = 8\nkernel = 1\nstride = 2\n\
             [[model.layers]]\nkind = \"global_avgpool\"\n[[model.layers]]\nkind = \"linear\"\n",
        )
        .unwrap();
        assert_eq!(
            c.layer_names(),
            ["stem", "res.a", "res.b", "down.a", "down.proj", "fc"]
        );
        let plan = crate::arch::plan_for(&c.layer_specs(), (1, 28, 28), Some(3)).unwrap();
        assert_eq!(plan.dims[2], (8, 14, 14));
        // the resolved config round-trips
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.layer_specs(), c.layer_specs());
    }

    #[test]
    fn layer_lists_are_checked_naming_the_layer() {
        let bad = [
            ("[[model.layers]]\nkind = \"conv\"\nout = 4\n[[model.layers]]\nkind = \"linear\"", "model.layers[1]", "flatten"),
            ("[[model.layers]]\nkind = \"swish\"", "model.layers[0]", "unknown layer kind"),
            ("[[model.layers]]\nkind = \"conv\"\nout = 4\nrate = 0.1", "model.layers[0]", "\"rate\""),
            ("[[model.layers]]\nkind = \"conv\"\nout = 4\nfilters = 3", "", "filters"),
            ("[model]\nchannels = [8]\n[[model.layers]]\nkind = \"flatten\"\n[[model.layers]]\nkind = \"linear\"", "model.channels", "not both"),
            ("[[model.layers]]\nkind = \"conv\"\nout = 2\nkernel = 15\npadding = \"valid\"\n[[model.layers]]\nkind = \"maxpool\"\nkernel = 15\n[[model.layers]]\nkind = \"flatten\"\n[[model.layers]]\nkind = \"linear\"", "model.layers[1]", "2×14×14"),
            ("[[model.layers]]\nkind = \"relu\"\n[[model.layers]]\nkind = \"crop\"\nsize = [2, 2]\n[[model.layers]]\nkind = \"flatten\"\n[[model.layers]]\nkind = \"linear\"", "model.layers[1]", "first layer"),
            ("[[model.layers]]\nkind = \"add\"\n[[model.layers.body]]\nkind = \"conv\"\nout = 1\n[[model.layers.body]]\nkind = \"pool\"", "model.layers[0]", "body[1]: unknown layer kind \"pool\""),
            ("[[model.layers]]\nkind = \"add\"\n[[model.layers.body]]\nkind = \"conv\"\nout = 3\nstride = 2\n[[model.layers]]\nkind = \"flatten\"\n[[model.layers]]\nkind = \"linear\"", "model.layers[0]", "its body gives 3×14×14 and its shortcut 1×28×28"),
            ("[[model.layers]]\nkind = \"add\"", "model.layers[0]", "\"body\" needs at least one layer"),
            ("[train]\noptimizer = \"lion\"", "train.optimizer", "lion"),
            ("[train]\nschedule = \"linear\"", "train.schedule", "linear"),
            ("[train.augment]\nrotate = 400", "train.augment.rotate", "400"),
        ];
        for (text, key, want) in bad {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(want), "{text:?}: {e}");
        }
        let ok = "[[model.layers]]\nkind = \"conv\"\nname = \"stem\"\nout = 4\n[[model.layers]]\nkind = \"residual\"\nout = 8\nstride = 2\n[[model.layers]]\nkind = \"global_avgpool\"\n[[model.layers]]\nkind = \"linear\"\n[meta]\ngroups = [\"grad-block1\", \"grad-stem\", \"grad-block1.shortcut.1\"]";
        let c = parse(ok).unwrap();
        assert!(c.layer_names().contains(&"block1.shortcut.0".to_string()));
        // the resolved config reads back to the same net
        assert_eq!(parse(&c.to_toml()).unwrap().layer_specs(), c.layer_specs());
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = parse("").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c.raw, again.raw);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[train]\nepochs = 0", "train.epochs"),
            ("[train]\nbatch_size = 0", "train.batch_size"),
            ("[train]\nlr = -0.1", "train.lr"),
            ("[train]\nlr = 0.0", "train.lr"),
            ("[model]\ndropout = 1.0", "model.dropout"),
            ("[model]\ndropout = -0.1", "model.dropout"),
            (
                "[model]\ndropout_after = [\"conv9\"]",
                "model.dropout_after",
            ),
            ("[data]\ntrain = \"nope\"", "data.train"),
            ("[meta]\nmodels = [\"svm\"]", "meta.models"),
            ("[meta]\ngroups = [\"grad-conv7\"]", "meta.groups"),
            ("[meta]\ntransforms = [\"sqrt\"]", "meta.transforms"),
            ("[meta]\ntransforms = []", "meta.transforms"),
            ("[ood]\ncount = 1000000000000", "ood.count"),
            (
                "[known_unknowns]\ncount = 99999999999",
                "known_unknowns.count",
            ),
            ("[features]\nbatch_size = 10000000", "features.batch_size"),
            ("[features]\nmc_samples = 100000", "features.mc_samples"),
            ("[model]\nchannels = [16, 100000, 16]", "model.channels"),
            ("[meta]\nrepetitions = 10000000", "meta.repetitions"),
            ("[train]\nlr = nan", "train.lr"),
            ("[train]\nmomentum = nan", "train.momentum"),
            ("[data]\nval_fraction = nan", "data.val_fraction"),
            ("[meta]\nnn_weight_decay = nan", "meta.nn_weight_decay"),
            ("[meta]\nlambda = inf", "meta.lambda"),
            ("[model]\nleaky_slope = -inf", "model.leaky_slope"),
            ("[data]\nimage_size = [3, 28]", "data.image_size"),
            ("[data]\nimage_size = [0, 28]", "data.image_size"),
            ("[data]\nchannels = 0", "data.channels"),
            ("[data]\nchannels = 2\nresize = \"mnist\"", "data.resize"),
            ("[data]\nresize = \"squash\"", "data.resize"),
            ("[data]\nunknown_classes = [7, 7]", "data.unknown_classes"),
            ("[shift]\nsets = [\"test@spin=3\"]", "shift.sets"),
            (
                "[shift]\nsets = [\"test@blur=1\", \"test@blur=1\"]",
                "shift.sets",
            ),
            (
                "[data]\nclasses = [1, 2, 7]\nunknown_classes = [7]",
                "data.unknown_classes",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn shape_and_resize_resolve() {
        let c = parse("").unwrap();
        assert_eq!(c.data.resize, "mnist");
        assert_eq!(c.prep(), crate::data::Prep::MNIST);
        let c = parse("[data]\nimage_size = [64, 64]\nchannels = 2").unwrap();
        assert_eq!(c.data.resize, "fit");
        assert_eq!(c.shape(), crate::data::Shape::new(2, 64, 64));
        // the smallest size the default pools allow is 4 (two pools of 2)
        let e = parse("[data]\nimage_size = [3, 64]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 4"), "{e}");
        assert!(parse("[data]\nimage_size = [4, 5]").is_ok());
        let c = parse(
            "[data]\ntrain = \"emnist-digits:train\"\ntest = \"emnist-digits:test\"\ntranspose = true",
        )
        .unwrap();
        assert!(!c.data.transpose);
    }

    #[test]
    fn unknown_key_and_wrong_type_are_named() {
        let e = parse("[train]\nepoch = 3").unwrap_err().to_string();
        assert!(e.contains("epoch") && e.contains("t.toml"), "{e}");
        let e = parse("[train]\nepochs = \"ten\"").unwrap_err().to_string();
        assert!(e.contains("epochs"), "{e}");
    }
}
