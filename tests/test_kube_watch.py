"""The list+watch informer (retina_core.kube.watch) against the test API server with the real client: ordered
events, exact relists after 410 Gone, reconnects with backoff after dropped watches, outages and garbage, resync,
selectors, pagination, one log line per outage."""

from __future__ import annotations

import functools
import logging
import threading

import pytest
from kubernetes import client

from retina_core.kube.client import make_api_client
from retina_core.kube.watch import ADDED, DELETED, MODIFIED, SYNCED, Informer, WatchEvent
from tests.support.kube_fixtures import kube_server, node_body, pod_body, wait_for  # noqa: F401

FAST = dict(backoff_initial_s=0.05, backoff_max_s=0.4, resync_period_s=0, watch_timeout_s=30)


class Recorder:
    """Collects (type, key, relist) of every event, and the events themselves."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def __call__(self, ev: WatchEvent) -> None:
        with self.lock:
            self.events.append(ev)
            self.threads.add(threading.current_thread().name)

    def seen(self, *, synced: bool = False) -> list[tuple[str, str]]:
        with self.lock:
            return [(e.type, e.key) for e in self.events if synced or e.type != SYNCED]

    def count(self, etype: str) -> int:
        with self.lock:
            return sum(1 for e in self.events if e.type == etype)


@pytest.fixture
def api(kube_server):
    a = make_api_client(kube_server.configuration())
    yield a
    a.close()


@pytest.fixture
def informers():
    made: list[Informer] = []
    yield made
    for inf in made:
        inf.stop()


def start(informers, list_func, rec: Recorder | None = None, **kw) -> tuple[Informer, Recorder]:
    rec = rec or Recorder()
    inf = Informer(list_func, name=kw.pop("name", "test"), **{**FAST, **kw})
    inf.add_handler(rec)
    inf.start()
    informers.append(inf)
    assert inf.wait_synced(5)
    return inf, rec


def test_initial_list_then_watch_events_in_order(kube_server, api, informers):
    kube_server.create("pods", pod_body("a"))
    inf, rec = start(informers, client.CoreV1Api(api).list_pod_for_all_namespaces, name="pods")
    assert rec.seen(synced=True) == [(ADDED, "default/a"), (SYNCED, "")]
    assert rec.events[0].relist and rec.events[0].obj["kind"] == "Pod"  # kind restored on list items
    kube_server.create("pods", pod_body("b"))
    for i in range(5):
        kube_server.patch("pods", "b", {"metadata": {"labels": {"i": str(i)}}}, namespace="default")
    kube_server.delete("pods", "a", "default")
    wait_for(lambda: rec.count(DELETED) == 1, what="the delete")
    assert rec.seen()[1:] == [(ADDED, "default/b")] + [(MODIFIED, "default/b")] * 5 + [(DELETED, "default/a")]
    labels = [e.obj["metadata"]["labels"]["i"] for e in rec.events if e.type == MODIFIED]
    assert labels == ["0", "1", "2", "3", "4"]
    mods = [e for e in rec.events if e.type == MODIFIED]
    assert mods[1].old["metadata"]["labels"]["i"] == "0"  # old state is handed along
    assert rec.threads == {"informer-pods"}  # one thread per informer
    assert inf.resource_version == str(kube_server.resource_version)
    assert sorted(o["metadata"]["name"] for o in inf.items()) == ["b"]
    assert inf.health()["lists"] == 1 and inf.health()["healthy"]


def test_relist_after_410_is_exact(kube_server, api, informers):
    """While the informer is cut off, objects are added, changed, deleted, re-created and left alone, and the
    history is compacted: the 410 relist yields exactly one event per real difference."""
    for name in ("same", "changed", "deleted", "recreated"):
        kube_server.create("namespaces", {"metadata": {"name": name}})
    inf, rec = start(informers, client.CoreV1Api(api).list_namespace, name="ns")
    rec.events.clear()
    old_uid = inf.get("recreated")["metadata"]["uid"]
    kube_server.set_down(True)
    kube_server.create("namespaces", {"metadata": {"name": "added"}})
    kube_server.patch("namespaces", "changed", {"metadata": {"labels": {"x": "1"}}})
    kube_server.delete("namespaces", "deleted")
    kube_server.delete("namespaces", "recreated")
    kube_server.create("namespaces", {"metadata": {"name": "recreated"}})
    kube_server.compact()
    kube_server.set_down(False)
    wait_for(lambda: rec.count(SYNCED) == 1, what="the relist")
    assert inf.relists_gone == 1 and inf.lists == 2
    assert rec.seen() == [(DELETED, "deleted"), (ADDED, "added"), (MODIFIED, "changed"),
                          (DELETED, "recreated"), (ADDED, "recreated")]
    assert all(e.relist for e in rec.events)
    assert rec.events[3].obj["metadata"]["uid"] == old_uid != rec.events[4].obj["metadata"]["uid"]
    # And the watch goes on from the relist's revision.
    kube_server.create("namespaces", {"metadata": {"name": "after"}})
    wait_for(lambda: (ADDED, "after") in rec.seen(), what="an event after the relist")
    assert rec.seen().count((ADDED, "after")) == 1


def test_reconnect_after_closed_watches_resumes_without_relist(kube_server, api, informers, caplog):
    caplog.set_level(logging.INFO, logger="retina_core.kube.watch")
    inf, rec = start(informers, client.CoreV1Api(api).list_namespace, name="ns")
    n0 = len(rec.seen())
    for graceful in (False, True):
        wait_for(lambda: kube_server.open_watches() == 1, what="a watch")
        kube_server.close_watches(graceful=graceful)
        kube_server.create("namespaces", {"metadata": {"name": f"after-{graceful}".lower()}})
        wait_for(lambda g=graceful: (ADDED, f"after-{g}".lower()) in rec.seen(), what="the event after reconnect")
    assert len(rec.seen()) == n0 + 2  # nothing replayed twice
    assert inf.lists == 1 and inf.relists_gone == 0  # resumed from the resourceVersion, no relist
    assert inf.watches >= 3


def test_outage_backoff_and_one_log_line(kube_server, api, informers, caplog):
    caplog.set_level(logging.DEBUG, logger="retina_core.kube.watch")
    inf, rec = start(informers, client.CoreV1Api(api).list_namespace, name="ns")
    kube_server.set_down(True, how="503")
    first = len(kube_server.requests)
    wait_for(lambda: inf.failures >= 4, what="several failed attempts")
    assert not inf.health()["healthy"] and "503" in inf.health()["error"]
    kube_server.set_down(False)
    wait_for(lambda: inf.healthy, what="recovery")
    assert len(kube_server.requests) - first >= 4  # the attempts that were answered 503
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "recovered" in r.getMessage()]
    # One line when the outage starts (the dropped watch, or the first 503), one when it ends; retries are DEBUG.
    assert len(warnings) == 1 and "retrying with backoff" in warnings[0].getMessage()
    assert len(infos) == 1
    assert sum("HTTP 503 Service Unavailable" in r.getMessage() for r in caplog.records) >= 3
    # Refused connections too: down, changes, up; the informer resumes and catches up.
    kube_server.set_down(True)
    kube_server.create("namespaces", {"metadata": {"name": "while-down"}})
    wait_for(lambda: "cannot reach" in (inf.error or ""), what="the refused-connection error")
    assert not inf.healthy and inf.synced  # synced stays True through outages
    kube_server.set_down(False)
    wait_for(lambda: (ADDED, "while-down") in rec.seen(), what="the change made while down")
    assert inf.lists == 1  # history still covered the gap: resumed, not relisted


def test_backoff_grows_exponentially():
    """The delay schedule itself: doubling from the initial delay up to the cap, times a jitter in [0.5, 1)."""
    waits: list[float] = []
    inf = Informer(lambda **kw: None, name="t", backoff_initial_s=0.1, backoff_max_s=1.0)
    inf._stop.wait = lambda d: waits.append(d) or False  # type: ignore[method-assign]
    for _ in range(7):
        inf._backoff()
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(c * 0.5 <= w <= c for w, c in zip(waits, caps)), waits
    inf._last_backoff -= 2.5  # a stable spell longer than 2 x backoff_max_s: start over
    inf._backoff()
    assert waits[-1] <= 0.1


def test_garbage_does_not_kill_the_informer(kube_server, api, informers):
    inf, rec = start(informers, client.CoreV1Api(api).list_namespace, name="ns")
    wait_for(lambda: kube_server.open_watches() == 1, what="a watch")
    kube_server.garbage_mode(True)
    wait_for(lambda: "malformed" in (inf.error or ""), what="the malformed-response error")
    kube_server.create("namespaces", {"metadata": {"name": "during-garbage"}})
    kube_server.garbage_mode(False)
    wait_for(lambda: (ADDED, "during-garbage") in rec.seen(), what="the change made during garbage")
    assert inf.alive() and inf.healthy


def test_garbage_at_list_time_then_recovery(kube_server, api, informers):
    kube_server.garbage_mode(True)
    rec = Recorder()
    inf = Informer(client.CoreV1Api(api).list_namespace, name="ns", **FAST)
    inf.add_handler(rec)
    inf.start()
    informers.append(inf)
    wait_for(lambda: inf.failures >= 2, what="failed lists")
    assert not inf.synced and "list: malformed response" in inf.error
    kube_server.garbage_mode(False)
    assert inf.wait_synced(5)
    assert (ADDED, "default") in rec.seen()


def test_resync_repairs_a_missed_event(kube_server, api, informers):
    kube_server.create("namespaces", {"metadata": {"name": "a"}})
    inf, rec = start(informers, client.CoreV1Api(api).list_namespace, name="ns", resync_period_s=1.0)
    kube_server.store_silently("namespaces", {"metadata": {"name": "a", "labels": {"lost": "event"}}})
    kube_server.delete_silently("namespaces", "kube-public")
    wait_for(lambda: inf.resyncs >= 1 and rec.count(SYNCED) >= 2, timeout_s=4, what="a periodic resync")
    assert (MODIFIED, "a") in rec.seen() and (DELETED, "kube-public") in rec.seen()
    assert inf.get("a")["metadata"]["labels"] == {"lost": "event"}
    # resync_now() does the same at once; with nothing missed it yields no object events.
    n = len(rec.seen())
    inf.resync_now()
    wait_for(lambda: rec.count(SYNCED) >= 3, what="resync_now")
    assert len(rec.seen()) == n


def test_selectors_and_objects_leaving_them(kube_server, api, informers):
    kube_server.create("pods", pod_body("mine", "node-a", {"app": "web"}))
    kube_server.create("pods", pod_body("other-node", "node-b", {"app": "web"}))
    kube_server.create("pods", pod_body("other-app", "node-a", {"app": "db"}))
    inf, rec = start(informers, client.CoreV1Api(api).list_pod_for_all_namespaces, name="pods",
                     field_selector="spec.nodeName=node-a", label_selector="app in (web)")
    assert rec.seen() == [(ADDED, "default/mine")]
    kube_server.patch("pods", "mine", {"metadata": {"labels": {"app": "db"}}}, namespace="default")
    kube_server.patch("pods", "other-app", {"metadata": {"labels": {"app": "web"}}}, namespace="default")
    wait_for(lambda: len(rec.seen()) == 3, what="selector transitions")
    assert rec.seen()[1:] == [(DELETED, "default/mine"), (ADDED, "default/other-app")]
    assert [o["metadata"]["name"] for o in inf.items()] == ["other-app"]


def test_pagination_and_namespaced_list(kube_server, api, informers):
    kube_server.create("namespaces", {"metadata": {"name": "team"}})
    for i in range(7):
        kube_server.create("pods", pod_body(f"p{i}", namespace="team"))
    kube_server.create("pods", pod_body("elsewhere"))
    inf, rec = start(informers, client.CoreV1Api(api).list_namespaced_pod, name="team", namespace="team",
                     page_size=3)
    assert [k for _, k in rec.seen()] == [f"team/p{i}" for i in range(7)]
    pages = [p for m, p in kube_server.requests if "/namespaces/team/pods" in p and "watch" not in p]
    assert len(pages) == 3 and "limit=3" in pages[0] and "continue=" in pages[1]


def test_custom_resource_and_transform(kube_server, api, informers):
    co = client.CustomObjectsApi(api)
    lf = functools.partial(co.list_cluster_custom_object, "retina.sh", "v1alpha1", "metricsconfigurations")
    slim = lambda o: {"metadata": {k: o["metadata"][k] for k in ("name", "uid", "resourceVersion")},  # noqa: E731
                      "state": (o.get("status") or {}).get("state")}
    inf, rec = start(informers, lf, name="mc", transform=slim)
    co.create_cluster_custom_object("retina.sh", "v1alpha1", "metricsconfigurations",
                                    {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration",
                                     "metadata": {"name": "m"}, "spec": {}})
    co.patch_cluster_custom_object_status("retina.sh", "v1alpha1", "metricsconfigurations", "m",
                                          {"status": {"state": "Accepted"}})
    wait_for(lambda: rec.count(MODIFIED) == 1, what="the status update")
    assert rec.events[-1].obj == {"metadata": {"name": "m", "uid": rec.events[-1].obj["metadata"]["uid"],
                                               "resourceVersion": str(kube_server.resource_version)},
                                  "state": "Accepted"}


def test_handler_errors_are_contained(kube_server, api, informers, caplog):
    calls = []

    def bad(ev: WatchEvent) -> None:
        calls.append(ev.type)
        raise RuntimeError("boom")

    rec = Recorder()
    inf = Informer(client.CoreV1Api(api).list_namespace, name="ns", **FAST)
    inf.add_handler(bad)
    inf.add_handler(rec)
    inf.start()
    informers.append(inf)
    assert inf.wait_synced(5)
    kube_server.create("namespaces", {"metadata": {"name": "x"}})
    wait_for(lambda: (ADDED, "x") in rec.seen(), what="the event reaching the second handler")
    assert inf.handler_errors == len(calls) >= 6
    assert sum(1 for r in caplog.records if "handler" in r.getMessage() and r.levelno >= logging.ERROR) <= 2


def test_stop_is_prompt_and_idempotent(kube_server, api, informers):
    import time

    inf, _ = start(informers, client.CoreV1Api(api).list_namespace, name="ns")
    wait_for(lambda: kube_server.open_watches() == 1, what="a watch")
    t = time.monotonic()
    inf.stop()
    inf.stop()
    assert time.monotonic() - t < 1.0 and not inf.alive()
    wait_for(lambda: kube_server.open_watches() == 0, what="the server to see the watch close")


def test_nodes_cluster_scoped(kube_server, api, informers):
    kube_server.create("nodes", node_body("n1", ["192.168.1.1"], zone="z1"))
    inf, rec = start(informers, client.CoreV1Api(api).list_node, name="nodes")
    assert rec.seen() == [(ADDED, "n1")] and rec.events[0].obj["kind"] == "Node"
