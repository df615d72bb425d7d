"""HTTP client for a running tasks-server, used by the CLI's ``owner`` and ``task`` commands.

It uses only the standard library (urllib), so the command line needs no dependency the
server does not already have. One method per endpoint; answers are the server's JSON.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

Auth = Literal["owner", "admin", "none"]


class ClientError(Exception):
    """Base of the client's errors."""


class MissingCredentials(ClientError):
    """The call needs credentials that were not given (no request was sent)."""


class Unreachable(ClientError):
    """No HTTP answer: connection refused, name not resolved, timeout or TLS failure."""


class ApiError(ClientError):
    """The server answered with an error status. ``body`` is its JSON (or its text)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{status}: {describe_error(body)}")


def describe_error(body: Any) -> str:
    """The server's error body as one line: the message, or every field error of a
    validation tree as ``path: message``."""
    if not isinstance(body, dict) or "message" not in body:
        return str(body) if body not in (None, "", {}) else "no details"
    message = body["message"]
    if isinstance(message, dict):
        problems = list(_tree_errors(message, ""))
        return "; ".join(problems) if problems else str(body.get("action", "invalid"))
    return str(message)


def _tree_errors(tree: Mapping[str, Any], path: str) -> list[str]:
    found = [f"{path or 'body'}: {text}" for text in tree.get("_errors", [])]
    for key, child in tree.items():
        if key != "_errors" and isinstance(child, Mapping):
            found += _tree_errors(child, f"{path}.{key}" if path else key)
    return found


class TasksClient:
    """Calls one server. Owner calls need ``owner_id`` and ``key``; the owner list needs
    ``admin_key``. Every method raises ApiError, Unreachable or MissingCredentials."""

    def __init__(
        self,
        base_url: str,
        owner_id: str | None = None,
        key: str | None = None,
        admin_key: str | None = None,
        timeout_s: float = 30.0,
        cacert: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owner_id = owner_id
        self._key = key
        self._admin_key = admin_key
        self._timeout_s = timeout_s
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        if cacert:
            tls = ssl.create_default_context(cafile=cacert)
            handlers.append(urllib.request.HTTPSHandler(context=tls))
        self._opener = urllib.request.build_opener(*handlers)

    # -- owners -------------------------------------------------------------------------

    def register_owner(self, name: str) -> Any:
        """Register ``name``; with an admin key the key is sent, as OWNER_REGISTRATION=admin
        (the default when the server has an ADMIN_KEY) requires."""
        auth: Auth = "admin" if self._admin_key else "none"
        return self.call("POST", "/v1/owners/register", {"name": name}, auth=auth)

    def get_owner(self, name: str) -> Any:
        return self.call("GET", f"/v1/owners/{quote(name, safe='')}")

    def delete_owner(self, name: str) -> Any:
        return self.call("DELETE", f"/v1/owners/{quote(name, safe='')}")

    def list_owners(self) -> Any:
        return self.call("GET", "/v1/admin/owners", auth="admin")

    def change_owner(self, owner_id: str, **changes: Any) -> Any:
        path = f"/v1/admin/owners/{quote(owner_id, safe='')}"
        return self.call("PATCH", path, changes, auth="admin")

    def remove_owner(self, owner_id: str) -> Any:
        return self.call("DELETE", f"/v1/admin/owners/{quote(owner_id, safe='')}", auth="admin")

    def rotate_owner_key(self, owner_id: str) -> Any:
        path = f"/v1/admin/owners/{quote(owner_id, safe='')}/key"
        return self.call("POST", path, auth="admin")

    # -- tasks --------------------------------------------------------------------------

    def register_task(self, body: Mapping[str, Any]) -> Any:
        return self.call("POST", "/v1/queues/register", body)

    def list_tasks(self, **query: str | int | None) -> Any:
        return self.call("GET", "/v1/queues", query=query)

    def get_task(self, task_id: str) -> Any:
        return self.call("GET", _task_path(task_id))

    def get_config(self, task_id: str) -> Any:
        return self.call("GET", _task_path(task_id, "config"))

    def get_attempts(self, task_id: str) -> Any:
        return self.call("GET", _task_path(task_id, "attempts"))

    def execute(self, task_id: str) -> Any:
        return self.call("POST", _task_path(task_id, "execute"))

    def pause(self, task_id: str) -> Any:
        return self.call("PATCH", _task_path(task_id, "pause"))

    def resume(self, task_id: str) -> Any:
        return self.call("PATCH", _task_path(task_id, "resume"))

    def revoke(self, task_id: str) -> Any:
        return self.call("PATCH", _task_path(task_id, "revoke"))

    def delete_task(self, task_id: str) -> Any:
        return self.call("DELETE", _task_path(task_id))

    # -- transport ----------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str | int | None] | None = None,
        auth: Auth = "owner",
    ) -> Any:
        """Send one request and return the decoded JSON answer (text when not JSON)."""
        url = self.base_url + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", **self._auth_headers(auth)}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _decode(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"{self.base_url}: {reason}") from None

    def _auth_headers(self, auth: Auth) -> dict[str, str]:
        if auth == "owner":
            if not self._owner_id or not self._key:
                raise MissingCredentials(
                    "this command needs an owner: set TASKS_OWNER_ID and TASKS_KEY "
                    "(or pass --owner-id and --key)"
                )
            return {"Authorization": f"Bearer {self._key}", "X-Tasks-Owner-Id": self._owner_id}
        if auth == "admin":
            if not self._admin_key:
                raise MissingCredentials(
                    "this command needs the server's ADMIN_KEY: set TASKS_ADMIN_KEY "
                    "(or pass --admin-key)"
                )
            return {"Authorization": f"Bearer {self._admin_key}"}
        return {}


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """The API never redirects; following one would send the key to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _task_path(task_id: str, action: str | None = None) -> str:
    path = f"/v1/queues/{quote(task_id, safe='')}"
    return f"{path}/{action}" if action else path


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
