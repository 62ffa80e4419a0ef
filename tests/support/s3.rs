//! A real S3 protocol server for the tests: `s3s-fs` (it verifies SigV4), started on a
//! loopback port over a throwaway directory, and boto3 as the independent client that reads
//! back what the plugin wrote. Both are installed by `make setup` under `target/tools/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::repo_root;

pub const ACCESS_KEY: &str = "AKIADEPLOYAGENTTEST";
pub const SECRET_KEY: &str = "s3-secret-key-for-tests-7c1f0e9a2b";
pub const BUCKET: &str = "site";

fn tool(rel: &str) -> PathBuf {
    let path = repo_root().join("target/tools").join(rel);
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (it installs s3s-fs and boto3 under target/tools)",
        path.display()
    );
    path
}

/// A running s3s-fs; killed when dropped.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    child: Child,
}

impl S3Server {
    /// Starts s3s-fs with one bucket, `BUCKET`.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(tool("bin/s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { port, root, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs boto3 (the independent client) with `script`, which gets `s3` (a client for this
    /// server) and prints one JSON value.
    pub fn boto3(&self, script: &str) -> Value {
        let program = format!(
            "import boto3, json, sys\nfrom botocore.config import Config\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1', config=Config(s3={{'addressing_style': 'path'}}))\n{script}\n",
            self.endpoint()
        );
        let out = Command::new(tool("venv/bin/python"))
            .args(["-c", &program])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "boto3 printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// An object as boto3 sees it: body (as text), Content-Type, Cache-Control.
    pub fn object(&self, key: &str) -> (String, String, String) {
        let v = self.boto3(&format!(
            "o = s3.get_object(Bucket='{BUCKET}', Key='{key}')\nprint(json.dumps([o['Body'].read().decode(), o.get('ContentType', ''), o.get('CacheControl', '')]))"
        ));
        (
            v[0].as_str().unwrap_or_default().to_string(),
            v[1].as_str().unwrap_or_default().to_string(),
            v[2].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Every key in the bucket under `prefix`, as boto3 lists them.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let v = self.boto3(&format!(
            "keys = []\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}', Prefix='{prefix}'):\n    keys += [o['Key'] for o in page.get('Contents', [])]\nprint(json.dumps(sorted(keys)))"
        ));
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[plugins.s3-backups]`: the S3 plugin as a backup store on this server's bucket, its
/// secret key from `S3_SECRET`, allowed only the server's address.
pub fn backup_plugin_table(port: u16) -> String {
    format!(
        r#"[plugins.s3-backups]
path = "{s3}"
[plugins.s3-backups.policy]
allowed_hosts = ["127.0.0.1:{port}"]
allow_ip_ranges = ["127.0.0.0/8"]
timeout_ms = 600000
[plugins.s3-backups.secrets.secret-key]
from = "${{env:S3_SECRET}}"
hosts = ["127.0.0.1:{port}"]
sigv4 = {{ services = ["s3"], regions = ["us-east-1"] }}
[plugins.s3-backups.config]
endpoint = "http://127.0.0.1:{port}"
region = "us-east-1"
bucket = "{bucket}"
path_style = true
access_key_id = "{access}"
"#,
        s3 = crate::fixtures::S3,
        bucket = BUCKET,
        access = ACCESS_KEY,
    )
}
