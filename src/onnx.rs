//! The ONNX import: a user's trained classifier (`[model] onnx = "model.onnx"`) read into
//! metaclf's layer list ([`crate::arch::Spec`]) and its weights under the checkpoint names the
//! net loads (`<layer>.weight`, `<layer>.bias`, `<layer>.running_mean`, …). Only the parts of
//! the ONNX format a classifier of metaclf's layer kinds uses are declared (prost's derive, no
//! protoc, no build script); what is not declared is skipped by the decoder, and every op,
//! attribute and shape is checked, so a graph metaclf would compute differently is refused
//! naming the node, its op and what is supported. Depends on `arch` and `error` only: the
//! config validates an import before anything runs.

use crate::arch::{self, Dims, Spec};
use std::collections::{HashMap, HashSet};

/// The ONNX messages metaclf reads (field numbers from onnx.proto).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(string, tag = "3")]
        pub producer_version: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    /// An attribute (its subgraph field, 6, is not declared: no op metaclf reads has one, and
    /// so the decoder never recurses).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        #[prost(int32, tag = "20")]
        pub r#type: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
        #[prost(double, repeated, tag = "10")]
        pub double_data: Vec<f64>,
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<StringStringEntryProto>,
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TypeTensor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeTensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::{AttributeProto, NodeProto, TensorProto};

/// The ops metaclf imports (README "Bring your own model" says how each maps).
pub const SUPPORTED: &str = "Conv, BatchNormalization, Relu, LeakyRelu, MaxPool, AveragePool, \
GlobalAveragePool, ReduceMean over H and W, Add (two branches: residual), Flatten, Reshape to \
[N, C·H·W], Gemm, MatMul (+ Add of a bias), Dropout, Identity, and Softmax or LogSoftmax as \
the last node";

/// Largest ONNX file read (the weights are held in memory as they are imported).
pub const MAX_FILE: u64 = 2 << 30;
/// Most nodes in a graph.
pub const MAX_NODES: usize = 4096;

/// An imported classifier: the layer list, the input shape (C, H, W), the number of classes
/// (the last layer's outputs), the weights by checkpoint name, and what the import did that a
/// user should know (dropped nodes).
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub specs: Vec<Spec>,
    pub input: Dims,
    pub classes: usize,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub notes: Vec<String>,
    /// e.g. "pytorch 2.15.0, opset 18".
    pub producer: String,
    pub input_name: String,
    pub output_name: String,
}

impl Imported {
    /// Parameters of the imported net (weights, biases, γ, β).
    pub fn n_params(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(n, _, _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .map(|(_, _, v)| v.len())
            .sum()
    }
}

/// Reads and imports an ONNX file; errors name the file.
pub fn load(path: &std::path::Path) -> crate::error::Result<Imported> {
    use crate::error::{Error, IoContext};
    let len = std::fs::metadata(path).at(path)?.len();
    if len > MAX_FILE {
        return Err(Error::Format {
            path: path.into(),
            msg: format!("{len} bytes is more than the {MAX_FILE} an ONNX model may have here"),
        });
    }
    let bytes = std::fs::read(path).at(path)?;
    import(&bytes).map_err(|msg| Error::Format {
        path: path.into(),
        msg,
    })
}

/// Imports an ONNX model's bytes; the error says which node, op, attribute or tensor does
/// not fit and what is supported.
pub fn import(bytes: &[u8]) -> Result<Imported, String> {
    use prost::Message;
    let m = proto::ModelProto::decode(bytes)
        .map_err(|e| format!("not an ONNX model (protobuf ModelProto): {e}"))?;
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or("the model imports no version of the standard ONNX operator set")?;
    if opset < 11 {
        return Err(format!(
            "opset {opset} is older than metaclf reads (13 and later; 11 and 12 read as well): export again with opset_version=13 or later"
        ));
    }
    let g = m.graph.as_ref().ok_or("the model has no graph")?;
    if g.node.len() > MAX_NODES {
        return Err(format!(
            "{} nodes is more than the limit of {MAX_NODES}",
            g.node.len()
        ));
    }
    let mut w = Walker::new(g, opset)?;
    let (input_name, input) = w.input()?;
    let out = w.chain(input_name.clone(), input, false, 0)?;
    if out.join.is_some() {
        return Err("an Add joins branches that do not start at one tensor".into());
    }
    let output_name = match g.output.as_slice() {
        [o] => o.name.clone(),
        [] => return Err("the graph has no output".into()),
        more => {
            return Err(format!(
                "the graph has {} outputs ({}); a classifier has one, its logits or probabilities",
                more.len(),
                more.iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    if out.t != output_name {
        return Err(format!(
            "the path from the input ends at tensor {:?}, not at the graph's output {output_name:?}",
            out.t
        ));
    }
    if let Some(i) = w
        .visited
        .iter()
        .enumerate()
        .position(|(i, v)| !v && g.node[i].op_type != "Constant")
    {
        let n = &g.node[i];
        return Err(format!(
            "node {:?} (op {}) is not on the one path from the input to the output; metaclf imports a chain of layers with two-branch adds",
            n.name, n.op_type
        ));
    }
    let specs = out.specs;
    let classes = match specs.last() {
        Some(Spec::Linear { out, .. }) => *out,
        Some(s) => {
            return Err(format!(
                "the graph ends with a {} layer ({:?}); its output must be the logits of a Gemm or MatMul (a Softmax or LogSoftmax after it is dropped)",
                s.kind(),
                s.name()
            ))
        }
        None => return Err("the graph has no layers".into()),
    };
    if let Some(k) = w.output_classes(&output_name) {
        if k != classes {
            return Err(format!(
                "the graph's output {output_name:?} has {k} values per image, its last layer {classes}"
            ));
        }
    }
    arch::plan(&specs, input, classes).map_err(|(i, m)| format!("layer {i} as imported: {m}"))?;
    Ok(Imported {
        specs,
        input,
        classes,
        tensors: w.tensors,
        notes: w.notes,
        producer: format!(
            "{} {}, opset {opset}",
            if m.producer_name.is_empty() {
                "unknown producer"
            } else {
                &m.producer_name
            },
            m.producer_version
        )
        .trim()
        .to_string(),
        input_name,
        output_name,
    })
}

/// A tensor's values as f32 (floats) or i64 (integers: shapes, axes).
#[derive(Debug, Clone)]
enum Values {
    F(Vec<f32>),
    I(Vec<i64>),
}

#[derive(Debug, Clone)]
struct Const {
    dims: Vec<usize>,
    v: Values,
}

impl Const {
    fn floats(&self, what: &str) -> Result<&[f32], String> {
        match &self.v {
            Values::F(v) => Ok(v),
            Values::I(_) => Err(format!("{what} holds integers; weights must be floats")),
        }
    }
    fn ints(&self, what: &str) -> Result<&[i64], String> {
        match &self.v {
            Values::I(v) => Ok(v),
            Values::F(_) => Err(format!("{what} holds floats; integers expected")),
        }
    }
}

/// A tensor (initializer or Constant value) decoded; refuses external data and element types
/// other than float, double, int32 and int64.
fn decode(t: &TensorProto, what: &str) -> Result<Const, String> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        let file = t
            .external_data
            .iter()
            .find(|e| e.key == "location")
            .map(|e| e.value.as_str())
            .unwrap_or("?");
        return Err(format!(
            "{what} is stored in an external data file ({file:?}), which metaclf does not read: export with external_data=False (models under 2 GB fit in one file)"
        ));
    }
    let mut n = 1usize;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("{what} has a negative dimension {d}"));
        }
        n = n
            .checked_mul(d as usize)
            .filter(|&n| n <= arch::MAX_PARAMS)
            .ok_or_else(|| format!("{what} has more than {} values", arch::MAX_PARAMS))?;
        dims.push(d as usize);
    }
    let raw = &t.raw_data;
    let count = |len: usize| -> Result<(), String> {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "{what} has {len} values for its shape {dims:?} ({n} values)"
            ))
        }
    };
    let v = match t.data_type {
        1 => {
            let v = le(raw, || t.float_data.clone(), f32::from_le_bytes, what)?;
            count(v.len())?;
            Values::F(v)
        }
        11 => {
            let v = le(raw, || t.double_data.clone(), f64::from_le_bytes, what)?;
            count(v.len())?;
            Values::F(v.into_iter().map(|x| x as f32).collect())
        }
        7 => {
            let v = le(raw, || t.int64_data.clone(), i64::from_le_bytes, what)?;
            count(v.len())?;
            Values::I(v)
        }
        6 => {
            let v = le(
                raw,
                || t.int32_data.iter().map(|&x| x as i64).collect(),
                |b| i32::from_le_bytes(b) as i64,
                what,
            )?;
            count(v.len())?;
            Values::I(v)
        }
        10 => {
            return Err(format!(
                "{what} is float16; export the model in float32 (model.float() before torch.onnx.export)"
            ))
        }
        k => return Err(format!("{what} has element type {k}, not float32 or float64")),
    };
    if let Values::F(v) = &v {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("{what} holds {} at element {i}", v[i]));
        }
    }
    Ok(Const { dims, v })
}

/// A tensor's values: its raw data as little-endian values of `N` bytes each, or its typed
/// field (`typed`) when it has no raw data.
fn le<const N: usize, T>(
    raw: &[u8],
    typed: impl FnOnce() -> Vec<T>,
    from: fn([u8; N]) -> T,
    what: &str,
) -> Result<Vec<T>, String> {
    if raw.is_empty() {
        return Ok(typed());
    }
    if !raw.len().is_multiple_of(N) {
        return Err(format!(
            "{what}: raw data of {} bytes is not a whole number of {N}-byte values",
            raw.len()
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|b| from(b.try_into().expect("N bytes")))
        .collect())
}

/// What a walk along the graph gives: the layers, the tensor and shape it ends at, whether that
/// tensor is 2-D (after a flatten), and the join (an Add of two branches) it stopped at.
struct Chain {
    specs: Vec<Spec>,
    t: String,
    d: Dims,
    flat: bool,
    join: Option<usize>,
}

struct Walker<'a> {
    g: &'a proto::GraphProto,
    opset: i64,
    consts: HashMap<String, Const>,
    /// For each tensor, the nodes that read it as data.
    consumers: HashMap<String, Vec<usize>>,
    visited: Vec<bool>,
    names: HashSet<String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    notes: Vec<String>,
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}

fn attr_s(n: &NodeProto, name: &str) -> String {
    attr(n, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_default()
}

/// A layer name from an ONNX name: characters outside `A-Z a-z 0-9 _ .` become `_`, runs of
/// dots one dot, no dot at either end, a leading digit gets an `l`; None when nothing usable
/// is left.
pub fn sanitize(raw: &str) -> Option<String> {
    let mut s = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            c
        } else {
            '_'
        };
        if c == '.' && (s.is_empty() || s.ends_with('.')) {
            continue;
        }
        s.push(c);
    }
    while s.ends_with('.') {
        s.pop();
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, 'l');
    }
    if s.len() > 60 {
        let mut cut = s.len() - 60;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].trim_start_matches('.').to_string();
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            s.insert(0, 'l');
        }
    }
    (arch::check_name(&s).is_ok() && !s.chars().all(|c| c == '_')).then_some(s)
}

/// The module path in a node name as the TorchScript exporter writes it
/// (`/block1/shortcut/shortcut.0/Conv` → `block1.shortcut.0`): the op type at the end dropped,
/// a part that repeats its predecessor's name with an index (`shortcut.0` after `shortcut`)
/// taking its place.
pub fn node_path(name: &str, op: &str) -> Option<String> {
    // the torch.export-based exporter names nodes `node_<target>` (`node_relu_3`)
    let name = match name.strip_prefix("node_") {
        Some(rest) if !name.contains('/') && !rest.is_empty() => rest,
        _ => name,
    };
    let mut parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|l| l.starts_with(op)) {
        parts.pop();
    }
    let mut acc: Vec<&str> = Vec::new();
    for p in parts {
        if let Some(last) = acc.last() {
            if p.starts_with(&format!("{last}.")) {
                acc.pop();
            }
        }
        acc.push(p);
    }
    sanitize(&acc.join("."))
}

impl<'a> Walker<'a> {
    fn new(g: &'a proto::GraphProto, opset: i64) -> Result<Walker<'a>, String> {
        let mut consts = HashMap::new();
        for t in &g.initializer {
            consts.insert(
                t.name.clone(),
                decode(t, &format!("initializer {:?}", t.name))?,
            );
        }
        for n in g.node.iter().filter(|n| n.op_type == "Constant") {
            let what = format!("Constant node {:?}", n.name);
            let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                decode(t, &what)?
            } else if let Some(a) = attr(n, "value_ints") {
                Const {
                    dims: vec![a.ints.len()],
                    v: Values::I(a.ints.clone()),
                }
            } else if let Some(a) = attr(n, "value_int") {
                Const {
                    dims: vec![],
                    v: Values::I(vec![a.i]),
                }
            } else if let Some(a) = attr(n, "value_float") {
                Const {
                    dims: vec![],
                    v: Values::F(vec![a.f]),
                }
            } else if let Some(a) = attr(n, "value_floats") {
                Const {
                    dims: vec![a.floats.len()],
                    v: Values::F(a.floats.clone()),
                }
            } else {
                return Err(format!("{what} has no value metaclf reads"));
            };
            for o in &n.output {
                consts.insert(o.clone(), c.clone());
            }
        }
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            if n.op_type == "Constant" {
                continue;
            }
            if !n.domain.is_empty() && n.domain != "ai.onnx" {
                return Err(format!(
                    "node {:?}: op {} of domain {:?} is not a standard ONNX op (metaclf imports {SUPPORTED})",
                    n.name, n.op_type, n.domain
                ));
            }
            for inp in &n.input {
                if !inp.is_empty() && !consts.contains_key(inp) {
                    consumers.entry(inp.clone()).or_default().push(i);
                }
            }
        }
        Ok(Walker {
            g,
            opset,
            consts,
            consumers,
            visited: vec![false; g.node.len()],
            names: HashSet::new(),
            tensors: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// The image input: its name and (C, H, W).
    fn input(&self) -> Result<(String, Dims), String> {
        let data: Vec<_> = self
            .g
            .input
            .iter()
            .filter(|i| !self.consts.contains_key(&i.name))
            .collect();
        let i = match data.as_slice() {
            [i] => *i,
            [] => return Err("the graph has no input (only initializers)".into()),
            more => {
                return Err(format!(
                    "the graph has {} inputs ({}); a classifier takes one batch of images",
                    more.len(),
                    more.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let tt = i
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .ok_or_else(|| format!("input {:?} is not a tensor", i.name))?;
        if tt.elem_type != 1 {
            return Err(format!(
                "input {:?} has element type {}; metaclf feeds float32 images",
                i.name, tt.elem_type
            ));
        }
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        if dims.len() != 4 {
            return Err(format!(
                "input {:?} has {} dimensions; metaclf needs N×C×H×W images",
                i.name,
                dims.len()
            ));
        }
        let mut chw = [0usize; 3];
        for (k, d) in dims[1..].iter().enumerate() {
            match d.dim_value {
                Some(v) if v >= 1 && v as usize <= 1 << 16 => chw[k] = v as usize,
                _ => {
                    return Err(format!(
                        "input {:?}: its {} is {}; metaclf needs a fixed C×H×W (only the batch axis may be dynamic): export with a fixed image size",
                        i.name,
                        ["channel count", "height", "width"][k],
                        d.dim_param
                            .as_deref()
                            .map(|p| format!("the dynamic {p:?}"))
                            .unwrap_or_else(|| format!("{:?}", d.dim_value))
                    ))
                }
            }
        }
        Ok((i.name.clone(), (chw[0], chw[1], chw[2])))
    }

    /// Values per image of the graph output, when its shape says (N × K).
    fn output_classes(&self, name: &str) -> Option<usize> {
        let o = self.g.output.iter().find(|o| o.name == name)?;
        let dims = &o.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?.dim;
        match dims.as_slice() {
            [_, k] => k.dim_value.filter(|&v| v > 0).map(|v| v as usize),
            _ => None,
        }
    }

    fn konst(&self, n: &NodeProto, k: usize, what: &str) -> Result<Option<&Const>, String> {
        match n.input.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self.consts.get(name).map(Some).ok_or_else(|| {
                format!(
                    "node {:?} ({}): its {what} ({name:?}) is computed in the graph; metaclf needs it as a constant (an initializer)",
                    n.name, n.op_type
                )
            }),
        }
    }

    /// The node a data tensor feeds, when it feeds one.
    fn cons(&self, t: &str) -> &[usize] {
        self.consumers.get(t).map(|v| v.as_slice()).unwrap_or(&[])
    }

    fn is_join(&self, i: usize) -> bool {
        let n = &self.g.node[i];
        n.op_type == "Add"
            && n.input.len() == 2
            && n.input.iter().all(|t| !self.consts.contains_key(t))
    }

    /// A unique layer name: the parameter's own name when it is `<layer>.weight`, else the
    /// node name's module path, else `<kind><n>`.
    fn name(&mut self, n: &NodeProto, weight: Option<&str>, kind: &str) -> String {
        let from_weight = weight
            .and_then(|w| w.strip_suffix(".weight"))
            .and_then(sanitize);
        let base = from_weight
            .or_else(|| node_path(&n.name, &n.op_type))
            .unwrap_or_else(|| kind.to_string());
        let mut name = base.clone();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn output_of(&self, n: &NodeProto) -> Result<String, String> {
        let out = n
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| format!("node {:?} ({}) has no output", n.name, n.op_type))?;
        if let Some(extra) = n.output[1..]
            .iter()
            .find(|o| !o.is_empty() && !self.cons(o).is_empty())
        {
            return Err(format!(
                "node {:?} ({}): its second output {extra:?} is used; metaclf reads the first only",
                n.name, n.op_type
            ));
        }
        Ok(out.clone())
    }

    /// Walks from tensor `t` of shape `d` along single consumers, opening and closing a fork at
    /// each two-branch Add, until the output, or the join Add of an enclosing fork.
    fn chain(
        &mut self,
        mut t: String,
        mut d: Dims,
        mut flat: bool,
        depth: usize,
    ) -> Result<Chain, String> {
        if depth > arch::MAX_DEPTH {
            return Err(format!(
                "residual adds nest more than {} deep",
                arch::MAX_DEPTH
            ));
        }
        let mut specs = Vec::new();
        loop {
            let cons = self.cons(&t).to_vec();
            match cons.as_slice() {
                [] => {
                    return Ok(Chain {
                        specs,
                        t,
                        d,
                        flat,
                        join: None,
                    })
                }
                [i] if self.is_join(*i) => {
                    return Ok(Chain {
                        specs,
                        t,
                        d,
                        flat,
                        join: Some(*i),
                    })
                }
                [i] => {
                    let (t2, d2, f2) = self.convert(*i, d, flat, &mut specs)?;
                    t = t2;
                    d = d2;
                    flat = f2;
                }
                [a, b] => {
                    let ba = self.branch(*a, &t, d, flat, depth)?;
                    let bb = self.branch(*b, &t, d, flat, depth)?;
                    let (Some(ja), Some(jb)) = (ba.join, bb.join) else {
                        return Err(format!(
                            "tensor {t:?} feeds two branches that do not meet in an Add"
                        ));
                    };
                    let j = &self.g.node[ja];
                    if ja != jb {
                        return Err(format!(
                            "tensor {t:?} feeds two branches that end in different Adds ({:?}, {:?})",
                            j.name, self.g.node[jb].name
                        ));
                    }
                    if ba.specs.is_empty() && bb.specs.is_empty() {
                        return Err(format!("node {:?} (Add) adds a tensor to itself", j.name));
                    }
                    let ends: HashSet<&String> = j.input.iter().collect();
                    if !ends.contains(&ba.t) || !ends.contains(&bb.t) {
                        return Err(format!(
                            "node {:?} (Add) does not add the two branches from {t:?}",
                            j.name
                        ));
                    }
                    if ba.d != bb.d {
                        return Err(format!(
                            "node {:?} (Add) adds {}×{}×{} to {}×{}×{}; the shapes must agree",
                            j.name, ba.d.0, ba.d.1, ba.d.2, bb.d.0, bb.d.1, bb.d.2
                        ));
                    }
                    self.visited[ja] = true;
                    let j = j.clone();
                    let out = self.output_of(&j)?;
                    // the longer branch is the body, the other (often the identity) the shortcut
                    let (body, short) = if ba.specs.len() >= bb.specs.len() {
                        (ba, bb)
                    } else {
                        (bb, ba)
                    };
                    let name = self.name(&j, None, "add");
                    d = body.d;
                    flat = body.flat;
                    specs.push(Spec::Add {
                        name,
                        body: body.specs,
                        shortcut: short.specs,
                    });
                    t = out;
                }
                more => {
                    return Err(format!(
                        "tensor {t:?} feeds {} nodes; metaclf imports chains whose forks are two branches joined by an Add",
                        more.len()
                    ))
                }
            }
        }
    }

    /// One branch of a fork at `t`, starting with node `first`.
    fn branch(
        &mut self,
        first: usize,
        t: &str,
        d: Dims,
        flat: bool,
        depth: usize,
    ) -> Result<Chain, String> {
        if self.is_join(first) {
            return Ok(Chain {
                specs: Vec::new(),
                t: t.to_string(),
                d,
                flat,
                join: Some(first),
            });
        }
        let mut specs = Vec::new();
        let (t2, d2, f2) = self.convert(first, d, flat, &mut specs)?;
        let mut rest = self.chain(t2, d2, f2, depth + 1)?;
        specs.append(&mut rest.specs);
        rest.specs = specs;
        if rest.join.is_none() {
            return Err(format!(
                "the branch from tensor {t:?} through node {:?} does not end in an Add",
                self.g.node[first].name
            ));
        }
        Ok(rest)
    }

    /// Converts node `i` (reading a tensor of shape `d`) into layers pushed to `specs`; returns
    /// its output tensor, shape and flatness.
    fn convert(
        &mut self,
        i: usize,
        d: Dims,
        flat: bool,
        specs: &mut Vec<Spec>,
    ) -> Result<(String, Dims, bool), String> {
        if self.visited[i] {
            return Err(format!(
                "node {:?} is reached twice; the graph is not a chain with two-branch adds",
                self.g.node[i].name
            ));
        }
        self.visited[i] = true;
        let n = self.g.node[i].clone();
        let op = n.op_type.as_str();
        let here = |msg: String| format!("node {:?} ({op}): {msg}", n.name);
        let out = self.output_of(&n)?;
        let (c, h, w) = d;
        let spatial = |what: &str| -> Result<(), String> {
            if flat {
                Err(here(format!(
                    "{what} needs an N×C×H×W input; it gets a flattened one"
                )))
            } else {
                Ok(())
            }
        };
        // pads must be 0 or k/2 on every side, equal
        let window = |kernel: &[i64], require_odd: bool| -> Result<(usize, usize, bool), String> {
            if kernel.len() != 2 || kernel[0] != kernel[1] || kernel[0] < 1 {
                return Err(here(format!(
                    "kernel {kernel:?}: metaclf supports square 2-D windows"
                )));
            }
            let k = kernel[0] as usize;
            if k > arch::MAX_KERNEL {
                return Err(here(format!(
                    "kernel {k} is more than {}",
                    arch::MAX_KERNEL
                )));
            }
            let strides = attr_ints(&n, "strides").unwrap_or(vec![1, 1]);
            if strides.len() != 2 || strides[0] != strides[1] || strides[0] < 1 {
                return Err(here(format!(
                    "strides {strides:?}: metaclf supports one stride for both axes"
                )));
            }
            let s = strides[0] as usize;
            if s > arch::MAX_STRIDE {
                return Err(here(format!(
                    "stride {s} is more than {}",
                    arch::MAX_STRIDE
                )));
            }
            if let Some(dl) = attr_ints(&n, "dilations") {
                if dl.iter().any(|&v| v != 1) {
                    return Err(here(format!(
                        "dilations {dl:?}: metaclf supports dilation 1"
                    )));
                }
            }
            let auto = attr_s(&n, "auto_pad");
            let pads = attr_ints(&n, "pads").unwrap_or(vec![0; 4]);
            let same = match auto.as_str() {
                "" | "NOTSET" => {
                    if pads.len() != 4 {
                        return Err(here(format!("pads {pads:?}: 4 values expected")));
                    }
                    if pads.iter().any(|&p| p != pads[0]) {
                        return Err(here(format!(
                            "asymmetric padding {pads:?}: metaclf pads every side alike"
                        )));
                    }
                    let p = pads[0];
                    if p == 0 {
                        false
                    } else if require_odd && k % 2 == 1 && p as usize == k / 2 {
                        true
                    } else {
                        return Err(here(format!(
                            "padding {p} with kernel {k}: metaclf supports {}",
                            if require_odd {
                                format!("0 or {} (k/2) with an odd kernel", k / 2)
                            } else {
                                "no padding in pooling".to_string()
                            }
                        )));
                    }
                }
                "VALID" => false,
                "SAME_UPPER" | "SAME_LOWER" if require_odd && k % 2 == 1 && s == 1 => true,
                other => {
                    return Err(here(format!(
                        "auto_pad {other}: metaclf supports NOTSET with explicit pads, VALID, or SAME at stride 1 with an odd kernel"
                    )))
                }
            };
            if require_odd && k.is_multiple_of(2) {
                return Err(here(format!(
                    "kernel {k}: metaclf's convs have odd kernels"
                )));
            }
            Ok((k, s, same))
        };
        let next = |spec: Spec, specs: &mut Vec<Spec>| -> Result<Dims, String> {
            let o = arch::out_dims(&spec, d, 2).map_err(&here)?;
            specs.push(spec);
            Ok(o)
        };
        match op {
            "Conv" => {
                spatial("Conv")?;
                if attr_i(&n, "group", 1) != 1 {
                    return Err(here(format!(
                        "group = {}: metaclf supports group = 1 (no grouped or depthwise convs)",
                        attr_i(&n, "group", 1)
                    )));
                }
                let wname = n.input.get(1).cloned().unwrap_or_default();
                let wt = self
                    .konst(&n, 1, "weight")?
                    .ok_or_else(|| here("it has no weight".into()))?
                    .clone();
                if wt.dims.len() != 4 || wt.dims[1] != c {
                    return Err(here(format!(
                        "weight {wname:?} has shape {:?}; for its input of {c} channels it must be [out, {c}, k, k]",
                        wt.dims
                    )));
                }
                let kernel = attr_ints(&n, "kernel_shape")
                    .unwrap_or(vec![wt.dims[2] as i64, wt.dims[3] as i64]);
                let (k, s, same) = window(&kernel, true)?;
                if wt.dims[2] != k || wt.dims[3] != k {
                    return Err(here(format!(
                        "weight shape {:?} does not match kernel_shape {kernel:?}",
                        wt.dims
                    )));
                }
                let out_c = wt.dims[0];
                let bias = self.konst(&n, 2, "bias")?.cloned();
                if let Some(b) = &bias {
                    if b.dims.iter().product::<usize>() != out_c {
                        return Err(here(format!("bias has shape {:?}, not [{out_c}]", b.dims)));
                    }
                }
                let name = self.name(&n, Some(&wname), "conv");
                self.tensors.push((
                    format!("{name}.weight"),
                    wt.dims.clone(),
                    wt.floats(&format!("weight {wname:?}"))?.to_vec(),
                ));
                if let Some(b) = &bias {
                    self.tensors.push((
                        format!("{name}.bias"),
                        vec![out_c],
                        b.floats("bias")?.to_vec(),
                    ));
                }
                let o = next(
                    Spec::Conv {
                        name,
                        out: out_c,
                        kernel: k,
                        stride: s,
                        same,
                        bias: bias.is_some(),
                    },
                    specs,
                )?;
                Ok((out, o, false))
            }
            "BatchNormalization" => {
                if attr_i(&n, "training_mode", 0) != 0 {
                    return Err(here(
                        "training_mode = 1: export the model in evaluation mode (model.eval())"
                            .into(),
                    ));
                }
                let eps = attr_f(&n, "epsilon", 1e-5) as f64;
                if !(eps > 0.0 && eps <= 1.0) {
                    return Err(here(format!("epsilon {eps} is outside (0, 1]")));
                }
                let mut parts = Vec::new();
                for (k, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
                    let t = self
                        .konst(&n, k, what)?
                        .ok_or_else(|| here(format!("it has no {what}")))?;
                    if t.dims.iter().product::<usize>() != c {
                        return Err(here(format!(
                            "its {what} has shape {:?}; its input has {c} channels",
                            t.dims
                        )));
                    }
                    parts.push(t.floats(what)?.to_vec());
                }
                if let Some(j) = parts[3].iter().position(|v| *v < 0.0) {
                    return Err(here(format!(
                        "negative variance {} at element {j}",
                        parts[3][j]
                    )));
                }
                let wname = n.input.get(1).cloned().unwrap_or_default();
                let name = self.name(&n, Some(&wname), "bn");
                for (suffix, v) in ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .zip(parts)
                {
                    self.tensors.push((format!("{name}.{suffix}"), vec![c], v));
                }
                let o = next(
                    Spec::BatchNorm {
                        name,
                        eps,
                        momentum: 0.1,
                    },
                    specs,
                )?;
                Ok((out, o, flat))
            }
            "Relu" | "LeakyRelu" => {
                let slope = if op == "Relu" {
                    0.0
                } else {
                    attr_f(&n, "alpha", 0.01) as f64
                };
                if !(0.0..1.0).contains(&slope) {
                    return Err(here(format!(
                        "alpha {slope}: metaclf supports leaky slopes in [0, 1)"
                    )));
                }
                let name = self.name(&n, None, if op == "Relu" { "relu" } else { "leaky_relu" });
                let o = next(Spec::Act { name, slope }, specs)?;
                Ok((out, o, flat))
            }
            "MaxPool" | "AveragePool" => {
                spatial(op)?;
                if attr_i(&n, "ceil_mode", 0) != 0 {
                    return Err(here("ceil_mode = 1: metaclf's pooling rounds down".into()));
                }
                if op == "MaxPool" && attr_i(&n, "storage_order", 0) != 0 {
                    return Err(here("storage_order = 1 is not supported".into()));
                }
                let kernel = attr_ints(&n, "kernel_shape")
                    .ok_or_else(|| here("it has no kernel_shape".into()))?;
                let (k, s, _) = window(&kernel, false)?;
                let kind = if op == "MaxPool" {
                    "maxpool"
                } else {
                    "avgpool"
                };
                let name = self.name(&n, None, kind);
                let spec = if op == "MaxPool" {
                    Spec::MaxPool {
                        name,
                        kernel: k,
                        stride: s,
                    }
                } else {
                    Spec::AvgPool {
                        name,
                        kernel: k,
                        stride: s,
                    }
                };
                let o = next(spec, specs)?;
                Ok((out, o, false))
            }
            "GlobalAveragePool" => {
                spatial(op)?;
                let name = self.name(&n, None, "global_avgpool");
                let o = next(Spec::GlobalAvgPool { name }, specs)?;
                Ok((out, o, false))
            }
            "ReduceMean" => {
                spatial(op)?;
                let axes = if self.opset >= 18 {
                    match self.konst(&n, 1, "axes")? {
                        Some(a) => a.ints("axes")?.to_vec(),
                        None => vec![],
                    }
                } else {
                    attr_ints(&n, "axes").unwrap_or_default()
                };
                let mut norm: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + 4 } else { a })
                    .collect();
                norm.sort();
                if norm != [2, 3] {
                    return Err(here(format!(
                        "axes {axes:?}: metaclf reads a mean over H and W (axes [2, 3]) as global average pooling"
                    )));
                }
                let keep = attr_i(&n, "keepdims", 1) != 0;
                let name = self.name(&n, None, "global_avgpool");
                let o = next(Spec::GlobalAvgPool { name }, specs)?;
                Ok((out, o, !keep))
            }
            "Flatten" => {
                let axis = attr_i(&n, "axis", 1);
                if !(axis == 1 || (!flat && axis == -3) || (flat && axis == -1)) {
                    return Err(here(format!(
                        "axis {axis}: metaclf flattens all but the batch axis (axis = 1)"
                    )));
                }
                let name = self.name(&n, None, "flatten");
                let o = next(Spec::Flatten { name }, specs)?;
                Ok((out, o, true))
            }
            "Reshape" => {
                let shape = self
                    .konst(&n, 1, "shape")?
                    .ok_or_else(|| here("it has no shape".into()))?
                    .ints("shape")?
                    .to_vec();
                let f = (c * h * w) as i64;
                let allowzero = attr_i(&n, "allowzero", 0) != 0;
                let batch_ok = |v: i64| v == -1 || (v == 0 && !allowzero);
                let ok = match shape.as_slice() {
                    [a, b] => (batch_ok(*a) && (*b == f || *b == -1)) || (*a == -1 && *b == f),
                    _ => false,
                };
                if !ok {
                    return Err(here(format!(
                        "shape {shape:?}: metaclf reads a reshape to [N, {f}] (batch −1 or 0, then C·H·W = {f}) as a flatten"
                    )));
                }
                let name = self.name(&n, None, "flatten");
                let o = next(Spec::Flatten { name }, specs)?;
                Ok((out, o, true))
            }
            "Gemm" | "MatMul" => {
                if !flat && (h != 1 || w != 1) {
                    return Err(here(format!(
                        "its input is {c}×{h}×{w}; a Gemm or MatMul needs a flattened input"
                    )));
                }
                let trans_b = if op == "Gemm" {
                    if attr_i(&n, "transA", 0) != 0 {
                        return Err(here("transA = 1 is not supported".into()));
                    }
                    for a in ["alpha", "beta"] {
                        let v = attr_f(&n, a, 1.0);
                        if v != 1.0 {
                            return Err(here(format!("{a} = {v}: metaclf supports 1")));
                        }
                    }
                    attr_i(&n, "transB", 0) != 0
                } else {
                    false
                };
                let wname = n.input.get(1).cloned().unwrap_or_default();
                let wt = self
                    .konst(&n, 1, "weight")?
                    .ok_or_else(|| here("it has no weight".into()))?
                    .clone();
                let (rows, cols) = match wt.dims.as_slice() {
                    [r, c] => (*r, *c),
                    d => return Err(here(format!("weight {wname:?} has shape {d:?}, not 2-D"))),
                };
                let (out_f, in_f) = if trans_b { (rows, cols) } else { (cols, rows) };
                if in_f != c {
                    return Err(here(format!(
                        "weight {wname:?} of shape {:?} takes {in_f} inputs; its input has {c}",
                        wt.dims
                    )));
                }
                let v = wt.floats(&format!("weight {wname:?}"))?;
                let wv: Vec<f32> = if trans_b {
                    v.to_vec()
                } else {
                    let mut t = vec![0f32; v.len()];
                    for r in 0..rows {
                        for q in 0..cols {
                            t[q * rows + r] = v[r * cols + q];
                        }
                    }
                    t
                };
                let mut bias: Option<Vec<f32>> = None;
                let mut out = out;
                if op == "Gemm" {
                    if let Some(b) = self.konst(&n, 2, "bias")? {
                        if b.dims.iter().product::<usize>() != out_f {
                            return Err(here(format!(
                                "bias has shape {:?}, not [{out_f}]",
                                b.dims
                            )));
                        }
                        bias = Some(b.floats("bias")?.to_vec());
                    }
                } else if let [j] = self.cons(&out).to_vec().as_slice() {
                    // MatMul then Add of a constant: the bias
                    let a = self.g.node[*j].clone();
                    if a.op_type == "Add" && !self.visited[*j] {
                        let other = a.input.iter().find(|t| **t != out);
                        if let Some(b) = other.and_then(|t| self.consts.get(t)) {
                            if b.dims.iter().product::<usize>() != out_f {
                                return Err(format!(
                                    "node {:?} (Add): adds a constant of shape {:?} after MatMul {:?}; a bias has {out_f} values",
                                    a.name, b.dims, n.name
                                ));
                            }
                            bias = Some(b.floats("bias")?.to_vec());
                            self.visited[*j] = true;
                            out = self.output_of(&a)?;
                        }
                    }
                }
                let name = self.name(&n, Some(&wname), "fc");
                self.tensors
                    .push((format!("{name}.weight"), vec![out_f, in_f], wv));
                if let Some(b) = &bias {
                    self.tensors
                        .push((format!("{name}.bias"), vec![out_f], b.clone()));
                }
                specs.push(Spec::Linear {
                    name,
                    out: out_f,
                    bias: bias.is_some(),
                });
                Ok((out, (out_f, 1, 1), true))
            }
            "Dropout" => {
                let rate = match self.konst(&n, 1, "ratio")? {
                    Some(r) => *r
                        .floats("ratio")?
                        .first()
                        .ok_or_else(|| here("its ratio is empty".into()))?
                        as f64,
                    None => attr_f(&n, "ratio", 0.5) as f64,
                };
                if !(0.0..1.0).contains(&rate) {
                    return Err(here(format!("ratio {rate} is outside [0, 1)")));
                }
                if let Some(t) = self.konst(&n, 2, "training_mode")? {
                    if t.ints("training_mode")
                        .map(|v| v.iter().any(|&x| x != 0))
                        .unwrap_or(true)
                    {
                        return Err(here(
                            "training_mode is on: export in evaluation mode".into(),
                        ));
                    }
                }
                let name = self.name(&n, None, "dropout");
                let o = next(Spec::Dropout { name, rate }, specs)?;
                Ok((out, o, flat))
            }
            "Identity" => Ok((out, d, flat)),
            "Softmax" | "LogSoftmax" => {
                let last = self.g.output.iter().any(|o| o.name == out);
                let axis = attr_i(&n, "axis", if self.opset >= 13 { -1 } else { 1 });
                if !last || !flat || !(axis == 1 || axis == -1) {
                    return Err(here(format!(
                        "a {op} is supported only as the last node, over the classes (axis 1 or -1)"
                    )));
                }
                self.notes.push(format!(
                    "the final {op} ({:?}) is dropped: metaclf works on the logits before it",
                    n.name
                ));
                Ok((out, d, flat))
            }
            "Add" => Err(here(
                "an Add of a constant is supported only as the bias of a MatMul".into(),
            )),
            other => Err(here(format!(
                "op {other} is not supported (metaclf imports {SUPPORTED})"
            ))),
        }
    }
}

/// A tiny valid classifier (conv 3×3 → ReLU → flatten → linear to 3 classes) on C×H×W
/// input, for tests elsewhere.
#[cfg(test)]
pub fn tiny_model(c: usize, h: usize, w: usize) -> Vec<u8> {
    tests::model_at(c, h, w, |_, _, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_onnx_names() {
        assert_eq!(
            node_path("/block1/shortcut/shortcut.0/Conv", "Conv").as_deref(),
            Some("block1.shortcut.0")
        );
        assert_eq!(node_path("/stem/Conv", "Conv").as_deref(), Some("stem"));
        assert_eq!(
            node_path("/block1/Relu_1", "Relu").as_deref(),
            Some("block1")
        );
        assert_eq!(sanitize("onnx::Conv_66").as_deref(), Some("onnx__Conv_66"));
        assert_eq!(sanitize("0.weight").as_deref(), Some("l0.weight"));
        assert_eq!(sanitize("a..b.").as_deref(), Some("a.b"));
        assert_eq!(sanitize("///"), None);
        assert_eq!(sanitize("all"), None);
    }

    use prost::Message;
    use proto::*;

    fn tensor(name: &str, dims: &[i64], v: Vec<f32>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: v,
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints: v.to_vec(),
            r#type: 7,
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i: v,
            r#type: 2,
            ..Default::default()
        }
    }

    fn node(op: &str, name: &str, i: &[&str], o: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: i.iter().map(|s| s.to_string()).collect(),
            output: vec![o.into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn value(name: &str, dims: &[Dimension]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeTensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto { dim: dims.to_vec() }),
                }),
            }),
        }
    }

    fn fixed(v: i64) -> Dimension {
        Dimension {
            dim_value: Some(v),
            dim_param: None,
        }
    }

    fn batch() -> Dimension {
        Dimension {
            dim_value: None,
            dim_param: Some("batch".into()),
        }
    }

    type Edit = dyn FnOnce(&mut Vec<NodeProto>, &mut Vec<TensorProto>, &mut Vec<Dimension>);

    /// image 1×4×4 → conv 3×3 (2 channels, pads 1) → relu → flatten → gemm 32 → 3, with
    /// `edit` applied to the nodes and initializers first.
    fn model(
        edit: impl FnOnce(&mut Vec<NodeProto>, &mut Vec<TensorProto>, &mut Vec<Dimension>),
    ) -> Vec<u8> {
        model_at(1, 4, 4, edit)
    }

    /// [`model`] on a C×H×W input.
    pub fn model_at(
        c: usize,
        h: usize,
        w: usize,
        edit: impl FnOnce(&mut Vec<NodeProto>, &mut Vec<TensorProto>, &mut Vec<Dimension>),
    ) -> Vec<u8> {
        let (ci, flat) = (c as i64, 2 * h * w);
        let mut nodes = vec![
            node(
                "Conv",
                "/conv1/Conv",
                &["image", "conv1.weight", "conv1.bias"],
                "c",
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", "/relu/Relu", &["c"], "r", vec![]),
            node(
                "Flatten",
                "/flatten/Flatten",
                &["r"],
                "f",
                vec![int("axis", 1)],
            ),
            node(
                "Gemm",
                "/fc/Gemm",
                &["f", "fc.weight", "fc.bias"],
                "logits",
                vec![int("transB", 1)],
            ),
        ];
        let mut inits = vec![
            tensor("conv1.weight", &[2, ci, 3, 3], vec![0.1; 18 * c]),
            tensor("conv1.bias", &[2], vec![0.0, 0.1]),
            tensor(
                "fc.weight",
                &[3, flat as i64],
                (0..3 * flat)
                    .map(|i| i as f32 / (3 * flat) as f32)
                    .collect(),
            ),
            tensor("fc.bias", &[3], vec![0.0; 3]),
        ];
        let mut dims = vec![batch(), fixed(ci), fixed(h as i64), fixed(w as i64)];
        edit(&mut nodes, &mut inits, &mut dims);
        ModelProto {
            ir_version: 8,
            producer_name: "test".into(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: nodes,
                name: "g".into(),
                initializer: inits,
                input: vec![value("image", &dims)],
                output: vec![value("logits", &[batch(), fixed(3)])],
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_small_graph_imports() {
        let imp = import(&model(|_, _, _| {})).unwrap();
        assert_eq!(imp.input, (1, 4, 4));
        assert_eq!(imp.classes, 3);
        let kinds: Vec<&str> = imp.specs.iter().map(|s| s.kind()).collect();
        assert_eq!(kinds, ["conv", "relu", "flatten", "linear"]);
        let names: Vec<&str> = imp.specs.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["conv1", "relu", "flatten", "fc"]);
        assert_eq!(imp.n_params(), 18 + 2 + 96 + 3);
    }

    /// Each refusal names the node, its op and what would do.
    #[test]
    fn unsupported_graphs_are_refused_by_name() {
        let cases: Vec<(&str, Box<Edit>, &[&str])> = vec![
            (
                "an unknown op",
                Box::new(|n, _, _| n[1].op_type = "Sigmoid".into()),
                &[
                    "\"/relu/Relu\"",
                    "op Sigmoid is not supported",
                    "Conv, BatchNormalization",
                ],
            ),
            (
                "groups",
                Box::new(|n, _, _| n[0].attribute.push(int("group", 2))),
                &["/conv1/Conv", "group = 2"],
            ),
            (
                "dilation",
                Box::new(|n, _, _| n[0].attribute.push(ints("dilations", &[2, 2]))),
                &["dilations [2, 2]"],
            ),
            (
                "asymmetric padding",
                Box::new(|n, _, _| n[0].attribute[1] = ints("pads", &[1, 1, 0, 0])),
                &["asymmetric padding [1, 1, 0, 0]"],
            ),
            (
                "a dynamic height",
                Box::new(|_, _, d| {
                    d[2] = Dimension {
                        dim_value: None,
                        dim_param: Some("h".into()),
                    }
                }),
                &["height", "dynamic \"h\"", "fixed C×H×W"],
            ),
            (
                "external data",
                Box::new(|_, t, _| {
                    t[0].float_data.clear();
                    t[0].data_location = 1;
                    t[0].external_data.push(StringStringEntryProto {
                        key: "location".into(),
                        value: "w.bin".into(),
                    })
                }),
                &["conv1.weight", "external data file (\"w.bin\")"],
            ),
            (
                "float16",
                Box::new(|_, t, _| {
                    t[0].float_data.clear();
                    t[0].data_type = 10;
                    t[0].raw_data = vec![0; 36]
                }),
                &["float16"],
            ),
            (
                "not logits",
                Box::new(|n, _, _| {
                    n[3].output[0] = "z".into();
                    n.push(node("Relu", "/out/Relu", &["z"], "logits", vec![]))
                }),
                &["relu", "must be the logits"],
            ),
            (
                "a softmax inside",
                Box::new(|n, _, _| n[1].op_type = "Softmax".into()),
                &["Softmax", "only as the last node"],
            ),
            (
                "a wrong weight shape",
                Box::new(|_, t, _| {
                    t[2].dims = vec![3, 30];
                    t[2].float_data.truncate(90)
                }),
                &["fc.weight", "takes 30 inputs; its input has 32"],
            ),
            (
                "a computed weight",
                Box::new(|n, t, _| {
                    t.remove(0);
                    n.insert(
                        0,
                        node("Identity", "id", &["image"], "conv1.weight", vec![]),
                    )
                }),
                &["its weight (\"conv1.weight\") is computed in the graph"],
            ),
        ];
        for (what, edit, want) in cases {
            let e = import(&model(edit)).expect_err(what);
            for w in want {
                assert!(e.contains(w), "{what}: {e:?} should say {w:?}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        for bytes in [&b""[..], b"\x08\x07", b"not onnx at all", &[0xff; 40]] {
            assert!(import(bytes).is_err());
        }
    }
}
