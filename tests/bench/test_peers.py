"""Peer installs and start-ups, without the network: reuse, failures reported verbatim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.bench import peers
from kvgate.bench.peers import (
    PEER_PACKAGES,
    PeerInstaller,
    PeerPackage,
    PeerUnavailable,
    default_venvs_dir,
    ensure_debian_package,
    nginx_config,
)


def test_every_peer_is_pinned_and_venvs_live_in_the_ignored_folder() -> None:
    for package in PEER_PACKAGES.values():
        assert "==" in package.requirement
    assert default_venvs_dir().parts[-2:] == ("benchmarks", ".venvs")
    gitignore = Path(__file__).resolve().parents[2] / ".gitignore"
    assert "benchmarks/.venvs/" in gitignore.read_text().split()


def test_a_venv_holding_the_requirement_is_reused_without_installing(tmp_path: Path) -> None:
    venv = tmp_path / "fake"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".kvgate-requirement").write_text("pytest>=1\n")
    install = PeerInstaller(tmp_path).ensure(PeerPackage("fake", "pytest>=1", "pytest"))
    assert install.reused and install.install_s == 0.0
    # The version the venv's own interpreter imports: when these tests run inside a venv, a
    # symlink to its python outside the venv's folder sees the base installation's packages.
    seen = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('pytest'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert install.version == seen
    assert install.describe()["reused_install"] is True


def test_a_failed_install_raises_with_the_steps_own_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(PeerUnavailable) as caught:
        PeerInstaller(not_a_folder).ensure(PeerPackage("broken", "broken==1.0", "broken"))
    head, _, detail = str(caught.value).partition("\n")
    assert head.startswith("broken: venv exited with 1")
    assert "Not a directory" in detail or "File exists" in detail, detail


def test_debian_package_already_there_costs_nothing() -> None:
    path, install_s = ensure_debian_package("sh", "dash")
    assert os.path.basename(path) == "sh" and install_s == 0.0


def test_a_peer_that_exits_at_start_is_unavailable_with_its_output() -> None:
    args = [sys.executable, "-c", "import sys; sys.exit(3)"]
    starting = peers._started("demo-peer", args, "http://127.0.0.1:9", ready_path="/health",
                              ready_timeout_s=10)
    with pytest.raises(PeerUnavailable, match=r"demo-peer did not start: .*exited with 3"):
        starting.__enter__()


def test_nginx_config_is_a_bare_keepalive_hop(tmp_path: Path) -> None:
    text = nginx_config(18080, 19090, tmp_path)
    assert "listen 127.0.0.1:18080" in text
    assert "server 127.0.0.1:19090;" in text
    assert "keepalive 64;" in text and 'proxy_set_header Connection "";' in text
    assert "proxy_buffering off;" in text and "worker_processes 1;" in text
