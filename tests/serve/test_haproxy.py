"""``hepstream-haproxy`` keeps HAProxy's side ports on loopback, gives it the timeouts, then runs HAProxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hepstream.serve.haproxy import harden

# The lines of the configuration Serve 2.60 writes that bind a port, in its layout.
SERVE_CONFIG = """global
    stats socket /tmp/haproxy-serve/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    
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
  stats uri /stats
"""


def test_statistics_and_exporter_move_to_loopback_whatever_the_http_frontends_host():
    for host in ("127.0.0.1", "*", "10.1.2.3"):  # Serve writes * for serve.http.host 0.0.0.0
        moved = harden(SERVE_CONFIG.format(host=host), 10, 60)
        binds = [line.strip() for line in moved.splitlines() if line.strip().startswith("bind")]
        assert binds == ["bind 127.0.0.1:9101", f"bind {host}:8000", "bind 127.0.0.1:8404"]
        assert "server SERVE_REPLICA_x 127.0.0.1:30000 check" in moved  # only binds change


def test_client_timeouts_replace_serves_and_other_stats_paths_are_404():
    hardened = harden(SERVE_CONFIG.format(host="127.0.0.1"), 2.5, 7)
    defaults = hardened.split("defaults\n", 1)[1].split("frontend", 1)[0]
    timeouts = [line.strip() for line in defaults.splitlines() if line.strip().startswith("timeout")]
    assert timeouts == ["timeout http-request 2500ms", "timeout client 7000ms", "timeout connect 5s"]
    assert hardened.count("timeout client") == 1
    assert ('  http-request return status 404 content-type text/plain string "HAProxy statistics are at /stats" '
            "unless { path_beg /stats }") in hardened


def test_the_script_rewrites_the_file_then_runs_the_real_haproxy(tmp_path, monkeypatch):
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    timeout connect 1s\n"
                      "frontend http_frontend\n    bind 127.0.0.1:18000\nlisten stats\n  bind *:18404\n"
                      "  stats enable\n")
    script = Path(sys.executable).parent / "hepstream-haproxy"
    # Serve names the script in this variable; the script must not resolve to itself.
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(script))
    monkeypatch.setenv("HEPSTREAM_HEADER_TIMEOUT_S", "3")  # as ray_environment passes serve.http's timeouts
    monkeypatch.setenv("HEPSTREAM_BODY_TIMEOUT_S", "4")
    checked = subprocess.run([str(script), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr  # -c: HAProxy checks the configuration and exits
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    rewritten = config.read_text()
    assert "  bind 127.0.0.1:18404\n" in rewritten
    assert "    timeout http-request 3000ms\n    timeout client 4000ms\n" in rewritten


def test_the_script_names_what_it_lacks():
    refused = subprocess.run([str(Path(sys.executable).parent / "hepstream-haproxy"), "-c"], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0
    assert "expected '-f CONFIG'" in refused.stderr
