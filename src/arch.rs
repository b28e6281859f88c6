//! The network as data: the `[[model.layers]]` entries as written (serde), their validation
//! into typed layer specs with every default resolved, the paper's net spelled as such a list,
//! and shape inference (each layer's output shape, the parameterised layers' names). A leaf
//! module (it imports nothing from the crate): the config checks a layer list with it before
//! anything runs, and the model builds its graph from it.

use serde::{Deserialize, Serialize};

/// One `[[model.layers]]` entry as written. Which keys a kind takes is checked by
/// [`parse_layers`]; a key another kind uses is refused by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLayer {
    /// conv, batchnorm, relu, leaky_relu, maxpool, avgpool, global_avgpool, flatten, dropout,
    /// linear, residual, crop.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Output channels (conv, residual) or features (linear; the last linear's default is the
    /// number of classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// "same" (k/2 zeros on each side) or "valid" (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slope: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Crop height and width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[usize; 2]>,
    /// An add's two branches (`[[model.layers.body]]`, `[[model.layers.shortcut]]`; no
    /// shortcut entries: the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Vec<RawLayer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Vec<RawLayer>>,
}

/// A validated layer, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// 2-D convolution; `same` pads k/2 zeros on each side, else none.
    Conv {
        name: String,
        out: usize,
        kernel: usize,
        stride: usize,
        same: bool,
        bias: bool,
    },
    /// Batch norm over channels (2-D) or features (1-D, after flatten); γ and β are its
    /// parameters, the running mean and variance its buffers.
    BatchNorm {
        name: String,
        eps: f64,
        momentum: f64,
    },
    /// ReLU (slope 0) or leaky ReLU.
    Act {
        name: String,
        slope: f64,
    },
    MaxPool {
        name: String,
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        name: String,
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool {
        name: String,
    },
    Flatten {
        name: String,
    },
    /// Dropout: inverted scaling in training and in MC passes, the identity otherwise.
    Dropout {
        name: String,
        rate: f64,
    },
    /// Fully connected; `out` 0 means the number of classes.
    Linear {
        name: String,
        out: usize,
        bias: bool,
    },
    /// A basic residual block (see [`residual_parts`]), then ReLU.
    Residual {
        name: String,
        out: usize,
        stride: usize,
    },
    /// Random crop in training, centre crop otherwise.
    Crop {
        name: String,
        h: usize,
        w: usize,
    },
    /// Any two branches summed: body(x) + shortcut(x) (an empty shortcut is the identity); no
    /// activation after it unless the list has one. Imported graphs' residual adds are these.
    Add {
        name: String,
        body: Vec<Spec>,
        shortcut: Vec<Spec>,
    },
    /// (x − mean[c]) / std[c] per channel: the normalisation `[data] normalize` puts in front
    /// of the net (not a kind a layer list names).
    Normalize {
        name: String,
        mean: Vec<f64>,
        std: Vec<f64>,
    },
}

impl Spec {
    pub fn name(&self) -> &str {
        match self {
            Spec::Conv { name, .. }
            | Spec::BatchNorm { name, .. }
            | Spec::Act { name, .. }
            | Spec::MaxPool { name, .. }
            | Spec::AvgPool { name, .. }
            | Spec::GlobalAvgPool { name }
            | Spec::Flatten { name }
            | Spec::Dropout { name, .. }
            | Spec::Linear { name, .. }
            | Spec::Residual { name, .. }
            | Spec::Crop { name, .. }
            | Spec::Add { name, .. }
            | Spec::Normalize { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Conv { .. } => "conv",
            Spec::BatchNorm { .. } => "batchnorm",
            Spec::Act { slope, .. } if *slope == 0.0 => "relu",
            Spec::Act { .. } => "leaky_relu",
            Spec::MaxPool { .. } => "maxpool",
            Spec::AvgPool { .. } => "avgpool",
            Spec::GlobalAvgPool { .. } => "global_avgpool",
            Spec::Flatten { .. } => "flatten",
            Spec::Dropout { .. } => "dropout",
            Spec::Linear { .. } => "linear",
            Spec::Residual { .. } => "residual",
            Spec::Crop { .. } => "crop",
            Spec::Add { .. } => "add",
            Spec::Normalize { .. } => "normalize",
        }
    }
}

/// A layer as JSON (`kind`, `name` and its settings), the form `metaclf bench` hands the
/// reference scripts (bench/torch_net.py builds the same net in PyTorch from it).
pub fn spec_json(s: &Spec) -> serde_json::Value {
    use serde_json::json;
    let mut v = match s {
        Spec::Conv {
            out,
            kernel,
            stride,
            same,
            bias,
            ..
        } => json!({"out": out, "kernel": kernel, "stride": stride,
                    "padding": if *same { kernel / 2 } else { 0 }, "bias": bias}),
        Spec::BatchNorm { eps, momentum, .. } => json!({"eps": eps, "momentum": momentum}),
        Spec::Act { slope, .. } => json!({"slope": slope}),
        Spec::MaxPool { kernel, stride, .. } | Spec::AvgPool { kernel, stride, .. } => {
            json!({"kernel": kernel, "stride": stride})
        }
        Spec::Dropout { rate, .. } => json!({"rate": rate}),
        Spec::Linear { out, bias, .. } => json!({"out": out, "bias": bias}),
        Spec::Residual { out, stride, .. } => json!({"out": out, "stride": stride}),
        Spec::Crop { h, w, .. } => json!({"size": [h, w]}),
        Spec::Add { body, shortcut, .. } => json!({
            "body": body.iter().map(spec_json).collect::<Vec<_>>(),
            "shortcut": shortcut.iter().map(spec_json).collect::<Vec<_>>(),
        }),
        Spec::Normalize { mean, std, .. } => json!({"mean": mean, "std": std}),
        Spec::GlobalAvgPool { .. } | Spec::Flatten { .. } => json!({}),
    };
    v["kind"] = json!(s.kind());
    v["name"] = json!(s.name());
    v
}

/// A layer as a `[[model.layers]]` entry (every setting written out).
pub fn to_raw(s: &Spec) -> RawLayer {
    let mut r = RawLayer {
        kind: s.kind().to_string(),
        name: Some(s.name().to_string()),
        ..Default::default()
    };
    match s {
        Spec::Conv {
            out,
            kernel,
            stride,
            same,
            bias,
            ..
        } => {
            r.out = Some(*out);
            r.kernel = Some(*kernel);
            r.stride = Some(*stride);
            r.padding = Some(if *same { "same" } else { "valid" }.into());
            r.bias = Some(*bias);
        }
        Spec::BatchNorm { eps, momentum, .. } => {
            r.eps = Some(*eps);
            r.momentum = Some(*momentum);
        }
        Spec::Act { slope, .. } if *slope > 0.0 => r.slope = Some(*slope),
        Spec::MaxPool { kernel, stride, .. } | Spec::AvgPool { kernel, stride, .. } => {
            r.kernel = Some(*kernel);
            r.stride = Some(*stride);
        }
        Spec::Dropout { rate, .. } => r.rate = Some(*rate),
        Spec::Linear { out, bias, .. } => {
            r.out = (*out > 0).then_some(*out);
            r.bias = Some(*bias);
        }
        Spec::Residual { out, stride, .. } => {
            r.out = Some(*out);
            r.stride = Some(*stride);
        }
        Spec::Crop { h, w, .. } => r.size = Some([*h, *w]),
        Spec::Add { body, shortcut, .. } => {
            r.body = Some(body.iter().map(to_raw).collect());
            r.shortcut = (!shortcut.is_empty()).then(|| shortcut.iter().map(to_raw).collect());
        }
        _ => {}
    }
    r
}

/// The layer kinds a config may name.
pub const KINDS: [&str; 13] = [
    "conv",
    "batchnorm",
    "relu",
    "leaky_relu",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "flatten",
    "dropout",
    "linear",
    "residual",
    "crop",
    "add",
];

/// The keys each kind takes besides `kind` and `name`.
fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "conv" => &["out", "kernel", "stride", "padding", "bias"],
        "batchnorm" => &["eps", "momentum"],
        "leaky_relu" => &["slope"],
        "maxpool" | "avgpool" => &["kernel", "stride"],
        "dropout" => &["rate"],
        "linear" => &["out", "bias"],
        "residual" => &["out", "stride"],
        "crop" => &["size"],
        "add" => &["body", "shortcut"],
        _ => &[],
    }
}

/// The keys an entry sets (besides `kind` and `name`).
fn keys_set(r: &RawLayer) -> Vec<&'static str> {
    let mut k = Vec::new();
    let set: [(&'static str, bool); 12] = [
        ("out", r.out.is_some()),
        ("kernel", r.kernel.is_some()),
        ("stride", r.stride.is_some()),
        ("padding", r.padding.is_some()),
        ("bias", r.bias.is_some()),
        ("slope", r.slope.is_some()),
        ("rate", r.rate.is_some()),
        ("eps", r.eps.is_some()),
        ("momentum", r.momentum.is_some()),
        ("size", r.size.is_some()),
        ("body", r.body.is_some()),
        ("shortcut", r.shortcut.is_some()),
    ];
    for (name, on) in set {
        if on {
            k.push(name);
        }
    }
    k
}

/// Largest kernel, stride, channel count and feature count a layer may ask for.
pub const MAX_KERNEL: usize = 15;
pub const MAX_STRIDE: usize = 15;
pub const MAX_WIDTH: usize = 1 << 16;
/// Most layers in a list.
pub const MAX_LAYERS: usize = 256;
/// Deepest nesting of adds in adds.
pub const MAX_DEPTH: usize = 16;
/// Most values one layer may output per image (256 MB of f32), and most parameters of a net
/// (1 GB of f32): bounds checked before anything is allocated.
pub const MAX_ACTIVATION: usize = 1 << 26;
pub const MAX_PARAMS: usize = 1 << 28;

/// A layer name is 1–64 of `A-Z a-z 0-9 _ .`, not `all` (the whole net's columns) and not
/// starting with a digit or dot: it becomes part of column names (`grad_<layer>_<stat>`) and
/// of feature groups (`grad-<layer>`), and of safetensors keys (`<layer>.weight`).
pub fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !n.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !n.ends_with('.')
        && !n.contains("..")
        && n != "all";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {n:?}: a layer name is 1–64 letters, digits, '_' or '.', starts with a letter or '_', and is not \"all\""
        ))
    }
}

/// Validates `[[model.layers]]` into specs. Errors are `(position, message)`; the message
/// names the kind and the key.
pub fn parse_layers(raw: &[RawLayer]) -> Result<Vec<Spec>, (usize, String)> {
    parse_list(raw, 0)
}

/// [`parse_layers`] of a list at nesting `depth` (0: the net; an add's branches are 1 deeper,
/// where a crop is refused and every linear layer names its `out`).
fn parse_list(raw: &[RawLayer], depth: usize) -> Result<Vec<Spec>, (usize, String)> {
    if raw.len() > MAX_LAYERS {
        return Err((
            MAX_LAYERS,
            format!(
                "{} layers is more than the limit of {MAX_LAYERS}",
                raw.len()
            ),
        ));
    }
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    let linears = raw.iter().filter(|r| r.kind == "linear").count();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let kind = r.kind.as_str();
        if !KINDS.contains(&kind) {
            return Err((
                i,
                format!("unknown layer kind {kind:?} (known: {})", KINDS.join(", ")),
            ));
        }
        let allowed = keys_of(kind);
        if let Some(k) = keys_set(r).into_iter().find(|k| !allowed.contains(k)) {
            return Err((
                i,
                format!(
                    "{kind}: key {k:?} does not apply to this kind (it takes: name{})",
                    allowed.iter().map(|a| format!(", {a}")).collect::<String>()
                ),
            ));
        }
        let c = counts.entry(kind).or_insert(0);
        *c += 1;
        let default_name = match kind {
            "conv" => format!("conv{c}"),
            "batchnorm" => format!("bn{c}"),
            "linear" if linears == 1 => "fc".to_string(),
            "linear" => format!("fc{c}"),
            "residual" => format!("block{c}"),
            k => format!("{k}{c}"),
        };
        let name = r.name.clone().unwrap_or(default_name);
        check_name(&name).map_err(|m| (i, m))?;
        let pos = |v: Option<usize>, key: &str, def: Option<usize>, max: usize| match v.or(def) {
            None => Err((i, format!("{kind} {name:?}: key {key:?} is required"))),
            Some(0) => Err((i, format!("{kind} {name:?}: {key} = 0 must be ≥ 1"))),
            Some(v) if v > max => Err((
                i,
                format!("{kind} {name:?}: {key} = {v} is more than the limit of {max}"),
            )),
            Some(v) => Ok(v),
        };
        let unit =
            |v: Option<f64>, key: &str, def: f64, lo_open: bool| -> Result<f64, (usize, String)> {
                let x = v.unwrap_or(def);
                let ok = x.is_finite() && x < 1.0 && if lo_open { x > 0.0 } else { x >= 0.0 };
                if ok {
                    Ok(x)
                } else {
                    Err((
                        i,
                        format!(
                            "{kind} {name:?}: {key} = {x} is outside {}0, 1)",
                            if lo_open { "(" } else { "[" }
                        ),
                    ))
                }
            };
        let spec = match kind {
            "conv" => {
                let kernel = pos(r.kernel, "kernel", Some(3), MAX_KERNEL)?;
                if kernel.is_multiple_of(2) {
                    return Err((i, format!("conv {name:?}: kernel = {kernel} must be odd")));
                }
                let same = match r.padding.as_deref().unwrap_or("same") {
                    "same" => true,
                    "valid" => false,
                    p => {
                        return Err((
                            i,
                            format!("conv {name:?}: padding {p:?} is not \"same\" or \"valid\""),
                        ))
                    }
                };
                Spec::Conv {
                    out: pos(r.out, "out", None, MAX_WIDTH)?,
                    kernel,
                    stride: pos(r.stride, "stride", Some(1), MAX_STRIDE)?,
                    same,
                    bias: r.bias.unwrap_or(true),
                    name,
                }
            }
            "batchnorm" => {
                let eps = r.eps.unwrap_or(1e-5);
                if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
                    return Err((
                        i,
                        format!("batchnorm {name:?}: eps = {eps} is outside (0, 1]"),
                    ));
                }
                Spec::BatchNorm {
                    eps,
                    momentum: unit(r.momentum, "momentum", 0.1, true)?,
                    name,
                }
            }
            "relu" => Spec::Act { name, slope: 0.0 },
            "leaky_relu" => Spec::Act {
                slope: unit(r.slope, "slope", 0.01, false)?,
                name,
            },
            "maxpool" | "avgpool" => {
                let kernel = pos(r.kernel, "kernel", Some(2), MAX_KERNEL)?;
                let stride = pos(r.stride, "stride", Some(kernel), MAX_STRIDE)?;
                if kind == "maxpool" {
                    Spec::MaxPool {
                        name,
                        kernel,
                        stride,
                    }
                } else {
                    Spec::AvgPool {
                        name,
                        kernel,
                        stride,
                    }
                }
            }
            "global_avgpool" => Spec::GlobalAvgPool { name },
            "flatten" => Spec::Flatten { name },
            "dropout" => Spec::Dropout {
                rate: unit(r.rate, "rate", 0.5, false)?,
                name,
            },
            "linear" => {
                let last = depth == 0 && raw[i + 1..].iter().all(|r| r.kind != "linear");
                let out = match r.out {
                    None if last => 0,
                    o => pos(o, "out", None, MAX_WIDTH)?,
                };
                Spec::Linear {
                    name,
                    out,
                    bias: r.bias.unwrap_or(true),
                }
            }
            "residual" => Spec::Residual {
                out: pos(r.out, "out", None, MAX_WIDTH)?,
                stride: pos(r.stride, "stride", Some(1), MAX_STRIDE)?,
                name,
            },
            "crop" if depth > 0 => {
                return Err((
                    i,
                    format!(
                        "crop {name:?}: a crop must be the net's first layer, not inside an add"
                    ),
                ))
            }
            "add" => {
                if depth >= MAX_DEPTH {
                    return Err((
                        i,
                        format!("add {name:?}: adds nest more than {MAX_DEPTH} deep"),
                    ));
                }
                let branch = |key: &str, list: &Option<Vec<RawLayer>>| {
                    parse_list(list.as_deref().unwrap_or(&[]), depth + 1)
                        .map_err(|(j, m)| (i, format!("add {name:?}: {key}[{j}]: {m}")))
                };
                let body = branch("body", &r.body)?;
                if body.is_empty() {
                    return Err((
                        i,
                        format!("add {name:?}: key \"body\" needs at least one layer"),
                    ));
                }
                Spec::Add {
                    shortcut: branch("shortcut", &r.shortcut)?,
                    body,
                    name,
                }
            }
            "crop" => {
                let Some([h, w]) = r.size else {
                    return Err((i, format!("crop {name:?}: key \"size\" is required")));
                };
                if h == 0 || w == 0 {
                    return Err((i, format!("crop {name:?}: size [{h}, {w}] must be ≥ 1")));
                }
                Spec::Crop { name, h, w }
            }
            _ => unreachable!("kind checked above"),
        };
        out.push(spec);
    }
    Ok(out)
}

/// The paper's net as a layer list, from the legacy `[model]` keys: per conv layer i
/// (`conv{i}`, same padding, bias), leaky ReLU, then max pooling if in `pool_after`, then
/// dropout if in `dropout_after`; then flatten and one linear layer `fc` to the classes.
pub fn legacy(
    channels: &[usize],
    kernel: usize,
    slope: f64,
    dropout: f64,
    pool_after: &[bool],
    dropout_after: &[bool],
    pool: usize,
) -> Vec<Spec> {
    let mut v = Vec::new();
    for (i, &out) in channels.iter().enumerate() {
        let n = i + 1;
        v.push(Spec::Conv {
            name: format!("conv{n}"),
            out,
            kernel,
            stride: 1,
            same: true,
            bias: true,
        });
        v.push(Spec::Act {
            name: format!("act{n}"),
            slope,
        });
        if pool_after.get(i) == Some(&true) {
            v.push(Spec::MaxPool {
                name: format!("pool{n}"),
                kernel: pool,
                stride: pool,
            });
        }
        if dropout_after.get(i) == Some(&true) {
            v.push(Spec::Dropout {
                name: format!("drop{n}"),
                rate: dropout,
            });
        }
    }
    v.push(Spec::Flatten {
        name: "flatten".into(),
    });
    v.push(Spec::Linear {
        name: "fc".into(),
        out: 0,
        bias: true,
    });
    v
}

/// The parts of a basic residual block `name` from `cin` to `out` channels at `stride`:
/// body conv1 (3×3, stride, no bias), bn1, ReLU, conv2 (3×3, no bias), bn2; shortcut the
/// identity, or conv 1×1 at stride without bias + batch norm (`shortcut.0`, `shortcut.1`, as
/// PyTorch's `nn.Sequential` names them) when the stride or the channel count changes. The
/// block's output is ReLU(body(x) + shortcut(x)).
pub fn residual_parts(name: &str, cin: usize, out: usize, stride: usize) -> (Vec<Spec>, Vec<Spec>) {
    let conv = |n: &str, k: usize, s: usize| Spec::Conv {
        name: format!("{name}.{n}"),
        out,
        kernel: k,
        stride: s,
        same: true,
        bias: false,
    };
    let bn = |n: &str| Spec::BatchNorm {
        name: format!("{name}.{n}"),
        eps: 1e-5,
        momentum: 0.1,
    };
    let body = vec![
        conv("conv1", 3, stride),
        bn("bn1"),
        Spec::Act {
            name: format!("{name}.relu1"),
            slope: 0.0,
        },
        conv("conv2", 3, 1),
        bn("bn2"),
    ];
    let shortcut = if stride != 1 || cin != out {
        vec![conv("shortcut.0", 1, stride), bn("shortcut.1")]
    } else {
        Vec::new()
    };
    (body, shortcut)
}

/// A layer's input and output shape (C, H, W); flat features are (F, 1, 1).
pub type Dims = (usize, usize, usize);

/// Output size of a window of `k` at `stride` with `pad` zeros each side over `n`, if ≥ 1.
pub fn window_out(n: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (n + 2 * pad).checked_sub(k).map(|v| v / stride + 1)
}

/// Output shape of one (non-residual) layer, or why it does not fit its input.
pub fn out_dims(s: &Spec, d: Dims, classes: usize) -> Result<Dims, String> {
    let (c, h, w) = d;
    let win = |k: usize, st: usize, pad: usize, what: &str| -> Result<(usize, usize), String> {
        match (window_out(h, k, st, pad), window_out(w, k, st, pad)) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(format!(
                "its input is {c}×{h}×{w} (C×H×W), smaller than its {what} of {k}×{k}{}",
                if pad > 0 {
                    format!(" with {pad} padding")
                } else {
                    String::new()
                }
            )),
        }
    };
    Ok(match s {
        Spec::Conv {
            out,
            kernel,
            stride,
            same,
            ..
        } => {
            let (oh, ow) = win(
                *kernel,
                *stride,
                if *same { kernel / 2 } else { 0 },
                "kernel",
            )?;
            (*out, oh, ow)
        }
        Spec::MaxPool { kernel, stride, .. } | Spec::AvgPool { kernel, stride, .. } => {
            let (oh, ow) = win(*kernel, *stride, 0, "window")?;
            (c, oh, ow)
        }
        Spec::GlobalAvgPool { .. } => (c, 1, 1),
        Spec::Flatten { .. } => (c.saturating_mul(h).saturating_mul(w), 1, 1),
        Spec::Linear { out, .. } => {
            if h != 1 || w != 1 {
                return Err(format!(
                    "its input is {c}×{h}×{w} (C×H×W); put a flatten or global_avgpool layer before it"
                ));
            }
            (if *out == 0 { classes } else { *out }, 1, 1)
        }
        Spec::Crop { h: ch, w: cw, .. } => {
            if *ch > h || *cw > w {
                return Err(format!(
                    "it crops {ch}×{cw} from an input of {h}×{w}; the crop must fit"
                ));
            }
            (c, *ch, *cw)
        }
        Spec::BatchNorm { .. }
        | Spec::Act { .. }
        | Spec::Dropout { .. }
        | Spec::Normalize { .. } => d,
        Spec::Residual { .. } | Spec::Add { .. } => {
            unreachable!("residual blocks and adds are expanded by the caller")
        }
    })
}

/// Output shape of any layer, residual blocks included (for a list that passed [`plan`]).
pub fn out_dims_node(s: &Spec, d: Dims, classes: usize) -> Dims {
    match s {
        Spec::Residual { out, stride, .. } => (
            *out,
            window_out(d.1, 3, *stride, 1).unwrap_or(1),
            window_out(d.2, 3, *stride, 1).unwrap_or(1),
        ),
        Spec::Add { body, .. } => body.iter().fold(d, |d, s| out_dims_node(s, d, classes)),
        s => out_dims(s, d, classes).unwrap_or(d),
    }
}

/// One layer of shape inference (a residual block's or an add's branches walked inside):
/// its output shape, its parameterised layers' names pushed to `params`, their parameter
/// count added to `n_params`; or why it does not fit.
fn step(
    s: &Spec,
    d: Dims,
    classes: usize,
    params: &mut Vec<String>,
    n_params: &mut usize,
) -> Result<Dims, String> {
    let branches = |body: &[Spec],
                    short: &[Spec],
                    params: &mut Vec<String>,
                    n_params: &mut usize,
                    named: bool|
     -> Result<Dims, String> {
        let mut out = [d, d];
        for (k, (key, list)) in [("body", body), ("shortcut", short)]
            .into_iter()
            .enumerate()
        {
            for (j, b) in list.iter().enumerate() {
                out[k] = step(b, out[k], classes, params, n_params).map_err(|m| {
                    if named {
                        format!("{}: {m}", b.name())
                    } else {
                        format!("{key}[{j}] {} {:?}: {m}", b.kind(), b.name())
                    }
                })?;
            }
        }
        let [bd, sd] = out;
        if bd != sd {
            return Err(format!(
                "its body gives {}×{}×{} and its shortcut {}×{}×{}; the shapes must agree",
                bd.0, bd.1, bd.2, sd.0, sd.1, sd.2
            ));
        }
        Ok(bd)
    };
    match s {
        Spec::Residual { name, out, stride } => {
            let (body, short) = residual_parts(name, d.0, *out, *stride);
            return branches(&body, &short, params, n_params, true);
        }
        Spec::Add { body, shortcut, .. } => {
            return branches(body, shortcut, params, n_params, false);
        }
        _ => {}
    }
    let o = out_dims(s, d, classes)?;
    match s {
        Spec::Conv {
            name, kernel, bias, ..
        } => {
            *n_params = n_params.saturating_add(
                o.0.saturating_mul(d.0).saturating_mul(kernel * kernel)
                    + if *bias { o.0 } else { 0 },
            );
            params.push(name.clone());
        }
        Spec::BatchNorm { name, .. } => {
            *n_params = n_params.saturating_add(2 * d.0);
            params.push(name.clone());
        }
        Spec::Linear { name, bias, .. } => {
            *n_params =
                n_params.saturating_add(o.0.saturating_mul(d.0) + if *bias { o.0 } else { 0 });
            params.push(name.clone());
        }
        Spec::Normalize { mean, std, .. } if mean.len() != d.0 || std.len() != d.0 => {
            return Err(format!(
                "{} means and {} standard deviations for an input of {} channels",
                mean.len(),
                std.len(),
                d.0
            ));
        }
        _ => {}
    }
    Ok(o)
}

/// The names of the parameterised layers inside a layer (itself, a block's parts, an add's).
fn param_names_in(s: &Spec) -> Vec<String> {
    fn walk(s: &Spec, v: &mut Vec<String>) {
        match s {
            Spec::Conv { name, .. } | Spec::BatchNorm { name, .. } | Spec::Linear { name, .. } => {
                v.push(name.clone())
            }
            // channels 0: the projection's names are listed whether or not it exists
            Spec::Residual { name, out, stride } => {
                let (b, sc) = residual_parts(name, 0, *out, *stride);
                b.iter().chain(&sc).for_each(|x| walk(x, v));
            }
            Spec::Add { body, shortcut, .. } => {
                body.iter().chain(shortcut).for_each(|x| walk(x, v))
            }
            _ => {}
        }
    }
    let mut v = Vec::new();
    walk(s, &mut v);
    v
}

/// The layer list as lines of `kind name → C×H×W`, an add's branches indented under it.
pub fn outline(specs: &[Spec], input: Dims, classes: usize) -> Vec<String> {
    fn walk(specs: &[Spec], mut d: Dims, classes: usize, depth: usize, out: &mut Vec<String>) {
        for s in specs {
            let o = out_dims_node(s, d, classes);
            out.push(format!(
                "  {}{} {} → {}×{}×{}",
                "    ".repeat(depth),
                s.kind(),
                s.name(),
                o.0,
                o.1,
                o.2
            ));
            if let Spec::Add { body, shortcut, .. } = s {
                out.push(format!("  {}  body:", "    ".repeat(depth)));
                walk(body, d, classes, depth + 1, out);
                out.push(format!(
                    "  {}  shortcut:{}",
                    "    ".repeat(depth),
                    if shortcut.is_empty() {
                        " the identity"
                    } else {
                        ""
                    }
                ));
                walk(shortcut, d, classes, depth + 1, out);
            }
            d = o;
        }
    }
    let mut out = Vec::new();
    walk(specs, input, classes, 0, &mut out);
    out
}

/// Floating-point operations of one image's forward pass through `specs` on `input`:
/// (all layers, the layers from the first top-level node holding a dropout on: what each MC
/// pass repeats). A multiply-add counts 2 (conv: 2·out·in·k²·oh·ow, linear: 2·in·out); batch
/// norm and normalisation 2 per value, activations, dropout and adds 1, pooling one per window
/// element.
pub fn forward_flops(specs: &[Spec], input: Dims, classes: usize) -> (f64, f64) {
    fn walk(specs: &[Spec], mut d: Dims, classes: usize) -> (f64, Vec<f64>) {
        let mut per = Vec::with_capacity(specs.len());
        for s in specs {
            let o = out_dims_node(s, d, classes);
            let (ci, n_in, n_out) = (
                d.0 as f64,
                (d.0 * d.1 * d.2) as f64,
                (o.0 * o.1 * o.2) as f64,
            );
            let f = match s {
                Spec::Conv { kernel, .. } => 2.0 * n_out * ci * (kernel * kernel) as f64,
                Spec::Linear { .. } => 2.0 * n_in * o.0 as f64,
                Spec::BatchNorm { .. } | Spec::Normalize { .. } => 2.0 * n_in,
                Spec::Act { .. } | Spec::Dropout { .. } => n_in,
                Spec::MaxPool { kernel, .. } | Spec::AvgPool { kernel, .. } => {
                    n_out * (kernel * kernel) as f64
                }
                Spec::GlobalAvgPool { .. } => n_in,
                Spec::Residual { name, out, stride } => {
                    let (b, sc) = residual_parts(name, d.0, *out, *stride);
                    walk(&b, d, classes).0 + walk(&sc, d, classes).0 + 2.0 * n_out
                }
                Spec::Add { body, shortcut, .. } => {
                    walk(body, d, classes).0 + walk(shortcut, d, classes).0 + n_out
                }
                Spec::Flatten { .. } | Spec::Crop { .. } => 0.0,
            };
            per.push(f);
            d = o;
        }
        (per.iter().sum(), per)
    }
    let (all, per) = walk(specs, input, classes);
    let first = specs
        .iter()
        .position(|s| count_dropout(std::slice::from_ref(s)) > 0);
    let suffix = first.map_or(0.0, |i| per[i..].iter().sum());
    (all, suffix)
}

/// Every layer of a list at any depth, in order: an add, then its body's layers, then its
/// shortcut's.
pub fn all_layers(specs: &[Spec]) -> Vec<&Spec> {
    fn walk<'a>(specs: &'a [Spec], out: &mut Vec<&'a Spec>) {
        for s in specs {
            out.push(s);
            if let Spec::Add { body, shortcut, .. } = s {
                walk(body, out);
                walk(shortcut, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(specs, &mut out);
    out
}

/// Dropout layers of a list, adds' branches included (the MC-dropout sites).
pub fn count_dropout(specs: &[Spec]) -> usize {
    all_layers(specs)
        .iter()
        .filter(|s| matches!(s, Spec::Dropout { .. }))
        .count()
}

/// What shape inference found: the output shape of each layer of the list and the names of
/// the parameterised layers in graph order (a block's body, then its shortcut).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub dims: Vec<Dims>,
    pub params: Vec<String>,
    /// Number of parameters (weights, biases, γ, β).
    pub n_params: usize,
}

/// Shape inference of a whole list on input `input` with `classes` outputs; errors name the
/// layer by position (0-based, as in `model.layers[i]`), kind and name, and give the shapes.
pub fn plan(specs: &[Spec], input: Dims, classes: usize) -> Result<Plan, (usize, String)> {
    let mut dims = Vec::with_capacity(specs.len());
    let mut params = Vec::new();
    let mut n_params = 0usize;
    let mut d = input;
    let label = |_: usize, s: &Spec| format!("{} {:?}", s.kind(), s.name());
    for (i, s) in specs.iter().enumerate() {
        let o = step(s, d, classes, &mut params, &mut n_params)
            .map_err(|m| (i, format!("{}: {m}", label(i, s))))?;
        if let Spec::Crop { .. } = s {
            if i != 0 {
                return Err((
                    i,
                    format!(
                        "{}: a crop must be the first layer (it is the net's input crop)",
                        label(i, s)
                    ),
                ));
            }
        }
        if o.0.saturating_mul(o.1).saturating_mul(o.2) > MAX_ACTIVATION {
            return Err((
                i,
                format!(
                    "{}: its output of {}×{}×{} values per image is more than the limit of {MAX_ACTIVATION}",
                    label(i, s),
                    o.0,
                    o.1,
                    o.2
                ),
            ));
        }
        if n_params > MAX_PARAMS {
            return Err((
                i,
                format!(
                    "{}: the net has {n_params} parameters up to here, more than the limit of {MAX_PARAMS}",
                    label(i, s)
                ),
            ));
        }
        d = o;
        dims.push(o);
    }
    match specs.last() {
        Some(Spec::Linear { .. }) => {}
        Some(s) => {
            return Err((
                specs.len() - 1,
                format!(
                    "{}: the last layer must be linear (its outputs are the logits)",
                    label(specs.len() - 1, s)
                ),
            ))
        }
        None => return Err((0, "the layer list is empty".into())),
    }
    if d.0 != classes {
        return Err((
            specs.len() - 1,
            format!(
                "the last linear layer gives {} outputs for {classes} classes (leave its out unset to mean the classes)",
                d.0
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in specs.iter().enumerate() {
        if !seen.insert(s.name().to_string()) {
            return Err((
                i,
                format!("{}: a second layer named {:?}", label(i, s), s.name()),
            ));
        }
    }
    // a residual block's parts are named `<block>.<part>`: one may meet a layer named so
    let mut seen = std::collections::HashSet::new();
    for p in &params {
        if !seen.insert(p) {
            let i = specs
                .iter()
                .rposition(|s| param_names_in(s).contains(p))
                .unwrap_or(0);
            return Err((i, format!("two parameterised layers named {p:?}")));
        }
    }
    Ok(Plan {
        dims,
        params,
        n_params,
    })
}

/// [`plan`] with the data's number of classes when known (`classes`), else with what the last
/// linear layer asks for (its `out`, or 2 when it means "the classes"): checking a config
/// before any data is read.
pub fn plan_for(
    specs: &[Spec],
    input: Dims,
    classes: Option<usize>,
) -> Result<Plan, (usize, String)> {
    let classes = classes.unwrap_or(match specs.last() {
        Some(Spec::Linear { out, .. }) if *out > 0 => *out,
        _ => 2,
    });
    plan(specs, input, classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(kind: &str) -> RawLayer {
        RawLayer {
            kind: kind.into(),
            ..Default::default()
        }
    }

    /// The paper's net (configs/mnist.toml's keys) as a layer list.
    fn paper_specs() -> Vec<Spec> {
        legacy(
            &[16, 16, 16],
            3,
            0.01,
            0.25,
            &[true, true, false],
            &[true, false, true],
            2,
        )
    }

    #[test]
    fn the_paper_net_plans_to_its_known_shapes() {
        let s = paper_specs();
        let p = plan(&s, (1, 28, 28), 10).unwrap();
        assert_eq!(p.params, ["conv1", "conv2", "conv3", "fc"]);
        // 160 + 2320 + 2320 + 7850
        assert_eq!(p.n_params, 160 + 2320 + 2320 + 16 * 7 * 7 * 10 + 10);
        assert_eq!(*p.dims.last().unwrap(), (10, 1, 1));
    }

    /// The paper's net on 28×28, by hand: conv1 2·16·9·784 = 225,792, its leaky ReLU and
    /// 2×2 pooling 12,544 each, dropout 3,136; conv2 2·16·16·9·196 = 903,168, ReLU 3,136, pool
    /// 3,136; conv3 225,792, ReLU 784, dropout 784; fc 2·784·10 = 15,680. The MC suffix
    /// starts at the first dropout (after conv1's ReLU and pooling).
    #[test]
    fn forward_flops_of_the_paper_net() {
        let s = paper_specs();
        let (all, suffix) = forward_flops(&s, (1, 28, 28), 10);
        assert_eq!(all, 1_406_496.0);
        assert_eq!(suffix, 1_406_496.0 - 225_792.0 - 2.0 * 12_544.0);
    }

    #[test]
    fn a_small_resnet_plans() {
        let mut v = vec![RawLayer {
            out: Some(16),
            name: Some("stem".into()),
            bias: Some(false),
            ..layer("conv")
        }];
        v.push(layer("batchnorm"));
        v.push(layer("relu"));
        for (o, s) in [(16, 1), (32, 2), (64, 2)] {
            v.push(RawLayer {
                out: Some(o),
                stride: Some(s),
                ..layer("residual")
            });
        }
        v.push(layer("global_avgpool"));
        v.push(layer("dropout"));
        v.push(layer("linear"));
        let s = parse_layers(&v).unwrap();
        let p = plan(&s, (1, 28, 28), 10).unwrap();
        assert_eq!(p.dims[5], (64, 7, 7));
        assert_eq!(
            &p.params[..8],
            [
                "stem",
                "bn1",
                "block1.conv1",
                "block1.bn1",
                "block1.conv2",
                "block1.bn2",
                "block2.conv1",
                "block2.bn1"
            ]
        );
        assert!(p.params.contains(&"block2.shortcut.0".to_string()));
        assert!(!p.params.contains(&"block1.shortcut.0".to_string()));
        assert_eq!(p.params.last().unwrap(), "fc");
    }

    #[test]
    fn bad_lists_name_the_layer_and_the_shapes() {
        let conv = |o| RawLayer {
            out: Some(o),
            ..layer("conv")
        };
        // a pool that shrinks below one pixel
        let mut v = vec![conv(4)];
        for _ in 0..6 {
            v.push(layer("maxpool"));
        }
        v.push(layer("flatten"));
        v.push(layer("linear"));
        let s = parse_layers(&v).unwrap();
        let (i, m) = plan(&s, (1, 28, 28), 10).unwrap_err();
        assert_eq!(i, 5);
        assert!(m.contains("maxpool5") && m.contains("4×1×1"), "{m}");
        // linear on a 3-D input
        let s = parse_layers(&[conv(4), layer("linear")]).unwrap();
        let (i, m) = plan(&s, (1, 28, 28), 10).unwrap_err();
        assert_eq!(i, 1);
        assert!(m.contains("flatten") && m.contains("4×28×28"), "{m}");
        // an unknown kind and a key of another kind
        let (i, m) = parse_layers(&[conv(4), layer("swish")]).unwrap_err();
        assert_eq!(i, 1);
        assert!(m.contains("swish") && m.contains("known"), "{m}");
        let (_, m) = parse_layers(&[RawLayer {
            rate: Some(0.5),
            ..conv(4)
        }])
        .unwrap_err();
        assert!(m.contains("\"rate\"") && m.contains("conv"), "{m}");
        // a conv without out, an even kernel
        let (_, m) = parse_layers(&[layer("conv")]).unwrap_err();
        assert!(m.contains("\"out\" is required"), "{m}");
        let (_, m) = parse_layers(&[RawLayer {
            kernel: Some(4),
            ..conv(4)
        }])
        .unwrap_err();
        assert!(m.contains("odd"), "{m}");
        // the last layer is not linear; duplicate names; a bad name
        let s = parse_layers(&[conv(4), layer("flatten")]).unwrap();
        assert!(plan(&s, (1, 8, 8), 2)
            .unwrap_err()
            .1
            .contains("last layer must be linear"));
        let twice = RawLayer {
            name: Some("a".into()),
            ..conv(4)
        };
        let s = parse_layers(&[twice.clone(), twice, layer("flatten"), layer("linear")]).unwrap();
        assert!(plan(&s, (1, 8, 8), 2)
            .unwrap_err()
            .1
            .contains("second layer named"));
        let (_, m) = parse_layers(&[RawLayer {
            name: Some("a-b".into()),
            ..conv(4)
        }])
        .unwrap_err();
        assert!(m.contains("a-b"), "{m}");
        // a layer named like a block's part
        let s = parse_layers(&[
            RawLayer {
                out: Some(4),
                name: Some("b.conv1".into()),
                ..conv(4)
            },
            RawLayer {
                out: Some(4),
                name: Some("b".into()),
                ..layer("residual")
            },
            layer("flatten"),
            layer("linear"),
        ])
        .unwrap();
        let (i, m) = plan(&s, (1, 8, 8), 2).unwrap_err();
        assert_eq!(i, 1);
        assert!(m.contains("\"b.conv1\""), "{m}");
        // sizes that would not fit in memory are refused before anything is allocated
        let s = parse_layers(&[
            RawLayer {
                out: Some(60000),
                kernel: Some(15),
                ..layer("conv")
            },
            RawLayer {
                out: Some(60000),
                kernel: Some(15),
                ..layer("conv")
            },
            layer("flatten"),
            layer("linear"),
        ])
        .unwrap();
        let m = plan(&s, (1, 64, 64), 2).unwrap_err().1;
        assert!(m.contains("more than the limit"), "{m}");
        // a last linear with the wrong number of outputs
        let s = parse_layers(&[
            layer("flatten"),
            RawLayer {
                out: Some(3),
                ..layer("linear")
            },
        ])
        .unwrap();
        assert!(plan(&s, (1, 8, 8), 2)
            .unwrap_err()
            .1
            .contains("3 outputs for 2 classes"));
    }
}
