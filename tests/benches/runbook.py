#!/usr/bin/env python3
"""The runbook a team would otherwise script: the same local deploy, by hand.

Back up the SQLite database (the sqlite3 online-backup API, uncompressed, unencrypted),
apply pending migrations one transaction each with a history table, copy the site into
releases/<id>, switch the `current` symlink atomically, run the check, post to the webhook
at the start and at the end. No validation, no journal, no lock, no audit log.

usage: runbook.py PROJECT_DIR RELEASE_ID WEBHOOK_URL
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request


def post(url, text):
    req = urllib.request.Request(
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).read()


def main():
    project, release, hook = sys.argv[1], sys.argv[2], sys.argv[3]
    started = time.perf_counter()
    post(hook, f"Deploying {release}")
    db_path = os.path.join(project, "app.db")
    os.makedirs(os.path.join(project, "runbook-backups"), exist_ok=True)
    src = sqlite3.connect(db_path)
    dst = sqlite3.connect(os.path.join(project, "runbook-backups", f"{release}.db"))
    src.backup(dst)
    dst.close()
    src.execute("CREATE TABLE IF NOT EXISTS runbook_migrations (version TEXT PRIMARY KEY)")
    done = {r[0] for r in src.execute("SELECT version FROM runbook_migrations")}
    migrations = os.path.join(project, "migrations")
    for name in sorted(os.listdir(migrations)):
        version = name.split("_", 1)[0]
        if version in done:
            continue
        with open(os.path.join(migrations, name)) as f:
            sql = f.read()
        src.executescript(
            f"BEGIN; {sql}; INSERT INTO runbook_migrations VALUES ('{version}'); COMMIT;"
        )
    src.close()
    releases = os.path.join(project, "runbook-site", "releases")
    os.makedirs(releases, exist_ok=True)
    shutil.copytree(os.path.join(project, "site"), os.path.join(releases, release))
    link = os.path.join(project, "runbook-site", "current")
    tmp = link + ".next"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, link)
    subprocess.run(
        ["sh", "-c", f"test -s runbook-site/releases/{release}/index.html"],
        cwd=project,
        check=True,
    )
    post(hook, f"{release} is live")
    print(f"{(time.perf_counter() - started) * 1e3:.1f}")


main()
