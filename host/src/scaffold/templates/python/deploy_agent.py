"""A small helper for deploy-agent plugins written in Python (componentize-py).

Blocking HTTP over `wasi:http`, errors as the WIT `plugin-error` variants, logging and
secrets by reference. Requests go only to the hosts agent.toml grants the plugin.
"""

import json
from typing import List, Optional, Tuple

from componentize_py_types import Err, Ok
from wit_world.imports import log as _log
from wit_world.imports import outgoing_handler, secrets
from wit_world.imports import wasi_http_types as h
from wit_world.imports.deploy_agent_plugin_types import (
    PluginError_InvalidConfig,
    PluginError_Rejected,
    PluginError_Retryable,
    PluginError_Unauthorized,
    Retryable,
)
from wit_world.imports.streams import StreamError_Closed


def retryable(message: str, retry_after_ms: Optional[int] = None) -> Err:
    """A transient failure: the host backs off (`retry_after_ms` if given) and retries."""
    return Err(PluginError_Retryable(Retryable(message, retry_after_ms)))


def rejected(message: str) -> Err:
    """A permanent failure."""
    return Err(PluginError_Rejected(message))


def unauthorized(message: str) -> Err:
    """Credentials missing, wrong, expired or lacking a permission."""
    return Err(PluginError_Unauthorized(message))


def invalid_config(message: str) -> Err:
    """The plugin's config table in agent.toml is wrong."""
    return Err(PluginError_InvalidConfig(message))


def config(ctx) -> dict:
    """The plugin's `[plugins.NAME.config]` table."""
    try:
        value = json.loads(ctx.config or "{}")
    except ValueError as e:
        raise invalid_config(f"config is not JSON: {e}")
    return value


def setting(ctx, key: str) -> str:
    """A required string setting."""
    value = config(ctx).get(key)
    if not isinstance(value, str) or not value:
        raise invalid_config(f"`{key}` is missing: set it under [plugins.NAME.config]")
    return value


def secret(ctx, name: str) -> str:
    """The placeholder for the granted secret `name` (put it in a header; the host fills it in)."""
    if name not in ctx.secrets:
        raise invalid_config(f"secret `{name}` is not granted: add it under [plugins.NAME.secrets]")
    try:
        return secrets.placeholder(name)
    except Err as e:
        raise invalid_config(f"secret `{name}`: {e.value}")


def info(message: str) -> None:
    """Log a line at info level."""
    _log.log(_log.Level.INFO, message)


class Response:
    """A response with its whole body."""

    def __init__(self, status: int, headers: List[Tuple[str, bytes]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return None

    def retry_after_ms(self) -> Optional[int]:
        value = self.header("retry-after")
        if value is not None and value.strip().isdigit():
            return int(value.strip()) * 1000
        return None

    def error_for_status(self) -> "Response":
        """This response for 2xx, else raises the plugin error its status means."""
        if 200 <= self.status < 300:
            return self
        text = f"HTTP {self.status}: {self.body[:300].decode('utf-8', 'replace')}"
        if self.status in (401, 403):
            raise unauthorized(text)
        if self.status in (408, 425, 429, 500, 502, 503, 504):
            raise retryable(text, self.retry_after_ms())
        raise rejected(text)


def request(method: str, url: str, headers: List[Tuple[str, str]] = [], body: bytes = b"") -> Response:
    """Send a request and read the whole response."""
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    if scheme not in ("http", "https"):
        raise rejected(f"`{url}` is not an http(s) URL")
    authority, _, path = rest.partition("/")
    fields = h.Fields.from_list([(k.lower(), v.encode()) for k, v in headers])
    req = h.OutgoingRequest(fields)
    methods = {"GET": h.Method_Get(), "POST": h.Method_Post(), "PUT": h.Method_Put(),
               "DELETE": h.Method_Delete(), "PATCH": h.Method_Patch()}
    req.set_method(methods.get(method, h.Method_Other(method)))
    req.set_scheme(h.Scheme_Https() if scheme == "https" else h.Scheme_Http())
    req.set_authority(authority)
    req.set_path_with_query("/" + path)
    out = req.body()
    stream = out.write()
    for i in range(0, len(body), 4096):
        stream.blocking_write_and_flush(body[i:i + 4096])
    stream.__exit__(None, None, None)
    future = outgoing_handler.handle(req, None)
    h.OutgoingBody.finish(out, None)
    while True:
        result = future.get()
        if result is not None:
            break
        future.subscribe().block()
    if isinstance(result, Err) or isinstance(result.value, Err):
        error = (result.value if isinstance(result, Ok) else result).value
        if isinstance(error, (h.ErrorCode_HttpRequestDenied, h.ErrorCode_DestinationIpProhibited)):
            raise rejected(f"request to {authority} refused by the sandbox policy (the agent's log says which rule)")
        # A refused, reset or timed-out connection is transient.
        raise retryable(f"request to {authority} failed: {error}")
    resp = result.value.value
    status = resp.status()
    resp_headers = resp.headers().entries()
    incoming = resp.consume()
    stream = incoming.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise retryable(f"reading the response from {authority} failed")
    stream.__exit__(None, None, None)
    h.IncomingBody.finish(incoming)
    return Response(status, resp_headers, bytes(data))


def post_json(url: str, value, headers: List[Tuple[str, str]] = []) -> Response:
    """POST `value` as JSON."""
    body = json.dumps(value).encode()
    return request("POST", url, [("content-type", "application/json")] + list(headers), body)
