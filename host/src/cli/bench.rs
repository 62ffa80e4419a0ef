//! `deploy-agent bench plugins`: what the plugin runtime costs, in figures (p50/p90).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use crate::runtime::{Artifact, CallContext, Event, EventKind, LoadSource, PluginSpec, Runtime};

struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Stats {
    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s.get(i).copied().unwrap_or_default()
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

async fn time_async<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // Warm up (caches, allocator, pool slots), then measure.
    for _ in 0..(n / 10).max(1) {
        f().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

pub(super) async fn plugins(path: &Path, iterations: usize) -> anyhow::Result<ExitCode> {
    let cache = tempfile::tempdir()?;
    let runtime = Runtime::new(cache.path().to_path_buf())?;
    let wasm = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e} (build it with `make plugins`)",
            path.display()
        )
    })?;
    let iterations = iterations.max(10);

    let mut compile = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        Component::new(runtime.engine(), &wasm).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        compile.push(t.elapsed());
    }

    // First load compiles and fills the cache; the rest load from it.
    let first = runtime.load(PluginSpec::new("echo", path.to_path_buf()))?;
    anyhow::ensure!(
        first.source() == LoadSource::Compiled,
        "expected a cold cache"
    );
    let mut load = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let p = runtime.load(PluginSpec::new("echo", path.to_path_buf()))?;
        load.push(t.elapsed());
        anyhow::ensure!(p.source() == LoadSource::Cache, "expected a cache hit");
    }

    let plugin = first;
    let ctx = CallContext::new("bench");
    let artifact = Artifact::version("v1");
    let trivial = time_async(iterations, || async {
        plugin.validate(&ctx, &artifact).await?;
        Ok(())
    })
    .await?;
    let event = Event {
        kind: EventKind::Started,
        environment: "bench".into(),
        deployment_id: "d1".into(),
        version: "v1".into(),
        actor: "bench".into(),
        stage: None,
        summary: "benchmark event".into(),
        detail: None,
        duration_ms: None,
        links: Vec::new(),
        at_ms: 0,
    };
    let with_import = time_async(iterations, || async {
        plugin.notify(&ctx, &event).await?;
        Ok(())
    })
    .await?;

    let rows = [
        Stats {
            name: "compile (Component::new, no cache)",
            samples: compile,
        },
        Stats {
            name: "load from disk cache (read, sha256 pin, deserialize, link)",
            samples: load,
        },
        Stats {
            name: "fresh-instance call, trivial export (validate)",
            samples: trivial,
        },
        Stats {
            name: "fresh-instance call, one host import (notify -> log)",
            samples: with_import,
        },
    ];
    say!(
        "plugin runtime benchmark: {} ({} bytes), {} calls per call row",
        path.display(),
        wasm.len(),
        iterations
    );
    say!(
        "{:<62} {:>10} {:>10} {:>8}",
        "measurement",
        "p50",
        "p90",
        "samples"
    );
    for r in &rows {
        say!(
            "{:<62} {:>10} {:>10} {:>8}",
            r.name,
            fmt(r.percentile(0.5)),
            fmt(r.percentile(0.9)),
            r.samples.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
