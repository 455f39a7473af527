"""Two Canary installs on one machine, run by one user: each gunicorn keeps its own control socket
under its own CANARY_VAR_DIR, so stopping one leaves the other's in place and answering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gunicorn.ctl.client import ControlClient

from tests.canary_site.test_metrics import free_port, start_gunicorn
from tests.conftest import ManagedProcess, wait_for

pytestmark = pytest.mark.django_db


def master_of(control_socket: Path) -> int:
    with ControlClient(str(control_socket), timeout=10) as client:
        return client.send_command("show stats")["pid"]


def workers_of(control_socket: Path) -> list[int]:
    with ControlClient(str(control_socket), timeout=10) as client:
        return [worker["pid"] for worker in client.send_command("show workers")["workers"]]


def test_two_installs__each_has_its_own_control_socket__stopping_one_leaves_the_other(
    spawn: Callable[..., ManagedProcess], tmp_path: Path
):
    first_var, second_var = tmp_path / "first", tmp_path / "second"
    # One runtime directory for both, as one user's login session gives them: gunicorn's default
    # socket would be the same file for the two.
    runtime = tmp_path / "run"
    runtime.mkdir()
    first = start_gunicorn(spawn, first_var, free_port(), XDG_RUNTIME_DIR=str(runtime))
    second = start_gunicorn(spawn, second_var, free_port(), XDG_RUNTIME_DIR=str(runtime))
    first_socket, second_socket = first_var / "gunicorn.ctl", second_var / "gunicorn.ctl"
    assert wait_for(lambda: first_socket.is_socket() and second_socket.is_socket(), timeout=30)

    assert master_of(first_socket) == first.proc.pid
    assert master_of(second_socket) == second.proc.pid
    assert not (runtime / "gunicorn.ctl").exists()

    second.stop()

    assert not second_socket.exists()
    assert first_socket.is_socket()
    assert master_of(first_socket) == first.proc.pid
    assert len(workers_of(first_socket)) == 2
