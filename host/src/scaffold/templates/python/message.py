"""The JSON posted for one event: plain Python, tested natively (python3 -m unittest)."""


def message(kind, environment, version, summary, stage=None):
    """The webhook body for one deployment event."""
    body = {
        "text": summary,
        "kind": kind,
        "environment": environment,
        "version": version,
    }
    if stage is not None:
        body["stage"] = stage
    return body
