#!/usr/bin/env python3
"""The runbook's emergency rollback, scripted: switch the `current` symlink back, copy the
database aside as a safety snapshot, restore the pre-deploy backup (an uncompressed SQLite
file, through the sqlite3 online-backup API), run the check. No lock, no checksum, no record.

usage: runbook_rollback.py PROJECT_DIR RELEASE_ID BACKUP_FILE [--app-only]
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import time


def main():
    project, release, backup = sys.argv[1], sys.argv[2], sys.argv[3]
    app_only = "--app-only" in sys.argv
    started = time.perf_counter()
    link = os.path.join(project, "sites", "local", "current")
    tmp = link + ".rb"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, link)
    db_ms = 0.0
    if not app_only:
        db_started = time.perf_counter()
        db = os.path.join(project, "app.db")
        shutil.copy(db, os.path.join(project, "runbook-safety.db"))
        src = sqlite3.connect(backup)
        dst = sqlite3.connect(db)
        src.backup(dst)
        dst.close()
        src.close()
        db_ms = (time.perf_counter() - db_started) * 1e3
    subprocess.run(
        ["sh", "-c", f"test -s sites/local/releases/{release}/index.html"],
        cwd=project,
        check=True,
    )
    # Total, then the database part alone (copy aside + restore), ms.
    print(f"{(time.perf_counter() - started) * 1e3:.1f} {db_ms:.1f}")


main()
