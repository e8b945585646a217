"""The dns plugin's user-space half on synthetic kernel events: counting, parse errors, pod-level records, and the
DNS-over-TCP message boundaries (length prefixes, messages spanning segments, retransmissions)."""

from __future__ import annotations

import socket

from retina_core.dns.encoder import RR, build_query, build_response, with_tcp_prefix
from retina_core.dns.record import VERDICT_DNS
from retina_core.record import DIR_EGRESS, DIR_INGRESS, OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT
from retina_exporter.bpf.dns import DNS_CAPTURE, EVENT_HEADER, EVENT_SIZE
from retina_exporter.plugins.dns.processor import DnsProcessor

A = socket.inet_aton("10.244.0.10") + bytes(12)
B = socket.inet_aton("10.244.0.11") + bytes(12)


def event(payload: bytes, *, proto=17, sport=40000, dport=53, src=A, dst=B, seq=0, flags=0x18, obs=OBS_FROM_ENDPOINT,
          msg_len=None, ipv=4) -> bytes:
    cap = payload[:DNS_CAPTURE]
    head = EVENT_HEADER.pack(123, src, dst, 5, 100 + len(payload), seq, sport, dport,
                             len(payload) if msg_len is None else msg_len, len(cap), ipv, proto, obs, flags)
    return head + cap + bytes(EVENT_SIZE - len(head) - len(cap))


def processor():
    out = []
    return DnsProcessor("n1", {5: "vpod0"}, pod_level=True, emit=out.append), out


def test_udp_query_response_and_records():
    p, out = processor()
    q = build_query("a.example", "A", msg_id=3)
    p.process(event(q))
    p.process(event(build_response(q, [RR("a.example", "A", 9, "192.0.2.1")]), sport=53, dport=40000, src=B, dst=A,
                    obs=OBS_TO_ENDPOINT))
    assert (p.requests, p.responses, p.parse_errors) == (1, 1, {})
    qrec, rrec = out
    assert qrec.verdict == VERDICT_DNS and qrec.direction == DIR_EGRESS and qrec.is_reply is False
    assert qrec.src_ip == A[:4] and qrec.ifname == "vpod0" and qrec.l7.query == "a.example."
    assert rrec.direction == DIR_INGRESS and rrec.is_reply is True and rrec.l7.ips == ("192.0.2.1",)
    assert rrec.obs_point == OBS_TO_ENDPOINT


def test_pod_level_off_counts_only():
    out = []
    p = DnsProcessor(pod_level=False, emit=out.append)
    p.process(event(build_query("a.example")))
    assert p.requests == 1 and out == []


def test_garbage_is_a_parse_error_not_a_message():
    p, out = processor()
    p.process(event(b"\x01\x02\x03"))
    p.process(event(b""))
    p.process(event(bytes(12)[:4] + b"\x00\x01" + bytes(6) + b"\xc0\x0c\x00\x01\x00\x01"))
    assert p.requests == p.responses == 0 and out == []
    assert p.parse_errors == {"short_header": 2, "compression_loop": 1}


def test_cut_capture_counts_as_incomplete_message():
    q = build_query("big.example", "A")
    r = build_response(q, [RR("big.example", "A", 1, f"198.51.100.{i}") for i in range(80)])
    p, out = processor()
    p.process(event(r, sport=53, dport=40000))
    assert p.responses == 1 and p.incomplete == 1 and not out[0].l7.complete and out[0].l7.num_answers == 80


def test_tcp_messages_segments_and_retransmissions():
    p, out = processor()
    q1 = with_tcp_prefix(build_query("one.example", "A", msg_id=1))
    q2 = with_tcp_prefix(build_query("two.example", "A", msg_id=2))
    p.process(event(b"", proto=6, seq=999, flags=0x02))  # SYN: the first message starts at 1000
    assert p.requests == 0 and p._tcp[(A[:4], B[:4], 40000, 53)] == 1000
    seq = 1000
    # Two queries in one segment.
    p.process(event(q1 + q2, proto=6, seq=seq))
    assert p.requests == 2
    seq += len(q1) + len(q2)
    # A retransmission of the same segment: skipped.
    p.process(event(q1 + q2, proto=6, seq=1000))
    assert p.requests == 2 and p.tcp_skipped == 1
    # A long response split over three segments, the server side of the connection.
    big = with_tcp_prefix(build_response(build_query("big.example", "A", msg_id=9),
                                         [RR("big.example", "A", 1, f"198.51.100.{i}") for i in range(100)]))
    assert len(big) > 1200
    rseq = 5000
    kw = dict(proto=6, sport=53, dport=40000, src=B, dst=A)
    p.process(event(b"", seq=rseq - 1, flags=0x12, **kw))  # SYN-ACK
    p.process(event(big[:600], seq=rseq, **kw))
    p.process(event(big[600:1200], seq=rseq + 600, **kw))
    p.process(event(big[1200:] + with_tcp_prefix(build_response(build_query("x.example"), rcode=3)), seq=rseq + 1200,
                    **kw))
    assert p.responses == 2 and p.parse_errors == {} and p.tcp_skipped == 2
    assert [r.l7.query for r in out if r.is_reply] == ["big.example.", "x.example."]
    # The middle of a message on a connection opened before we looked: its first bytes are taken as a length
    # prefix (here 5, too short for a DNS header): a parse error, and the direction is forgotten.
    p.process(event(b"\x00\x05" + bytes(30), proto=6, sport=41000, seq=1))
    assert p.parse_errors == {"bad_length": 1} and (A[:4], B[:4], 41000, 53) not in p._tcp
    # FIN forgets the direction.
    p.process(event(q1, proto=6, seq=seq, flags=0x11))
    assert p.requests == 3 and (A[:4], B[:4], 40000, 53) not in p._tcp


def test_tcp_bad_length_prefix():
    p, _ = processor()
    p.process(event(b"\x00\x00" + bytes(20), proto=6, seq=7))
    assert p.parse_errors == {"bad_length": 1}


def test_layout_sizes():
    from retina_exporter.bpf.dns import HEADER_SIZE, DnsEvent

    assert HEADER_SIZE == 64 and EVENT_SIZE == 64 + DNS_CAPTURE == DnsEvent.data.offset + DNS_CAPTURE
