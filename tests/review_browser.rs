//! review.html in a real browser: headless Chromium driven over the DevTools protocol
//! (`--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4), with real mouse and
//! key events. Selects cards (click, shift-click, a group's "select all"), labels them (a new
//! class typed in, a class by number key, the list's class by Enter, skip), reloads the page
//! (labels come back from localStorage), downloads labels.csv and compares it byte for byte.

mod common;

use metaclf::review::{page, Card, Group, PageInput};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Cdp {
    child: Child,
    to: std::io::PipeWriter,
    from: BufReader<std::io::PipeReader>,
    next: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl Cdp {
    fn start(profile: &Path) -> Cdp {
        let (their_in, to) = std::io::pipe().unwrap();
        let (from, their_out) = std::io::pipe().unwrap();
        let (a, b) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut cmd = Command::new(common::chromium());
        cmd.args(common::HEADLESS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(profile.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        // SAFETY: dup2 is async-signal-safe; it only renumbers the two pipe ends in the child
        unsafe {
            cmd.pre_exec(move || {
                // first above 4 (a pipe end may itself be 3 or 4), then onto 3 and 4 (dup2
                // clears close-on-exec)
                let (a2, b2) = (
                    libc::fcntl(a, libc::F_DUPFD, 10),
                    libc::fcntl(b, libc::F_DUPFD, 10),
                );
                if a2 < 0 || b2 < 0 || libc::dup2(a2, 3) < 0 || libc::dup2(b2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop(their_in);
        drop(their_out);
        Cdp {
            child,
            to,
            from: BufReader::new(from),
            next: 0,
            session: None,
            events: Vec::new(),
        }
    }

    fn read_message(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).unwrap();
        assert!(n > 0, "chromium closed the pipe");
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Sends a command (to the page's session unless `browser`) and waits for its result.
    fn call_on(&mut self, browser: bool, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !browser {
            if let Some(s) = &self.session {
                msg["sessionId"] = json!(s);
            }
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let m = self.read_message();
            if m["id"] == json!(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_on(false, method, params)
    }

    fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let m = self.read_message();
            if m["method"] == method {
                return m;
            }
            self.events.push(m);
        }
    }

    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    fn click(&mut self, selector: &str, shift: bool) {
        let p = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
        for t in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": t, "x": x, "y": y, "button": "left", "clickCount": 1, "modifiers": if shift { 8 } else { 0 }}),
            );
        }
    }

    fn key(&mut self, key: &str) {
        let (code, text) = match key {
            "Enter" => (13, "\r".to_string()),
            k => (
                k.to_uppercase().chars().next().unwrap() as i64,
                k.to_string(),
            ),
        };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "text": text, "windowsVirtualKeyCode": code}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "windowsVirtualKeyCode": code}),
        );
    }

    fn load(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_event("Page.loadEventFired");
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn card(index: usize, path: &str, p_known: f64) -> Card {
    Card {
        index,
        path: path.into(),
        rank: index,
        pred_name: "copepod".into(),
        label: None,
        msp: 0.9,
        trust: 0.1,
        p_known: Some(p_known),
        p_correct: Some(0.4),
        flag: true,
        pixels: Some((0..784).map(|i| (i % 28) as f32 / 28.0).collect()),
    }
}

#[test]
fn label_in_the_browser_reload_and_download() {
    let input = PageInput {
        run: "runs/plankton".into(),
        data: "folder:batch".into(),
        key: "test".into(),
        images: 40,
        flagged: 6,
        threshold: "keep95".into(),
        class_names: vec!["copepod".into(), "diatom".into(), "salp".into()],
        new_kind: vec![
            Group {
                title: "Group 1 of 2".into(),
                cards: vec![
                    card(10, "new/a, \"x\".png", 0.01),
                    card(11, "new/b.png", 0.02),
                    card(12, "new/c.png", 0.03),
                ],
            },
            Group {
                title: "Group 2 of 2".into(),
                cards: vec![card(13, "new/d.png", 0.04)],
            },
        ],
        new_kind_total: 4,
        misclassified: vec![card(20, "known/e.png", 0.9), card(21, "known/f.png", 0.9)],
        misclassified_total: 2,
        shape: Some(metaclf::data::Shape { c: 1, h: 28, w: 28 }),
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();
    let html = d.path().join("review.html");
    std::fs::write(&html, page(&input)).unwrap();
    let downloads = d.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let url = format!("file://{}", html.display());

    let mut b = Cdp::start(&d.path().join("profile"));
    let t = b.call_on(true, "Target.createTarget", json!({"url": "about:blank"}));
    let s = b.call_on(
        true,
        "Target.attachToTarget",
        json!({"targetId": t["targetId"], "flatten": true}),
    );
    b.session = s["sessionId"].as_str().map(String::from);
    b.call_on(
        true,
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.display().to_string()}),
    );
    b.call("Page.enable", json!({}));
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 3000, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.load(&url);

    // a range by shift-click, a new class typed in
    b.click("[data-id='10']", false);
    b.click("[data-id='12']", true);
    assert_eq!(b.eval("document.querySelectorAll('.card.sel').length"), 3);
    b.key("n");
    b.call("Input.insertText", json!({"text": "pteropod"}));
    b.key("Enter");
    // one of the run's classes by its number, a skip, a whole group by the list's class
    b.click("[data-id='20']", false);
    b.key("1");
    b.click("[data-id='21']", false);
    b.key("s");
    b.click("button.selgroup[data-group='g1']", false);
    b.key("Enter");
    let status = "0 selected · 5 labelled · 1 skipped";
    assert_eq!(
        b.eval("document.getElementById('status').textContent"),
        status
    );

    // labels survive a reload
    b.load(&url);
    assert_eq!(
        b.eval("document.getElementById('status').textContent"),
        status
    );
    assert_eq!(
        b.eval("document.querySelector(\"[data-id='11'] .given\").textContent"),
        "→ pteropod"
    );

    // download labels.csv
    b.click("#download", false);
    let file = downloads.join("labels.csv");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = String::new();
    std::fs::File::open(&file)
        .expect("labels.csv downloaded")
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        text,
        "path,index,label,source\n\
         \"new/a, \"\"x\"\".png\",10,pteropod,user\n\
         new/b.png,11,pteropod,user\n\
         new/c.png,12,pteropod,user\n\
         new/d.png,13,copepod,user\n\
         known/e.png,20,diatom,user\n"
    );
}
