"""Defects found by walking through README.md's "Commands" and docs/phone.md as a newcomer, in a fresh clone."""

from __future__ import annotations

import socket

import pytest

from stream.cli import build_parser, main


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


# -- 2. numbers the commands cannot use, refused by argparse -----------------------------------------------
def test_demo_refuses_fewer_than_one_device():
    """`harstream demo --devices 0` printed the simulator child's usage text, "demo: simulate --broker exited
    with status 2", an empty summary, and exited 0."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["demo", "--devices", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize("option, value", [
    ("--reorder", "-1"),  # the consumer stopped once a device came: "max_gap must be positive and reorder not negative"
    ("--reorder", "30"),  # the same, "clock_reset must be longer than max_gap and reorder"
    ("--lr", "-1"),  # a traceback from the learner's process; the consumer served on without learning
    ("--clip", "0"),  # every gradient scaled to nothing
    ("--k1", "0"),
    ("--torch-threads", "0"),
    ("--metrics-interval", "0"),
    ("--checkpoint-interval", "0"),
    ("--idle-timeout", "-5"),
    ("--max-wait", "-1"),
    ("--ack-stall", "0"),
    ("--reorder-wait", "nan"),
])
def test_consume_refuses_numbers_it_cannot_use(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["consume", option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


def test_consume_takes_the_documented_values():
    """docs/phone.md's `--reorder 0.2`, and the defaults."""
    args = build_parser().parse_args(["consume", "--reorder", "0.2", "--reorder-wait", "0", "--max-wait", "0"])
    assert args.reorder == 0.2 and args.lr == 1e-3 and args.k1 == 4 and args.torch_threads == 1


# -- 3. bench took --prefix and --ca-file and ignored both ----------------------------------------------------
@pytest.mark.parametrize("argv", [["--prefix", "walk"], ["--ca-file", "ca.pem"], ["--labelled", "2"]])
def test_bench_offers_no_option_it_ignores(argv):
    """`harstream bench --prefix walk` ran on a prefix of its own (bench + 6 hex digits) and --ca-file never
    reached its clients; --labelled 2 asked for twice as many labelling devices as devices."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", *argv])
    assert exc.value.code == 2


def test_bench_help_says_it_picks_its_own_prefix(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    assert "prefix of their own" in " ".join(capsys.readouterr().out.split())


# -- follow-ups of the walkthrough's findings in files it left to others ----------------------------------------
def test_a_file_that_is_no_checkpoint_gets_no_advice_to_load_it_with_code(tmp_path, capsys):
    """torch's whole paragraph followed: re-run with weights_only=False, which would run code from the file."""
    bad = tmp_path / "some.csv"
    bad.write_text("device,t,ax,ay,az,label\nd,0.0,1,2,3,rest\n")
    code = main(["evaluate", "--model", str(bad), "--data", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "not a harstream checkpoint" in err
    assert "weights_only" not in err and "arbitrary code" not in err


def test_simulate_refuses_a_label_share_beyond_1_by_its_flag(capsys):
    """It said "'label_fraction' must be within [0, 1]", the simulator config's name, not the flag's."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--labels", "1.5"])
    assert "--labels" in capsys.readouterr().err


@pytest.mark.broker
def test_the_consumer_says_which_phone_topics_it_takes(broker_url, tiny_model, caplog):
    """Its start line named the native topic only: someone following docs/phone.md could not see whether
    their --adapter pattern was subscribed (a topic matching none is never received)."""
    import logging
    import threading

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    from tests.helpers import wait

    c = Consumer(ConsumerConfig(broker=broker_url, prefix="walkt", learn=False,
                                adapters=("sensorlogger/+ = sensor_logger",)), StatefulClassifier(tiny_model, "t"))
    caplog.set_level(logging.INFO, logger="stream.consumer")
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: any("walkt/+/imu" in r.getMessage() for r in caplog.records))
    finally:
        c.stop()
        runner.join(15)
    line = next(r.getMessage() for r in caplog.records if "walkt/+/imu" in r.getMessage())
    assert "sensorlogger/+ = sensor_logger" in line


def test_prediction_probabilities_are_written_as_rounded(tiny_model):
    """They went out as float32 noise (0.00039999998989515007 for 0.0004): five times the bytes."""
    import re
    import time

    import numpy as np
    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    class Capture:
        def __init__(self):
            self.sent = []

        def publish(self, topic, payload=None, qos=0, retain=False):
            self.sent.append((topic, payload))

    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="wp", learn=False),
                 StatefulClassifier(tiny_model, "t"))
    c._client = Capture()
    rng = np.random.default_rng(0)
    for k in range(6):
        t = 100.0 + k + np.arange(50) / 50
        body = {"seq": k, "t": t, "acc": rng.normal(0, 3, (50, 3)) + [0, 0, 9.81]}
        c.handle_many([("wp/d/imu", orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), time.monotonic())])
        c._classify()
    bodies = [p for t, p in c._client.sent if t.endswith("/prediction")]
    assert len(bodies) >= 4
    for raw in bodies:
        probs = re.search(rb'"probs":\{([^}]*)\}', raw).group(1)
        assert all(len(v.split(b".")[-1]) <= 4 for v in re.findall(rb":([0-9.e-]+)", probs)), probs


@pytest.mark.parametrize("argv", [["--hidden", "0"], ["--layers", "0"], ["--window", "0"], ["--patch", "0"],
                                  ["--epochs", "0"], ["--tbptt", "0"], ["--rate", "0"], ["--max-minutes", "-1"],
                                  ["--sim-minutes", "0"]])
def test_train_refuses_sizes_it_cannot_use_by_their_flag(argv, capsys):
    """`train --hidden 0` ran until torch said "input_size must be greater than zero", after its warning."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--simulated", "--out", "m.pt", *argv])
    assert argv[0] in capsys.readouterr().err


def test_consume_refuses_a_learner_share_outside_0_to_1(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["consume", "--learn-cpu", "-0.5"])
    assert "--learn-cpu" in capsys.readouterr().err


def test_demo_on_a_port_held_by_something_that_is_no_broker_says_so(capsys):
    """It printed "broker: using the one answering at ..." and then "did not answer within 10 s": the two lines
    contradicted each other and neither said that what held the port was no MQTT broker."""
    server, port = _listening()  # accepts, says nothing
    try:
        code = main(["demo", "--broker", f"mqtt://127.0.0.1:{port}", "--no-dashboard", "--duration", "5"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and "does not answer as an MQTT broker" in err and "--broker" in err


def test_the_embedded_broker_logs_no_error_when_the_demo_checks_it_is_up(capfd):
    """Its start-up check was a bare TCP connection, which amqtt logs in every demo as "ERROR ... No data to
    decode MQTT packet fixed header"; it is now a whole MQTT connection."""
    from stream.broker import EmbeddedBroker
    from stream.mqtt import BrokerURL, mqtt_answers
    server, port = _listening()
    server.close()  # a free port
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
    with EmbeddedBroker(url):
        assert mqtt_answers(url)
    err = capfd.readouterr().err
    assert "listening on" in err and "No data to decode" not in err and "ERROR" not in err


def test_demo_with_a_tls_url_and_no_broker_says_the_embedded_one_is_plain(capsys):
    """It started amqtt on plain TCP and checked it over TLS for 20 s ("embedded broker did not answer")."""
    server, port = _listening()
    server.close()  # nothing there
    code = main(["demo", "--broker", f"mqtts://127.0.0.1:{port}", "--no-dashboard", "--duration", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "plain MQTT only" in err and f"mqtt://127.0.0.1:{port}" in err
