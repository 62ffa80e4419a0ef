"""{{name}}: a deploy-agent notifier, in Python, that posts each deployment event to a
webhook as JSON. Built into a WebAssembly component with componentize-py."""

import deploy_agent as da
from message import message
from wit_world import exports


class Notifier(exports.Notifier):
    def notify(self, ctx, event) -> None:
        url = da.setting(ctx, "url")
        # The plugin never sees the token: the host puts it in, only for the hosts it is bound to.
        token = da.secret(ctx, "token")
        kind = event.kind.name.lower().replace("_", "-")
        body = message(kind, event.environment, event.version, event.summary, event.stage)
        # 401/403 -> unauthorized, 429/5xx -> retryable (with Retry-After), else rejected.
        da.post_json(url, body, [("authorization", f"Bearer {token}")]).error_for_status()
