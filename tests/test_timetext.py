"""Stored UTC stamps as people read them (the Runs tab's status line, `studio runs show`, the tables)."""

from __future__ import annotations

import datetime as dt

from studio.core import timetext


def _stamp(seconds_ago: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")


def test_spans_and_ages_read_in_words():
    assert [timetext.span(s) for s in (0, 45, 80, 700, 7300, 200_000)] == [
        "0 s", "45 s", "1 min 20 s", "11 min", "2 h 01 min", "2 days 7 h"]
    assert timetext.ago(_stamp(2)) == "just now"
    assert timetext.ago(_stamp(190)) == "3 min ago"
    assert timetext.ago(_stamp(3 * 86400 + 5)) == "3 days ago"
    assert timetext.ago(None) == "?" and timetext.ago("not a time") == "?"


def test_moments_name_the_zone_and_drop_this_years_year():
    assert timetext.moment("2025-01-02T01:05:47+00:00", relative=False) == "Jan 2 2025, 01:05 UTC"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert timetext.moment(now.isoformat()) == f"{now:%b} {now.day}, {now:%H:%M} UTC (just now)"
    assert timetext.short("2026-12-02T13:05:47+00:00") == "2026-12-02 13:05"
    assert timetext.short(None) == "-" and timetext.moment("garbled") == "garbled"


def test_a_jobs_lifecycle_is_one_phrase():
    assert timetext.lifecycle(_stamp(5), None, None).startswith("queued ") and "just now" in \
        timetext.lifecycle(_stamp(5), None, None)
    assert timetext.lifecycle(_stamp(300), _stamp(120), None).endswith("(2 min ago)")
    done = timetext.lifecycle(_stamp(600), "2026-12-02T13:00:00+00:00", "2026-12-02T13:03:10+00:00")
    assert done.startswith("finished Dec 2") and done.endswith("after 3 min 10 s")
    assert timetext.lifecycle(None, "2026-12-02T13:00:00+00:00", "2026-12-02T13:00:56+00:00",
                              "failed").startswith("failed Dec 2")
