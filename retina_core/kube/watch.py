"""A list+watch informer over the official ``kubernetes`` client, built for staying correct through trouble.

One :class:`Informer` keeps a local store of one resource (optionally narrowed by namespace, label and field
selectors) in step with the API server and calls its handlers with every change, **in order, from its one
thread**:

1. LIST (consistent read, paginated with ``limit``/``continue``) → diff against the local store → synthetic
   ``ADDED``/``MODIFIED``/``DELETED`` events → ``SYNCED``; the list's ``resourceVersion`` is where the watch starts.
   The first completed list sets :attr:`Informer.synced` (it stays set).
2. WATCH from that resourceVersion with ``allowWatchBookmarks=true`` and a jittered server-side
   ``timeoutSeconds``; each event updates the store and the resourceVersion (bookmarks only the latter). A stream
   that ends normally is resumed from the last resourceVersion at once, without a list.
3. ``410 Gone`` (an ``ERROR`` event with code 410, or the watch request itself answered 410): the resourceVersion
   has been compacted away; go back to 1. The diff makes the relist exact: an object that changed while we were
   away is one ``MODIFIED``, one that went away is one ``DELETED`` (with its last known state), one that was
   deleted and re-created under the same name is ``DELETED`` + ``ADDED`` (the uid changed), an unchanged object
   is no event at all. Nothing is lost and nothing is duplicated.
4. Errors (connection refused or reset, timeouts, HTTP errors, malformed JSON, other ``ERROR`` events): wait
   with exponential backoff and jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``, times a random
   factor in [0.5, 1); the doubling starts over after 2 × ``backoff_max_s`` without trouble), then resume the
   watch (or relist, after an ``ERROR`` event or a failed list). One WARNING line when an outage starts, one
   INFO line when it ends (the first good list or watch line); retries in between log at DEBUG.
5. Resync: every ``resync_period_s`` (±10 %) a full relist diff, which repairs a store that missed an event.

Objects are plain dicts as the API server sends them (no model classes: faster, and nothing the client's models
do not know about is dropped). List items get back the ``kind``/``apiVersion`` the server leaves out of them. A
``transform`` may shrink objects before they are stored and handed out.

``list_func`` is a generated list method of the client, e.g. ``CoreV1Api(api).list_pod_for_all_namespaces``,
``CoreV1Api(api).list_namespaced_pod`` (with ``namespace=``) or
``functools.partial(CustomObjectsApi(api).list_cluster_custom_object, "retina.sh", "v1alpha1",
"metricsconfigurations")``. It is called with ``_preload_content=False`` and the response is parsed here.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from retina_core.worker import Worker

__all__ = ["ADDED", "MODIFIED", "DELETED", "SYNCED", "Informer", "WatchEvent", "default_key", "describe_error"]

log = logging.getLogger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
SYNCED = "SYNCED"
"""Not an object change: the store now mirrors a complete list (sent after every list diff)."""


@dataclass(frozen=True)
class WatchEvent:
    """One change, as handed to handlers.

    * ``type``: ADDED, MODIFIED, DELETED or SYNCED.
    * ``obj``: the object (after ``transform``); for DELETED its last state; None for SYNCED.
    * ``old``: the previous state for MODIFIED and DELETED, when known (None for ADDED and SYNCED).
    * ``relist``: True when the event was synthesized from a list diff rather than received on a watch.
    """

    type: str
    obj: dict[str, Any] | None
    old: dict[str, Any] | None = None
    relist: bool = False

    @property
    def key(self) -> str:
        return default_key(self.obj) if self.obj is not None else ""


def default_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class _Malformed(Exception):
    """The server sent something that is not the JSON it should be."""


class _WatchError(Exception):
    """An ``ERROR`` event on a watch stream; carries the Status."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.code = int(status.get("code") or 0)
        self.reason = str(status.get("reason") or "")
        super().__init__(f"watch ERROR {self.code} {self.reason}: {status.get('message', '')}".rstrip(": "))


class _Interrupted(Exception):
    """The stream was cut on purpose (stop or resync)."""


def describe_error(exc: BaseException) -> str:
    """One line for a client-side failure: what went wrong, without a traceback."""
    from kubernetes.client.exceptions import ApiException

    status = getattr(exc, "status", None)
    if isinstance(exc, ApiException):  # and its per-status subclasses (NotFoundException, ServiceException ...)
        reason = getattr(exc, "reason", "") or ""
        msg = ""
        body = getattr(exc, "body", None)
        if body:
            try:
                msg = json.loads(body).get("message", "")
            except (ValueError, AttributeError, TypeError):
                msg = ""
        return f"HTTP {status} {reason}".strip() + (f": {msg}" if msg else "")
    name = type(exc).__name__
    if name == "MaxRetryError":
        inner = getattr(exc, "reason", None)
        return f"cannot reach the API server ({_short(inner) if inner is not None else exc})"
    if name in ("NewConnectionError", "NameResolutionError", "ConnectionRefusedError"):
        return f"cannot reach the API server ({_short(exc)})"
    if name in ("ProtocolError", "IncompleteRead", "InvalidChunkLength", "ChunkedEncodingError"):
        return f"connection broken ({_short(exc)})"
    if name in ("ReadTimeoutError", "ConnectTimeoutError", "TimeoutError"):
        return f"timed out ({_short(exc)})"
    if isinstance(exc, _Malformed):
        return f"malformed response: {exc}"
    if isinstance(exc, _WatchError):
        return str(exc)
    return f"{name}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    # urllib3 nests "<urllib3.connection.HTTPConnection object at 0x..>: Failed to establish ..." — keep the tail.
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return text[:200]


class Informer(Worker):
    """List+watch one resource; see the module docstring.

    ``name``: for logs and thread names. ``namespace``, ``label_selector``, ``field_selector``: narrow the
    resource (``namespace`` is passed as the ``namespace=`` argument, for ``list_namespaced_*`` methods).
    ``resync_period_s``: full relist diff period (0: never). ``watch_timeout_s``: server-side watch timeout, the
    real one is uniform in [watch_timeout_s, 2·watch_timeout_s) like client-go's. ``request_timeout_s``: read
    timeout of list calls; ``connect_timeout_s``: TCP connect timeout. ``page_size``: list ``limit`` (0: no
    pagination). ``transform``: applied to every object before it is stored. ``key``: store key of an object.
    """

    def __init__(
        self,
        list_func: Callable[..., Any],
        *,
        name: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resync_period_s: float = 300.0,
        watch_timeout_s: float = 300.0,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        page_size: int = 500,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        key: Callable[[Mapping[str, Any]], str] = default_key,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.list_func = list_func
        self.name = name
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period_s = resync_period_s
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.page_size = page_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.transform = transform
        self.key = key
        self._rng = rng or random.Random()
        self._handlers: list[Callable[[WatchEvent], None]] = []
        self._store: dict[str, dict[str, Any]] = {}
        self._store_lock = threading.Lock()
        Worker.__init__(self, f"informer-{name}")
        self._synced = threading.Event()
        self._resync_now = threading.Event()
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self.resource_version: str | None = None
        # Health and counters (read by others; written by the informer thread only).
        self.healthy = False
        self.error: str | None = None
        self.last_error_at: float | None = None
        self.outage_since: float | None = None
        self.failures = 0
        self.lists = 0
        self.relists_gone = 0
        self.resyncs = 0
        self.watches = 0
        self.events = 0
        self.handler_errors = 0
        self._attempt = 0
        self._last_backoff: float | None = None
        self._outage_failures = 0
        self._handler_error_logged: set[tuple[int, type]] = set()

    # -- public ------------------------------------------------------------------------------------------------

    def add_handler(self, handler: Callable[[WatchEvent], None]) -> None:
        """Call ``handler(event)`` for every event, from the informer's thread, in order. Add before start()."""
        self._handlers.append(handler)

    def _wake_thread(self) -> None:
        self._cut_stream()  # stop() cuts an open watch

    @property
    def synced(self) -> bool:
        """True once the first list has been diffed into the store and dispatched (stays True)."""
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        return self._synced.wait(timeout_s)

    def resync_now(self) -> None:
        """Ask for a full relist diff as soon as possible (cuts the current watch)."""
        self._resync_now.set()
        self._cut_stream()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._store_lock:
            return self._store.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._store_lock:
            return list(self._store.values())

    def __len__(self) -> int:
        return len(self._store)

    def health(self) -> dict[str, Any]:
        """For readiness and debugging: ``synced``, ``healthy`` (no ongoing outage), ``error`` (the outage's last
        error, or None), ``outage_since``/``last_error_at`` (Unix seconds), counters and the store size."""
        return {
            "name": self.name,
            "synced": self.synced,
            "healthy": self.healthy,
            "error": self.error,
            "outage_since": self.outage_since,
            "last_error_at": self.last_error_at,
            "resource_version": self.resource_version,
            "objects": len(self._store),
            "lists": self.lists,
            "relists_gone": self.relists_gone,
            "resyncs": self.resyncs,
            "watches": self.watches,
            "events": self.events,
            "failures": self.failures,
            "handler_errors": self.handler_errors,
        }

    # -- the loop ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        next_resync = math.inf
        gone_in_a_row = 0
        while not self._stop.is_set():
            if self._resync_now.is_set() or time.monotonic() >= next_resync:
                self._resync_now.clear()
                next_resync = math.inf  # set again by the list
                if self.synced and not need_list:
                    self.resyncs += 1
                need_list = True
            if need_list:
                try:
                    self._list_and_diff()
                except _Interrupted:
                    continue
                except Exception as exc:  # noqa: BLE001 - every failure is retried
                    if self._stop.is_set():
                        break
                    self._failed(exc, "list")
                    self._backoff()
                    continue
                need_list = False
                next_resync = (time.monotonic() + self.resync_period_s * self._rng.uniform(0.9, 1.1)
                               if self.resync_period_s > 0 else math.inf)
            try:
                outcome = self._watch_once(next_resync)
            except _Interrupted:
                continue
            except _WatchError as exc:
                if exc.code == 410:
                    outcome = "gone"
                else:
                    self._failed(exc, "watch")
                    need_list = True  # the server said something is wrong: start from a fresh list
                    self._backoff()
                    continue
            except Exception as exc:  # noqa: BLE001
                if self._stop.is_set():
                    break
                if getattr(exc, "status", None) == 410:
                    outcome = "gone"
                else:
                    self._failed(exc, "watch")
                    self._backoff()
                    continue
            if outcome == "gone":
                self.relists_gone += 1
                gone_in_a_row += 1
                log.info("kubernetes informer %s: resourceVersion %s expired (410 Gone); relisting", self.name,
                         self.resource_version)
                need_list = True
                if gone_in_a_row > 1:
                    self._backoff()  # the history is shorter than our list→watch gap: do not spin
                continue
            gone_in_a_row = 0
            if outcome == "early":
                self._backoff()  # closed at once without a word: do not hammer the server

    def _backoff(self) -> None:
        """Sleep before the next attempt. The delay doubles with every backoff and starts over only after a
        stable spell (no backoff for 2 × backoff_max_s): a server that answers once and then fails again (a
        flapping proxy, garbage after the first event) is not hammered."""
        now = time.monotonic()
        if self._last_backoff is not None and now - self._last_backoff > 2 * self.backoff_max_s:
            self._attempt = 0
        delay = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        self._stop.wait(delay * self._rng.uniform(0.5, 1.0))
        self._last_backoff = time.monotonic()

    def _failed(self, exc: BaseException, during: str) -> None:
        what = describe_error(exc)
        self.failures += 1
        self._outage_failures += 1
        self.last_error_at = time.time()
        self.error = f"{during}: {what}"
        self.healthy = False
        if self.outage_since is None:
            self.outage_since = time.time()
            log.warning("kubernetes informer %s: %s failed: %s; retrying with backoff (up to %gs)", self.name,
                        during, what, self.backoff_max_s)
        else:
            log.debug("kubernetes informer %s: %s failed again: %s", self.name, during, what)

    def _ok(self) -> None:
        if self.outage_since is not None:
            log.info("kubernetes informer %s: recovered after %.1fs (%d failed attempts)", self.name,
                     time.time() - self.outage_since, self._outage_failures)
            self.outage_since = None
        self._outage_failures = 0
        self.healthy = True
        self.error = None

    # -- list --------------------------------------------------------------------------------------------------

    def _selector_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.namespace is not None:
            kw["namespace"] = self.namespace
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        if self.field_selector:
            kw["field_selector"] = self.field_selector
        return kw

    def _call(self, read_timeout_s: float, **kwargs: Any) -> Any:
        return self.list_func(**self._selector_kwargs(), **kwargs, _preload_content=False,
                              _request_timeout=(self.connect_timeout_s, read_timeout_s))

    def _list_all(self) -> tuple[list[dict[str, Any]], str]:
        page_size = self.page_size
        while True:
            items: list[dict[str, Any]] = []
            cont: str | None = None
            try:
                while True:
                    kw: dict[str, Any] = {}
                    if page_size:
                        kw["limit"] = page_size
                    if cont:
                        kw["_continue"] = cont
                    resp = self._call(self.request_timeout_s, **kw)
                    try:
                        raw = resp.data
                    finally:
                        resp.release_conn()
                    body = _parse_list(raw)
                    kind = body.get("kind") or ""
                    if kind.endswith("List"):
                        kind = kind[:-4]
                    av = body.get("apiVersion")
                    for it in body["items"]:
                        if not isinstance(it, dict) or not isinstance(it.get("metadata"), dict):
                            raise _Malformed("a list item is not an object with metadata")
                        if kind:
                            it.setdefault("kind", kind)
                        if av:
                            it.setdefault("apiVersion", av)
                        items.append(it)
                    meta = body["metadata"]
                    cont = meta.get("continue") or None
                    if not cont:
                        rv = meta.get("resourceVersion")
                        if not rv:
                            raise _Malformed("list metadata has no resourceVersion")
                        return items, str(rv)
            except Exception as exc:  # noqa: BLE001
                if cont and getattr(exc, "status", None) == 410 and page_size:
                    # The continue token outlived the history: fall back to one unpaginated list (client-go's pager).
                    log.info("kubernetes informer %s: list continue token expired; listing without pagination",
                             self.name)
                    page_size = 0
                    continue
                raise

    def _list_and_diff(self) -> None:
        items, rv = self._list_all()
        self.lists += 1
        fresh: dict[str, dict[str, Any]] = {}
        for it in items:
            obj = self.transform(it) if self.transform else it
            fresh[self.key(obj)] = obj
        events: list[WatchEvent] = []
        with self._store_lock:
            old_store = self._store
            for k in sorted(old_store.keys() - fresh.keys()):
                events.append(WatchEvent(DELETED, old_store[k], old_store[k], relist=True))
            for k in sorted(fresh):
                new, old = fresh[k], old_store.get(k)
                if old is None:
                    events.append(WatchEvent(ADDED, new, None, relist=True))
                elif _uid(old) != _uid(new):
                    events.append(WatchEvent(DELETED, old, old, relist=True))
                    events.append(WatchEvent(ADDED, new, None, relist=True))
                elif _rv(old) != _rv(new):
                    events.append(WatchEvent(MODIFIED, new, old, relist=True))
            self._store = fresh
        self.resource_version = rv
        self._ok()
        for ev in events:
            self._dispatch(ev)
        self._synced.set()
        self._dispatch(WatchEvent(SYNCED, None, None, relist=True))

    # -- watch -------------------------------------------------------------------------------------------------

    def _watch_once(self, next_resync: float) -> str:
        """One watch stream. Returns "ended" (normal end), "early" (ended at once, nothing received), "gone"
        (410), "resync" (the resync deadline ended it); raises on errors."""
        timeout = self.watch_timeout_s * self._rng.uniform(1.0, 2.0)
        if next_resync < math.inf:
            timeout = min(timeout, max(1.0, next_resync - time.monotonic()))
        timeout_s = max(1, int(math.ceil(timeout)))
        started = time.monotonic()
        self.watches += 1
        resp = self._call(timeout_s + max(10.0, self.request_timeout_s), watch=True,
                          resource_version=self.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=timeout_s)
        with self._resp_lock:
            self._resp = resp
        if self._stop.is_set() or self._resync_now.is_set():
            self._close(resp)
            raise _Interrupted()
        received = 0
        try:
            for line in _lines(resp):
                if self._stop.is_set() or self._resync_now.is_set():
                    raise _Interrupted()
                self._handle_line(line)
                received += 1
                if received == 1:
                    self._ok()
        except _Interrupted:
            raise
        except Exception:
            if self._stop.is_set() or self._resync_now.is_set():
                raise _Interrupted() from None
            raise
        finally:
            self._close(resp)
        elapsed = time.monotonic() - started
        if received == 0 and elapsed < min(1.0, timeout_s / 2):
            return "early"
        self._ok()
        return "ended"

    def _handle_line(self, line: bytes) -> None:
        try:
            ev = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            raise _Malformed(f"watch event is not JSON ({_short(exc)})") from None
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str) or not isinstance(ev.get("object"), dict):
            raise _Malformed("watch event is not {type, object}")
        etype, obj = ev["type"], ev["object"]
        if etype == "ERROR":
            raise _WatchError(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("resourceVersion"):
            raise _Malformed(f"{etype} event object has no metadata.resourceVersion")
        if etype == "BOOKMARK":
            self.resource_version = str(meta["resourceVersion"])
            return
        if etype not in (ADDED, MODIFIED, DELETED) or not meta.get("name"):
            raise _Malformed(f"unexpected watch event type {etype!r} or object without a name")
        self.events += 1
        if self.transform:
            obj = self.transform(obj)
        k = self.key(obj)
        with self._store_lock:
            old = self._store.get(k)
            if etype == DELETED:
                self._store.pop(k, None)
            else:
                self._store[k] = obj
        self.resource_version = str(meta["resourceVersion"])
        if etype == DELETED:
            if old is None:
                return  # already gone from our view (e.g. removed by a relist diff): no duplicate
            self._dispatch(WatchEvent(DELETED, obj, old))
        elif old is None:
            self._dispatch(WatchEvent(ADDED, obj, None))
        elif _uid(old) != _uid(obj):
            self._dispatch(WatchEvent(DELETED, old, old))
            self._dispatch(WatchEvent(ADDED, obj, None))
        else:
            self._dispatch(WatchEvent(MODIFIED, obj, old))

    def _dispatch(self, ev: WatchEvent) -> None:
        for h in self._handlers:
            try:
                h(ev)
            except Exception:  # a handler bug must not stop the informer
                self.handler_errors += 1
                sig = (id(h), type(_current_exc()))
                if sig not in self._handler_error_logged:
                    self._handler_error_logged.add(sig)
                    log.exception("kubernetes informer %s: handler %r failed on %s %s", self.name, h, ev.type,
                                  ev.key)
                else:
                    log.debug("kubernetes informer %s: handler %r failed again", self.name, h, exc_info=True)

    def _cut_stream(self) -> None:
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)

    def _close(self, resp: Any) -> None:
        with self._resp_lock:
            if self._resp is resp:
                self._resp = None
        try:
            resp.close()
            resp.release_conn()
        except Exception:  # noqa: BLE001 - closing a broken response must not mask the real error
            pass


def _current_exc() -> BaseException | None:
    import sys

    return sys.exc_info()[1]


def _uid(obj: Mapping[str, Any]) -> Any:
    return (obj.get("metadata") or {}).get("uid")


def _rv(obj: Mapping[str, Any]) -> Any:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _parse_list(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _Malformed(f"list is not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
        raise _Malformed("list is not an object with metadata")
    if body.get("items") is None:
        body["items"] = []  # Go's nil slice
    if not isinstance(body["items"], list):
        raise _Malformed("list items is not an array")
    return body


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited lines of a (chunked) streaming response, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        if not chunk:
            continue
        buf += chunk if isinstance(chunk, bytes) else chunk.encode()
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            if line.strip():
                yield line
    if buf.strip():
        yield buf


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading ``resp`` (urllib3 HTTPResponse) by shutting its socket down."""
    import socket

    fn = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
    if fn is not None:
        try:
            fn()
            return
        except Exception:  # noqa: BLE001
            pass
    try:
        sock = resp.connection.sock
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001
        pass
