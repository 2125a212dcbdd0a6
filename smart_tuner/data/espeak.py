"""Minimal ctypes wrapper around libespeak-ng (shipped by the `espeakng-loader` wheel).

Why ctypes instead of a subprocess: the wheel ships only the shared library and its
data, no `espeak-ng` executable, and an in-process call costs milliseconds per
sentence, which keeps building the demo corpus within seconds.

libespeak-ng keeps all of its state (voice, parameters, output callback) in process
globals and is not thread-safe, so the library is initialized once per process and
every call into it happens under one module-level lock.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import UserError

__all__ = ["DEFAULT_RATE_WPM", "EspeakError", "EspeakSynthesizer"]

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns only when all audio went to the callback
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1  # espeak_PARAMETER: speaking rate in words per minute
_INIT_DONT_EXIT = 0x8000  # report a bad data path as an error instead of calling exit()
_BUFFER_MS = 1000  # audio per callback; bigger means fewer Python round trips
_EE_OK, _EE_NOT_FOUND = 0, 2

DEFAULT_RATE_WPM = 175  # eSpeak's own default

# int callback(short *wav, int numsamples, espeak_EVENT *events). `wav` is typed as a
# void pointer so ctypes hands us a plain int (or None for the final NULL call).
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


class EspeakError(UserError, RuntimeError):
    """libespeak-ng could not be loaded or initialized, or rejected a request."""


class _Library:
    """The process-wide libespeak-ng state; use only while holding `_LOCK`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            lib_path = espeakng_loader.get_library_path()
            data_path = espeakng_loader.get_data_path()
            lib = ctypes.CDLL(lib_path)
        except (ImportError, OSError, RuntimeError) as exc:
            raise EspeakError(
                f"cannot load libespeak-ng via the `espeakng-loader` package: {exc}"
            ) from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path.encode(), _INIT_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize returned {rate} (eSpeak data: {data_path})")

        self.lib = lib
        self.sample_rate = int(rate)
        self.voice: str | None = None
        self.rate_wpm: int | None = None
        self._chunks: list[bytes] = []
        # Keep a reference: if the CFUNCTYPE object were garbage collected, the C side
        # would call freed memory and crash the interpreter.
        self._callback = _CALLBACK_TYPE(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: int | None, num_samples: int, _events: int | None) -> int:
        # Exceptions cannot cross into C (ctypes would only print them), so keep this trivial.
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> np.ndarray:
        if voice != self.voice:
            status = self.lib.espeak_SetVoiceByName(voice.encode())
            # On failure eSpeak keeps the previous voice, so the cache stays truthful.
            if status != _EE_OK:
                kind = "unknown" if status == _EE_NOT_FOUND else "unusable"
                raise EspeakError(f"{kind} eSpeak voice {voice!r} "
                                  f"(espeak_SetVoiceByName returned {status})")
            self.voice = voice
        if rate_wpm != self.rate_wpm:
            status = self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate_wpm), 0)
            if status != _EE_OK:
                raise EspeakError(f"espeak_SetParameter(rate={rate_wpm}) returned {status}")
            self.rate_wpm = rate_wpm

        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        try:
            status = self.lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            pcm = b"".join(self._chunks)
        finally:
            self._chunks = []
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth returned {status} for {text!r}")
        return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


_LOCK = threading.Lock()
_LIBRARY: _Library | None = None


def _library() -> _Library:
    """The initialized process-wide library; call with `_LOCK` held."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _Library()
    return _LIBRARY


class EspeakSynthesizer:
    """Text-to-waveform with eSpeak NG.

    Instances are cheap handles onto the one process-wide library; any number of them
    may be used from any thread because every call is serialized by a lock.
    """

    def __init__(self, rate_wpm: int = DEFAULT_RATE_WPM) -> None:
        self.rate_wpm = rate_wpm
        with _LOCK:
            # Initialize eagerly so a missing library fails here, not mid-corpus.
            self.sample_rate: int = _library().sample_rate

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Float32 mono samples in [-1, 1] at `self.sample_rate` for `text` spoken by `voice`.

        `voice` is an eSpeak voice or language name such as "en-us" or "ru";
        an unknown one raises EspeakError.
        """
        with _LOCK:
            return _library().synthesize(text, voice, self.rate_wpm)
