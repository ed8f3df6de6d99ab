"""Source field values made safe to store: `checked` coerces a record's fields to their types or
rejects the record, naming the field and the value, and never raises.

Readers put fields into a `Record` as the source has them (a JSON value of any type); this is the
one place that decides what they may be. The rules:

- key: a non-empty string (an integer becomes one) without control characters, valid UTF-8.
- text, language, audio_name: a string or None.
- speaker: a string or None; a number (not a bool, finite) becomes its decimal string.
- quality: a finite number (not a bool) that fits a float32, or None. A score that is present but
  unusable rejects the sample rather than becoming None: `min_quality` lets unscored samples pass,
  so a broken score must not become a pass.
- declared_duration_ms: a finite number (not a bool) of milliseconds, rounded to an int of
  1 ms .. 24 h, or None (the int64 column never overflows; a longer claim is not a duration).
- recording: what a key may be, or None.
- recording_start_ms: a finite number (not a bool) of milliseconds, rounded to an int of 0 .. 24 h,
  or None. segment_index: a whole number (not a bool) of 0 .. 2**63 - 1, or None. Either one
  needs a recording: a place in no named recording orders nothing.
- meta: a dict that JSON encodes with finite numbers only, or None (which becomes {}).
- audio: bytes or None.
- every string: valid UTF-8 (a JSON `\\ud800` escape or a tar name with undecodable bytes is not).

A rejected record (here or by its reader) keeps its reason but none of its fields: only a key and
a detail, with what could not be written escaped (`\\n`, `\\udce9`). Checking twice changes nothing.
"""

import json
import math
from dataclasses import replace

import numpy as np

from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Record

MAX_DURATION_MS = 24 * 3600 * 1000
_MAX_FLOAT32 = float(np.finfo(np.float32).max)
EMPTY_KEY = "#empty-key"  # the key a record without one is rejected under


class _Unusable(ValueError):
    pass


def milliseconds(seconds: object) -> object:
    """A source's duration in seconds as unrounded milliseconds for `Record.declared_duration_ms`;
    a value that is not a number is passed on as found, for `checked` to reject."""
    return seconds * 1000 if _is_number(seconds) else seconds


def checked(record: Record) -> Record:
    """`record` with its fields coerced to their types, or a copy rejected with BAD_METADATA and a
    detail like `duration: nan is not a finite number`. Never raises; `record` is not changed."""
    if record.reject is not None:
        return Record(key=_usable_key(record.key), reject=record.reject, detail=_writable(record.detail))
    try:
        key = _key(record.key)
    except _Unusable as problem:
        return Record(key=_usable_key(record.key), reject=Reason.BAD_METADATA, detail=f"key: {problem}")
    try:
        coerced = replace(
            record,
            key=key,
            audio=_audio(record.audio),
            audio_name=_string("audio_name", record.audio_name),
            text=_string("text", record.text),
            language=_string("language", record.language),
            speaker=_speaker(record.speaker),
            quality=_quality(record.quality),
            declared_duration_ms=_duration_ms(record.declared_duration_ms),
            recording=_recording(record.recording),
            recording_start_ms=_start_ms(record.recording_start_ms),
            segment_index=_segment_index(record.segment_index),
            meta=_meta(record.meta),
        )
        _check_place(coerced)
        return coerced
    except _Unusable as problem:
        return Record(key=key, reject=Reason.BAD_METADATA, detail=str(problem))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A short ASCII rendering of a value for a detail (containers by type only: they can nest deep)."""
    if isinstance(value, str):
        return ascii(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, (int, float, bool)) or value is None:
        # an int with more digits than Python will print is still shown as what it is
        return ascii(value) if not isinstance(value, int) or abs(value) < 10**60 else "an int of over 60 digits"
    return f"a {type(value).__name__}"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _writable(text: str | None) -> str | None:
    return text if text is None else str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _key(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**60:
        value = str(value)
    if not isinstance(value, str):
        raise _Unusable(f"{_shown(value)} is not a string")
    if not value:
        raise _Unusable("empty")
    if any(ord(character) < 32 or character == "\x7f" for character in value):
        raise _Unusable(f"{_shown(value)} holds a control character")
    if not _is_utf8(value):
        raise _Unusable(f"{_shown(value)} is not valid UTF-8")
    return value


def _usable_key(value: object) -> str:
    """A key a reject can be written under: the key itself if usable, else an escaped rendering."""
    if isinstance(value, str):
        if not value:
            return EMPTY_KEY
        try:
            return _key(value)
        except _Unusable:
            return value.encode("unicode_escape").decode("ascii")
    try:
        return _key(value)
    except _Unusable:
        return _shown(value)


def _audio(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise _Unusable(f"audio: {_shown(value)} is not bytes")


def _string(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Unusable(f"{name}: {_shown(value)} is not a string")
    if not _is_utf8(value):
        raise _Unusable(f"{name}: {_shown(value)} is not valid UTF-8")
    return value


def _finite(name: str, value: object) -> float | int:
    if not _is_number(value):
        raise _Unusable(f"{name}: {_shown(value)} is not a number")
    # an int is exact however large; only a float can be nan or inf
    if isinstance(value, float) and not math.isfinite(value):
        raise _Unusable(f"{name}: {_shown(value)} is not a finite number")
    return value


def _speaker(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return _string("speaker", value)
    number = _finite("speaker", value)
    if abs(number) >= 10**60:
        raise _Unusable(f"speaker: {_shown(number)} is not a speaker name")
    return str(number)


def _quality(value: object) -> float | None:
    if value is None:
        return None
    number = _finite("quality", value)
    if abs(number) > _MAX_FLOAT32:
        raise _Unusable(f"quality: {_shown(number)} does not fit a float32")
    return float(number)


def _duration_ms(value: object) -> int | None:
    if value is None:
        return None
    number = _finite("duration", value)
    if number > MAX_DURATION_MS:
        raise _Unusable(f"duration: {_shown(number)} ms is over 24 h")
    rounded = round(number)
    if rounded < 1:
        raise _Unusable(f"duration: {_shown(number)} ms is not at least 1 ms")
    return rounded


def _recording(value: object) -> str | None:
    if value is None:
        return None
    try:
        return _key(value)
    except _Unusable as problem:
        raise _Unusable(f"recording: {problem}") from None


def _start_ms(value: object) -> int | None:
    if value is None:
        return None
    number = _finite("start_ms", value)
    if not 0 <= number <= MAX_DURATION_MS:
        raise _Unusable(f"start_ms: {_shown(number)} ms is not within 0 ms .. 24 h")
    return round(number)


def _segment_index(value: object) -> int | None:
    if value is None:
        return None
    number = _finite("segment", value)
    if (isinstance(number, float) and not number.is_integer()) or not 0 <= number < 2**63:
        raise _Unusable(f"segment: {_shown(number)} is not a segment number (a whole number, 0 or more)")
    return int(number)


def _check_place(record: Record) -> None:
    if record.recording is None:
        for name, value in (("start_ms", record.recording_start_ms), ("segment", record.segment_index)):
            if value is not None:
                raise _Unusable(f"{name}: {value} is given without a recording")


def _meta(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Unusable(f"meta: {_shown(value)} is not an object")
    problem = _json_problem(value)
    if problem is None:
        return value
    # name the first field at fault; a problem no single field has is in the mix (keys of two types)
    for name, item in value.items():
        where = f"meta.{_writable(str(name))[:60]}"
        if isinstance(item, float) and not math.isfinite(item):
            raise _Unusable(f"{where}: {_shown(item)} is not a finite number")
        if (item_problem := _json_problem({name: item})) is not None:
            raise _Unusable(f"{where}: {_shown(item)} {item_problem}")
    raise _Unusable(f"meta: the object {problem}")


def _json_problem(value: dict) -> str | None:
    """Why `value` cannot be stored as the meta JSON (finite numbers, UTF-8), or None."""
    try:
        json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    except ValueError as error:
        return "holds a number that is not finite" if "Out of range float" in str(error) else f"is not JSON ({error})"
    except (TypeError, RecursionError) as error:
        return f"is not JSON ({type(error).__name__}: {error})"[:200]
    return None
