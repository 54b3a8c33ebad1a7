#!/usr/bin/env python3
"""A small client of ratel's JeraSoft VCS Management API dialect (Python 3, stdlib only).

It mirrors the usage of JeraSoft's own ``vcsapi`` library (seeds 000/001):

    import vcsapi
    api = vcsapi.VcsApi("http://127.0.0.1:1237/jsonrpc/", "system", "sys")
    r = api.clients.editForm({"id_clients": 8})
    r.code      # True
    r.messages  # []
    r.data      # {'client': {'id': 8, 'id_companies': 1, 'type': 0, 'name': ..., ...}}
    r.errors    # [] (or ['id_clients: required', ...] when r.code is False)

``api.<module>.<action>(params)`` calls the method ``module.action``. The first call logs in
with ``auth`` and keeps the ``session_id`` the server returns; later calls send it as
``SID`` (and log in again when the session has expired). Money arrives as
``decimal.Decimal`` with the ledger's exact digits; send amounts as ``Decimal`` or strings.

Files (the seed's "Work with files") come from ``/admin/<module>/<action>``:

    api.download("xdrs/download", {"from": "2026-11-01 00:00:00",
                                   "to": "2026-12-01 00:00:00",
                                   "format": "parquet"}, "november.parquet")

streams the answer to the file (constant memory) and returns the response headers.

``vcsapi.Api(host, login, password, port)`` is the seed's constructor
(``https://host:port/jsonrpc/``; plain HTTP on any port but 443).

Run it as a script for a short walk-through:  python3 vcsapi.py URL LOGIN PASSWORD
"""

import decimal
import itertools
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["VcsApi", "Api", "Response", "ApiError"]


class ApiError(Exception):
    """A JSON-RPC error object (malformed request, unknown method), an HTTP error, or a
    refused file download; ``code`` is the JSON-RPC code or the HTTP status."""

    def __init__(self, code, message, errors=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errors = errors or []


class Response:
    """One answer: ``code`` (True on success), ``data`` (the ``return`` value),
    ``messages``, ``errors`` and ``session_id``."""

    def __init__(self, result):
        self.code = bool(result.get("code"))
        self.data = result.get("return")
        self.messages = result.get("messages") or []
        self.errors = result.get("errors") or []
        self.session_id = result.get("session_id")

    def __bool__(self):
        return self.code

    def __repr__(self):
        return (f"Response(code={self.code!r}, data={self.data!r}, "
                f"messages={self.messages!r}, errors={self.errors!r})")


def _json_default(o):
    if isinstance(o, decimal.Decimal):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


class _Module:
    def __init__(self, api, name):
        self._api = api
        self._name = name

    def __getattr__(self, action):
        if action.startswith("_"):
            raise AttributeError(action)

        def call(params=None):
            return self._api.call(f"{self._name}.{action}", params)

        call.__name__ = action
        return call


class VcsApi:
    """The API at ``url`` (``http://host:port/jsonrpc/``; a bare ``http://host:port``
    gets ``/jsonrpc/``) as admin ``login``."""

    def __init__(self, url, login, password, timeout=120):
        parts = urllib.parse.urlsplit(url)
        path = parts.path if parts.path not in ("", "/") else "/jsonrpc/"
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.login = login
        self.password = password
        self.timeout = timeout
        self.sid = None
        self._ids = itertools.count(1)

    def __getattr__(self, module):
        if module.startswith("_"):
            raise AttributeError(module)
        return _Module(self, module)

    def _auth(self):
        return {"login": self.login, "password": self.password}

    def call(self, method, params=None):
        """Calls ``method`` (``module.action``) with ``params``; a :class:`Response`."""
        p = dict(params or {})
        if self.sid:
            p["SID"] = self.sid
        else:
            p["auth"] = self._auth()
        r = self._post(method, p)
        if not r.code and self.sid and any("session" in e for e in r.errors):
            # The session expired (or the server restarted): log in again, once.
            self.sid = None
            p.pop("SID", None)
            p["auth"] = self._auth()
            r = self._post(method, p)
        if r.session_id:
            self.sid = r.session_id
        return r

    def _post(self, method, params):
        body = json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": next(self._ids)},
            default=_json_default,
        ).encode()
        req = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = json.load(resp, parse_float=decimal.Decimal)
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.reason) from None
        if answer.get("error"):
            err = answer["error"]
            raise ApiError(err.get("code"), err.get("message"))
        return Response(answer["result"])

    def download(self, what, params, dest):
        """Downloads ``/admin/<what>`` (``"xdrs/download"``) with ``params`` into ``dest``
        (a path or a binary file object), streaming; the response headers (names in any
        case: ``headers["Content-Disposition"]``). Raises
        :class:`ApiError` when the server refuses (with its ``errors``), and
        ``http.client.IncompleteRead`` when the transfer breaks off."""
        p = dict(params or {})
        if self.sid:
            p["SID"] = self.sid
        else:
            p["login"], p["password"] = self.login, self.password
        body = urllib.parse.urlencode({k: str(v) for k, v in p.items()}).encode()
        req = urllib.request.Request(
            f"{self.base}/admin/{what.strip('/')}",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                errors = json.load(e).get("errors", [])
            except ValueError:
                errors = []
            raise ApiError(e.code, "; ".join(errors) or e.reason, errors) from None
        with resp:
            if hasattr(dest, "write"):
                shutil.copyfileobj(resp, dest, 1 << 20)
            else:
                with open(dest, "wb") as f:
                    shutil.copyfileobj(resp, f, 1 << 20)
            return resp.headers


def Api(host, login, password, port=443):
    """The seed's ``vcsapi.Api(host, login, password, port)``."""
    scheme = "https" if port == 443 else "http"
    return VcsApi(f"{scheme}://{host}:{port}/jsonrpc/", login, password)


def _walk_through(url, login, password):
    api = VcsApi(url, login, password)
    r = api.clients.list({"limit": 5})
    print("clients.list:", r)
    if not r.code:
        return 1
    print("session:", api.sid)
    if r.data["clients"]:
        first = r.data["clients"][0]["id"]
        print("clients.editForm:", api.clients.editForm({"id_clients": first}))
        print("accounts.list:", api.accounts.list({"id_clients": first}))
        print("payments.list:", api.payments.list({"id_clients": first}))
    print("companies.list:", api.companies.list())
    print("a refusal:", api.clients.editForm({}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[0])
        print("usage: vcsapi.py URL LOGIN PASSWORD   (e.g. http://127.0.0.1:1237 system sys)")
        sys.exit(2)
    sys.exit(_walk_through(*sys.argv[1:]))
