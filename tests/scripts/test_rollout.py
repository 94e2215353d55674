"""scripts/rollout.py without a server: archive names, history, and the order of a swap
against a fake management API (the real one: tests/e2e/test_update.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_rollout():
    # Run as a script, rollout.py imports management_api from beside it.
    if str(REPO_ROOT / "scripts") not in sys.path:
        sys.path.append(str(REPO_ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("rollout", REPO_ROOT / "scripts" / "rollout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rollout = load_rollout()


def make_mar(path: Path, version: str, name: str = "fashion-cnn") -> Path:
    manifest = {"model": {"modelName": name, "modelVersion": version}, "runtime": "python"}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


def test_archive_version_reads_the_manifest(tmp_path):
    assert rollout.archive_version(make_mar(tmp_path / "a.mar", "2.0")) == ("fashion-cnn", "2.0")
    with pytest.raises(rollout.RolloutError, match="no archive"):
        rollout.archive_version(tmp_path / "missing.mar")
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    with pytest.raises(rollout.RolloutError, match="not a model archive"):
        rollout.archive_version(tmp_path / "junk.mar")


@pytest.mark.parametrize(
    "name",
    [
        "https://example.com/fashion-cnn.mar",
        "file:///etc/fashion-cnn.mar",
        "/tmp/fashion-cnn.mar",
        "../fashion-cnn.mar",
        "sub/fashion-cnn.mar",
        "fashion..cnn.mar",
        "fashion-cnn.zip",
    ],
)
def test_only_bare_archive_names_from_the_store_are_accepted(tmp_path, name):
    with pytest.raises(rollout.RolloutError, match="not a bare archive name"):
        rollout.store_archive(tmp_path, name)


def test_stage_copies_an_archive_under_its_version(tmp_path):
    source = make_mar(tmp_path / "fashion-cnn.mar", "2.0")
    store = tmp_path / "store"
    assert rollout.stage(source, store, "fashion-cnn") == "fashion-cnn-2.0.mar"
    assert (store / "fashion-cnn-2.0.mar").read_bytes() == source.read_bytes()
    assert [p.name for p in store.iterdir()] == ["fashion-cnn-2.0.mar"]  # no partial left


def test_a_version_that_cannot_name_a_file_is_refused(tmp_path):
    source = make_mar(tmp_path / "fashion-cnn.mar", "../2.0")
    with pytest.raises(rollout.RolloutError, match="cannot be part of an archive name"):
        rollout.stage(source, tmp_path / "store", "fashion-cnn")


def test_serving_mar_is_the_newest_history_entry_still_in_the_store(tmp_path):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    store.mkdir()
    assert rollout.serving_mar(run_dir, store) is None
    history = [{"version": "1.0", "mar": "a.mar"}, {"version": "2.0", "mar": "b.mar"}]
    rollout.write_history(run_dir, history)
    assert rollout.read_history(run_dir) == history
    assert rollout.serving_mar(run_dir, store) is None  # b.mar is not in the store
    make_mar(store / "b.mar", "2.0")
    assert rollout.serving_mar(run_dir, store) == "b.mar"


class FakeApi:
    """Records the calls of a swap; versions hold worker statuses."""

    model = "fashion-cnn"

    def __init__(self, default: str, new_ready: bool = True) -> None:
        self.registered = {default: "READY"}
        self.default = default
        self.new_ready = new_ready
        self.calls: list[str] = []

    def versions(self):
        return [{"modelVersion": v} for v in self.registered]

    def register(self, mar):
        self.calls.append(f"register {mar}")
        version = rollout.archive_version(self.store / mar)[1]
        self.registered[version] = "READY" if self.new_ready else "UNLOADING"

    def describe(self, version=None):
        version = version or self.default  # without a version: the default's description
        if version not in self.registered:
            return None
        workers = [{"status": self.registered[version]}] * 2
        return {"modelVersion": version, "modelUrl": "fashion-cnn.mar", "minWorkers": 2,
                "workers": workers, "jobQueueStatus": {"pendingRequests": 0}}  # fmt: skip

    def set_default(self, version):
        self.calls.append(f"set-default {version}")
        self.default = version

    def unregister(self, version):
        self.calls.append(f"unregister {version}")
        assert version != self.default, "TorchServe refuses to unregister the default"
        del self.registered[version]


def test_a_swap_registers_waits_moves_the_default_then_unregisters(tmp_path):
    make_mar(tmp_path / "fashion-cnn-2.0.mar", "2.0")
    api = FakeApi("1.0")
    api.store = tmp_path
    moved = []
    result = rollout.switch(api, tmp_path, "fashion-cnn-2.0.mar", 0, 5, moved.append)
    assert api.calls == ["register fashion-cnn-2.0.mar", "set-default 2.0", "unregister 1.0"]
    assert moved == ["2.0"]
    assert (result["old_version"], result["new_version"]) == ("1.0", "2.0")


def test_a_swap_that_never_gets_ready_leaves_the_old_version_serving(tmp_path, monkeypatch):
    monkeypatch.setattr(rollout, "POLL_S", 0.01)
    make_mar(tmp_path / "fashion-cnn-2.0.mar", "2.0")
    api = FakeApi("1.0", new_ready=False)
    api.store = tmp_path
    with pytest.raises(rollout.RolloutError, match="not READY"):
        rollout.switch(api, tmp_path, "fashion-cnn-2.0.mar", 0, 0.1, lambda _v: None)
    assert api.calls == ["register fashion-cnn-2.0.mar", "unregister 2.0"]
    assert api.default == "1.0" and list(api.registered) == ["1.0"]


def test_the_version_serving_is_refused_before_anything_happens(tmp_path):
    make_mar(tmp_path / "fashion-cnn-1.0.mar", "1.0")
    api = FakeApi("1.0")
    api.store = tmp_path
    with pytest.raises(rollout.RolloutError, match="the one serving already"):
        rollout.switch(api, tmp_path, "fashion-cnn-1.0.mar", 0, 5, lambda _v: None)
    assert api.calls == []


def test_an_old_version_that_cannot_be_unloaded_is_reported_with_the_fix(tmp_path):
    """TorchServe runs `kill -9 PID` to stop workers; without a kill program it answers 500."""
    make_mar(tmp_path / "fashion-cnn-2.0.mar", "2.0")
    api = FakeApi("1.0")
    api.store = tmp_path

    def refuse(version):
        raise rollout.RolloutError("unregistering 1.0: TorchServe answered 500")

    api.unregister = refuse
    moved = []
    with pytest.raises(rollout.RolloutError, match=r"2\.0 serves now, but 1\.0 is still loaded"):
        rollout.switch(api, tmp_path, "fashion-cnn-2.0.mar", 0, 5, moved.append)
    assert moved == ["2.0"] and api.default == "2.0"  # the history still records the swap
