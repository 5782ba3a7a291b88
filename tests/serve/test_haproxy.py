"""``hepstream-haproxy`` binds every HAProxy frontend where Serve's HTTP frontend is bound, then runs HAProxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hepstream.serve.haproxy import bind_where_served

# The lines of the configuration Serve 2.60 writes that bind a port, in its layout.
SERVE_CONFIG = """global
    stats socket /tmp/haproxy-serve/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind {host}:8000
    default_backend default_backend
backend default_backend
    server SERVE_REPLICA_x 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


def test_statistics_and_exporter_move_to_the_http_frontends_host():
    moved = bind_where_served(SERVE_CONFIG.format(host="127.0.0.1"))
    binds = [line.strip() for line in moved.splitlines() if line.strip().startswith("bind")]
    assert binds == ["bind 127.0.0.1:9101", "bind 127.0.0.1:8000", "bind 127.0.0.1:8404"]
    assert "server SERVE_REPLICA_x 127.0.0.1:30000 check" in moved  # only binds change


def test_a_frontend_on_every_interface_leaves_the_file_alone():
    config = SERVE_CONFIG.format(host="*")
    assert bind_where_served(config) == config
    assert bind_where_served("global\n    nbthread 1\n") == "global\n    nbthread 1\n"


def test_the_script_rewrites_the_file_then_runs_the_real_haproxy(tmp_path, monkeypatch):
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    timeout connect 1s\n"
                      "frontend http_frontend\n    bind 127.0.0.1:18000\nlisten stats\n  bind *:18404\n"
                      "  stats enable\n")
    script = Path(sys.executable).parent / "hepstream-haproxy"
    # Serve names the script in this variable; the script must not resolve to itself.
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(script))
    checked = subprocess.run([str(script), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr  # -c: HAProxy checks the configuration and exits
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    assert "  bind 127.0.0.1:18404\n" in config.read_text()


def test_the_script_names_what_it_lacks():
    refused = subprocess.run([str(Path(sys.executable).parent / "hepstream-haproxy"), "-c"], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0
    assert "expected '-f CONFIG'" in refused.stderr
