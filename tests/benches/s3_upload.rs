//! Uploading a 1 GiB backup to a local S3 server (s3s-fs, signatures checked): through the
//! S3 plugin (the agent's backup-store path: file → wasi:io stream → multipart upload) and
//! with `aws s3 cp` (awscli, ten concurrent parts), to the same server, in the same run.
//! Also the agent's peak memory during its upload, which must not grow with the object.
//!
//! `cargo bench -p deploy-agent-tests --bench s3_upload` (S3_BENCH_MIB=N to change the size).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_agent::runtime::{
    CallContext, HostPattern, PluginSpec, Runtime, Secret, SecretValue, Sigv4Scope,
};
use deploy_agent_tests::mem::{peak_rss_kib, reset_peak};
use deploy_agent_tests::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use deploy_agent_tests::{fixtures, repo_root};

/// Writes `mib` MiB of non-repeating bytes, a MiB at a time.
fn write_noise(path: &Path, mib: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("S3_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.bin");
    println!("writing a {mib} MiB backup file...");
    write_noise(&path, mib);
    let bytes = (mib as u64) << 20;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(dir.path().join("cache")).unwrap();
    let host = format!("127.0.0.1:{}", server.port);
    let mut spec = PluginSpec::new("s3", fixtures::S3.into());
    spec.policy
        .allowed_hosts
        .push(HostPattern::parse(&host).unwrap());
    spec.policy
        .allowed_ranges
        .push("127.0.0.0/8".parse().unwrap());
    spec.policy.timeout = Duration::from_secs(3600);
    spec.policy.max_requests = 100_000;
    spec.secrets.insert(
        "secret-key".into(),
        Secret {
            value: SecretValue::new(SECRET_KEY.into()),
            hosts: vec![HostPattern::parse(&host).unwrap()],
            sigv4: Some(Sigv4Scope {
                services: vec!["s3".into()],
                regions: vec!["us-east-1".into()],
            }),
        },
    );
    spec.config = serde_json::json!({"endpoint": server.endpoint(), "region": "us-east-1",
        "bucket": BUCKET, "path_style": true, "access_key_id": ACCESS_KEY, "part_size_mb": 8});
    let plugin = runtime.load(spec).unwrap();
    let ctx = CallContext::new("bench");

    let before = peak_rss_kib();
    reset_peak();
    let started = Instant::now();
    let info = rt
        .block_on(async {
            let file = tokio::fs::File::open(&path).await.unwrap();
            plugin
                .put_object(&ctx, "bench/agent.bin", &[], Some(bytes), file)
                .await
        })
        .expect("the plugin's upload");
    let agent = started.elapsed();
    let peak = peak_rss_kib();
    assert_eq!(info.size, bytes);

    let aws = repo_root().join("target/tools/venv/bin/aws");
    let started = Instant::now();
    let status = Command::new(&aws)
        .args(["s3", "cp", "--only-show-errors"])
        .arg(&path)
        .arg(format!("s3://{BUCKET}/bench/awscli.bin"))
        .args(["--endpoint-url", &server.endpoint()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .status()
        .expect("awscli runs (make test-tools installs it)");
    let awscli = started.elapsed();
    assert!(status.success(), "aws s3 cp failed");
    let stored = |name: &str| {
        std::fs::metadata(server.root.path().join(BUCKET).join("bench").join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert_eq!((stored("agent.bin"), stored("awscli.bin")), (bytes, bytes));

    println!();
    println!("upload of {mib} MiB to s3s-fs on loopback (SigV4 checked), same run:");
    println!(
        "  agent (S3 plugin, 8 MiB parts, 4 in flight) {:>7.2} s  {:>7.1} MiB/s",
        agent.as_secs_f64(),
        mib_per_s(bytes, agent)
    );
    println!(
        "  aws s3 cp (awscli, 8 MiB parts, 10 at once) {:>6.2} s  {:>7.1} MiB/s",
        awscli.as_secs_f64(),
        mib_per_s(bytes, awscli)
    );
    println!(
        "  agent / awscli throughput: {:.2}x",
        awscli.as_secs_f64() / agent.as_secs_f64()
    );
    println!(
        "  agent peak RSS during its upload: {:.1} MiB (before: {:.1} MiB)",
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );
}
