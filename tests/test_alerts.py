"""Telegram alerts against a fake Bot API on 127.0.0.1: delivery, retries, never blocking, no token leaks."""

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
    """Answers like the Bot API; ``script`` holds (status, body, headers) answers to give first, then OK."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, dict]] = []
        self.always: tuple[int, dict, dict] | None = None  # answer to every request once the script is used up
        self.hang = 0.0  # seconds each request waits before its answer
        self.release = threading.Event()  # ends hangs at teardown
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
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
        record = {"path": self.path, "time": time.monotonic(), "raw": body}
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
            server.requests.append(record)
            server.changed.notify_all()
            status, answer, headers = server.script.pop(0) if server.script else (server.always or OK)
        if server.hang:
            server.release.wait(server.hang)
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
def make_client():
    clients = []

    def make(api_url: str, **kwargs) -> TelegramClient:
        kwargs = {"timeout": 2.0, "max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **kwargs}
        client = TelegramClient(TOKEN, CHAT, api_url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=0.5)


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


def png() -> bytes:
    return alignment_png(torch.rand(30, 12), "test")


# ------------------------------------------------------------------------------------------------- client
def test_message_and_photo_arrive_with_their_fields(bot, make_client):
    client = make_client(bot.url)
    image = png()
    assert client.send_message("hello: a_b *not markdown*")
    assert client.send_photo(image, caption="alignment")
    assert client.send_photo(png, caption="rendered by the worker")  # a callable is rendered on the worker
    assert client.flush(5.0)

    assert [r["path"] for r in bot.requests] == [f"/bot{TOKEN}/sendMessage"] + [f"/bot{TOKEN}/sendPhoto"] * 2
    assert bot.requests[0]["json"] == {"chat_id": CHAT, "text": "hello: a_b *not markdown*"}  # no parse_mode
    for request, caption in zip(bot.requests[1:], ["alignment", "rendered by the worker"]):
        fields = request["fields"]
        assert fields["chat_id"] == CHAT.encode()
        assert fields["caption"] == caption.encode()
        assert fields["photo"].startswith(b"\x89PNG")
    assert bot.requests[1]["fields"]["photo"] == image
    assert client.stats == {"queued": 3, "sent": 3, "dropped": 0, "failed": 0}


def test_429_retry_after_from_the_body_is_honoured(bot, make_client):
    bot.script = [(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                         "parameters": {"retry_after": 1}}, {})]
    client = make_client(bot.url, backoff_base=0.01)  # without retry_after it would retry after 10 ms
    client.send_message("rate limited")
    assert client.flush(5.0)
    assert len(bot.requests) == 2
    assert bot.requests[1]["time"] - bot.requests[0]["time"] >= 0.95
    assert bot.requests[1]["json"]["text"] == "rate limited"
    assert client.stats["sent"] == 1 and client.stats["failed"] == 0


def test_429_retry_after_header_is_honoured(bot, make_client):
    bot.script = [(429, {"ok": False, "error_code": 429}, {"Retry-After": "0.4"})]
    client = make_client(bot.url, backoff_base=0.01)
    client.send_message("rate limited")
    assert client.flush(5.0)
    assert len(bot.requests) == 2
    assert bot.requests[1]["time"] - bot.requests[0]["time"] >= 0.38
    assert client.stats["sent"] == 1


def test_5xx_is_retried_with_exponential_backoff(bot, make_client, logs):
    bot.script = [(500, {"ok": False}, {}), (502, {"ok": False}, {})]
    client = make_client(bot.url, max_retries=3, backoff_base=0.1, backoff_max=1.0)
    client.send_message("eventually")
    assert client.flush(5.0)
    times = [r["time"] for r in bot.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.09
    assert times[2] - times[1] >= 0.19  # doubled
    assert client.stats["sent"] == 1 and client.stats["failed"] == 0
    # urllib3 logs each request line at DEBUG, URL included: it must come out redacted.
    assert any("/bot***/sendMessage" in r.getMessage() for r in logs.records)
    assert_no_token(logs)


def test_persistent_5xx_gives_up_after_max_retries(bot, make_client, logs):
    bot.always = (503, {"ok": False, "description": "Service Unavailable"}, {})
    client = make_client(bot.url, max_retries=2)
    client.send_message("never")
    assert client.flush(5.0)
    time.sleep(0.1)  # a fourth attempt would have arrived by now
    assert len(bot.requests) == 3
    assert client.stats == {"queued": 1, "sent": 0, "dropped": 0, "failed": 1}
    assert any("given up after 3 attempts" in r.getMessage() and r.levelno == logging.WARNING for r in logs.records)


def test_other_4xx_is_not_retried(bot, make_client, logs):
    bot.always = (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, {})
    client = make_client(bot.url, max_retries=3)
    client.send_message("wrong chat")
    assert client.flush(5.0)
    time.sleep(0.1)
    assert len(bot.requests) == 1
    assert client.stats["failed"] == 1
    assert "chat not found" in logs.text


def test_hanging_server_never_blocks_and_a_full_queue_drops(bot, make_client, logs):
    bot.hang = 5.0  # far longer than the client's timeout
    client = make_client(bot.url, timeout=0.2, max_retries=1, queue_size=5)
    durations, results = [], []
    start = time.perf_counter()
    for i in range(100):
        t = time.perf_counter()
        results.append(client.send_message(f"alert {i}"))
        durations.append(time.perf_counter() - t)
    assert time.perf_counter() - start < 0.5
    assert max(durations) < 0.05
    assert 5 <= sum(results) <= 6  # the queue holds 5; the worker may already hold one more
    assert client.stats["dropped"] == 100 - sum(results)
    drops = [r for r in logs.records if "dropped" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(drops) == client.stats["dropped"]

    assert bot.wait_for(2, 3.0)  # the first attempt timed out and was retried
    t = time.perf_counter()
    client.close(timeout=0.3)
    assert time.perf_counter() - t < 0.8
    assert "ReadTimeout" in logs.text
    assert client.stats["sent"] == 0
    assert_no_token(logs)


def test_down_server_never_blocks_and_never_logs_the_token(make_client, logs):
    client = make_client(f"http://127.0.0.1:{closed_port()}", max_retries=1, queue_size=200)
    start = time.perf_counter()
    for i in range(100):
        client.send_message(f"alert {i}")
    assert time.perf_counter() - start < 0.5
    assert client.flush(10.0)
    assert client.stats == {"queued": 100, "sent": 0, "dropped": 0, "failed": 100}
    assert "ConnectionError" in logs.text
    # requests' message quotes the URL: the redacted form is logged, never the raw one.
    assert "/bot***/sendMessage" in logs.text
    assert_no_token(logs)


def test_close_drains_the_queue_and_then_refuses(bot, make_client):
    client = make_client(bot.url)
    for i in range(5):
        client.send_message(f"m{i}")
    t = time.perf_counter()
    client.close(timeout=3.0)
    assert time.perf_counter() - t < 3.0
    assert [r["json"]["text"] for r in bot.requests] == [f"m{i}" for i in range(5)]
    assert client.closed
    assert not client.send_message("too late")
    assert client.stats["sent"] == 5 and client.stats["dropped"] == 1


def test_close_interrupts_a_long_backoff(bot, make_client):
    bot.always = (500, {"ok": False}, {})
    client = make_client(bot.url, backoff_base=30.0, backoff_max=30.0)
    client.send_message("stuck in backoff")
    assert bot.wait_for(1)
    time.sleep(0.3)  # the answer arrived: the worker now pauses before its retry
    t = time.perf_counter()
    client.close(timeout=0.5)
    assert time.perf_counter() - t < 1.0
    assert not client._thread.is_alive()  # the worker stopped instead of sleeping out its backoff
    assert client.stats["dropped"] == 1 and len(bot.requests) == 1


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
        assert reporter.client.flush(5.0)
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
                  diagonality=0.81, focus=0.44, monotonicity=0.9, coverage=0.95, infer_diagonality=0.62,
                  infer_focus=0.3, infer_monotonicity=0.8, infer_coverage=0.9, infer_stop_rate=0.5,
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
    assert client.flush(10.0)
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
    for line in ("val_loss: 0.5", "diagonality: 0.81", "infer_diagonality: 0.62", "focus: 0.44", "lr: 0.001",
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
        assert client.flush(5.0)
        time.sleep(0.2)
        assert other.requests == [] and len(bot.requests) == 1
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
    assert client.flush(5.0)
    assert client.stats["sent"] == 0 and client.stats["failed"] == 2


def test_the_token_is_redacted_url_encoded_too(make_client, logs):
    from urllib.parse import quote

    make_client(f"http://127.0.0.1:{closed_port()}")  # registers the token
    logging.getLogger("smart_tuner.watch.alerts").warning("GET /bot%s/x and /bot%s/y", quote(TOKEN, safe=""), TOKEN)
    assert quote(TOKEN, safe="") not in logs.text and TOKEN not in logs.text and "/bot***/x" in logs.text


def test_close_says_how_many_queued_messages_were_dropped(bot, make_client, logs):
    bot.hang = 5.0
    client = make_client(bot.url, timeout=5.0)
    for i in range(4):
        client.send_message(f"m{i}")
    assert bot.wait_for(1)
    client.close(timeout=0.3)
    assert re.search(r"Telegram: [34] queued message\(s\) dropped at close", logs.text), logs.text
