#!/usr/bin/env python3
"""Swap the model version a running TorchServe serves, without dropping a request.

    python scripts/rollout.py update --archive build/stage/fashion-cnn.mar   # staged, then swapped
    python scripts/rollout.py update --mar fashion-cnn-2.0.mar   # an archive already in the store
    python scripts/rollout.py rollback        # back to the version served before, the same way
    python scripts/rollout.py status          # versions, the default, worker states, history
    python scripts/rollout.py stage build/stage/fashion-cnn.mar   # copy as <name>-<version>.mar
    python scripts/rollout.py serving-mar     # the archive a restart should load (serve.sh start)

A swap: register the archive by its bare name from the model store, wait until its workers
are READY, make it the default version, wait until the old version's queue is empty (plus
--drain-s for batches already in a worker), then unregister the old version. Until the
default moves every request goes to the old version; after it, to the new one.

scripts/serve.sh update|rollback|status run this; in the image it is fashion-serve-rollout.
The management API is reached on loopback with the management token from key_file.json
(management_api.py, beside this file: in the image too). RUN_DIR/versions.json is the stack
of versions made default, newest last: `update` pushes, `rollback` pops, and a restart loads
the top one. Standard library only: it runs in the image without the project installed.
Exit status: 0 done, 1 refused or failed (the version that served before still serves), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

from management_api import ManagementApi, ManagementError

DEFAULT_MODEL = os.environ.get("MODEL_NAME", "fashion-cnn")
DEFAULT_RUN_DIR = Path(os.environ.get("RUN_DIR") or os.environ.get("TS_RUN_DIR") or "run")
DEFAULT_STORE = Path(os.environ.get("MODEL_STORE", "model_store"))
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
HISTORY_FILE = "versions.json"
# A bare archive name, as TorchServe looks it up in its model store: no path, no "..".
ARCHIVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.mar$")
POLL_S = 0.2


class RolloutError(ManagementError):
    """Why an update or rollback was refused or failed, for the operator."""


def say(message: str) -> None:
    print(f"rollout: {message}", flush=True)


# --- archives and the model store ----------------------------------------------------------
def archive_version(path: Path) -> tuple[str, str]:
    """(model name, model version) from a .mar's MAR-INF/MANIFEST.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model = manifest["model"]
        return model["modelName"], model["modelVersion"]
    except FileNotFoundError:
        raise RolloutError(f"no archive at {path}") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise RolloutError(f"{path} is not a model archive with a manifest: {error}") from None


def versioned_name(model: str, version: str) -> str:
    name = f"{model}-{version}.mar"
    if not ARCHIVE_NAME.match(name) or ".." in name:
        raise RolloutError(
            f"version {version!r} cannot be part of an archive name: "
            "use letters, digits, '.', '_' and '-'"
        )
    return name


def stage(archive: Path, store: Path, model: str) -> str:
    """Copy `archive` into the model store as <model>-<version>.mar; returns that name."""
    _, version = archive_version(archive)
    name = versioned_name(model, version)
    store.mkdir(parents=True, exist_ok=True)
    target = store / name
    if archive.resolve() != target.resolve():
        partial = store / f".{name}.partial"
        shutil.copyfile(archive, partial)
        os.replace(partial, target)  # whole or absent: never a half-copied archive
    return name


def store_archive(store: Path, mar: str) -> Path:
    """The path of a bare archive name in the store; refuses paths, URLs and '..'."""
    if not ARCHIVE_NAME.match(mar) or ".." in mar:
        raise RolloutError(
            f"{mar!r} is not a bare archive name: registration is only from the model store "
            f"({store}), by file name (e.g. fashion-cnn-2.0.mar)"
        )
    return store / mar


# --- history: the versions made default, newest last ----------------------------------------
def read_history(run_dir: Path) -> list[dict]:
    try:
        entries = json.loads((run_dir / HISTORY_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise RolloutError(f"cannot read {run_dir / HISTORY_FILE}: {error}") from None
    return [e for e in entries if isinstance(e, dict) and {"version", "mar"} <= set(e)]


def write_history(run_dir: Path, entries: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / f".{HISTORY_FILE}.partial"
    partial.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(partial, run_dir / HISTORY_FILE)


def serving_mar(run_dir: Path, store: Path) -> str | None:
    """The archive of the version last made default, if it is still in the store."""
    history = read_history(run_dir)
    if history and (store / history[-1]["mar"]).is_file():
        return history[-1]["mar"]
    return None


# --- worker states ----------------------------------------------------------------------------
def all_ready(description: dict | None) -> bool:
    """Every worker READY, and as many as the version's minWorkers (at least one)."""
    if not description:
        return False
    statuses = [w.get("status") for w in description.get("workers", [])]
    wanted = max(1, int(description.get("minWorkers", 1)))
    return len(statuses) >= wanted and all(s == "READY" for s in statuses)


def pending_requests(description: dict | None) -> int:
    return int(((description or {}).get("jobQueueStatus") or {}).get("pendingRequests", 0))


# --- update and rollback ---------------------------------------------------------------------
def refuse_registered(api: ManagementApi, version: str, serving: str) -> None:
    """An update must bring a version the server does not hold yet."""
    if version == serving:
        raise RolloutError(
            f"version {version} is the one serving already: an update needs a new version "
            "in the model's contract (python -m training export --version ...)"
        )
    if version in {v["modelVersion"] for v in api.versions()}:
        raise RolloutError(
            f"version {version} is registered already (not the default): unregister it or "
            "finish the rollout that left it"
        )


def switch(
    api: ManagementApi, store: Path, mar: str, drain_s: float, timeout_s: float, on_default
) -> dict:
    """Make the archive `mar` (in the store) the serving version and unregister the one that
    served before; on_default(version) runs as soon as the default has moved. Returns the
    timings. On failure before the default moves, the new version is unregistered again and
    the old one keeps serving."""
    model_name, version = archive_version(store_archive(store, mar))
    if model_name != api.model:
        say(f"note: {mar} was archived as {model_name!r}; it is served as {api.model!r}")
    current = api.describe()
    if current is None:
        raise RolloutError(f"model {api.model} is not being served: start the server first")
    old = current["modelVersion"]
    refuse_registered(api, version, old)

    started = time.perf_counter()
    say(f"registering {mar} (version {version}) beside {old}")
    api.register(mar)
    try:
        deadline = time.monotonic() + timeout_s
        while not all_ready(api.describe(version)):
            if time.monotonic() > deadline:
                raise RolloutError(f"version {version} not READY after {timeout_s:.0f}s")
            time.sleep(POLL_S)
        ready_s = time.perf_counter() - started
        say(f"version {version} READY after {ready_s:.1f}s; making it the default")
        api.set_default(version)
    except BaseException:
        say(f"giving up: unregistering {version}; {old} keeps serving")
        try:
            api.unregister(version)
        except ManagementError as error:
            say(f"could not unregister {version}: {error}")
        raise
    default_s = time.perf_counter() - started
    on_default(version)

    # Requests already queued for the old version are still answered by it: wait for its
    # queue to empty, then for batches a worker has taken already.
    deadline = time.monotonic() + timeout_s
    while pending_requests(api.describe(old)) > 0 and time.monotonic() < deadline:
        time.sleep(POLL_S)
    time.sleep(drain_s)
    try:
        api.unregister(old)
    except ManagementError as error:
        raise RolloutError(
            f"{version} serves now, but {old} is still loaded: {error}. TorchServe stops "
            "workers by running `kill -9 PID`, so it needs a kill program on its PATH "
            f"(Debian: procps); then DELETE /models/{api.model}/{old} on the management API"
        ) from None
    done_s = time.perf_counter() - started
    say(f"{version} is the default (after {default_s:.1f}s); {old} drained and unregistered")
    return {
        "old_version": old,
        "old_mar": current.get("modelUrl"),
        "new_version": version,
        "mar": mar,
        "ready_s": round(ready_s, 2),
        "default_s": round(default_s, 2),
        "done_s": round(done_s, 2),
    }


def seed_history(history: list[dict], store: Path, model: str, version: str, url: str) -> None:
    """Record the version served before the first update, so that rollback can come back to
    it: keep a copy of its archive under its versioned name if the store holds it."""
    if history:
        return
    mar = url if ARCHIVE_NAME.match(url or "") else None
    if mar and (store / mar).is_file() and archive_version(store / mar)[1] == version:
        versioned = versioned_name(model, version)
        if not (store / versioned).exists() and os.access(store, os.W_OK):
            shutil.copyfile(store / mar, store / versioned)
            mar = versioned
    history.append({"version": version, "mar": mar or url})


def update(args, api: ManagementApi) -> int:
    store = args.model_store
    current = api.describe()
    if args.archive:
        # Refused before staging: the store keeps the archive of the version serving now.
        refuse_registered(
            api, archive_version(args.archive)[1], (current or {}).get("modelVersion")
        )
        mar = stage(args.archive, store, api.model)
    else:
        mar = args.mar
    history = read_history(args.run_dir)
    if current is not None:
        seed_history(history, store, api.model, current["modelVersion"], current["modelUrl"])

    def record(version: str) -> None:
        write_history(args.run_dir, [*history, {"version": version, "mar": mar}])

    print(json.dumps(switch(api, store, mar, args.drain_s, args.timeout_s, record)))
    return 0


def rollback(args, api: ManagementApi) -> int:
    history = read_history(args.run_dir)
    if len(history) < 2:
        raise RolloutError(
            f"nothing to roll back to: {args.run_dir / HISTORY_FILE} records "
            f"{len(history)} version(s); rollback follows an update"
        )
    previous = history[-2]
    current = api.describe()
    if current is not None and current["modelVersion"] != history[-1]["version"]:
        say(f"note: serving {current['modelVersion']}, history says {history[-1]['version']}")
    path = store_archive(args.model_store, previous["mar"])
    if not path.is_file() or archive_version(path)[1] != previous["version"]:
        raise RolloutError(
            f"the store no longer holds version {previous['version']} as {previous['mar']}: "
            "re-archive that export and run update instead"
        )
    result = switch(
        api, args.model_store, previous["mar"], args.drain_s, args.timeout_s,
        lambda _version: write_history(args.run_dir, history[:-1]),
    )  # fmt: skip
    print(json.dumps(result))
    return 0


def status(args, api: ManagementApi) -> int:
    default = api.describe()
    versions = api.versions()
    if not versions:
        say(f"model {api.model} is not registered")
        return 1
    for described in versions:
        version = described["modelVersion"]
        workers = " ".join(w.get("status", "?") for w in described.get("workers", [])) or "none"
        mark = " (default)" if default and version == default["modelVersion"] else ""
        say(
            f"{api.model} {version}{mark}: {described.get('modelUrl')}, workers {workers}, "
            f"{pending_requests(described)} queued"
        )
    history = read_history(args.run_dir)
    if history:
        say("history (newest last): " + ", ".join(e["version"] for e in history))
    return 0 if default and all_ready(default) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="run dir: endpoints.json, key_file.json, versions.json "
        "(default $RUN_DIR, else $TS_RUN_DIR, else run)",
    )
    common.add_argument(
        "--model-store",
        type=Path,
        default=DEFAULT_STORE,
        help="model store (default $MODEL_STORE, else model_store)",
    )
    common.add_argument("--model", default=None, help=f"model name (default {DEFAULT_MODEL})")
    common.add_argument(
        "--management-url",
        default=None,
        help=f"default: from endpoints.json, else {DEFAULT_MANAGEMENT_URL}",
    )
    swap = argparse.ArgumentParser(add_help=False)
    swap.add_argument(
        "--drain-s",
        type=float,
        default=2.0,
        help="wait after the old version's queue is empty (default 2)",
    )
    swap.add_argument(
        "--timeout-s",
        type=float,
        default=180.0,
        help="for the new workers to be READY (default 180)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("update", parents=[common, swap], help="serve a new version")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--archive", type=Path, help="a .mar anywhere: staged into the store")
    source.add_argument("--mar", help="a .mar already in the store, by file name")
    commands.add_parser("rollback", parents=[common, swap], help="serve the previous version")
    commands.add_parser("status", parents=[common], help="versions, default, workers")
    p = commands.add_parser("stage", parents=[common], help="copy as <name>-<version>.mar")
    p.add_argument("archive", type=Path)
    commands.add_parser("serving-mar", parents=[common], help="the archive a restart loads")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoints_file = args.run_dir / "endpoints.json"
    endpoints = json.loads(endpoints_file.read_text()) if endpoints_file.exists() else {}
    model = args.model or endpoints.get("model") or DEFAULT_MODEL
    try:
        if args.command == "stage":
            print(stage(args.archive, args.model_store, model))
            return 0
        if args.command == "serving-mar":
            print(serving_mar(args.run_dir, args.model_store) or "")
            return 0
        url = args.management_url or endpoints.get("management") or DEFAULT_MANAGEMENT_URL
        api = ManagementApi(url, model, args.run_dir / "key_file.json")
        return {"update": update, "rollback": rollback, "status": status}[args.command](args, api)
    except ManagementError as error:  # a RolloutError too
        print(f"rollout: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
