"""Telegram alerts: run started, emergencies and rollbacks, failed runs, periodic summaries with the alignment.

:class:`TelegramClient` talks to the Bot API (``sendMessage``, ``sendPhoto``) from one daemon worker thread, so
the training thread only ever puts an item on a bounded queue: a slow, hanging or absent Telegram never slows
training, and when the queue is full an alert is dropped with a log line. :class:`TelegramReporter` is the
:class:`~smart_tuner.hooks.Hook` that turns what the trainer reports into messages; like every reporter it
returns no decisions.

The bot token is a secret: it is part of every request URL, and requests' and urllib3's messages quote that
URL. It never reaches a log line (a :class:`~smart_tuner.redact.SecretFilter` redacts it on this module's and
urllib3's loggers, and exceptions are logged redacted), an exception text raised here, ``repr`` or an artifact.

Settings: ``SMART_TUNER_TELEGRAM_TOKEN``, ``SMART_TUNER_TELEGRAM_CHAT_ID`` and ``SMART_TUNER_TELEGRAM_API_URL``
win over ``alerts.telegram.token``, ``chat_id`` and ``api_url``; alerts are off without a token.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from ..config import Config, TelegramConfig
from ..hooks import EvalStats, Event, Hook, RunInfo, TrainResult
from ..redact import SecretFilter
from ..tts.plots import alignment_png
from .text import fmt

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.telegram.org"
ENV_TOKEN = "SMART_TUNER_TELEGRAM_TOKEN"
ENV_CHAT_ID = "SMART_TUNER_TELEGRAM_CHAT_ID"
ENV_API_URL = "SMART_TUNER_TELEGRAM_API_URL"
MAX_TEXT = 4096  # Bot API limits, in characters
MAX_CAPTION = 1024

# Loggers that may quote a request URL (and so the token): urllib3 logs every request at DEBUG.
_URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection", "urllib3.response",
                "urllib3.poolmanager", "requests")


# ----------------------------------------------------------------------------------------------- redaction
_redactor = SecretFilter()
_filter_installed = False
_install_lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Redact ``secret`` from this module's and urllib3's log records from now on, as it is and URL-encoded
    (a URL quoted in a message may carry it either way: ``123:ABC`` or ``123%3AABC``)."""
    global _filter_installed
    if not secret:
        return
    _redactor.add(secret)
    with _install_lock:
        if not _filter_installed:
            for name in (__name__, *_URL_LOGGERS):
                logging.getLogger(name).addFilter(_redactor)
            _filter_installed = True


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    return _redactor.redact(text)


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class TelegramSettings:
    token: str = field(repr=False)
    chat_id: str
    api_url: str


def _pick(environ: Mapping[str, str], name: str, configured: Any) -> str | None:
    """The environment wins over the config; empty strings count as unset."""
    value = environ.get(name) or configured
    if value is None:
        return None
    return str(value).strip() or None


def resolve_settings(cfg: TelegramConfig, environ: Mapping[str, str] | None = None) -> TelegramSettings | None:
    """Token, chat id and API URL from the environment or the config; None when alerts are off."""
    environ = os.environ if environ is None else environ
    token = _pick(environ, ENV_TOKEN, cfg.token)
    if token is None:
        return None
    register_secret(token)
    chat_id = _pick(environ, ENV_CHAT_ID, cfg.chat_id)
    if chat_id is None:
        log.warning("Telegram alerts are off: a bot token is set but no chat id (set %s or alerts.telegram.chat_id)",
                    ENV_CHAT_ID)
        return None
    api_url = _pick(environ, ENV_API_URL, cfg.api_url) or DEFAULT_API_URL
    return TelegramSettings(token=token, chat_id=chat_id, api_url=api_url.rstrip("/"))


# -------------------------------------------------------------------------------------------------- client
Photo = bytes | Callable[[], bytes]  # PNG bytes, or a function the worker calls to render them


@dataclass
class _Item:
    method: str  # sendMessage | sendPhoto
    text: str  # message text or photo caption
    photo: Photo | None = None


_STOP = object()


def format_critical_alert(alert_type: str, details: Mapping[str, Any] | str, recommendations: list[str],
                          run_name: str | None = None) -> str:
    """Plain text: a "CRITICAL: <type>" header, the run, the details as ``key: value`` lines, recommendations."""
    lines = [f"CRITICAL: {alert_type}"]
    if run_name:
        lines.append(f"run: {run_name}")
    if isinstance(details, str):
        lines.append(details)
    else:
        lines += [f"{key}: {fmt(value)}" for key, value in details.items()]
    if recommendations:
        lines.append("")
        lines.append("Recommendations:")
        lines += [f"- {r}" for r in recommendations]
    return "\n".join(lines)


class TelegramClient:
    """Bot API client whose ``send_*`` methods only enqueue; one daemon thread sends, with retries.

    Retries (at most ``max_retries`` after the first attempt): HTTP 429 after the Bot API's
    ``parameters.retry_after`` (or the Retry-After header), 5xx answers and network errors after an
    exponential backoff (``backoff_base`` doubled per attempt, at most ``backoff_max``). Other 4xx answers are
    not retried. ``stats`` counts queued, sent, dropped (queue full, closed) and failed (given up) messages.
    """

    def __init__(self, token: str, chat_id: str | int, api_url: str = DEFAULT_API_URL, timeout: float = 10.0,
                 max_retries: int = 4, queue_size: int = 64, backoff_base: float = 0.5, backoff_max: float = 30.0):
        if not token:
            raise ValueError("TelegramClient needs a bot token")
        register_secret(token)
        self._token = token
        self.chat_id = str(chat_id)
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.stats = {"queued": 0, "sent": 0, "dropped": 0, "failed": 0}
        self._session = requests.Session()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # enqueued and not yet sent, failed or dropped
        self._closed = False
        self._deadline: float | None = None  # set by close(): the worker gives up on what it cannot send by then
        self._wake = threading.Event()  # interrupts a retry pause when close() is called
        self._thread = threading.Thread(target=self._work, name="telegram-alerts", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"TelegramClient(api_url={self.api_url!r}, chat_id={self.chat_id!r}, stats={self.stats!r})"

    # ---------------------------------------------------------------------------------------- enqueueing
    def send_message(self, text: str) -> bool:
        """Queue a plain-text message; False when it was dropped (queue full or client closed)."""
        return self._put(_Item("sendMessage", _clip(text, MAX_TEXT)))

    def send_photo(self, photo: Photo, caption: str = "") -> bool:
        """Queue a PNG (bytes, or a function returning them: it then runs on the worker thread)."""
        return self._put(_Item("sendPhoto", _clip(caption, MAX_CAPTION), photo))

    def send_critical_alert(self, alert_type: str, details: Mapping[str, Any] | str, recommendations: list[str],
                            run_name: str | None = None) -> bool:
        """Queue a formatted critical alert (see :func:`format_critical_alert`)."""
        return self.send_message(format_critical_alert(alert_type, details, recommendations, run_name))

    def _put(self, item: _Item) -> bool:
        with self._lock:
            if self._closed:
                self.stats["dropped"] += 1
                log.warning("Telegram alert dropped: the client is closed")
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.stats["dropped"] += 1
                log.warning("Telegram alert dropped: %d alerts already waiting", self._queue.maxsize)
                return False
            self.stats["queued"] += 1
            self._pending += 1
            return True

    # ------------------------------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued message was sent, failed or dropped; False on timeout."""
        end = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout`` seconds, drop the rest, stop the worker. Never waits longer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + timeout
            dropped_before = self.stats["dropped"]
        self._wake.set()
        try:  # after the items already queued; a full queue waits for room until the deadline
            self._queue.put(_STOP, timeout=max(0.0, self._deadline - time.monotonic()))
        except queue.Full:
            pass  # the worker sees the deadline, drops the rest and stops
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("Telegram client closed with a request still in flight; it is abandoned")
        else:
            self._session.close()
        dropped = self.stats["dropped"] - dropped_before + (self._pending if self._thread.is_alive() else 0)
        if dropped:
            log.warning("Telegram: %d queued message(s) dropped at close (not sent within %.0f s)", dropped, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------------------------- worker thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._past_deadline():
                self._finish("dropped", f"Telegram {item.method} dropped: the client was closed before it was sent")
                self._drop_rest()
                return
            try:
                outcome, note = self._deliver(item)
            except Exception as exc:  # never let the worker die: later alerts still matter
                outcome, note = "failed", f"Telegram {item.method} failed: {type(exc).__name__}: {redact(str(exc))}"
            self._finish(outcome, note)

    def _drop_rest(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._finish("dropped", f"Telegram {item.method} dropped: the client was closed before it was sent")

    def _finish(self, outcome: str, note: str | None) -> None:
        if note:
            log.warning("%s", note)
        with self._idle:
            self.stats[outcome] += 1
            self._pending -= 1
            self._idle.notify_all()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _deliver(self, item: _Item) -> tuple[str, str | None]:
        """Send one item with retries: ("sent", None), ("failed", why) or ("dropped", why)."""
        url = f"{self.api_url}/bot{self._token}/{item.method}"
        png = None
        if item.photo is not None:
            png = item.photo() if callable(item.photo) else item.photo
        what = f"Telegram {item.method}"
        problem, delay = "", 0.0
        for attempt in range(self.max_retries + 1):
            if attempt and not self._pause(delay):
                return "dropped", f"{what} dropped: the client was closed while retrying ({problem})"
            try:
                response = self._post(url, item, png)
            except requests.RequestException as exc:
                # The exception text quotes the URL, token included: keep its type and a redacted text only.
                problem = f"{type(exc).__name__}: {redact(str(exc))}"
                delay = self._backoff(attempt)
            else:
                code = response.status_code
                body = _json(response)
                if 200 <= code < 300 and body.get("ok") is True:
                    return "sent", None
                description = redact(str(body.get("description", "")))[:200]
                problem = f"HTTP {code} {description}".strip()
                if 300 <= code < 400:  # never followed: a redirect would carry the token's URL to another host
                    return "failed", f"{what} refused: the API answered with a redirect (HTTP {code}); check " \
                                     f"{ENV_API_URL}"
                if 200 <= code < 300:
                    return "failed", f"{what} failed: HTTP {code} without {{\"ok\": true}} in the answer"
                if code == 429:
                    delay = _retry_after(response, body)
                    delay = self._backoff(attempt) if delay is None else delay
                elif code >= 500:
                    delay = self._backoff(attempt)
                else:  # a bad token, chat id or request: retrying cannot help
                    return "failed", f"{what} rejected: {problem}"
            log.info("%s attempt %d/%d failed (%s)", what, attempt + 1, self.max_retries + 1, problem)
        return "failed", f"{what} given up after {self.max_retries + 1} attempts ({problem})"

    def _post(self, url: str, item: _Item, png: bytes | None) -> requests.Response:
        timeout = self.timeout
        if self._deadline is not None:  # closing: no request may outlive the deadline by much
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        if png is None:
            # Plain text, no parse_mode: nothing in a reason or a run name needs escaping.
            return self._session.post(url, json={"chat_id": self.chat_id, "text": item.text}, timeout=timeout,
                                      allow_redirects=False)
        return self._session.post(url, data={"chat_id": self.chat_id, "caption": item.text},
                                  files={"photo": ("alignment.png", png, "image/png")}, timeout=timeout,
                                  allow_redirects=False)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** attempt)

    def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds before a retry; False when close()'s deadline would pass first."""
        end = time.monotonic() + delay
        if self._deadline is None:
            self._wake.wait(delay)  # close() wakes us to re-check against its deadline
        if self._deadline is not None:
            if end > self._deadline:
                return False
            time.sleep(max(0.0, end - time.monotonic()))
        return True


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: requests.Response, body: Mapping[str, Any]) -> float | None:
    """Seconds the Bot API asks us to wait: ``parameters.retry_after`` in the body, else the Retry-After header."""
    parameters = body.get("parameters")
    candidates = [parameters.get("retry_after") if isinstance(parameters, dict) else None,
                  response.headers.get("Retry-After")]
    for value in candidates:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ reporter
_RECOMMENDATIONS = {
    "rollback": ["The model and optimizer were restored to the last healthy state; watch whether it recurs.",
                 "If rollbacks repeat, lower train.lr or train.grad_clip, or check the data for broken utterances."],
    "skip_update": ["This step's gradients were not applied (non-finite or exploding).",
                    "If it repeats, lower train.lr or train.grad_clip and look at the debug bundle."],
    "lr": ["The learning rate was cut for safety; it climbs back after healthy steps.",
           "If emergencies repeat, start with a lower train.lr."],
    "ga_weight": ["The attention is failing to align; the guided-attention weight was raised.",
                  "If diagonality stays low, check the transcripts and the text front-end."],
}
_GENERIC_RECOMMENDATIONS = ["Look at events.jsonl and the latest debug bundle in the run directory."]


def _best_effort(method: Callable) -> Callable:
    """Alerts must never break training: a reporter error becomes a (redacted) log line."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            log.warning("Telegram reporter %s failed: %s: %s", method.__name__, type(exc).__name__, redact(str(exc)))
            return [] if method.__name__ == "on_eval" else None

    return wrapper


class TelegramReporter(Hook):
    """Sends run-started, alarm, failure, summary and final messages; returns no decisions.

    Alarms (``Event.is_alarm``) arriving within ``alarm_interval`` seconds of the last alert sent are
    suppressed and counted in the next alert, so a burst (one per step) sends one message per interval.
    Alignment images are rendered on the worker thread (the training thread only passes the tensor).
    """

    name = "telegram"
    priority = 0

    def __init__(self, client: TelegramClient, summary_every: int = 10, send_photos: bool = True,
                 alarm_interval: float = 30.0, close_timeout: float = 5.0,
                 render: Callable[[Any, str], bytes] = alignment_png, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.summary_every, self.send_photos = summary_every, send_photos
        self.alarm_interval, self.close_timeout = alarm_interval, close_timeout
        self._render, self._clock = render, clock
        self.run_name: str | None = None
        self._evals = 0
        self._alignment: Any = None  # of the last evaluation
        self._alignment_step: int | None = None
        self._last_alarm: float | None = None  # clock() when the last alarm alert was sent
        self._suppressed = 0  # alarms not sent since then

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> TelegramReporter | None:
        """A reporter for ``config.alerts.telegram`` (environment first); None when alerts are off."""
        cfg = config.alerts.telegram
        settings = resolve_settings(cfg, environ)
        if settings is None:
            return None
        client = TelegramClient(settings.token, settings.chat_id, settings.api_url, timeout=cfg.timeout,
                                max_retries=cfg.max_retries, queue_size=cfg.queue_size)
        return cls(client, summary_every=cfg.summary_every, send_photos=cfg.send_photos)

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self._evals}  # a resumed run keeps its summary cadence

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._evals = int(state.get("evaluations", 0))

    @_best_effort
    def on_train_start(self, info: RunInfo) -> None:
        self.run_name = info.run_dir.name
        lines = [f"Run started: {self.run_name}", f"device: {info.device}", f"parameters: {info.parameters:,}",
                 f"train/val: {info.train_size}/{info.val_size} utterances"]
        if isinstance(info.config, dict) and info.config.get("preset"):
            lines.append(f"preset: {info.config['preset']}")
        lines.append(f"start step: {info.start_step}" + (" (resumed)" if info.start_step > 0 else ""))
        self.client.send_message("\n".join(lines))

    @_best_effort
    def on_eval(self, stats: EvalStats) -> list:
        self._evals += 1
        if stats.alignment is not None:
            self._alignment, self._alignment_step = stats.alignment, stats.step
        if self.summary_every > 0 and self._evals % self.summary_every == 0:
            metrics = stats.metrics()
            shown = {**{k: metrics[k] for k in EvalStats.SUMMARY}, "lr": stats.lr, **stats.loss_weights}
            lines = [f"Summary: {self.run_name or 'run'} at step {stats.step} (evaluation {self._evals})"]
            lines += [f"{k}: {fmt(v)}" for k, v in shown.items()]
            self.client.send_message("\n".join(lines))
            self._send_alignment()
        return []

    @_best_effort
    def on_event(self, event: Event) -> None:
        if not event.is_alarm:
            return
        now = self._clock()
        if self._last_alarm is not None and now - self._last_alarm < self.alarm_interval:
            self._suppressed += 1
            return
        details: dict[str, Any] = {"step": event.step, "source": event.source, "control": event.control}
        if event.old is not None or event.new is not None:
            details["change"] = f"{fmt(event.old)} -> {fmt(event.new)}"
        details["reason"] = event.reason
        if event.trigger is not None:
            details["trigger"] = event.trigger
        if self._suppressed:
            details["alarms suppressed since the last alert"] = self._suppressed
        alert_type = {"rollback": "rollback", "skip_update": "skipped update"}.get(
            event.control, f"emergency ({event.control})")
        recommendations = _RECOMMENDATIONS.get(event.control, []) + _GENERIC_RECOMMENDATIONS
        self.client.send_critical_alert(alert_type, details, recommendations, self.run_name)
        self._send_alignment()
        self._last_alarm, self._suppressed = now, 0

    @_best_effort
    def on_train_end(self, result: TrainResult) -> None:
        try:
            suppressed = f"; {self._suppressed} later alarms not sent" if self._suppressed else ""
            best = fmt(result.best_val_loss)
            if result.status == "failed":
                details: dict[str, Any] = {"step": result.step, "reason": result.reason, "best val_loss": best}
                if self._suppressed:
                    details["alarms not sent"] = self._suppressed
                self.client.send_critical_alert(
                    "run failed", details,
                    [f"Look at events.jsonl and the debug bundles in {result.run_dir}.",
                     "Fix the cause, then resume from the last checkpoint."], self.run_name)
            else:
                self.client.send_message(f"Run {result.status}: {self.run_name or result.run_dir.name} at step "
                                         f"{result.step}; best val_loss {best} ({result.reason}){suppressed}")
        finally:
            self.client.close(self.close_timeout)

    def _send_alignment(self) -> None:
        if not self.send_photos or self._alignment is None:
            return
        alignment, step = self._alignment, self._alignment_step
        title = f"{self.run_name or 'run'}: step {step}"
        self.client.send_photo(lambda: self._render(alignment, title), caption=f"alignment at step {step}")
