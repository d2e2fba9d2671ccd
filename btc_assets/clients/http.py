"""HTTP sessions that retry: urllib3's ``Retry`` mounted on a requests session, one policy for every HTTP source.

Connection errors and the given statuses (429/5xx by default) are retried with capped exponential
backoff and jitter; a ``Retry-After`` header (rate limits: 429, Binance's 418, 503) is honoured up to
``max_backoff``. Each retry can be reported through ``log``, so a slow source never looks like a hung run.
"""

from __future__ import annotations

from typing import Callable, Iterable

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class LoggedRetry(Retry):
    """urllib3's Retry, telling ``log`` about each retry."""

    RETRY_AFTER_STATUS_CODES = frozenset({413, 418, 429, 503})
    log: Callable[[str], None] | None = None

    def new(self, **params):
        retry = super().new(**params)
        retry.log = self.log
        return retry

    def get_retry_after(self, response):
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.log is not None:
            reason = f"HTTP {response.status}" if response is not None and error is None else type(error).__name__
            self.log(f"{url}: {reason}, retrying in {retry.get_backoff_time():.1f}s "
                     f"({len(retry.history)}/{self.total + len(self.history)})")
        return retry


def retrying_session(*, retries: int, backoff: float, max_backoff: float = 60.0,
                     statuses: Iterable[int] = TRANSIENT_STATUS,
                     log: Callable[[str], None] | None = None) -> requests.Session:
    """A session whose GETs retry ``retries`` times; the last response (or error) is the caller's to judge."""
    retry = LoggedRetry(total=retries, backoff_factor=backoff, backoff_max=max_backoff, backoff_jitter=backoff,
                        status_forcelist=sorted(statuses), allowed_methods={"GET"}, raise_on_status=False,
                        respect_retry_after_header=True)
    retry.log = log
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, HTTPAdapter(max_retries=retry))
    return session
