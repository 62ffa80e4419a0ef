//! The backup store's contract: what is put comes back byte for byte with its metadata,
//! listings page through what is stored, delete is idempotent, a missing object is rejected,
//! and failures say what to do.

use super::{Kit, faults, said};
use crate::runtime::{CallError, ObjectInfo, PluginError};

/// The first object's size: over a 256 KiB boundary, not a round number.
const SIZE: usize = (256 << 10) + 3;

pub(super) async fn run(kit: &mut Kit) {
    let prefix = format!("conformance/{}/", kit.ctx.deployment_id);
    let (a, b) = (format!("{prefix}a.bin"), format!("{prefix}b.bin"));
    let body: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let sum = crate::runtime::sha256_hex(&body);
    let meta = vec![("sha256".to_string(), sum.clone())];
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());

    let put = kit
        .call(
            "put",
            plugin.put_object(
                &ctx,
                &a,
                &meta,
                Some(SIZE as u64),
                std::io::Cursor::new(body.clone()),
            ),
        )
        .await;
    const PUT: &str = "put: stores the whole stream and reports its size";
    match put {
        Ok(info) if info.size == SIZE as u64 && info.key == a => {
            kit.pass(PUT, format!("{} bytes under `{a}`", info.size))
        }
        Ok(info) => {
            kit.fail(
                PUT,
                format!(
                    "reported `{}` with {} bytes, expected `{a}` with {SIZE}",
                    info.key, info.size
                ),
            );
            return;
        }
        Err(e) => {
            kit.fail(PUT, said(&e));
            return;
        }
    }
    let got = get(kit, &a).await;
    const GET: &str = "get: returns the same bytes and metadata";
    match got {
        Ok((bytes, info)) if bytes == body && has(&info, "sha256", &sum) => {
            kit.pass(GET, format!("{} bytes, sha256 metadata kept", bytes.len()))
        }
        Ok((bytes, info)) if bytes == body => kit.fail(
            GET,
            format!(
                "the bytes match, but the metadata came back as {:?}",
                info.metadata
            ),
        ),
        Ok((bytes, _)) => kit.fail(
            GET,
            format!("{} bytes came back, not the {SIZE} put", bytes.len()),
        ),
        Err(e) => kit.fail(GET, said(&e)),
    }
    let small = kit
        .call(
            "put",
            plugin.put_object(&ctx, &b, &[], Some(2), std::io::Cursor::new(b"ok".to_vec())),
        )
        .await;
    if let Err(e) = small {
        kit.fail("put: a second, small object", said(&e));
    }
    let listed = list(kit, &prefix).await;
    const LIST: &str = "list-objects: pages through everything under the prefix";
    match listed {
        Ok(keys) if keys == [(a.clone(), SIZE as u64), (b.clone(), 2)] => {
            kit.pass(LIST, "both objects, with their sizes")
        }
        Ok(keys) => kit.fail(LIST, format!("listed {keys:?}")),
        Err(e) => kit.fail(LIST, e),
    }
    let del = kit.call("delete", plugin.delete_object(&ctx, &a)).await;
    let again = kit.call("delete", plugin.delete_object(&ctx, &a)).await;
    const DEL: &str = "delete: removes the object, and deleting it again is not an error";
    match (del, again) {
        (Ok(()), Ok(())) => kit.pass(DEL, "both deletes succeeded"),
        (Err(e), _) => kit.fail(DEL, said(&e)),
        (_, Err(e)) => kit.fail(DEL, format!("the second delete failed: {}", said(&e))),
    }
    const GONE: &str = "get: a missing object is rejected, not retried";
    match get(kit, &a).await {
        Err(CallError::Plugin {
            error: PluginError::Rejected(m),
            ..
        }) => kit.pass(GONE, format!("rejected({m:?})")),
        Err(e) => kit.fail(GONE, format!("expected rejected; got {}", said(&e))),
        Ok((bytes, _)) => kit.fail(
            GONE,
            format!("{} bytes came back after delete", bytes.len()),
        ),
    }
    match list(kit, &prefix).await {
        Ok(keys) if keys == [(b.clone(), 2)] => kit.pass(
            "list-objects: a deleted object is no longer listed",
            "only the second object remains",
        ),
        Ok(keys) => kit.fail(
            "list-objects: a deleted object is no longer listed",
            format!("listed {keys:?}"),
        ),
        Err(e) => kit.fail("list-objects: a deleted object is no longer listed", e),
    }
    let probe_prefix = prefix.clone();
    faults::run(kit, "list-objects", &move |plugin, ctx| {
        let prefix = probe_prefix.clone();
        Box::pin(async move { plugin.list_objects(ctx, &prefix, None).await.map(|_| ()) })
    })
    .await;
    let _ = kit.call("delete", plugin.delete_object(&ctx, &b)).await;
}

fn has(info: &ObjectInfo, key: &str, value: &str) -> bool {
    info.metadata
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(key) && v == value)
}

async fn get(kit: &mut Kit, key: &str) -> Result<(Vec<u8>, ObjectInfo), CallError> {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let (mut reader, writer) = tokio::io::duplex(1 << 20);
    let reading = tokio::spawn(async move {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out)
            .await
            .map(|_| out)
    });
    let info = kit.call("get", plugin.get_object(&ctx, key, writer)).await;
    let bytes = reading.await.ok().and_then(Result::ok).unwrap_or_default();
    info.map(|i| (bytes, i))
}

/// Every (key, size) under `prefix`, following pages.
async fn list(kit: &mut Kit, prefix: &str) -> Result<Vec<(String, u64)>, String> {
    let (plugin, ctx) = (kit.plugin.clone(), kit.ctx.clone());
    let mut keys = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..100 {
        let out = kit
            .call(
                "list-objects",
                plugin.list_objects(&ctx, prefix, page.as_deref()),
            )
            .await
            .map_err(|e| said(&e))?;
        keys.extend(out.objects.into_iter().map(|o| (o.key, o.size)));
        match out.next {
            Some(next) => page = Some(next),
            None => {
                keys.sort();
                return Ok(keys);
            }
        }
    }
    Err("more than 100 pages for two objects: the `next` token never ends".into())
}
