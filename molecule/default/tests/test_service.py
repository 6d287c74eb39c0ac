"""The inference service on the emulated Pi: a sandboxed systemd service that answers /predict,
the Open Inference Protocol v2 (tritonclient with its defaults), and survives malformed requests.

Runs in both verify runs, after converge and after side_effect's reboot, except tritonclient, malformed requests
and slow connections: a reboot does not change how the service speaks the protocol or handles load.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from verify_helpers import REPO, before_reboot_only, rebooted, serve_client

SERVICE = yaml.safe_load((REPO / "roles/inference_service/defaults/main.yml").read_text())
UNIT: str = SERVICE["inference_service_unit_name"]
USER: str = SERVICE["inference_service_user"]
SAMPLES = serve_client.sample_images()


@pytest.fixture(scope="module")
def client(service_url: str) -> Any:
    c = serve_client.ServeClient(service_url)
    # After a reboot the service may still be loading the model: give it the unit's start timeout.
    c.wait_ready(timeout=SERVICE["inference_service_start_timeout"])
    return c


def test_service_is_enabled_and_running_as_its_own_user(host: Any) -> None:
    service = host.service(UNIT)
    assert service.is_enabled
    assert service.is_running
    pid = host.check_output("systemctl show -p MainPID --value %s", UNIT)
    assert pid != "0"
    # The owner of /proc/PID is the process's user (ps would cut a name this long).
    assert host.check_output("stat -c %%U /proc/%s", pid) == USER
    assert host.user(USER).shell in ("/usr/sbin/nologin", "/bin/false")


def test_service_is_sandboxed(host: Any) -> None:
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show %s -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p ProtectHome -p Restart", UNIT
        ).splitlines()
    )
    assert props == {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
    }


def test_service_came_back_by_itself_after_the_reboot(host: Any) -> None:
    if not rebooted():
        pytest.skip("before side_effect's reboot: the next verify run checks this")
    # Started at boot by systemd, not by a handler: no restart in this boot, and running since shortly after it.
    assert host.check_output("systemctl show -p NRestarts --value %s", UNIT) == "0"
    assert host.service(UNIT).is_running
    uptime = float(host.check_output("cut -d' ' -f1 /proc/uptime"))
    assert uptime < 3600, f"the guest has been up {uptime:.0f} s: side_effect did not reboot it"


def test_health_predict_and_open_inference_protocol(client: Any) -> None:
    serve_client.check_service(client, SAMPLES)


@before_reboot_only
def test_tritonclient_with_its_default_settings(client: Any) -> None:
    serve_client.check_tritonclient(client, SAMPLES)


@before_reboot_only
def test_malformed_requests_get_4xx_and_the_service_stays_healthy(host: Any, client: Any) -> None:
    pid_before = host.check_output("systemctl show -p MainPID --value %s", UNIT)
    # Every known-bad request of the fixed list (102) and a few random mutations: the service's handling is the
    # host's (tests/unit/test_serve.py sends 300 twice, test_serve_load.py 300 with slow connections open); here
    # it is proved on the deployed one, under its sandbox, on the guest's Python. 300 took 95 s on virt.
    report = serve_client.run_fuzz(client, SAMPLES, count=120)
    assert report.sent >= 120
    assert not report.failures, report.summary()
    serve_client.check_service(client, SAMPLES[:2])
    assert host.check_output("systemctl show -p MainPID --value %s", UNIT) == pid_before  # never restarted


@before_reboot_only
def test_slow_and_idle_connections_do_not_starve_ready_requests(client: Any) -> None:
    """Issue 17's attack, on the emulated Pi: 200 connections held open (idle, or a POST /predict that promised
    100000 bytes and trickles) while 6 ordinary requests come in; every one must be answered right.

    The host-side test (tests/unit/test_serve_load.py) holds 500 and bounds the p99; on an emulated core the
    latency is the model's, so only the answers are checked here."""
    bodies = [(sample, sample.read_bytes()) for sample in SAMPLES]
    failures = []
    started = time.monotonic()
    with serve_client.slow_connections(client, 200):
        time.sleep(1)  # let the service take every connection and the trickle start
        for number in range(6):
            sample, body = bodies[number % len(bodies)]
            try:
                reply = client.predict(body)
            except OSError as exc:
                failures.append(f"#{number} {sample.name}: {exc!r}")
                continue
            if reply.status != 200 or reply.json().get("label") != serve_client.expected_label(sample):
                failures.append(f"#{number} {sample.name}: {reply.status} {reply.body[:200]!r}")
    assert not failures, failures
    assert time.monotonic() - started < 300
    assert client.health()["status"] == "ok"
