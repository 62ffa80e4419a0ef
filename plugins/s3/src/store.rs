//! The backup store: objects streamed in and out, never held whole.
//!
//! - `put` reads the body a part at a time. A body that fits in one part is one PutObject;
//!   a larger one is a multipart upload (parts of `part_size_mb`, 5 MiB to 5 GiB, at most
//!   10,000), aborted on any failure so no parts are left behind.
//! - `get` reads the object in ranges of one part and writes each to the sink; when the
//!   object's metadata carries `sha256`, the bytes are checked against it.
//! - `list-objects` is ListObjectsV2, a page per call; `delete` is DeleteObject.
//!
//! Metadata travels as `x-amz-meta-*` headers (lowercase names, as S3 stores them).

use deploy_agent_sdk::http;
use deploy_agent_sdk::prelude::*;
use deploy_agent_sdk::{InputStream, OutputStream, StreamError};
use sha2::{Digest, Sha256};

use crate::xml;
use crate::{Client, s3_error};

const MIB: u64 = 1 << 20;
/// S3's limits on multipart uploads.
const MIN_PART: u64 = 5 * MIB;
const MAX_PART: u64 = 5 * 1024 * MIB;
const MAX_PARTS: u64 = 10_000;

fn meta_headers(metadata: &[(String, String)]) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (format!("x-amz-meta-{}", k.to_ascii_lowercase()), v.clone()))
        .collect()
}

/// Reads up to `want` bytes (less only at the end of the stream).
fn read_part(body: &InputStream, want: u64) -> Result<Vec<u8>, PluginError> {
    let mut part = Vec::with_capacity(want as usize);
    while (part.len() as u64) < want {
        match body.blocking_read(want - part.len() as u64) {
            Ok(chunk) => part.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(rejected(format!(
                    "reading the backup to upload failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(part)
}

impl Client {
    fn part_size(&self, size_hint: Option<u64>) -> Result<u64, PluginError> {
        let configured = self.s.part_size_mb * MIB;
        if !(MIN_PART..=MAX_PART).contains(&configured) {
            return Err(invalid_config("`part_size_mb` must be between 5 and 5120"));
        }
        // Big enough that a hinted size fits in 10,000 parts.
        let needed = size_hint.map_or(0, |s| s.div_ceil(MAX_PARTS));
        Ok(configured.max(needed).min(MAX_PART))
    }

    pub(crate) fn put_object(
        &self,
        key: &str,
        metadata: Vec<(String, String)>,
        size_hint: Option<u64>,
        body: &InputStream,
    ) -> Result<ObjectInfo, PluginError> {
        let part_size = self.part_size(size_hint)?;
        let first = read_part(body, part_size)?;
        let info = |size| ObjectInfo {
            key: key.to_string(),
            size,
            metadata: metadata.clone(),
            modified_at_ms: None,
        };
        if (first.len() as u64) < part_size {
            let size = first.len() as u64;
            let r = self.send("PUT", key, &[], meta_headers(&metadata), first)?;
            r.error_for_status_with(|r| s3_error(r, &format!("uploading {key}")))?;
            return Ok(info(size));
        }
        let query = [("uploads".to_string(), String::new())];
        let r = self.send("POST", key, &query, meta_headers(&metadata), Vec::new())?;
        let r =
            r.error_for_status_with(|r| s3_error(r, &format!("starting the upload of {key}")))?;
        let upload_id = xml::first(&r.text(), "UploadId")
            .ok_or_else(|| rejected("S3 started a multipart upload without an UploadId"))?;
        match self.upload_parts(key, &upload_id, part_size, first, body) {
            Ok(size) => Ok(info(size)),
            Err(e) => {
                // Leave no parts behind: they would be billed and never seen.
                let abort = [("uploadId".to_string(), upload_id.clone())];
                match self.send("DELETE", key, &abort, Vec::new(), Vec::new()) {
                    Ok(r) if (200..300).contains(&r.status) => {
                        log::warn(format!("upload of {key} failed; aborted it: {e:?}"))
                    }
                    Ok(r) => log::error(format!(
                        "upload of {key} failed and aborting it failed too (HTTP {}); upload id {upload_id}",
                        r.status
                    )),
                    Err(abort_error) => log::error(format!(
                        "upload of {key} failed and aborting it failed too ({abort_error:?}); upload id {upload_id}"
                    )),
                }
                Err(e)
            }
        }
    }

    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        part_size: u64,
        first: Vec<u8>,
        body: &InputStream,
    ) -> Result<u64, PluginError> {
        // Up to `concurrency` parts in flight: while the server takes one, the next is read
        // and hashed. A part's body is handed over when it is sent, so memory holds one.
        let depth = self.s.concurrency.clamp(1, 16);
        let mut in_flight: std::collections::VecDeque<(u64, http::Pending)> = Default::default();
        let mut etags = Vec::new();
        let finish = |(number, pending): (u64, http::Pending), etags: &mut Vec<String>| {
            let r = pending.wait()?;
            let r = r.error_for_status_with(|r| {
                s3_error(r, &format!("uploading part {number} of {key}"))
            })?;
            let etag = r
                .header("etag")
                .ok_or_else(|| rejected(format!("S3 gave part {number} of {key} no ETag")))?;
            etags.push(etag.to_string());
            Ok::<(), PluginError>(())
        };
        let mut size = 0u64;
        let mut part = first;
        let mut number = 0u64;
        loop {
            number += 1;
            if number > MAX_PARTS {
                return Err(rejected(format!("{key} needs more than {MAX_PARTS} parts")));
            }
            size += part.len() as u64;
            let query = [
                ("partNumber".to_string(), number.to_string()),
                ("uploadId".to_string(), upload_id.to_string()),
            ];
            let pending = self
                .request("PUT", key, &query, Vec::new(), part)?
                .start()?;
            in_flight.push_back((number, pending));
            if in_flight.len() >= depth
                && let Some(oldest) = in_flight.pop_front()
            {
                finish(oldest, &mut etags)?;
            }
            part = read_part(body, part_size)?;
            if part.is_empty() {
                break;
            }
        }
        while let Some(next) = in_flight.pop_front() {
            finish(next, &mut etags)?;
        }
        let mut complete = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            complete.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                etag.replace('&', "&amp;").replace('"', "&quot;")
            ));
        }
        complete.push_str("</CompleteMultipartUpload>");
        let query = [("uploadId".to_string(), upload_id.to_string())];
        let headers = vec![("content-type".to_string(), "application/xml".to_string())];
        let r = self.send("POST", key, &query, headers, complete.into_bytes())?;
        let r =
            r.error_for_status_with(|r| s3_error(r, &format!("completing the upload of {key}")))?;
        // CompleteMultipartUpload can fail after a 200; the error is then in the body.
        if let Some(code) = xml::first(&r.text(), "Code") {
            return Err(rejected(format!(
                "S3: completing the upload of {key}: {code}"
            )));
        }
        Ok(size)
    }

    pub(crate) fn get_object(
        &self,
        key: &str,
        sink: &OutputStream,
    ) -> Result<ObjectInfo, PluginError> {
        let r = self.send("HEAD", key, &[], Vec::new(), Vec::new())?;
        if r.status == 404 {
            return Err(rejected(format!("S3: no object {key}")));
        }
        let r = r.error_for_status_with(|r| s3_error(r, &format!("reading {key}")))?;
        let size: u64 = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| rejected(format!("S3 gave {key} no Content-Length")))?;
        let metadata: Vec<(String, String)> = r
            .headers
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("x-amz-meta-")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let part = self.part_size(None)?;
        let mut hasher = Sha256::new();
        let mut at = 0u64;
        while at < size {
            let end = (at + part).min(size) - 1;
            let headers = vec![("range".to_string(), format!("bytes={at}-{end}"))];
            let r = self.send("GET", key, &[], headers, Vec::new())?;
            let r = r.error_for_status_with(|r| s3_error(r, &format!("reading {key}")))?;
            if r.body.len() as u64 != end - at + 1 {
                return Err(retryable(
                    format!(
                        "S3 returned {} bytes of {key} for a {}-byte range",
                        r.body.len(),
                        end - at + 1
                    ),
                    None,
                ));
            }
            hasher.update(&r.body);
            deploy_agent_sdk::io::write_all(sink, &r.body)
                .map_err(|e| rejected(format!("writing {key} to the agent failed: {e:?}")))?;
            at = end + 1;
        }
        if let Some((_, want)) = metadata.iter().find(|(k, _)| k == "sha256") {
            let got = hex::encode(hasher.finalize());
            if &got != want {
                return Err(rejected(format!(
                    "{key} is corrupt: its sha256 is {got}, its metadata says {want}"
                )));
            }
        }
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            metadata,
            modified_at_ms: None,
        })
    }

    pub(crate) fn list_page(
        &self,
        prefix: &str,
        page: Option<&str>,
    ) -> Result<ObjectPage, PluginError> {
        let mut query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("prefix".to_string(), prefix.to_string()),
            ("max-keys".to_string(), self.s.list_page_size.to_string()),
        ];
        if let Some(token) = page {
            query.push(("continuation-token".to_string(), token.to_string()));
        }
        let r = self.send("GET", "", &query, Vec::new(), Vec::new())?;
        let r = r.error_for_status_with(|r| s3_error(r, &format!("listing {prefix}")))?;
        let text = r.text();
        let objects = xml::blocks(&text, "Contents")
            .into_iter()
            .filter_map(|c| {
                Some(ObjectInfo {
                    key: xml::first(c, "Key")?,
                    size: xml::first(c, "Size")?.parse().ok()?,
                    metadata: Vec::new(),
                    modified_at_ms: xml::first(c, "LastModified")
                        .and_then(|t| crate::sigv4::parse_iso8601_ms(&t)),
                })
            })
            .collect();
        let next = if xml::first(&text, "IsTruncated").as_deref() == Some("true") {
            xml::first(&text, "NextContinuationToken")
        } else {
            None
        };
        Ok(ObjectPage { objects, next })
    }

    pub(crate) fn delete_object(&self, key: &str) -> Result<(), PluginError> {
        let r = self.send("DELETE", key, &[], Vec::new(), Vec::new())?;
        if r.status == 404 {
            return Ok(());
        }
        r.error_for_status_with(|r| s3_error(r, &format!("deleting {key}")))
            .map(|_| ())
    }
}
