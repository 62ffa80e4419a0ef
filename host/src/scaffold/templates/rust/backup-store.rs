//! {{name}}: a deploy-agent backup store for an object API:
//!
//! - `PUT /v1/buckets/{bucket}/objects/{key}` stores the body, with `x-meta-*` headers;
//! - `GET` the same URL returns it (and its `x-meta-*` headers);
//! - `DELETE` it removes it;
//! - `GET /v1/buckets/{bucket}/objects?prefix=P` lists `{"objects": [{"key", "size"}]}`.
//!
//! This template reads each object into memory; for multi-gigabyte backups, upload in parts
//! as the first-party S3 plugin does (plugins/s3).

use deploy_agent_sdk::prelude::*;
use deploy_agent_sdk::{InputStream, OutputStream, StreamError};
use serde::Deserialize;

/// `[plugins.{{name}}.config]` in agent.toml.
#[derive(Deserialize)]
struct Settings {
    /// The object API, e.g. `https://objects.example.com`.
    api: String,
    /// The bucket backups go to.
    bucket: String,
}

struct Api {
    base: String,
    token: SecretRef,
}

impl Api {
    fn new(ctx: &Context) -> Result<Api, PluginError> {
        let s: Settings = ctx.config()?;
        Ok(Api {
            base: format!(
                "{}/v1/buckets/{}/objects",
                s.api.trim_end_matches('/'),
                http::encode(&s.bucket)
            ),
            token: ctx.secret("token")?,
        })
    }

    fn object(&self, key: &str) -> String {
        // Keys keep their slashes; each segment is encoded.
        let path: Vec<String> = key.split('/').map(http::encode).collect();
        format!("{}/{}", self.base, path.join("/"))
    }
}

struct Plugin;

impl BackupStore for Plugin {
    fn put(
        ctx: &Context,
        key: &str,
        metadata: Vec<(String, String)>,
        _size_hint: Option<u64>,
        body: &InputStream,
    ) -> Result<ObjectInfo, PluginError> {
        let api = Api::new(ctx)?;
        let bytes = read_all(body)?;
        let mut req = http::put(&api.object(key)).header("authorization", api.token.bearer());
        for (k, v) in &metadata {
            req = req.header(&format!("x-meta-{k}"), v.as_str());
        }
        req.body(bytes.clone()).send()?.error_for_status()?;
        Ok(ObjectInfo {
            key: key.into(),
            size: bytes.len() as u64,
            metadata,
            modified_at_ms: None,
        })
    }

    fn get(ctx: &Context, key: &str, sink: &OutputStream) -> Result<ObjectInfo, PluginError> {
        let api = Api::new(ctx)?;
        let r = http::get(&api.object(key))
            .header("authorization", api.token.bearer())
            .send()?
            .error_for_status()?;
        deploy_agent_sdk::io::write_all(sink, &r.body)
            .map_err(|e| rejected(format!("cannot write the object out: {e:?}")))?;
        Ok(ObjectInfo {
            key: key.into(),
            size: r.body.len() as u64,
            metadata: metadata(&r.headers),
            modified_at_ms: None,
        })
    }

    fn list(ctx: &Context, prefix: &str, _page: Option<&str>) -> Result<ObjectPage, PluginError> {
        #[derive(Deserialize)]
        struct Listed {
            key: String,
            size: u64,
        }
        #[derive(Deserialize)]
        struct Listing {
            objects: Vec<Listed>,
        }
        let api = Api::new(ctx)?;
        let url = format!("{}?prefix={}", api.base, http::encode(prefix));
        let listing: Listing = http::get(&url)
            .header("authorization", api.token.bearer())
            .send()?
            .error_for_status()?
            .json()?;
        Ok(ObjectPage {
            objects: listing
                .objects
                .into_iter()
                .map(|o| ObjectInfo {
                    key: o.key,
                    size: o.size,
                    metadata: Vec::new(),
                    modified_at_ms: None,
                })
                .collect(),
            next: None,
        })
    }

    fn delete(ctx: &Context, key: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        let r = http::delete(&api.object(key))
            .header("authorization", api.token.bearer())
            .send()?;
        // Deleting a missing object is not an error.
        if r.status != 404 {
            r.error_for_status()?;
        }
        Ok(())
    }
}

/// The `x-meta-*` headers, without the prefix.
fn metadata(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("x-meta-")?.to_string(), v.clone())))
        .collect()
}

/// Everything the host streams in.
fn read_all(body: &InputStream) -> Result<Vec<u8>, PluginError> {
    let mut out = Vec::new();
    loop {
        match body.blocking_read(1 << 20) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(out),
            Err(e) => return Err(rejected(format!("cannot read the backup: {e:?}"))),
        }
    }
}

export!(Plugin: backup_store);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_comes_from_x_meta_headers() {
        let headers = vec![
            (
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ),
            ("x-meta-sha256".to_string(), "abc".to_string()),
        ];
        assert_eq!(
            metadata(&headers),
            vec![("sha256".to_string(), "abc".to_string())]
        );
    }
}
