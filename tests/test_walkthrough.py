"""Defects found by walking through README.md's "Commands" and docs/phone.md as a newcomer, in a fresh clone."""

from __future__ import annotations

import socket

from stream.cli import main


def _listening() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


# -- 1. a second `harstream dashboard` on a port in use ------------------------------------------------------
def test_dashboard_on_a_port_in_use_says_so_in_one_line(capsys):
    """It printed "dashboard: http://127.0.0.1:PORT ... Ctrl-C stops it", then Streamlit's own log line "Port
    PORT is not available" and exit status 1: the address printed was another server's."""
    server, port = _listening()
    try:
        code = main(["dashboard", "--port", str(port)])
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 2
    assert f"127.0.0.1:{port}" in err and "in use" in err and "--port" in err
    assert "dashboard: http" not in out  # no address of a server that never ran


def test_a_port_whose_server_just_closed_counts_as_free():
    """The check must not refuse a port left in TIME_WAIT by a dashboard stopped moments ago (Streamlit itself
    takes it, with SO_REUSEADDR)."""
    from dashboard.launch import _port_free
    server, port = _listening()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
    server.close()
    client.close()
    assert _port_free("127.0.0.1", port)
