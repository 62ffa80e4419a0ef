//! Checks a request against an official OpenAPI document (OpenAPI 3 for Vercel, Swagger 2
//! for Kubernetes): the path and method exist, every query parameter is declared and of the
//! declared type, required parameters and headers are present, the content type is one the
//! operation consumes, and a JSON body fits the operation's schema.
//!
//! Kubernetes PATCH bodies are declared as a bare `Patch` object, so they are checked against
//! what the server decodes them into: a strategic-merge or merge patch against the resource's
//! own schema (every field optional, unknown fields refused as `fieldValidation=Strict`
//! would), a JSON patch as a list of operations whose values fit the schema at their path.

use std::path::Path;

use serde_json::Value;

/// The sha256 of each vendored document, as `tests/specs/SOURCES.md` records it.
const DIGESTS: [(&str, &str); 4] = [
    (
        "vercel-openapi.json",
        "431b79d1a11a566bd15b695eeb70af2409446c222679a01f9a8dcf90bc8f69a7",
    ),
    (
        "kubernetes-v1.36-swagger.json",
        "37aef16c240440400be2d2d722d07dfb1c6aefe3f0e0c72d50f4f0a0097ae8e8",
    ),
    (
        "slack_web_openapi_v2.json",
        "742a5c977180a829df8767cf57bc417d99b3713583aee83741efb9c08ca731e7",
    ),
    (
        "gateway-api-v1.6.1-httproutes.yaml",
        "a424a0d6c953b162e71d1d97bb7e75012d8f1ac264e7274f2763d1b96ab39852",
    ),
];

/// A vendored document's bytes, decompressed and checked against its recorded digest.
pub fn vendored(file: &str) -> Vec<u8> {
    use sha2::Digest as _;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("specs")
        .join(format!("{file}.zst"));
    let packed = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read the spec {}: {e}", path.display()));
    let text = zstd::decode_all(packed.as_slice()).expect("the spec decompresses");
    let want = DIGESTS
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, d)| *d)
        .unwrap_or_else(|| panic!("{file} is not listed in tests/specs/SOURCES.md"));
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&text)),
        want,
        "{file}: the vendored copy is not the recorded document"
    );
    text
}

/// One request, as a stand-in received it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Call<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loaded document.
pub struct Spec {
    doc: Value,
    swagger2: bool,
    /// Objects with declared properties refuse undeclared ones (Kubernetes' strict decoding).
    closed_objects: bool,
}

impl Spec {
    /// Loads one of the documents vendored in `tests/specs/` (see its SOURCES.md), refusing
    /// a copy whose digest is not the recorded one.
    pub fn load(file: &str, closed_objects: bool) -> Spec {
        let text = vendored(file);
        let doc: Value = serde_json::from_slice(&text).expect("the spec is JSON");
        let swagger2 = doc.get("swagger").is_some();
        Spec {
            doc,
            swagger2,
            closed_objects,
        }
    }

    /// Adds a CustomResourceDefinition's resource at `path` (a namespaced item path), as the
    /// API server serves a CRD: GET, PUT, and PATCH with the patch types it accepts for custom
    /// resources (JSON patch, merge patch, apply; not strategic merge). `crd` is one of the
    /// vendored YAML documents; `version` the served version whose schema counts.
    pub fn add_crd(&mut self, path: &str, crd: &str, version: &str) {
        let text = vendored(crd);
        let doc: Value = serde_yaml::from_slice(&text).expect("the CRD is YAML");
        let schema = doc["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == version)
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
            .unwrap_or_else(|| panic!("{crd} has no version {version}"));
        let ok = serde_json::json!({"200": {"description": "OK", "schema": schema}});
        let body = |required: bool| serde_json::json!([{"in": "body", "name": "body", "required": required, "schema": schema}]);
        self.add_operation(path, "get", serde_json::json!({"responses": ok}));
        self.add_operation(
            path,
            "put",
            serde_json::json!({"consumes": ["application/json"], "parameters": body(true), "responses": ok}),
        );
        self.add_operation(
            path,
            "patch",
            serde_json::json!({
                "consumes": ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"],
                "parameters": [{"in": "body", "name": "body", "required": true, "schema": {"type": "object"}}],
                "responses": ok,
            }),
        );
    }

    /// A document served by the program under test (the daemon's own).
    pub fn from_value(doc: Value) -> Spec {
        Spec {
            doc,
            swagger2: false,
            closed_objects: true,
        }
    }

    /// Every way a response departs from the document: its status must be declared for the
    /// operation, and a JSON body must fit the declared schema.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> Vec<String> {
        let Some((template, item)) = self.route(path) else {
            return vec![format!("{method} {path}: no such path in the spec")];
        };
        let what = format!("{method} {template} -> {status}");
        let Some(op) = item.get(method.to_ascii_lowercase()) else {
            return vec![format!("{what}: the spec has no such operation")];
        };
        let Some(resp) = op["responses"].get(status.to_string()) else {
            return vec![format!("{what}: status not declared")];
        };
        let resp = self.resolve(resp);
        let Some(schema) = resp["content"]
            .as_object()
            .and_then(|c| c.get("application/json"))
            .map(|c| &c["schema"])
        else {
            return Vec::new();
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return vec![format!("{what}: declared JSON, got {e}")],
        };
        let mut out = Vec::new();
        self.validate(schema, &value, "$", false, &mut out);
        out.into_iter().map(|e| format!("{what}: {e}")).collect()
    }

    /// Adds an operation the public document lacks (documented where it is added).
    pub fn add_operation(&mut self, path: &str, method: &str, operation: Value) {
        let paths = self.doc["paths"].as_object_mut().expect("paths");
        let item = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        item[method.to_ascii_lowercase()] = operation;
    }

    /// Gives an operation the request body the document leaves out (documented where it is
    /// used).
    pub fn set_request_body(&mut self, path: &str, method: &str, body: Value) {
        let op = &mut self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the spec");
        op["requestBody"] = body;
    }

    /// Drops a parameter from every operation (where the document and the platform's own
    /// docs disagree; documented where it is used).
    pub fn drop_parameter(&mut self, place: &str, name: &str) {
        for item in self.doc["paths"]
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut())
        {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    params.retain(|p| !(p["in"] == place && p["name"] == name));
                }
            }
        }
    }

    /// Every way `call` departs from the document; empty when it fits.
    pub fn check(&self, call: &Call) -> Vec<String> {
        let mut errors = Vec::new();
        let Some((template, item)) = self.route(call.path) else {
            return vec![format!(
                "{} {}: no such path in the spec",
                call.method, call.path
            )];
        };
        let what = format!("{} {template}", call.method);
        let Some(op) = item.get(call.method.to_ascii_lowercase()) else {
            return vec![format!("{what}: the spec has no such operation")];
        };
        let params: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                op.get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            )
            .map(|p| self.resolve(p).clone())
            .collect();
        let of = |place: &str| {
            params
                .iter()
                .filter(move |p| p["in"] == place)
                .collect::<Vec<_>>()
        };
        for (k, v) in call.query {
            match of("query").into_iter().find(|p| p["name"] == k.as_str()) {
                None => errors.push(format!("{what}: query parameter `{k}` is not declared")),
                Some(p) => {
                    let schema = if self.swagger2 { p } else { &p["schema"] };
                    if let Err(e) = self.scalar(schema, v) {
                        errors.push(format!("{what}: query parameter `{k}={v}`: {e}"));
                    }
                }
            }
        }
        for p in of("query") {
            if p["required"] == true && !call.query.iter().any(|(k, _)| p["name"] == k.as_str()) {
                errors.push(format!(
                    "{what}: required query parameter {} missing",
                    p["name"]
                ));
            }
        }
        for p in of("header") {
            let name = p["name"].as_str().unwrap_or_default();
            if p["required"] == true && call.header(name).is_none() {
                errors.push(format!("{what}: required header `{name}` missing"));
            }
        }
        if self.needs_auth(op) && call.header("authorization").is_none() {
            errors.push(format!("{what}: no Authorization header"));
        }
        self.check_body(call, &what, op, &params, &mut errors);
        errors
    }

    fn needs_auth(&self, op: &Value) -> bool {
        let security = op.get("security").or_else(|| self.doc.get("security"));
        security.and_then(Value::as_array).is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
        })
    }

    fn check_body(
        &self,
        call: &Call,
        what: &str,
        op: &Value,
        params: &[Value],
        errors: &mut Vec<String>,
    ) {
        let content_type = call.header("content-type").map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let (schema, types, required): (Option<Value>, Vec<String>, bool) = if self.swagger2 {
            let body = params.iter().find(|p| p["in"] == "body");
            let consumes = op
                .get("consumes")
                .or_else(|| self.doc.get("consumes"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_else(|| vec!["application/json".to_string()]);
            (
                body.map(|b| b["schema"].clone()),
                consumes,
                body.is_some_and(|b| b["required"] == true),
            )
        } else {
            match op.get("requestBody").map(|b| self.resolve(b)) {
                None => (None, vec![], false),
                Some(rb) => {
                    let content = rb["content"].as_object().cloned().unwrap_or_default();
                    let ct = content_type.clone().unwrap_or_default();
                    (
                        content.get(&ct).map(|c| c["schema"].clone()),
                        content.keys().cloned().collect(),
                        rb["required"] == true,
                    )
                }
            }
        };
        if call.body.is_empty() {
            if required {
                errors.push(format!("{what}: the request body is required"));
            }
            return;
        }
        if types.is_empty() && schema.is_none() {
            errors.push(format!("{what}: the operation takes no request body"));
            return;
        }
        let Some(ct) = content_type else {
            errors.push(format!("{what}: a body without a Content-Type"));
            return;
        };
        if !types.iter().any(|t| t == &ct || t == "*/*") {
            errors.push(format!(
                "{what}: content type `{ct}` is not one of {types:?}"
            ));
            return;
        }
        if !ct.contains("json") {
            return;
        }
        let value: Value = match serde_json::from_slice(call.body) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{what}: the body is not JSON: {e}"));
                return;
            }
        };
        let form: Vec<&Value> = params.iter().filter(|p| p["in"] == "formData").collect();
        if self.swagger2 && !form.is_empty() {
            self.form_as_json(&form, &value, what, errors);
            return;
        }
        let Some(schema) = schema else { return };
        if self.swagger2 && call.method == "PATCH" {
            let Some(target) = self.patched_schema(call.path) else {
                errors.push(format!("{what}: cannot tell which resource this patches"));
                return;
            };
            if ct == "application/json-patch+json" {
                self.json_patch(&target, &value, what, errors);
            } else {
                let mut found = Vec::new();
                self.validate(&target, &value, "$", true, &mut found);
                errors.extend(found.into_iter().map(|e| format!("{what}: {e}")));
            }
            return;
        }
        let mut found = Vec::new();
        self.validate(&schema, &value, "$", false, &mut found);
        errors.extend(found.into_iter().map(|e| format!("{what}: {e}")));
    }

    /// A JSON body for an operation declared with form fields (Slack's Web API takes both):
    /// every key a declared field, required fields present, booleans boolean. A `string`
    /// field may hold JSON structure (form-encoded JSON such as `blocks` arrives as itself).
    fn form_as_json(&self, form: &[&Value], body: &Value, what: &str, errors: &mut Vec<String>) {
        let Some(map) = body.as_object() else {
            errors.push(format!("{what}: the body is not a JSON object"));
            return;
        };
        for (k, v) in map {
            match form.iter().find(|p| p["name"] == k.as_str()) {
                None => errors.push(format!("{what}: field `{k}` is not declared")),
                Some(p) if p["type"] == "boolean" && !v.is_boolean() => {
                    errors.push(format!("{what}: field `{k}` must be a boolean, got {v}"))
                }
                Some(p) if p["type"] == "string" && (v.is_number() || v.is_boolean()) => {
                    errors.push(format!("{what}: field `{k}` must be a string, got {v}"))
                }
                Some(_) => {}
            }
        }
        for p in form {
            if p["required"] == true && !map.contains_key(p["name"].as_str().unwrap_or("")) {
                errors.push(format!("{what}: required field {} missing", p["name"]));
            }
        }
    }

    /// The schema of the resource a PATCH path names: its GET's 200 response.
    fn patched_schema(&self, path: &str) -> Option<Value> {
        let (_, item) = self.route(path)?;
        Some(item["get"]["responses"]["200"]["schema"].clone())
    }

    fn json_patch(&self, target: &Value, ops: &Value, what: &str, errors: &mut Vec<String>) {
        let Some(ops) = ops.as_array() else {
            errors.push(format!("{what}: a JSON patch is an array of operations"));
            return;
        };
        for (i, op) in ops.iter().enumerate() {
            let kind = op["op"].as_str().unwrap_or("");
            if !["add", "remove", "replace", "move", "copy", "test"].contains(&kind) {
                errors.push(format!("{what}: operation {i}: unknown op {:?}", op["op"]));
                continue;
            }
            let Some(path) = op["path"].as_str() else {
                errors.push(format!("{what}: operation {i}: no `path`"));
                continue;
            };
            if matches!(kind, "add" | "replace" | "test") {
                match self.schema_at(target, path) {
                    None => errors.push(format!(
                        "{what}: operation {i}: `{path}` is not a field of the resource"
                    )),
                    Some(schema) => {
                        let mut found = Vec::new();
                        self.validate(&schema, &op["value"], path, false, &mut found);
                        errors.extend(
                            found
                                .into_iter()
                                .map(|e| format!("{what}: operation {i}: {e}")),
                        );
                    }
                }
            }
        }
    }

    /// The schema a JSON pointer reaches inside `schema`.
    fn schema_at(&self, schema: &Value, pointer: &str) -> Option<Value> {
        let mut here = self.resolve(schema).clone();
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            let next = if let Some(p) = here.get("properties").and_then(|p| p.get(&token)) {
                p.clone()
            } else if let Some(a) = here.get("additionalProperties").filter(|a| a.is_object()) {
                a.clone()
            } else if here.get("items").is_some()
                && (token == "-" || token.parse::<usize>().is_ok())
            {
                here["items"].clone()
            } else {
                return None;
            };
            here = self.resolve(&next).clone();
        }
        Some(here)
    }

    fn route(&self, path: &str) -> Option<(String, &Value)> {
        let base = self.doc["basePath"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('/');
        let path = path.strip_prefix(base)?;
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let mut best: Option<(usize, &String, &Value)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            let parts: Vec<&str> = template.trim_end_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let fits = parts.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else if t == s {
                    literal += 1;
                    true
                } else {
                    false
                }
            });
            if fits && best.as_ref().is_none_or(|(n, _, _)| literal > *n) {
                best = Some((literal, template, item));
            }
        }
        best.map(|(_, t, i)| (t.clone(), i))
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let pointer = r.trim_start_matches('#');
                    v = self.doc.pointer(pointer).unwrap_or(&Value::Null);
                }
                None => break,
            }
        }
        v
    }

    fn scalar(&self, schema: &Value, text: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        let value = match schema["type"].as_str() {
            Some("integer") => text
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| "not an integer".to_string())?,
            Some("number") => text
                .parse::<f64>()
                .map(Value::from)
                .map_err(|_| "not a number".to_string())?,
            Some("boolean") => match text {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err("not a boolean".into()),
            },
            _ => Value::String(text.to_string()),
        };
        let mut found = Vec::new();
        self.validate(schema, &value, "", false, &mut found);
        match found.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Checks `value` against `schema`; `partial` (a patch) makes every field optional.
    fn validate(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        partial: bool,
        out: &mut Vec<String>,
    ) {
        let schema = self.resolve(schema);
        let types: Vec<&str> = match &schema["type"] {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if value.is_null()
            && (schema["nullable"] == true
                || schema["x-nullable"] == true
                || partial
                || types.contains(&"null"))
        {
            return;
        }
        // OpenAPI 3.1: `type: [T, "null"]` is T for a value that is not null.
        if let Some(t) = types.iter().find(|t| **t != "null") {
            let mut one = schema.clone();
            one["type"] = Value::String((*t).to_string());
            return self.validate(&one, value, at, partial, out);
        }
        if let Some(all) = schema["allOf"].as_array() {
            for s in all {
                self.validate(s, value, at, partial, out);
            }
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(options) = schema[key].as_array() {
                let fits = options
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        self.validate(s, value, at, partial, &mut e);
                        e.is_empty()
                    })
                    .count();
                if fits == 0 || (exactly_one && fits > 1) {
                    out.push(format!("{at}: fits {fits} of the {key} alternatives"));
                }
            }
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let ty = schema["type"].as_str();
        if schema["format"] == "int-or-string" {
            if !(value.is_string() || value.is_i64()) {
                out.push(format!("{at}: expected an int or a string"));
            }
            return;
        }
        match ty {
            Some("object") => {
                let Some(map) = value.as_object() else {
                    out.push(format!("{at}: expected an object, got {value}"));
                    return;
                };
                let props = schema["properties"].as_object();
                if !partial {
                    for r in schema["required"].as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str()
                            && !map.contains_key(r)
                        {
                            out.push(format!("{at}: required field `{r}` missing"));
                        }
                    }
                }
                for (k, v) in map {
                    let here = format!("{at}.{k}");
                    if let Some(p) = props.and_then(|p| p.get(k)) {
                        self.validate(p, v, &here, partial, out);
                    } else {
                        match &schema["additionalProperties"] {
                            Value::Bool(false) => out.push(format!("{here}: unknown field")),
                            Value::Object(_) => self.validate(
                                &schema["additionalProperties"],
                                v,
                                &here,
                                partial,
                                out,
                            ),
                            Value::Null if self.closed_objects && props.is_some() => {
                                out.push(format!("{here}: unknown field"))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Some("array") => match value.as_array() {
                None => out.push(format!("{at}: expected an array, got {value}")),
                Some(items) => {
                    if let Some(max) = schema["maxItems"].as_u64()
                        && items.len() as u64 > max
                    {
                        out.push(format!("{at}: more than {max} items"));
                    }
                    if let Some(min) = schema["minItems"].as_u64()
                        && (items.len() as u64) < min
                    {
                        out.push(format!("{at}: fewer than {min} items"));
                    }
                    for (i, v) in items.iter().enumerate() {
                        self.validate(&schema["items"], v, &format!("{at}[{i}]"), partial, out);
                    }
                }
            },
            Some("string") => match value.as_str() {
                None => out.push(format!("{at}: expected a string, got {value}")),
                Some(s) => {
                    if let Some(max) = schema["maxLength"].as_u64()
                        && s.chars().count() as u64 > max
                    {
                        out.push(format!("{at}: longer than {max} characters"));
                    }
                }
            },
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                out.push(format!("{at}: expected an integer, got {value}"))
            }
            Some("integer") => {
                let n = value.as_f64().unwrap_or(0.0);
                if let Some(min) = schema["minimum"].as_f64()
                    && n < min
                {
                    out.push(format!("{at}: {value} is below the minimum {min}"));
                }
                if let Some(max) = schema["maximum"].as_f64()
                    && n > max
                {
                    out.push(format!("{at}: {value} is above the maximum {max}"));
                }
            }
            Some("number") if !value.is_number() => {
                out.push(format!("{at}: expected a number, got {value}"))
            }
            Some("null") if !value.is_null() => {
                out.push(format!("{at}: expected null, got {value}"))
            }
            Some("boolean") if !value.is_boolean() => {
                out.push(format!("{at}: expected a boolean, got {value}"))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(
        method: &'a str,
        path: &'a str,
        query: &'a [(String, String)],
        body: &'a [u8],
        headers: &'a [(String, String)],
    ) -> Call<'a> {
        Call {
            method,
            path,
            query,
            headers,
            body,
        }
    }

    /// The vendored copies are the shared folder's documents, byte for byte, when it is here.
    #[test]
    fn vendored_specs_match_the_shared_folder() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/api-specs");
        for (file, _) in DIGESTS {
            let copy = vendored(file);
            if let Ok(original) = std::fs::read(shared.join(file)) {
                assert!(copy == original, "{file} differs from ../shared/api-specs");
            }
        }
    }

    /// HTTPRoute writes are checked against the CRD's schema, as the API server serves it:
    /// merge and JSON patches only, weights within 0..=1000000, known fields only.
    #[test]
    fn httproute_patches_are_checked_against_the_crd() {
        let k8s = crate::cluster::spec();
        let path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web";
        let headers = |ct: &str| {
            [
                ("authorization".to_string(), "Bearer t".to_string()),
                ("content-type".to_string(), ct.to_string()),
            ]
        };
        let rules = |weight: i64| {
            serde_json::json!({"metadata": {"resourceVersion": "7"}, "spec": {"rules": [{"backendRefs": [
                {"name": "web", "port": 80, "weight": 100 - weight},
                {"name": "web-preview", "port": 80, "weight": weight}]}]}})
            .to_string()
        };
        let merge = headers("application/merge-patch+json");
        assert_eq!(
            k8s.check(&call("PATCH", path, &[], rules(30).as_bytes(), &merge)),
            Vec::<String>::new()
        );
        let errors = k8s.check(&call(
            "PATCH",
            path,
            &[],
            rules(2_000_000).as_bytes(),
            &merge,
        ));
        assert!(
            errors.iter().any(|e| e.contains("above the maximum")),
            "{errors:?}"
        );
        let strategic = headers("application/strategic-merge-patch+json");
        let errors = k8s.check(&call("PATCH", path, &[], rules(30).as_bytes(), &strategic));
        assert!(
            errors.iter().any(|e| e.contains("content type")),
            "{errors:?}"
        );
        let bogus = br#"{"spec": {"rules": [{"backendRefs": [{"name": "web", "wieght": 1}]}]}}"#;
        assert!(
            !k8s.check(&call("PATCH", path, &[], bogus, &merge))
                .is_empty()
        );
    }

    /// The checker refuses what the documents refuse (so a passing check means something).
    #[test]
    fn refuses_requests_that_do_not_fit() {
        let vercel = Spec::load("vercel-openapi.json", false);
        let auth = [
            ("authorization".to_string(), "Bearer t".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        let good = br#"{"name":"web","files":[{"file":"index.html","sha":"abc","size":3}]}"#;
        assert_eq!(
            vercel.check(&call("POST", "/v13/deployments", &[], good, &auth)),
            Vec::<String>::new()
        );
        let unknown = br#"{"name":"web","bogus":1}"#;
        assert!(
            !vercel
                .check(&call("POST", "/v13/deployments", &[], unknown, &auth))
                .is_empty()
        );
        let wrong_type = br#"{"name":"web","files":[{"file":"a","sha":"abc","size":"3"}]}"#;
        assert!(
            !vercel
                .check(&call("POST", "/v13/deployments", &[], wrong_type, &auth))
                .is_empty()
        );
        let q = [("bogus".to_string(), "1".to_string())];
        assert!(
            !vercel
                .check(&call("GET", "/v13/deployments/dpl_1", &q, b"", &auth))
                .is_empty()
        );
        assert!(
            !vercel
                .check(&call("DELETE", "/v2/files", &[], b"", &auth))
                .is_empty()
        );
        assert!(
            !vercel
                .check(&call("GET", "/v99/nothing", &[], b"", &auth))
                .is_empty()
        );

        let k8s = Spec::load("kubernetes-v1.36-swagger.json", true);
        let path = "/apis/apps/v1/namespaces/web/deployments/web";
        let smp = [
            ("authorization".to_string(), "Bearer t".to_string()),
            (
                "content-type".to_string(),
                "application/strategic-merge-patch+json".to_string(),
            ),
        ];
        let ok =
            br#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"r/web:1"}]}}}}"#;
        assert_eq!(
            k8s.check(&call("PATCH", path, &[], ok, &smp)),
            Vec::<String>::new()
        );
        let typo =
            br#"{"spec":{"template":{"spec":{"containers":[{"name":"web","imag":"r/web:1"}]}}}}"#;
        assert!(!k8s.check(&call("PATCH", path, &[], typo, &smp)).is_empty());
        let jp = [
            ("authorization".to_string(), "Bearer t".to_string()),
            (
                "content-type".to_string(),
                "application/json-patch+json".to_string(),
            ),
        ];
        let bad_path = br#"[{"op":"replace","path":"/spec/templat","value":{}}]"#;
        assert!(
            !k8s.check(&call("PATCH", path, &[], bad_path, &jp))
                .is_empty()
        );
        let good_patch = br#"[{"op":"replace","path":"/metadata/annotations","value":{"a":"b"}}]"#;
        assert_eq!(
            k8s.check(&call("PATCH", path, &[], good_patch, &jp)),
            Vec::<String>::new()
        );
        let text = [
            ("authorization".to_string(), "Bearer t".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        assert!(!k8s.check(&call("PATCH", path, &[], ok, &text)).is_empty());
        assert!(
            !k8s.check(&call("PATCH", path, &[], ok, &smp[1..]))
                .is_empty(),
            "no token"
        );

        let slack = crate::slack::spec();
        let json = [
            ("authorization".to_string(), "Bearer xoxb-1".to_string()),
            (
                "content-type".to_string(),
                "application/json; charset=utf-8".to_string(),
            ),
        ];
        let post = |body: &'static [u8]| {
            slack.check(&call("POST", "/api/chat.postMessage", &[], body, &json))
        };
        assert_eq!(
            post(br#"{"channel":"C1","text":"hi","blocks":[],"reply_broadcast":true}"#),
            Vec::<String>::new()
        );
        assert!(
            !post(br#"{"channel":"C1","txt":"hi"}"#).is_empty(),
            "unknown field"
        );
        assert!(!post(br#"{"text":"hi"}"#).is_empty(), "no channel");
        assert!(
            !post(br#"{"channel":"C1","reply_broadcast":"yes"}"#).is_empty(),
            "not a boolean"
        );
    }
}
