//! `rainforest run --demo`: the README's first command, end to end.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::process::{Proc, rainforest};

fn count_lines(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jl") {
                let text = std::fs::read_to_string(&p).expect("read");
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
                    assert!(v["demand_kw"].is_number());
                    n += 1;
                }
            }
        }
    }
    n
}

#[test]
fn run_demo_polls_serves_the_status_page_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let mut child = rainforest()
        .current_dir(dir.path())
        .args([
            "run",
            "--demo",
            "5",
            "--set",
            &format!("listen=127.0.0.1:{port}"),
        ])
        .args(["--set", "poll_interval=500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rainforest run");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Proc::from_child(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut status_line = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout line");
        if line.starts_with("Status page:") {
            status_line = line;
            break;
        }
    }
    // Keep reading, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        status_line.contains(&format!("http://127.0.0.1:{port}/status#token=rft_")),
        "{status_line}"
    );

    let logs = dir.path().join("data/logs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_lines(&logs) < 10 {
        assert!(Instant::now() < deadline, "no readings after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok(), "server not listening");
    assert!(dir.path().join("data/demo-users.jl").exists());
    assert!(
        dir.path().join("data/archive").is_dir(),
        "embedded archive directory"
    );

    let exit = child
        .terminate(Duration::from_secs(10))
        .expect("stopped within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    // Every line written before the stop is whole.
    assert!(count_lines(&logs) >= 10);
}
