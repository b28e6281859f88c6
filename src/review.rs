//! review.html of `metaclf score`: one self-contained page (inline PNG thumbnails, inline SVG,
//! inline script, no external reference; works offline from `file://`) on which the user
//! labels the images the trust model doubts. Cards come in two groups: "new kind?" (p_known
//! below its threshold), subdivided by visual similarity (k-means on the CNN's penultimate
//! activations, k by silhouette, see [`crate::cluster`]) so a whole group can be labelled at
//! once, and "misclassified?" (a known kind, p_correct_if_known below its threshold). Select
//! cards (click, shift-click for a range, a group's "select all"), then give them one of the
//! run's classes, a new class name, or "skip"; labels survive a reload (localStorage) and
//! "download labels.csv" writes `path,index,label,source` (source = user; skipped cards are
//! left out) for `metaclf extend --labels`.
//!
//! The page reads only its own input type, [`PageInput`]: `score` builds it, so the
//! dependency runs one way (score → review).

use crate::data::Shape;
use crate::report::esc;
use base64::Engine;

/// One image on the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// The image's index in the scored data (unique in a batch: the label key).
    pub index: usize,
    pub path: String,
    /// 1 = least trustworthy.
    pub rank: usize,
    pub pred_name: String,
    /// The image's label name and whether the prediction matches it, when labelled.
    pub label: Option<(String, bool)>,
    pub msp: f32,
    pub trust: f64,
    pub p_known: Option<f64>,
    pub p_correct: Option<f64>,
    pub flag: bool,
    /// Pixels (channel-major, 0–1), when read.
    pub pixels: Option<Vec<f32>>,
}

/// Cards that look alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub title: String,
    pub cards: Vec<Card>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageInput {
    pub run: String,
    pub data: String,
    /// Names this batch's labels in localStorage (so two pages keep their own).
    pub key: String,
    pub images: usize,
    pub flagged: usize,
    pub flagged_fraction: f64,
    pub threshold: String,
    pub threshold_value: f64,
    /// How the threshold did on the run's held-out images, in words.
    pub threshold_note: String,
    pub trust_model: String,
    pub selection: String,
    pub accuracy: Option<f64>,
    pub kept_accuracy: Option<f64>,
    pub flagged_accuracy: Option<f64>,
    pub errors: Option<usize>,
    pub errors_flagged: Option<usize>,
    pub confident_flagged: usize,
    pub labels_ignored: Option<String>,
    pub skipped: Vec<String>,
    /// The run's classes, in output order.
    pub class_names: Vec<String>,
    /// "New kind?" cards by similarity group, and how many images are suspect in all.
    pub new_kind: Vec<Group>,
    pub new_kind_total: usize,
    pub p_known_threshold: Option<f64>,
    /// How the groups were formed, in words.
    pub grouping: String,
    pub misclassified: Vec<Card>,
    pub misclassified_total: usize,
    pub p_correct_threshold: Option<f64>,
    /// (predicted class, images, flagged).
    pub by_class: Vec<(String, usize, usize)>,
    /// Accuracy of the kept vs fraction flagged, with labels.
    pub curve: Option<Vec<(f64, f64)>>,
    pub shape: Option<Shape>,
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

fn card(r: &Card, shape: Shape) -> String {
    let img = match &r.pixels {
        Some(px) => format!(
            "<img src=\"{}\" width=\"{}\" height=\"84\" alt=\"image {}\">",
            thumb(px, shape),
            84 * shape.w * shape.c / shape.h.max(1),
            r.index
        ),
        None => "<div class=\"noimg\">no image</div>".into(),
    };
    let label = match &r.label {
        Some((n, true)) => format!("<span class=\"ok\">label {} ✓</span>", esc(n)),
        Some((n, false)) => format!("<span class=\"bad\">label {} ✗</span>", esc(n)),
        None => String::new(),
    };
    let path = if r.path.is_empty() {
        String::new()
    } else {
        format!("<div class=\"path\" title=\"{0}\">{0}</div>", esc(&r.path))
    };
    let p = |name: &str, v: Option<f64>| v.map(|x| format!(" · {name} {x:.3}")).unwrap_or_default();
    format!(
        "<figure class=\"{}\" data-id=\"{}\" data-path=\"{}\" tabindex=\"0\">{img}<figcaption>#{} · index {}<br>pred <b>{}</b> · msp {:.3}<br>trust {:.3}{}{} {label}{path}<div class=\"given\"></div></figcaption></figure>",
        if r.flag { "card flag" } else { "card" },
        r.index,
        esc(&r.path),
        r.rank,
        r.index,
        esc(&r.pred_name),
        r.msp,
        r.trust,
        p("p_known", r.p_known),
        p("p_correct", r.p_correct),
    )
}

fn lift_svg(curve: &[(f64, f64)], s: &PageInput) -> String {
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
        let threshold = &s.threshold;
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#D55E00\"><title>{}: {:.1}% flagged, kept {:.2}% accurate</title></circle>",
            x(s.flagged_fraction),
            y(k.max(lo)),
            esc(threshold),
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

/// The labelling script: selection, labels in localStorage, labels.csv.
const SCRIPT: &str = r#"
(function () {
  const KEY = "metaclf-review:" + document.body.dataset.key;
  const cards = Array.from(document.querySelectorAll(".card[data-id]"));
  const byId = new Map(cards.map(c => [c.dataset.id, c]));
  let labels = {};
  try { labels = JSON.parse(localStorage.getItem(KEY) || "{}") || {}; } catch (e) { labels = {}; }
  const sel = new Set();
  let last = null;
  const status = document.getElementById("status");
  function show() {
    for (const c of cards) {
      const l = labels[c.dataset.id];
      c.classList.toggle("sel", sel.has(c.dataset.id));
      c.classList.toggle("done", !!l);
      c.querySelector(".given").textContent = l ? (l.label === null ? "skipped" : "→ " + l.label) : "";
    }
    const n = Object.values(labels).filter(l => l.label !== null).length;
    status.textContent = sel.size + " selected · " + n + " labelled · " +
      Object.values(labels).filter(l => l.label === null).length + " skipped";
  }
  function save() { localStorage.setItem(KEY, JSON.stringify(labels)); show(); }
  function give(label) {
    if (sel.size === 0) { return; }
    for (const id of sel) { labels[id] = { label: label, path: byId.get(id).dataset.path }; }
    sel.clear();
    save();
  }
  function ungive() { for (const id of sel) { delete labels[id]; } sel.clear(); save(); }
  for (const c of cards) {
    c.addEventListener("click", ev => {
      const id = c.dataset.id;
      if (ev.shiftKey && last !== null) {
        const a = cards.indexOf(byId.get(last)), b = cards.indexOf(c);
        for (let i = Math.min(a, b); i <= Math.max(a, b); i++) { sel.add(cards[i].dataset.id); }
      } else if (sel.has(id)) { sel.delete(id); } else { sel.add(id); }
      last = id;
      show();
    });
  }
  for (const b of document.querySelectorAll("button.selgroup")) {
    b.addEventListener("click", () => {
      for (const c of document.getElementById(b.dataset.group).querySelectorAll(".card[data-id]")) { sel.add(c.dataset.id); }
      show();
    });
  }
  const cls = document.getElementById("cls"), fresh = document.getElementById("fresh");
  document.getElementById("give").addEventListener("click", () => give(cls.value));
  document.getElementById("givenew").addEventListener("click", () => {
    const v = fresh.value.trim(); if (v) { give(v); }
  });
  fresh.addEventListener("keydown", ev => {
    if (ev.key === "Enter") { const v = fresh.value.trim(); if (v) { give(v); } ev.preventDefault(); }
    ev.stopPropagation();
  });
  document.getElementById("skip").addEventListener("click", () => give(null));
  document.getElementById("unlabel").addEventListener("click", ungive);
  document.getElementById("none").addEventListener("click", () => { sel.clear(); show(); });
  function csvField(s) { s = String(s); return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function labelsCsv() {
    let out = "path,index,label,source\n";
    for (const c of cards) {
      const l = labels[c.dataset.id];
      if (l && l.label !== null) { out += [csvField(l.path || ""), c.dataset.id, csvField(l.label), "user"].join(",") + "\n"; }
    }
    return out;
  }
  document.getElementById("download").addEventListener("click", () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([labelsCsv()], { type: "text/csv" }));
    a.download = "labels.csv";
    document.body.appendChild(a); a.click(); a.remove();
  });
  document.addEventListener("keydown", ev => {
    if (ev.target === cls) { return; }
    if (/^[0-9]$/.test(ev.key) && cls.options.length > Number(ev.key)) { give(cls.options[Number(ev.key)].value); }
    else if (ev.key === "s") { give(null); }
    else if (ev.key === "n") { fresh.focus(); }
    else if (ev.key === "Enter") { give(cls.value); }
    else if (ev.key === "Delete" || ev.key === "Backspace") { ungive(); }
    else if (ev.key === "Escape") { sel.clear(); show(); }
    else { return; }
    // handled: no default action (Enter on a focused button would click it again)
    ev.preventDefault();
  });
  show();
})();
"#;

/// The whole page.
pub fn page(s: &PageInput) -> String {
    let shape = s.shape.unwrap_or(Shape { c: 1, h: 28, w: 28 });
    let mut h = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>metaclf review</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}\
         .grid{display:flex;flex-wrap:wrap;gap:8px}.card{margin:0;padding:4px;border:2px solid #ccc;width:150px;font-size:12px;background:#fafafa;cursor:pointer;user-select:none}\
         .card.flag{border-color:#e8b79a;background:#fff4ee}.card.sel{border-color:#0072B2;background:#dcebf7;outline:2px solid #0072B2}.card.done{opacity:0.75}\
         .card img{image-rendering:pixelated;display:block;margin:auto;background:#000}.given{font-weight:bold;color:#0072B2;min-height:1em}\
         .noimg{width:84px;height:84px;margin:auto;background:#ddd}.path{overflow-wrap:anywhere;word-break:break-all;color:#555}\
         .ok{color:#117733}.bad{color:#b00;font-weight:bold}table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
         .lead{font-size:1.1em;background:#eef5fb;padding:0.6em 1em;border-left:4px solid #0072B2}\
         .bar{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:6px 0;z-index:1}.bar button,.bar select,.bar input{font-size:0.95em;margin:2px}\
         .how{color:#555;font-size:0.9em}</style></head>",
    );
    h.push_str(&format!("<body data-key=\"{}\">", esc(&s.key)));
    h.push_str("<h1>Which predictions not to trust</h1>");
    h.push_str(&format!(
        "<p class=\"lead\"><b>{}</b> of {} images look like <b>a new kind</b> (p_known below {}), <b>{}</b> like <b>misclassified</b> known images (p_correct_if_known below {}); {} flagged by trust (<b>{:.1}%</b>) at the <code>{}</code> threshold (trust &lt; {:.4}){}{}.</p>",
        s.new_kind_total,
        s.images,
        s.p_known_threshold.map_or("–".into(), |t| format!("{t:.4}")),
        s.misclassified_total,
        s.p_correct_threshold.map_or("–".into(), |t| format!("{t:.4}")),
        s.flagged,
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
        "<p>Data <code>{}</code>, run <code>{}</code>. Trust model: {} ({}). Trust is the model's probability that a prediction is right and its image from the known classes; p_known that the image is of a kind the CNN was trained on; p_correct_if_known that the prediction is right if it is.{}</p>",
        esc(&s.data),
        esc(&s.run),
        esc(&s.trust_model),
        esc(&s.selection),
        esc(&s.threshold_note)
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
    // the labelling bar
    h.push_str("<div class=\"bar\"><select id=\"cls\" title=\"the run's classes (keys 0–9)\">");
    for (i, c) in s.class_names.iter().enumerate() {
        h.push_str(&format!(
            "<option value=\"{0}\">{1}{0}</option>",
            esc(c),
            if i < 10 {
                format!("{i}: ")
            } else {
                String::new()
            }
        ));
    }
    h.push_str("</select><button id=\"give\" title=\"Enter\">label as class</button> <input id=\"fresh\" placeholder=\"new class name (n)\" size=\"16\"><button id=\"givenew\">label as new class</button> <button id=\"skip\" title=\"s\">skip</button><button id=\"unlabel\" title=\"Delete\">remove label</button><button id=\"none\" title=\"Esc\">select none</button> <button id=\"download\"><b>download labels.csv</b></button> <span id=\"status\"></span></div>");
    h.push_str("<p class=\"how\">Click cards to select them (shift-click selects a range, \"select all\" a whole group), then label: a class of the run (the list, or keys 0–9), a new class name (n, type, Enter), or skip (s). Delete removes a label, Esc clears the selection. Labels stay in this browser (localStorage) across reloads; \"download labels.csv\" saves them for <code>metaclf extend --labels labels.csv</code>.</p>");
    h.push_str(&format!(
        "<h2>New kind? ({} of {} shown)</h2><p class=\"how\">Images the trust model thinks are of a kind the CNN never saw, least known first. {}</p>",
        s.new_kind.iter().map(|g| g.cards.len()).sum::<usize>(),
        s.new_kind_total,
        esc(&s.grouping)
    ));
    for (gi, g) in s.new_kind.iter().enumerate() {
        h.push_str(&format!(
            "<h3>{} ({} images) <button class=\"selgroup\" data-group=\"g{gi}\">select all</button></h3><div class=\"grid\" id=\"g{gi}\">",
            esc(&g.title),
            g.cards.len()
        ));
        for c in &g.cards {
            h.push_str(&card(c, shape));
        }
        h.push_str("</div>");
    }
    h.push_str(&format!(
        "<h2>Misclassified? ({} of {} shown)</h2><p class=\"how\">Images of a known kind whose prediction is probably wrong, least likely right first. <button class=\"selgroup\" data-group=\"mis\">select all</button></p><div class=\"grid\" id=\"mis\">",
        s.misclassified.len(),
        s.misclassified_total
    ));
    for c in &s.misclassified {
        h.push_str(&card(c, shape));
    }
    h.push_str("</div>");
    h.push_str(&format!("<h2>Flagged images by predicted class</h2><p class=\"how\">{} flagged images have msp ≥ 0.9: the CNN is sure, the trust model is not.</p><table><tr><th>predicted</th><th>images</th><th>flagged</th><th>flagged %</th></tr>", s.confident_flagged));
    for (c, n, f) in &s.by_class {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            esc(c),
            n,
            f,
            100.0 * *f as f64 / (*n).max(1) as f64
        ));
    }
    h.push_str("</table>");
    if let Some(curve) = &s.curve {
        h.push_str(&format!(
            "<h2>Accuracy vs rejection</h2><p>Flag the least trusted predictions first and measure the accuracy of the rest (all {}: {}; kept: {}; flagged: {}). The dot is the threshold used.</p>{}",
            s.images,
            pct(s.accuracy),
            pct(s.kept_accuracy),
            pct(s.flagged_accuracy),
            lift_svg(curve, s)
        ));
    }
    h.push_str("<p class=\"how\">scores.csv lists every image with its rank (1 = least trustworthy), p_known, p_correct_if_known and suspect; summary.json holds these counts.</p>");
    h.push_str("<script>");
    h.push_str(SCRIPT);
    h.push_str("</script></body></html>\n");
    h
}
