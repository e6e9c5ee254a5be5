"""The generated Feast repository is portable (paths relative to itself) and the stock `feast ui`
starts on it with the installed packages."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from millrace.features import stores
from tests.features.typed_state import ACCOUNTS, USERS, typed_state


def test_repo_paths_are_relative_and_a_moved_state_folder_still_serves(tmp_path, monkeypatch):
    import pandas as pd
    from feast import FeatureStore

    project, features, store = typed_state(tmp_path, monkeypatch)
    repo = Path(stores.repo_dir(project))
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    spec = (repo / "repo.json").read_text()
    assert not Path(config["registry"]["path"]).is_absolute() and not Path(config["online_store"]["path"]).is_absolute()
    assert str(tmp_path) not in spec and str(tmp_path) not in (repo / "feature_store.yaml").read_text()
    names = [f"account_typed:{n}" for n in features.feature_names("account_typed")]
    before = store.get_online_features(names, [{"account": a} for a in ACCOUNTS]).to_dict()

    moved = tmp_path / "elsewhere" / "state"
    shutil.move(str(tmp_path / "state"), moved)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative path must not depend on where the process runs
    try:
        again = FeatureStore(repo_path=str(moved / "feast"))
        assert again.get_online_features(names, [{"account": a} for a in ACCOUNTS]).to_dict() == before
        spine = pd.DataFrame({"user": USERS[:2], "event_timestamp": pd.to_datetime(["2021-04-01"] * 2, utc=True)})
        feature = f"user_typed:{features.feature_names('user_typed')[0]}"
        history = again.get_historical_features(entity_df=spine, features=[feature]).to_df()  # the offline file
        assert len(history) == 2 and history.iloc[:, -1].notna().all()
    finally:
        os.chdir(cwd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_feast_ui_starts_on_the_generated_repo(tmp_path, monkeypatch):
    project, _, _ = typed_state(tmp_path, monkeypatch)
    port = _free_port()
    feast = Path(sys.executable).with_name("feast")
    proc = subprocess.Popen([str(feast), "-c", stores.repo_dir(project), "ui", "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
