"""Times as people read them. The registry stores UTC stamps (`db.now()`, ISO 8601); the UI and the CLI show
them as `Dec 2, 13:05 UTC (3 min ago)`, and spans of time as `1 min 20 s`."""

from __future__ import annotations

import datetime as dt

from studio.core.db import seconds_since


def _parse(stamp: str | None) -> dt.datetime | None:
    if not stamp:
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def span(seconds: float | None) -> str:
    """A length of time: `45 s`, `3 min 20 s`, `2 h 05 min`, `3 days 4 h`."""
    if seconds is None:
        return "?"
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s" if whole < 600 else f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} day{'s' if whole >= 2 * 86400 else ''} {whole % 86400 // 3600} h"


def ago(stamp: str | None) -> str:
    """How long ago a stamp was: `just now`, `3 min ago`, `2 h ago`, `5 days ago`."""
    seconds = seconds_since(stamp)
    if seconds is None:
        return "?"
    if seconds < 10:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days > 1 else ''} ago"


def short(stamp: str | None) -> str:
    """A stamp for a table column: `2026-12-02 13:05` (UTC, sorts as text); `-` when there is none."""
    when = _parse(stamp)
    return when.strftime("%Y-%m-%d %H:%M") if when else (stamp or "-")


def moment(stamp: str | None, *, relative: bool = True) -> str:
    """A stamp in a sentence: `Dec 2, 13:05 UTC (3 min ago)`; the year only when it is not this year's."""
    when = _parse(stamp)
    if when is None:
        return stamp or "-"
    this_year = when.year == dt.datetime.now(dt.UTC).year
    text = f"{when:%b} {when.day}{'' if this_year else f' {when.year}'}, {when:%H:%M} UTC"
    return f"{text} ({ago(stamp)})" if relative else text


def between(start: str | None, end: str | None) -> float | None:
    """Seconds from one stamp to another; None when either is missing or unreadable."""
    first, last = _parse(start), _parse(end)
    return (last - first).total_seconds() if first and last else None


def lifecycle(created: str | None, started: str | None, finished: str | None, status: str | None = None) -> str:
    """Where a job is in time: `queued Dec 2, 13:05 UTC (just now)`, `started … (2 min ago)`, or
    `finished … (5 min ago) after 3 min 10 s` (`failed …`, `cancelled …` for those endings)."""
    if finished:
        took = between(started, finished)
        verb = status if status in ("failed", "cancelled") else "finished"
        return f"{verb} {moment(finished)}" + (f" after {span(took)}" if took is not None else "")
    if started:
        return f"started {moment(started)}"
    return f"queued {moment(created)}"
