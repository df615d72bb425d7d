"""Outgoing HTTP calls: the ``Dispatcher`` seam and its libcurl implementation.

``curl_options`` decides (a pure map from a ``Call`` to pycurl options); ``CurlDispatcher``
acts: one ``CurlMulti`` driven by the running asyncio loop, as tornado's curl client does.

The package follows that line: ``options`` decides, ``capabilities`` says which optional
features this build has, ``curl`` acts. Callers import everything from here.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tasks_server.models import Call, Outcome

from .capabilities import curl_capabilities, fields_checker, unsupported_fields
from .curl import CurlDispatcher
from .options import (
    DOH_SSL_VERIFYHOST,
    DOH_SSL_VERIFYPEER,
    HAPROXY_CLIENT_IP,
    HTTP_AND_HTTPS,
    CurlSettings,
    HstsEntry,
    HstsPreload,
    MimeForm,
    Option,
    PrivateDnsCache,
    cookie_file_lines,
    curl_options,
    parse_hsts_cache,
    request_url,
)
from .prepared import Prepared

__all__ = [
    "DOH_SSL_VERIFYHOST",
    "DOH_SSL_VERIFYPEER",
    "HAPROXY_CLIENT_IP",
    "HTTP_AND_HTTPS",
    "CurlDispatcher",
    "CurlSettings",
    "Dispatcher",
    "HstsEntry",
    "HstsPreload",
    "MimeForm",
    "Option",
    "Prepared",
    "PrivateDnsCache",
    "cookie_file_lines",
    "curl_capabilities",
    "curl_options",
    "fields_checker",
    "parse_hsts_cache",
    "request_url",
    "unsupported_fields",
]


class Dispatcher(Protocol):
    """Sends calls and reports what came back; knows nothing of tasks, retries or storage."""

    async def start(self) -> None:
        """Bind to the running event loop; ``submit`` may be called afterwards."""

    async def close(self) -> None:
        """Stop taking calls, let in-flight ones finish for a grace period, abort the rest.

        Every future handed out by ``submit`` is resolved when this returns (aborted calls
        with an error Outcome) and every libcurl handle is freed. Calling it twice is safe.
        """

    def prepare(self, call: Call) -> Prepared:
        """Do the part of ``call``'s work that does not depend on when it starts (its
        options, signature, egress verdict), so that ``submit`` has little left to do at
        the due time. Pure: nothing is held, a prepared call may be dropped unsubmitted."""

    def submit(self, call: Call | Prepared) -> asyncio.Future[Outcome]:
        """Start ``call`` (or queue it behind the connection cap) and return its outcome.

        Never raises for transfer problems: refused connections, timeouts, TLS failures,
        options this build cannot apply and oversized bodies all resolve the future with an
        Outcome whose ``error`` is set. Cancelling the future aborts the transfer.
        """

    @property
    def in_flight(self) -> int:
        """Calls submitted and not yet resolved, queued ones included."""

    @property
    def waiting_for_host(self) -> int:
        """Calls submitted that wait behind their host's connection cap: they hold no
        connection, and their timeout has not started."""

    @property
    def draining_host_queues(self) -> bool:
        """Calls wait behind their host's cap and one of them got its slot a moment ago:
        a burst going through its host's slots (a host whose calls all hang keeps its
        queue still)."""
