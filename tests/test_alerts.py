"""Telegram alerts against a fake Bot API on 127.0.0.1: delivery, retries, never blocking, no token leaks.

No wall-clock limits: what a test asserts is what the server received, in which order, and what the client counted
and logged. A wait the client must honour is shown by closing the client during it (the message is dropped, not
sent); "never blocks" by a server that does not answer until the test ends."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from smart_tuner.config import Config, TelegramConfig
from smart_tuner.hooks import EvalStats, Event, RunInfo, TrainResult
from smart_tuner.tts.plots import alignment_png
from smart_tuner.watch.alerts import (
    DEFAULT_API_URL,
    TelegramClient,
    TelegramReporter,
    format_critical_alert,
    resolve_settings,
)

from .stats import eval_stats as make_eval_stats

pytestmark = pytest.mark.timeout(60)  # a send that blocks would otherwise hang the suite

TOKEN = "123456789:AAF-test-secret-token_xyz"
CHAT = "4242"
OK = (200, {"ok": True, "result": {"message_id": 1}}, {})


class FakeBotAPI(ThreadingHTTPServer):
    """Answers like the Bot API; ``script`` holds (status, body, headers) answers to give first, then OK. Each
    request is recorded (with the status it got) before it is answered."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, dict]] = []
        self.always: tuple[int, dict, dict] | None = None  # answer to every request once the script is used up
        self.hang = False  # True: no request is answered until teardown
        self.release = threading.Event()  # ends hangs at teardown
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out and hang up are expected here


class _Handler(BaseHTTPRequestHandler):
    server: FakeBotAPI

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record = {"path": self.path, "raw": body}
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            record["json"] = json.loads(body)
        elif ctype.startswith("multipart/form-data"):
            message = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body,
                                               policy=email.policy.HTTP)
            record["fields"] = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                                for part in message.iter_parts()}
        server = self.server
        with server.changed:
            status, answer, headers = server.script.pop(0) if server.script else (server.always or OK)
            record["status"] = status
            server.requests.append(record)
            server.changed.notify_all()
        if server.hang:
            server.release.wait()
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def bot():
    server = FakeBotAPI()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_client(bot):
    clients = []

    def make(api_url: str, **kwargs) -> TelegramClient:
        kwargs = {"timeout": 2.0, "max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **kwargs}
        client = TelegramClient(TOKEN, CHAT, api_url, **kwargs)
        clients.append(client)
        return client

    yield make
    bot.release.set()  # a hanging server answers now: no worker outlives its test (and logs into the next one)
    for client in clients:
        client.close(timeout=0.5)
        client._thread.join(30.0)


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # a CLI test in this process may have quietened it
    return caplog


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_token(caplog) -> None:
    assert caplog.records, "nothing was logged: the check would be empty"
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in (record.exc_text or "")


def statuses(bot) -> list[int]:
    return [r["status"] for r in bot.requests]


def stopped(client) -> None:
    """Close the client and see its worker end: every request it will ever make has reached the server (the
    server records a request before it answers, and the worker waits for the answer)."""
    client.close(timeout=10.0)
    assert not client._thread.is_alive()


def wait_for_log(caplog, text: str, timeout: float = 30.0) -> None:
    """Wait until a log record holds ``text`` (the worker thread logs as it goes)."""
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"no log line with {text!r} within {timeout} s"
        time.sleep(0.01)


def png() -> bytes:
    return alignment_png(torch.rand(30, 12), "test")


# ------------------------------------------------------------------------------------------------- client
def test_message_and_photo_arrive_with_their_fields(bot, make_client):
    client = make_client(bot.url)
    image = png()
    assert client.send_message("hello: a_b *not markdown*")
    assert client.send_photo(image, caption="alignment")
    assert client.send_photo(png, caption="rendered by the worker")  # a callable is rendered on the worker
    assert client.flush(30.0)

    assert [r["path"] for r in bot.requests] == [f"/bot{TOKEN}/sendMessage"] + [f"/bot{TOKEN}/sendPhoto"] * 2
    assert bot.requests[0]["json"] == {"chat_id": CHAT, "text": "hello: a_b *not markdown*"}  # no parse_mode
    for request, caption in zip(bot.requests[1:], ["alignment", "rendered by the worker"]):
        fields = request["fields"]
        assert fields["chat_id"] == CHAT.encode()
        assert fields["caption"] == caption.encode()
        assert fields["photo"].startswith(b"\x89PNG")
    assert bot.requests[1]["fields"]["photo"] == image
    assert client.stats == {"queued": 3, "sent": 3, "dropped": 0, "failed": 0}


@pytest.mark.parametrize("where", ["body", "header"])
def test_429_retry_after_is_honoured(bot, make_client, logs, where):
    """Asked to wait 60 s (in the body's parameters.retry_after, or the Retry-After header), the client is still
    waiting when it is closed, so the message is dropped unsent; had it retried after its own 10 ms backoff
    instead, the retry would have been sent and answered OK."""
    body = {"ok": False, "error_code": 429, "description": "Too Many Requests"}
    if where == "body":
        body["parameters"] = {"retry_after": 60}
    bot.script = [(429, body, {"Retry-After": "60"} if where == "header" else {})]
    client = make_client(bot.url, backoff_base=0.01)
    client.send_message("rate limited")
    wait_for_log(logs, "attempt 1/3 failed (HTTP 429")  # answered: the worker now waits before its retry
    stopped(client)
    assert statuses(bot) == [429]
    assert client.stats == {"queued": 1, "sent": 0, "dropped": 1, "failed": 0}
    assert "closed while retrying (HTTP 429" in logs.text


def test_429_is_retried_once_its_wait_is_over(bot, make_client):
    bot.script = [(429, {"ok": False, "error_code": 429, "parameters": {"retry_after": 0.05}}, {})]
    client = make_client(bot.url)
    client.send_message("rate limited")
    assert client.flush(30.0)
    assert statuses(bot) == [429, 200]
    assert [r["json"]["text"] for r in bot.requests] == ["rate limited"] * 2
    assert client.stats["sent"] == 1 and client.stats["failed"] == 0


def test_5xx_is_retried_with_exponential_backoff(bot, make_client, logs):
    bot.script = [(500, {"ok": False}, {}), (502, {"ok": False}, {})]
    client = make_client(bot.url, max_retries=3, backoff_base=0.01, backoff_max=1.0)
    client.send_message("eventually")
    assert client.flush(30.0)
    assert statuses(bot) == [500, 502, 200]
    assert [r["json"]["text"] for r in bot.requests] == ["eventually"] * 3
    assert client.stats["sent"] == 1 and client.stats["failed"] == 0
    # The pause before retry k is backoff_base * 2**k, at most backoff_max (that a 5xx retry really pauses, and
    # that close() cuts the pause short: test_close_interrupts_a_long_backoff).
    assert [client._backoff(k) for k in range(8)] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0])
    # urllib3 logs each request line at DEBUG, URL included: it must come out redacted.
    assert any("/bot***/sendMessage" in r.getMessage() for r in logs.records)
    assert_no_token(logs)


def test_persistent_5xx_gives_up_after_max_retries(bot, make_client, logs):
    bot.always = (503, {"ok": False, "description": "Service Unavailable"}, {})
    client = make_client(bot.url, max_retries=2)
    client.send_message("never")
    assert client.flush(30.0)
    stopped(client)
    assert statuses(bot) == [503] * 3  # the first attempt and max_retries=2 retries; no fourth, ever
    assert client.stats == {"queued": 1, "sent": 0, "dropped": 0, "failed": 1}
    assert any("given up after 3 attempts" in r.getMessage() and r.levelno == logging.WARNING for r in logs.records)


def test_other_4xx_is_not_retried(bot, make_client, logs):
    bot.always = (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, {})
    client = make_client(bot.url, max_retries=3)
    client.send_message("wrong chat")
    assert client.flush(30.0)
    stopped(client)
    assert statuses(bot) == [400]
    assert client.stats["failed"] == 1
    assert "chat not found" in logs.text


def test_hanging_server_never_blocks_and_a_full_queue_drops(bot, make_client, logs):
    """The server answers nothing until the test ends and the client would wait 300 s for an answer: a send, or a
    close, that waited for the network would hang the test (its time-out fails it)."""
    bot.hang = True
    client = make_client(bot.url, timeout=300.0, max_retries=1, queue_size=5)
    results = [client.send_message(f"alert {i}") for i in range(100)]
    assert 5 <= sum(results) <= 6  # the queue holds 5; the worker may already hold one more
    assert client.stats["dropped"] == 100 - sum(results)
    drops = [r for r in logs.records if "dropped" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(drops) == client.stats["dropped"]
    assert bot.wait_for(1) and len(bot.requests) == 1  # the worker sends one at a time, and waits for its answer

    client.close(timeout=0.3)  # returns at its deadline, the request still in flight
    assert client._thread.is_alive() and "still in flight; it is abandoned" in logs.text
    assert client.stats["sent"] == 0 and len(bot.requests) == 1
    assert_no_token(logs)


def test_a_request_that_times_out_is_retried(bot, make_client, logs):
    bot.hang = True
    client = make_client(bot.url, timeout=0.2, max_retries=1)
    client.send_message("into the void")
    assert client.flush(30.0)
    assert [r["json"]["text"] for r in bot.requests] == ["into the void"] * 2
    assert client.stats == {"queued": 1, "sent": 0, "dropped": 0, "failed": 1}
    assert "ReadTimeout" in logs.text and "given up after 2 attempts" in logs.text
    assert_no_token(logs)


def test_down_server_never_blocks_and_never_logs_the_token(make_client, logs):
    client = make_client(f"http://127.0.0.1:{closed_port()}", max_retries=1, queue_size=200)
    assert all(client.send_message(f"alert {i}") for i in range(100))  # all queued, none waited for
    assert client.flush(30.0)
    assert client.stats == {"queued": 100, "sent": 0, "dropped": 0, "failed": 100}
    assert "ConnectionError" in logs.text
    # requests' message quotes the URL: the redacted form is logged, never the raw one.
    assert "/bot***/sendMessage" in logs.text
    assert_no_token(logs)


def test_close_drains_the_queue_and_then_refuses(bot, make_client):
    client = make_client(bot.url)
    for i in range(5):
        client.send_message(f"m{i}")
    stopped(client)
    assert [r["json"]["text"] for r in bot.requests] == [f"m{i}" for i in range(5)]
    assert client.closed
    assert not client.send_message("too late")
    assert client.stats["sent"] == 5 and client.stats["dropped"] == 1


def test_close_interrupts_a_long_backoff(bot, make_client, logs):
    bot.always = (500, {"ok": False}, {})
    client = make_client(bot.url, backoff_base=60.0, backoff_max=60.0)
    client.send_message("stuck in backoff")
    wait_for_log(logs, "attempt 1/3 failed (HTTP 500")  # answered: the worker now pauses 60 s before its retry
    client.close(timeout=10.0)
    assert not client._thread.is_alive()  # the worker stopped instead of sleeping out its backoff
    assert client.stats["dropped"] == 1 and statuses(bot) == [500]


def test_repr_hides_the_token(bot, make_client):
    client = make_client(bot.url)
    assert "127.0.0.1" in repr(client)
    assert TOKEN not in repr(client)
    settings = resolve_settings(TelegramConfig(token=TOKEN, chat_id=CHAT), environ={})
    assert TOKEN not in repr(settings)


def test_critical_alert_format():
    text = format_critical_alert("rollback", {"step": 12, "reason": "loss is nan"},
                                 ["Lower the learning rate.", "Check the data."], run_name="run-1")
    lines = text.splitlines()
    assert lines[0] == "CRITICAL: rollback"
    assert "run: run-1" in lines
    assert "step: 12" in lines and "reason: loss is nan" in lines
    assert lines[-3:] == ["Recommendations:", "- Lower the learning rate.", "- Check the data."]


# ----------------------------------------------------------------------------------------------- settings
def test_environment_wins_over_config():
    cfg = TelegramConfig(token="config-token-1234", chat_id="1", api_url="http://config.invalid")
    env = {"SMART_TUNER_TELEGRAM_TOKEN": "env-token-5678", "SMART_TUNER_TELEGRAM_CHAT_ID": "2",
           "SMART_TUNER_TELEGRAM_API_URL": "http://env.invalid/"}
    settings = resolve_settings(cfg, env)
    assert (settings.token, settings.chat_id, settings.api_url) == ("env-token-5678", "2", "http://env.invalid")
    settings = resolve_settings(cfg, {})
    assert (settings.token, settings.chat_id, settings.api_url) == ("config-token-1234", "1", "http://config.invalid")
    assert resolve_settings(TelegramConfig(token="t-abcdefgh", chat_id="3"), {}).api_url == DEFAULT_API_URL


def test_no_token_means_no_reporter(monkeypatch):
    for name in ("SMART_TUNER_TELEGRAM_TOKEN", "SMART_TUNER_TELEGRAM_CHAT_ID", "SMART_TUNER_TELEGRAM_API_URL"):
        monkeypatch.delenv(name, raising=False)
    config = Config()
    config.alerts.telegram.chat_id = CHAT
    assert TelegramReporter.from_config(config) is None


def test_token_without_chat_id_warns_once_without_the_token(logs):
    assert resolve_settings(TelegramConfig(), {"SMART_TUNER_TELEGRAM_TOKEN": TOKEN}) is None
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "chat id" in warnings[0].getMessage()
    assert_no_token(logs)


def test_from_config_uses_the_environment(bot, monkeypatch):
    monkeypatch.setenv("SMART_TUNER_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("SMART_TUNER_TELEGRAM_CHAT_ID", CHAT)
    monkeypatch.setenv("SMART_TUNER_TELEGRAM_API_URL", bot.url)
    config = Config()
    config.alerts.telegram.summary_every = 3
    config.alerts.telegram.queue_size = 7
    reporter = TelegramReporter.from_config(config)
    try:
        assert reporter is not None and reporter.summary_every == 3
        assert reporter.client._queue.maxsize == 7
        reporter.client.send_message("via env")
        assert reporter.client.flush(30.0)
        assert bot.requests[0]["path"] == f"/bot{TOKEN}/sendMessage"
        assert bot.requests[0]["json"] == {"chat_id": CHAT, "text": "via env"}
    finally:
        reporter.client.close(0.5)


# ----------------------------------------------------------------------------------------------- reporter
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eval_stats(step: int, **overrides) -> EvalStats:
    values = dict(val_loss=0.5, val_mel=0.2, val_postnet=0.2, val_gate=0.1, val_ga=0.05,
                  diagonality=0.81, focus=0.44, monotonicity=0.9, coverage=0.95, free_running_diagonality=0.62,
                  free_running_focus=0.3, free_running_monotonicity=0.8, free_running_coverage=0.9,
                  free_running_stop_rate=0.5,
                  train_loss=0.6, elapsed=12.0, alignment=torch.rand(40, 15))
    values.update(overrides)
    return make_eval_stats(step, **values)


def alarm(step: int, control: str = "rollback") -> Event:
    return Event(step, "trainer", control, None, None, "emergency: loss is nan", float("nan"), True, alarm=True)


@pytest.fixture
def reporter(bot, make_client, tmp_path):
    clock = FakeClock()
    reporter = TelegramReporter(make_client(bot.url), summary_every=2, send_photos=True, clock=clock)
    reporter.clock = clock  # for the tests
    reporter.on_train_start(RunInfo(run_dir=tmp_path / "run-7", config={"preset": "demo"}, device="cuda:0",
                                    parameters=1234567, train_size=380, val_size=20, start_step=0))
    return reporter


def sent(bot, client) -> list[dict]:
    assert client.flush(30.0)
    return bot.requests


def test_reporter_run_started(bot, reporter):
    (request,) = sent(bot, reporter.client)
    text = request["json"]["text"]
    assert text.splitlines()[0] == "Run started: run-7"
    for part in ("device: cuda:0", "parameters: 1,234,567", "380/20", "start step: 0", "preset: demo"):
        assert part in text


def test_reporter_alarm_is_a_critical_alert_with_the_last_alignment(bot, reporter):
    reporter.on_event(Event(5, "lr", "lr", 1e-3, 5e-4, "plateau", 0.5, True))  # not an alarm
    reporter.on_event(Event(6, "lr", "skip_update", None, None, "emergency: gradient", 1e9, False, True))  # lost
    assert len(sent(bot, reporter.client)) == 1  # only the run-started message

    reporter.on_event(Event(8, "lr", "lr", 1e-3, 1e-4, "emergency: gradient norm 5e+03", 5000.0, True, True))
    requests = sent(bot, reporter.client)
    assert [r["path"].rsplit("/", 1)[1] for r in requests] == ["sendMessage", "sendMessage"]  # no alignment yet
    lines = requests[1]["json"]["text"].splitlines()
    assert lines[0] == "CRITICAL: emergency (lr)"
    for line in ("run: run-7", "step: 8", "source: lr", "control: lr", "change: 0.001 -> 0.0001",
                 "reason: emergency: gradient norm 5e+03", "trigger: 5000", "Recommendations:"):
        assert line in lines

    reporter.on_eval(eval_stats(10))  # the alignment becomes known (first evaluation: no summary)
    reporter.clock.now += 31
    reporter.on_event(alarm(12))
    requests = sent(bot, reporter.client)
    assert [r["path"].rsplit("/", 1)[1] for r in requests[2:]] == ["sendMessage", "sendPhoto"]
    assert requests[2]["json"]["text"].startswith("CRITICAL: rollback\n")
    assert requests[3]["fields"]["photo"].startswith(b"\x89PNG")
    assert b"step 10" in requests[3]["fields"]["caption"]


def test_reporter_rate_limits_alarm_bursts(bot, reporter):
    for step in range(1, 11):  # one alarm per step, one second apart
        reporter.on_event(alarm(step))
        reporter.clock.now += 1
    alerts = [r for r in sent(bot, reporter.client) if r["json"]["text"].startswith("CRITICAL")]
    assert len(alerts) == 1
    assert "step: 1" in alerts[0]["json"]["text"].splitlines()

    reporter.clock.now += 21  # 31 s after the first alert
    reporter.on_event(alarm(40))
    alerts = [r for r in sent(bot, reporter.client) if r["json"]["text"].startswith("CRITICAL")]
    assert len(alerts) == 2
    assert "alarms suppressed since the last alert: 9" in alerts[1]["json"]["text"].splitlines()


def test_reporter_summary_every_k_evaluations(bot, reporter):
    decisions = [reporter.on_eval(eval_stats(100 * i, val_loss=1.0 / i)) for i in range(1, 6)]
    assert decisions == [[]] * 5
    requests = sent(bot, reporter.client)[1:]
    assert [r["path"].rsplit("/", 1)[1] for r in requests] == ["sendMessage", "sendPhoto"] * 2  # evaluations 2, 4
    summary = requests[0]["json"]["text"].splitlines()
    assert summary[0] == "Summary: run-7 at step 200 (evaluation 2)"
    for line in ("val_loss: 0.5", "diagonality: 0.81", "free_running_diagonality: 0.62", "focus: 0.44", "lr: 0.001",
                 "ga_weight: 2"):
        assert line in summary
    assert "step 400" in requests[2]["json"]["text"]
    assert requests[3]["fields"]["photo"].startswith(b"\x89PNG")


def test_reporter_keeps_its_summary_cadence_across_a_resume(bot, make_client):
    first = TelegramReporter(make_client(bot.url), summary_every=2, send_photos=False)
    first.on_eval(eval_stats(100))
    resumed = TelegramReporter(make_client(bot.url), summary_every=2, send_photos=False)
    resumed.load_state_dict(first.state_dict())
    resumed.on_eval(eval_stats(200))
    (request,) = sent(bot, resumed.client)
    assert "(evaluation 2)" in request["json"]["text"]


def test_reporter_without_photos_sends_text_only(bot, make_client, tmp_path):
    reporter = TelegramReporter(make_client(bot.url), summary_every=1, send_photos=False)
    reporter.on_eval(eval_stats(50))
    reporter.on_event(alarm(51))
    paths = [r["path"].rsplit("/", 1)[1] for r in sent(bot, reporter.client)]
    assert paths == ["sendMessage", "sendMessage"]


def test_reporter_failed_run_is_a_critical_alert_and_closes_the_client(bot, reporter, tmp_path):
    reporter.on_train_end(TrainResult("failed", 77, "too many rollbacks (4 > 3)", tmp_path / "run-7", None, 0.42))
    assert reporter.client.closed
    text = bot.requests[-1]["json"]["text"]
    lines = text.splitlines()
    assert lines[0] == "CRITICAL: run failed"
    assert "run: run-7" in lines and "step: 77" in lines and "reason: too many rollbacks (4 > 3)" in lines
    assert "Recommendations:" in lines
    assert not reporter.client.send_message("after the end")


def test_reporter_completed_run_sends_a_short_final_message(bot, reporter, tmp_path):
    reporter.on_train_end(TrainResult("completed", 600, "max_steps reached", Path(tmp_path / "run-7"), None, 0.3))
    text = bot.requests[-1]["json"]["text"]
    assert text.startswith("Run completed: run-7 at step 600")
    assert "CRITICAL" not in text and "0.3" in text


def test_a_real_run_alerts_through_the_bot_api_and_never_writes_the_token(bot, monkeypatch, corpus_en, tmp_path,
                                                                          caplog):
    from smart_tuner.train.runner import run_training

    from .conftest import tiny_config

    monkeypatch.setenv("SMART_TUNER_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("SMART_TUNER_TELEGRAM_CHAT_ID", CHAT)
    monkeypatch.setenv("SMART_TUNER_TELEGRAM_API_URL", bot.url)
    caplog.set_level(logging.DEBUG)
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4},
                         faults={"nan_loss_at": [3]}, alerts={"telegram": {"summary_every": 1}})
    result = run_training(config, tmp_path / "run", progress=False)
    assert result.status == "completed"
    assert bot.wait_for(4)
    texts = [r.get("json", {}).get("text", "") for r in bot.requests]
    assert all(r["path"].startswith(f"/bot{TOKEN}/send") for r in bot.requests)
    assert any("start" in t.lower() for t in texts)
    assert any("CRITICAL" in t for t in texts)
    assert any(r["path"].endswith("/sendPhoto") and r["fields"]["photo"].startswith(b"\x89PNG")
               for r in bot.requests)
    # The token reaches the Bot API and nowhere else: no file of the run, no log line.
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text


# ----------------------------------------------------------------------------------------------- issue 14: secrets
def test_a_redirect_is_never_followed_and_counts_as_failed(bot, make_client, logs):
    other = FakeBotAPI()  # another host: it must never see the token's path
    thread = threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        bot.always = (302, {}, {"Location": f"{other.url}/bot{TOKEN}/sendMessage"})
        client = make_client(bot.url)
        client.send_message("follow me")
        assert client.flush(30.0)
        stopped(client)
        assert other.requests == [] and statuses(bot) == [302]
        assert client.stats["sent"] == 0 and client.stats["failed"] == 1
        assert "redirect (HTTP 302)" in logs.text and TOKEN not in logs.text
    finally:
        other.shutdown()
        other.server_close()


def test_a_200_without_ok_true_is_a_failure(bot, make_client, logs):
    bot.script = [(200, {"ok": False, "description": "nope"}, {}), (200, {"result": 1}, {})]
    client = make_client(bot.url)
    client.send_message("a")
    client.send_message("b")
    assert client.flush(30.0)
    assert client.stats["sent"] == 0 and client.stats["failed"] == 2


def test_the_token_is_redacted_url_encoded_too(make_client, logs):
    from urllib.parse import quote

    make_client(f"http://127.0.0.1:{closed_port()}")  # registers the token
    logging.getLogger("smart_tuner.watch.alerts").warning("GET /bot%s/x and /bot%s/y", quote(TOKEN, safe=""), TOKEN)
    assert quote(TOKEN, safe="") not in logs.text and TOKEN not in logs.text and "/bot***/x" in logs.text


def test_close_says_how_many_queued_messages_were_dropped(bot, make_client, logs):
    bot.hang = True
    client = make_client(bot.url, timeout=300.0)
    for i in range(4):
        client.send_message(f"m{i}")
    assert bot.wait_for(1)
    client.close(timeout=0.3)
    assert re.search(r"Telegram: [34] queued message\(s\) dropped at close", logs.text), logs.text
