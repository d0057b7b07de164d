//! A real Prometheus (Debian's `prometheus`) started by a test on a free
//! port with its own config and storage, killed by its PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, get, get_with, promtool};

/// A Prometheus server this test started, killed (by its PID) when dropped.
pub struct Prometheus {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` on a free port with `config` (a prometheus.yml
    /// text) and these extra flags; waits until it is ready.
    pub fn start(name: &str, config: &str, flags: &[&str]) -> Self {
        let found = Command::new("prometheus").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "prometheus is not installed: run ./scripts/test.sh, which installs Debian's `prometheus` package"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let check = promtool()
            .args(["check", "config"])
            .arg(&config_path)
            .output()
            .expect("promtool check config");
        assert!(
            check.status.success(),
            "{name}: promtool check config:\n{}{}\n{config}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start prometheus");
        let mut prom = Prometheus {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("{name}: prometheus exited with {status}:\n{}", prom.log());
            }
            if get_with(port, "/-/ready", "").is_ok_and(|r| r.status == 200) {
                return prom;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: prometheus not ready within 30s:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `GET` of Prometheus' HTTP API, checked for `"status": "success"`.
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let r = get(self.port, path_and_query);
        let v: serde_json::Value = serde_json::from_str(&r.text())
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {}", r.text()));
        assert_eq!(v["status"], "success", "{path_and_query}: {v}");
        v
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let v = self.api(&format!("/api/v1/query?query={}", urlencode(promql)));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
