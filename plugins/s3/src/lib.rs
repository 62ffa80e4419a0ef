//! The S3 plugin (any S3-compatible store): a static-site deploy target and an off-site
//! backup store (`store.rs`).
//!
//! ```text
//! <prefix>releases/<id>/…        one prefix per release, uploaded with Content-Type and
//!                                Cache-Control per file
//! <prefix>releases/<id>.json     the release's manifest, written last: a release without it
//!                                is incomplete
//! <prefix>live/…                 what the site serves (point the bucket's website or CDN here)
//! <prefix>live.json              which release `live/` holds, written last on promotion
//! ```
//!
//! `promote` copies the release into `live/` server-side (CopyObject), deletes what the
//! release does not have, then writes `live.json`; each object switches atomically, the site
//! as a whole within the seconds the copies take. `rollback` promotes an earlier release
//! again. Requests are signed with SigV4 by the host (the secret access key is a secret by
//! reference); path-style or virtual-host addressing, any region and endpoint.

mod sigv4;
mod store;
mod xml;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use deploy_agent_sdk::http::{self, Response};
use deploy_agent_sdk::prelude::*;
use deploy_agent_sdk::{InputStream, OutputStream};
use serde::{Deserialize, Serialize};
use sigv4::{Signer, uri_encode};

/// The plugin.
pub struct S3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    endpoint: String,
    region: String,
    bucket: String,
    /// Path-style (`endpoint/bucket/key`) rather than virtual-host (`bucket.endpoint/key`).
    #[serde(default)]
    path_style: bool,
    /// The access key id (not secret); the secret key is the secret `secret-key`.
    access_key_id: String,
    /// Where the site lives in the bucket (`""` or ending in `/`).
    #[serde(default)]
    prefix: String,
    /// Cache-Control for HTML (revalidated, so a promotion shows at once).
    #[serde(default = "default_html_cache")]
    html_cache_control: String,
    /// Cache-Control for everything else.
    #[serde(default = "default_cache")]
    cache_control: String,
    /// The site's public URL (what `{url}` means in checks), if it has one.
    #[serde(default)]
    url: Option<String>,
    /// Backup store: multipart part size in MiB (5 to 5120; raised when a size hint needs it).
    #[serde(default = "default_part_mb")]
    part_size_mb: u64,
    /// Backup store: parts in flight at once (each on its own connection).
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    /// Backup store: objects per listing page (at most 1000).
    #[serde(default = "default_page")]
    list_page_size: u32,
}

fn default_part_mb() -> u64 {
    8
}
fn default_concurrency() -> usize {
    4
}
fn default_page() -> u32 {
    1000
}

fn default_html_cache() -> String {
    "no-cache".into()
}
fn default_cache() -> String {
    "public, max-age=300".into()
}

/// A release's manifest.
#[derive(Serialize, Deserialize)]
struct Manifest {
    version: String,
    created_at_ms: u64,
    files: Vec<String>,
}

/// What `live.json` says.
#[derive(Serialize, Deserialize)]
struct Live {
    release: String,
    promoted_at_ms: u64,
}

struct Client {
    s: Settings,
    signer: Signer,
    /// `host[:port]` of requests.
    host: String,
    scheme: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Content-Type by extension.
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// An S3 error response in words, with the variant that tells the host what to do.
fn s3_error(r: &Response, doing: &str) -> PluginError {
    let body = r.text();
    let code = xml::first(&body, "Code").unwrap_or_default();
    let message = xml::first(&body, "Message").unwrap_or_default();
    let text = format!("S3: {doing}: {} {message} (HTTP {})", code, r.status);
    match code.as_str() {
        "AccessDenied" | "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "ExpiredToken" => {
            unauthorized(text)
        }
        "NoSuchBucket" => rejected(format!("{text}; create the bucket or fix `bucket`")),
        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" => {
            retryable(text, r.retry_after_ms())
        }
        _ => r.status_error(&text),
    }
}

impl Client {
    fn new(ctx: &Context) -> Result<Client, PluginError> {
        let s: Settings = ctx.config()?;
        if !s.prefix.is_empty() && !s.prefix.ends_with('/') {
            return Err(invalid_config("`prefix` must be empty or end with `/`"));
        }
        let (scheme, authority) = s
            .endpoint
            .split_once("://")
            .ok_or_else(|| invalid_config("`endpoint` must start with http:// or https://"))?;
        let authority = authority.trim_end_matches('/');
        let host = if s.path_style {
            authority.to_string()
        } else {
            format!("{}.{authority}", s.bucket)
        };
        let signer = Signer {
            access_key_id: s.access_key_id.clone(),
            secret: ctx.secret("secret-key")?,
            region: s.region.clone(),
        };
        Ok(Client {
            scheme: scheme.to_string(),
            host,
            signer,
            s,
        })
    }

    /// The canonical path of `key` (empty for the bucket itself).
    fn path(&self, key: &str) -> String {
        let key = uri_encode(key, true);
        if self.s.path_style {
            if key.is_empty() {
                format!("/{}", self.s.bucket)
            } else {
                format!("/{}/{key}", self.s.bucket)
            }
        } else {
            format!("/{key}")
        }
    }

    fn send(
        &self,
        method: &str,
        key: &str,
        query: &[(String, String)],
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Response, PluginError> {
        self.request(method, key, query, headers, body)?.send()
    }

    /// A signed request, ready to send or start.
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(String, String)],
        mut headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<http::RequestBuilder, PluginError> {
        let path = self.path(key);
        self.signer.sign(
            method,
            &self.host,
            &path,
            query,
            &mut headers,
            &sigv4::payload_hash(&body),
        )?;
        let mut url = format!("{}://{}{path}", self.scheme, self.host);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!(
                "{}={}",
                uri_encode(k, false),
                uri_encode(v, false)
            ));
        }
        let mut req = http::request(method, &url).body(body);
        for (k, v) in headers {
            req = req.header(&k, v);
        }
        Ok(req)
    }

    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        cache: &str,
    ) -> Result<(), PluginError> {
        let headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            ("cache-control".to_string(), cache.to_string()),
        ];
        let r = self.send("PUT", key, &[], headers, body)?;
        r.error_for_status_with(|r| s3_error(r, &format!("uploading {key}")))
            .map(|_| ())
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), PluginError> {
        let source = format!("/{}/{}", self.s.bucket, uri_encode(from, true));
        let headers = vec![
            ("x-amz-copy-source".to_string(), source),
            ("x-amz-metadata-directive".to_string(), "COPY".to_string()),
        ];
        let r = self.send("PUT", to, &[], headers, Vec::new())?;
        let r = r.error_for_status_with(|r| s3_error(r, &format!("copying {from} to {to}")))?;
        // A copy can fail after a 200: the error is then in the body.
        if xml::first(&r.text(), "Code").is_some() {
            return Err(s3_error(
                &Response { status: 500, ..r },
                &format!("copying {from}"),
            ));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        let r = self.send("GET", key, &[], Vec::new(), Vec::new())?;
        // A missing key is an answer; a missing bucket (also a 404) is an error.
        if r.status == 404 && xml::first(&r.text(), "Code").as_deref() != Some("NoSuchBucket") {
            return Ok(None);
        }
        let r = r.error_for_status_with(|r| s3_error(r, &format!("reading {key}")))?;
        Ok(Some(r.body))
    }

    fn delete(&self, key: &str) -> Result<(), PluginError> {
        let r = self.send("DELETE", key, &[], Vec::new(), Vec::new())?;
        r.error_for_status_with(|r| s3_error(r, &format!("deleting {key}")))
            .map(|_| ())
    }

    /// Every key under `prefix` (ListObjectsV2, all pages); with `delimited`, only the keys
    /// directly under it.
    fn list(&self, prefix: &str, delimited: bool) -> Result<Vec<String>, PluginError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if delimited {
                query.push(("delimiter".to_string(), "/".to_string()));
            }
            if let Some(t) = &token {
                query.push(("continuation-token".to_string(), t.clone()));
            }
            let r = self.send("GET", "", &query, Vec::new(), Vec::new())?;
            let r = r.error_for_status_with(|r| s3_error(r, &format!("listing {prefix}")))?;
            let text = r.text();
            out.extend(xml::all(&text, "Key"));
            token = xml::first(&text, "NextContinuationToken");
            if xml::first(&text, "IsTruncated").as_deref() != Some("true") || token.is_none() {
                return Ok(out);
            }
        }
    }

    fn releases_prefix(&self) -> String {
        format!("{}releases/", self.s.prefix)
    }

    fn manifest(&self, id: &str) -> Result<Option<Manifest>, PluginError> {
        let key = format!("{}{id}.json", self.releases_prefix());
        match self.get(&key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| rejected(format!("{key} is not a release manifest: {e}"))),
        }
    }

    fn live(&self) -> Result<Option<Live>, PluginError> {
        let key = format!("{}live.json", self.s.prefix);
        match self.get(&key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| rejected(format!("{key} is not a live pointer: {e}"))),
        }
    }

    fn cache_for(&self, name: &str) -> &str {
        if content_type(name).starts_with("text/html") {
            &self.s.html_cache_control
        } else {
            &self.s.cache_control
        }
    }

    /// Makes `id` what `live/` serves.
    fn switch_to(&self, id: &str) -> Result<(), PluginError> {
        let manifest = self.manifest(id)?.ok_or_else(|| {
            rejected(format!(
                "no complete release `{id}` (its manifest is missing)"
            ))
        })?;
        let live = format!("{}live/", self.s.prefix);
        let from = format!("{}{id}/", self.releases_prefix());
        for file in &manifest.files {
            self.copy(&format!("{from}{file}"), &format!("{live}{file}"))?;
        }
        for key in self.list(&live, false)? {
            let name = key.strip_prefix(&live).unwrap_or(&key);
            if !manifest.files.iter().any(|f| f == name) {
                self.delete(&key)?;
            }
        }
        let pointer = serde_json::to_vec(&Live {
            release: id.to_string(),
            promoted_at_ms: now_ms(),
        })
        .map_err(|e| rejected(e.to_string()))?;
        self.put(
            &format!("{}live.json", self.s.prefix),
            pointer,
            "application/json",
            "no-cache",
        )
    }
}

impl DeployTarget for S3 {
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError> {
        let c = Client::new(ctx)?;
        let dir = release.path.clone().ok_or_else(|| {
            invalid_config("the S3 target deploys a directory artifact; set `artifact.path`")
        })?;
        let id = if ctx.deployment_id.is_empty() {
            release.version.clone()
        } else {
            ctx.deployment_id.clone()
        };
        // One listing first: a missing bucket or refused credentials fail before any upload.
        c.list(&c.releases_prefix(), true)?;
        if c.manifest(&id)?.is_some() {
            // A resumed run: the release is already complete.
            return Ok(Staged {
                release_id: id,
                url: c.s.url.clone(),
            });
        }
        let files = fs::files(Path::new(&dir))?;
        let prefix = format!("{}{id}/", c.releases_prefix());
        for (name, path) in &files {
            let bytes = std::fs::read(path)
                .map_err(|e| rejected(format!("reading {}: {e}", path.display())))?;
            c.put(
                &format!("{prefix}{name}"),
                bytes,
                content_type(name),
                c.cache_for(name),
            )?;
        }
        let manifest = serde_json::to_vec(&Manifest {
            version: release.version.clone(),
            created_at_ms: now_ms(),
            files: files.into_iter().map(|(n, _)| n).collect(),
        })
        .map_err(|e| rejected(e.to_string()))?;
        c.put(
            &format!("{}{id}.json", c.releases_prefix()),
            manifest,
            "application/json",
            "no-cache",
        )?;
        log::info(format!(
            "uploaded release {id} to s3://{}/{prefix}",
            c.s.bucket
        ));
        Ok(Staged {
            release_id: id,
            url: c.s.url.clone(),
        })
    }

    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError> {
        let c = Client::new(ctx)?;
        // `deploy` writes the manifest last, so a release without one was never staged.
        let state = if c.manifest(release_id)?.is_none() {
            return Err(rejected(format!(
                "no complete release `{release_id}` (its manifest is missing)"
            )));
        } else if c.live()?.is_some_and(|l| l.release == release_id) {
            ReleaseState::Live
        } else {
            ReleaseState::Ready
        };
        Ok(ReleaseStatus {
            state,
            url: c.s.url.clone(),
        })
    }

    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let c = Client::new(ctx)?;
        if c.live()?.is_some_and(|l| l.release == release_id) {
            return Ok(());
        }
        c.switch_to(release_id)
    }

    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let c = Client::new(ctx)?;
        let target = match to {
            Some(id) => id.to_string(),
            None => {
                let releases = list_releases(&c)?;
                previous_release(&releases)
                    .map(|r| r.id.clone())
                    .ok_or_else(|| {
                        rejected("nothing earlier than the live release to roll back to")
                    })?
            }
        };
        c.switch_to(&target)?;
        Ok(target)
    }

    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        list_releases(&Client::new(ctx)?)
    }
}

fn list_releases(c: &Client) -> Result<Vec<Release>, PluginError> {
    let live = c.live()?.map(|l| l.release);
    let base = c.releases_prefix();
    let mut out = Vec::new();
    for key in c.list(&base, true)? {
        let Some(id) = key
            .strip_prefix(&base)
            .and_then(|k| k.strip_suffix(".json"))
        else {
            continue;
        };
        if id.contains('/') {
            continue;
        }
        if let Some(m) = c.manifest(id)? {
            out.push(Release {
                id: id.to_string(),
                version: Some(m.version),
                url: c.s.url.clone(),
                created_at_ms: m.created_at_ms,
                live: live.as_deref() == Some(id),
            });
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    Ok(out)
}

impl BackupStore for S3 {
    fn put(
        ctx: &Context,
        key: &str,
        metadata: Vec<(String, String)>,
        size_hint: Option<u64>,
        body: &InputStream,
    ) -> Result<ObjectInfo, PluginError> {
        Client::new(ctx)?.put_object(key, metadata, size_hint, body)
    }

    fn get(ctx: &Context, key: &str, sink: &OutputStream) -> Result<ObjectInfo, PluginError> {
        Client::new(ctx)?.get_object(key, sink)
    }

    fn list(ctx: &Context, prefix: &str, page: Option<&str>) -> Result<ObjectPage, PluginError> {
        Client::new(ctx)?.list_page(prefix, page)
    }

    fn delete(ctx: &Context, key: &str) -> Result<(), PluginError> {
        Client::new(ctx)?.delete_object(key)
    }
}

export!(S3: deploy_target, backup_store);
