//! review.html of `metaclf score`: one self-contained page (inline PNG thumbnails, inline SVG,
//! no external reference) with the least trustworthy images, the "confident but not trusted"
//! ones, the flagged images of each predicted class and, with labels, the accuracy-vs-rejection
//! curve.

use crate::data::Shape;
use crate::report::{esc, rejection_curve};
use crate::score::{by_trust, ranks, Row, Summary, CONFIDENT};
use crate::trust::Trust;
use base64::Engine;
use std::collections::{BTreeMap, HashMap};

/// Flagged images shown per predicted class.
pub const PER_CLASS: usize = 12;

struct Sections {
    least: Vec<usize>,
    confident: Vec<usize>,
    per_class: BTreeMap<u32, Vec<usize>>,
}

fn sections(rows: &[Row], top: usize) -> Sections {
    let order = by_trust(rows);
    let least = order.iter().take(top).cloned().collect();
    let confident = order
        .iter()
        .filter(|&&i| rows[i].flag && rows[i].msp as f64 >= CONFIDENT)
        .take(top)
        .cloned()
        .collect();
    let mut per_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in &order {
        if rows[i].flag {
            let v = per_class.entry(rows[i].pred).or_default();
            if v.len() < PER_CLASS {
                v.push(i);
            }
        }
    }
    Sections {
        least,
        confident,
        per_class,
    }
}

/// Row numbers of every row the page shows (their images are needed).
pub fn shown(rows: &[Row], top: usize) -> Vec<usize> {
    let s = sections(rows, top);
    let mut v: Vec<usize> = s
        .least
        .into_iter()
        .chain(s.confident)
        .chain(s.per_class.into_values().flatten())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// An image as a grayscale PNG data URI, its channels side by side (left to right).
fn thumb(px: &[f32], s: Shape) -> String {
    let (w, h) = (s.w * s.c, s.h);
    let bytes: Vec<u8> = (0..w * h)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let (c, xx) = (x / s.w, x % s.w);
            let v = px.get(c * s.hw() + y * s.w + xx).copied().unwrap_or(0.0);
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect();
    let img = image::GrayImage::from_raw(w as u32, h as u32, bytes)
        .unwrap_or_else(|| image::GrayImage::new(w as u32, h as u32));
    let mut png = Vec::new();
    if img
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .is_err()
    {
        return String::new();
    }
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    )
}

fn card(r: &Row, rank: usize, images: &HashMap<usize, Vec<f32>>, shape: Shape) -> String {
    let img = match images.get(&r.index) {
        Some(px) => format!(
            "<img src=\"{}\" width=\"{}\" height=\"84\" alt=\"image {}\">",
            thumb(px, shape),
            84 * shape.w * shape.c / shape.h.max(1),
            r.index
        ),
        None => "<div class=\"noimg\">no image</div>".into(),
    };
    let name = |n: &str, v: u32| {
        if n.is_empty() {
            v.to_string()
        } else {
            esc(n)
        }
    };
    let label = match r.label {
        Some(l) if l == r.pred => format!(
            "<span class=\"ok\">label {} ✓</span>",
            name(&r.label_name, l)
        ),
        Some(l) => format!(
            "<span class=\"bad\">label {} ✗</span>",
            name(&r.label_name, l)
        ),
        None => String::new(),
    };
    let path = if r.path.is_empty() {
        String::new()
    } else {
        format!("<div class=\"path\" title=\"{0}\">{0}</div>", esc(&r.path))
    };
    format!(
        "<figure class=\"{}\">{img}<figcaption>#{rank} · index {}<br>pred <b>{}</b> · msp {:.3}<br>trust {:.3} {label}{path}</figcaption></figure>",
        if r.flag { "card flag" } else { "card" },
        r.index,
        name(&r.pred_name, r.pred),
        r.msp,
        r.trust
    )
}

fn lift_svg(rows: &[Row], s: &Summary) -> String {
    let correct: Vec<bool> = rows.iter().map(|r| r.label == Some(r.pred)).collect();
    let trust: Vec<f64> = rows.iter().map(|r| r.trust).collect();
    let curve = rejection_curve(&correct, &trust, 200);
    let (w, h, l, b) = (520.0, 300.0, 60.0, 40.0);
    let lo = curve.iter().map(|p| p.1).fold(1.0f64, f64::min).min(0.99);
    let lo = (lo * 100.0).floor() / 100.0;
    let x = |v: f64| l + v * (w - l - 20.0);
    let y = |v: f64| (h - b) - (v - lo) / (1.0 - lo).max(1e-9) * (h - b - 20.0);
    let pts: Vec<String> = curve
        .iter()
        .map(|(r, a)| format!("{:.1},{:.1}", x(*r), y(*a)))
        .collect();
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"accuracy vs rejection\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <line x1=\"{l}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/>\
         <line x1=\"{l}\" y1=\"20\" x2=\"{l}\" y2=\"{0}\" stroke=\"#333\"/>",
        h - b,
        w - 20.0
    );
    for k in 0..=5 {
        let fx = k as f64 / 5.0;
        let fy = lo + (1.0 - lo) * k as f64 / 5.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{:.0}%</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.1}%</text>",
            x(fx),
            h - b + 16.0,
            100.0 * fx,
            l - 6.0,
            y(fy) + 4.0,
            100.0 * fy
        ));
    }
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#0072B2\" stroke-width=\"2\" points=\"{}\"/>",
        pts.join(" ")
    ));
    if let Some(k) = s.kept_accuracy {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#D55E00\"><title>{}: {:.1}% flagged, kept {:.2}% accurate</title></circle>",
            x(s.flagged_fraction),
            y(k.max(lo)),
            esc(&s.threshold),
            100.0 * s.flagged_fraction,
            100.0 * k
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">fraction of predictions flagged (least trusted first)</text>\
         <text x=\"14\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">accuracy of the kept</text></svg>",
        (l + w - 20.0) / 2.0,
        h - 4.0,
        (h - b) / 2.0,
        (h - b) / 2.0
    ));
    svg
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

/// The whole page.
pub fn page(
    rows: &[Row],
    s: &Summary,
    trust: &Trust,
    images: &HashMap<usize, Vec<f32>>,
    top: usize,
    shape: Shape,
) -> String {
    let sec = sections(rows, top);
    let rank = ranks(rows);
    let th = trust
        .model
        .trust
        .thresholds
        .iter()
        .find(|t| t.name == s.threshold);
    let mut h = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>metaclf review</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}\
         .grid{display:flex;flex-wrap:wrap;gap:8px}.card{margin:0;padding:4px;border:1px solid #ccc;width:150px;font-size:12px;background:#fafafa}\
         .card.flag{border-color:#D55E00;background:#fff4ee}.card img{image-rendering:pixelated;display:block;margin:auto;background:#000}\
         .noimg{width:84px;height:84px;margin:auto;background:#ddd}.path{overflow-wrap:anywhere;word-break:break-all;color:#555}\
         .ok{color:#117733}.bad{color:#b00;font-weight:bold}table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
         .lead{font-size:1.1em;background:#eef5fb;padding:0.6em 1em;border-left:4px solid #0072B2}</style></head><body>",
    );
    h.push_str("<h1>Which predictions not to trust</h1>");
    h.push_str(&format!(
        "<p class=\"lead\"><b>{}</b> of {} images flagged for review (<b>{:.1}%</b>) at the <code>{}</code> threshold (trust &lt; {:.4}){}{}.</p>",
        s.flagged,
        s.images,
        100.0 * s.flagged_fraction,
        esc(&s.threshold),
        s.threshold_value,
        match (s.kept_accuracy, s.flagged_accuracy) {
            (Some(k), Some(f)) => format!(
                "; the kept predictions are {:.2}% accurate, the flagged ones {:.2}%",
                100.0 * k,
                100.0 * f
            ),
            (Some(k), None) => format!("; the kept predictions are {:.2}% accurate", 100.0 * k),
            _ => String::new(),
        },
        match (s.errors_flagged, s.errors) {
            (Some(f), Some(e)) if e > 0 => format!("; {f} of the {e} wrong predictions are flagged"),
            _ => String::new(),
        }
    ));
    h.push_str(&format!(
        "<p>Data <code>{}</code>, run <code>{}</code>. Trust model: {} ({}). Trust is the model's probability that a prediction is right and its image from the known classes.{}</p>",
        esc(&s.data),
        esc(&s.run),
        esc(&s.trust_model),
        esc(&trust.model.trust.selection),
        th.map(|t| format!(
            " On the run's held-out test images this threshold {}: it kept {:.1}% of them at {:.2}% accuracy and flagged {:.1}% of the wrong predictions.",
            esc(&t.rule),
            100.0 * t.kept_fraction,
            100.0 * t.kept_accuracy,
            100.0 * t.errors_flagged
        ))
        .unwrap_or_default()
    ));
    if let Some(why) = &s.labels_ignored {
        h.push_str(&format!("<p>Labels not used: {}.</p>", esc(why)));
    }
    if !s.skipped.is_empty() {
        h.push_str(&format!(
            "<p><b>{} unreadable files were skipped</b>: {}</p>",
            s.skipped.len(),
            s.skipped
                .iter()
                .take(20)
                .map(|p| format!("<code>{}</code>", esc(p)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    h.push_str(&format!(
        "<h2>The {} least trustworthy images</h2><p>Lowest trust first; orange = flagged.</p><div class=\"grid\">",
        sec.least.len()
    ));
    for &i in &sec.least {
        h.push_str(&card(&rows[i], rank[i], images, shape));
    }
    h.push_str("</div>");
    h.push_str(&format!(
        "<h2>Confident but not trusted</h2><p>{} flagged images have msp ≥ {CONFIDENT}: the CNN is sure, the trust model is not (typical of images from classes the CNN never saw). Showing {}.</p><div class=\"grid\">",
        s.confident_flagged,
        sec.confident.len()
    ));
    for &i in &sec.confident {
        h.push_str(&card(&rows[i], rank[i], images, shape));
    }
    h.push_str("</div><h2>Flagged images by predicted class</h2><table><tr><th>predicted</th><th>images</th><th>flagged</th><th>flagged %</th></tr>");
    let cname = |c: &u32| esc(&s.class_names.get(c).cloned().unwrap_or(c.to_string()));
    for (c, pc) in &s.flagged_by_pred {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            cname(c),
            pc.images,
            pc.flagged,
            100.0 * pc.flagged as f64 / pc.images.max(1) as f64
        ));
    }
    h.push_str("</table>");
    for (c, idx) in &sec.per_class {
        h.push_str(&format!(
            "<h3>Predicted {}: the {} least trusted of {} flagged</h3><div class=\"grid\">",
            cname(c),
            idx.len(),
            s.flagged_by_pred.get(c).map_or(0, |p| p.flagged)
        ));
        for &i in idx {
            h.push_str(&card(&rows[i], rank[i], images, shape));
        }
        h.push_str("</div>");
    }
    if s.labelled {
        h.push_str(&format!(
            "<h2>Accuracy vs rejection</h2><p>Flag the least trusted predictions first and measure the accuracy of the rest (all {}: {}; kept: {}; flagged: {}). The dot is the threshold used.</p>{}",
            s.images,
            pct(s.accuracy),
            pct(s.kept_accuracy),
            pct(s.flagged_accuracy),
            lift_svg(rows, s)
        ));
    }
    h.push_str("<p class=\"how\">scores.csv lists every image with its rank (1 = least trustworthy); summary.json holds these counts.</p></body></html>\n");
    h
}
