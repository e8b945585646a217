"""The DNS wire parser: real messages, every malformation it must name, and fuzzing (random bytes and mutated real
messages, thousands of cases, bounded time) -- it must return a Message or raise ParseError, nothing else, fast."""

from __future__ import annotations

import random
import struct
import time

import pytest

from retina_core.dns.encoder import RR, build_query, build_response, encode_name, with_tcp_prefix
from retina_core.dns.names import rcode_name, type_name, type_number
from retina_core.dns.parser import MAX_POINTERS, REASONS, Message, ParseError, parse, read_name, split_tcp_stream
from retina_core.dns.record import DnsRecord


def header(qd=1, an=0, flags=0x0100, msg_id=0x4242, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, ns, ar)


def reason(data: bytes, wire_len: int | None = None) -> str:
    with pytest.raises(ParseError) as exc:
        parse(data, wire_len)
    assert exc.value.reason in REASONS
    return exc.value.reason


# --- real messages ------------------------------------------------------------------------------------------------


def test_query_round_trip():
    q = build_query("WWW.Example.COM", "AAAA", msg_id=0xBEEF)
    m = parse(q)
    assert (m.id, m.qr, m.opcode, m.rd, m.rcode, m.complete) == (0xBEEF, False, 0, True, 0, True)
    assert [(x.name, x.qtype, x.qclass) for x in m.questions] == [("www.example.com.", 28, 1)]
    rec = DnsRecord.from_message(m)
    assert (rec.qr, rec.query, rec.qtypes, rec.ips, rec.num_answers) == (False, "www.example.com.", ("AAAA",), (), 0)


def test_response_with_cname_chain_compression_and_other_types():
    q = build_query("www.example.com", "A", msg_id=7)
    r = build_response(q, [
        RR("www.example.com", "CNAME", 300, "edge.example.net"),
        RR("edge.example.net", "A", 60, "192.0.2.1"),
        RR("edge.example.net", "A", 30, "192.0.2.2"),
        RR("edge.example.net", "TXT", 5, b"\x05hello"),
        RR("edge.example.net", "AAAA", 45, "2001:db8::1"),
    ])
    assert len(r) < 160  # names were compressed
    m = parse(r)
    assert m.qr and m.aa and m.ra and m.rcode == 0 and m.ancount == 5
    assert [(a.rtype, a.data) for a in m.answers] == [
        (5, "edge.example.net."), (1, "192.0.2.1"), (1, "192.0.2.2"), (16, None), (28, "2001:db8::1")]
    rec = DnsRecord.from_message(m)
    assert rec.ips == ("192.0.2.1", "192.0.2.2", "2001:db8::1")
    assert rec.cnames == ("edge.example.net.",)
    assert rec.rrtypes == ("CNAME", "A", "A", "TXT", "AAAA")
    assert rec.ttl == 30  # lowest among A/AAAA/CNAME (the TXT's 5 does not count)
    assert rec.is_response and rec.num_answers == 5 and rec.complete


def test_nxdomain_and_multiple_questions():
    q = build_query("nope.example", "A", extra_questions=[("nope.example", "AAAA")])
    r = build_response(q, rcode=3)
    rec = DnsRecord.from_message(parse(r))
    assert (rec.rcode, rec.qtypes, rec.ips, rec.ttl) == (3, ("A", "AAAA"), (), 0)
    assert rcode_name(3) == "NXDOMAIN" and rcode_name(14) == "14"


def test_root_name_no_question_and_names():
    m = parse(header(qd=1) + b"\x00" + struct.pack("!HH", 2, 1))
    assert m.questions[0].name == "."
    m = parse(header(qd=0, flags=0x8000))
    assert m.questions == [] and DnsRecord.from_message(m).query == ""
    assert type_name(65) == "HTTPS" and type_name(65280) == "TYPE65280" and type_number("type65280") == 65280
    with pytest.raises(ValueError):
        type_number("NOPE")


def test_label_escaping_and_case():
    raw = b"\x05A.b\\c\x03\x00\xffz\x00"
    name, after = read_name(raw, 0)
    assert name == "a\\.b\\\\c.\\000\\255z." and after == len(raw)


def test_encode_name_rejects_bad_labels():
    with pytest.raises(ValueError):
        encode_name("a" * 64 + ".com")
    with pytest.raises(ValueError):
        encode_name("a..b")


# --- malformations ------------------------------------------------------------------------------------------------


def test_short_header():
    for n in range(12):
        assert reason(bytes(n)) == "short_header"
        assert reason(bytes(n), wire_len=100) == "short_header"  # even from a cut capture


def test_compression_loops():
    # A pointer to itself.
    assert reason(header() + b"\xc0\x0c" + b"\x00\x01\x00\x01") == "compression_loop"
    # Two pointers to each other.
    assert reason(header() + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01") == "compression_loop"
    # A loop through a label: grows the name until it is too long (a 1-octet label loop hits the pointer limit first).
    assert reason(header() + b"\x0aabcdefghij\xc0\x0c\x00\x01\x00\x01") == "name_too_long"
    assert reason(header() + b"\x01a\xc0\x0c\x00\x01\x00\x01") == "compression_loop"


def test_pointer_chain_limit():
    # A chain of n pointers, each to the previous one, ending at the root label at offset 12.
    def chain(n: int) -> bytes:
        body = bytearray(header(qd=1) + b"\x00")  # offset 12: a root name (the "question" is the chain's end)
        prev = 12
        for _ in range(n):
            here = len(body)
            body += struct.pack("!H", 0xC000 | prev)
            prev = here
        return bytes(body), prev

    data, last = chain(MAX_POINTERS)
    name, _ = read_name(data, last)
    assert name == "."
    data, last = chain(MAX_POINTERS + 1)
    with pytest.raises(ParseError) as exc:
        read_name(data, last)
    assert exc.value.reason == "compression_loop"


def test_name_length_limit():
    ok = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"b" * 61 + b"\x00"  # 255 octets
    assert len(ok) == 255
    m = parse(header() + ok + b"\x00\x01\x00\x01")
    assert len(m.questions[0].name) == 254  # 4 labels + 4 dots - no length octets
    too_long = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3e" + b"b" * 62 + b"\x00"  # 256
    assert reason(header() + too_long + b"\x00\x01\x00\x01") == "name_too_long"
    # Many short labels: also bounded by octets.
    assert reason(header() + b"\x01a" * 128 + b"\x00\x00\x01\x00\x01") == "name_too_long"


def test_label_types_and_pointers():
    assert reason(header() + b"\x41" + b"a" * 10 + b"\x00\x00\x01\x00\x01") == "bad_label_type"  # 01xxxxxx
    assert reason(header() + b"\x80\x00\x00\x01\x00\x01") == "bad_label_type"  # 10xxxxxx
    assert reason(header() + b"\xff\xff\x00\x01\x00\x01") == "bad_pointer"  # past the end


def test_truncations():
    r = build_response(build_query("a.example", "A"), [RR("a.example", "A", 5, "192.0.2.9")])
    for n in range(12, len(r)):
        assert reason(r[:n]) == "truncated", n
    assert reason(header(qd=65535) + b"\x00\x00\x01\x00\x01") == "truncated"


def test_bad_rdata():
    q = build_query("a.example", "A")
    bad_a = build_response(q, [RR("a.example", 1, 5, b"\x01\x02\x03\x04\x05")])
    assert reason(bad_a) == "bad_rdata"
    bad_aaaa = build_response(q, [RR("a.example", 28, 5, b"\x00" * 4)])
    assert reason(bad_aaaa) == "bad_rdata"
    # CNAME whose RDLENGTH is larger than its name.
    bad_cname = build_response(q, [RR("a.example", 5, 5, encode_name("b.example") + b"\x00\x00")])
    assert reason(bad_cname) == "bad_rdata"


def test_cut_capture_is_partial_not_an_error():
    q = build_query("big.example", "A")
    answers = [RR("big.example", "A", 60, f"198.51.100.{i}") for i in range(60)]
    r = build_response(q, answers)
    assert len(r) > 512
    m = parse(r[:512], wire_len=len(r))
    assert not m.complete and 0 < len(m.answers) < 60
    assert all(a.data.startswith("198.51.100.") for a in m.answers)
    assert reason(r[:512]) == "truncated"  # the same bytes claiming to be complete
    # The first question must be there even in a cut capture.
    assert reason(r[:20], wire_len=len(r)) == "truncated"


def test_tcp_stream_split():
    q1 = build_query("one.example", "A", msg_id=1)
    q2 = build_query("two.example", "AAAA", msg_id=2)
    stream = with_tcp_prefix(q1) + with_tcp_prefix(q2)
    msgs, nxt = split_tcp_stream(stream)
    assert [parse(d, n).id for d, n in msgs] == [1, 2] and nxt == len(stream)
    # The second message continues beyond the captured piece.
    msgs, nxt = split_tcp_stream(stream[:-5])
    assert len(msgs) == 2 and msgs[1][1] == len(q2) and nxt == len(stream)
    # A length prefix that was not captured: the next boundary is unknown.
    msgs, nxt = split_tcp_stream(stream[:len(q1) + 3], stream_len=len(stream))
    assert len(msgs) == 1 and nxt is None
    with pytest.raises(ParseError) as exc:
        split_tcp_stream(b"\x00\x00" + q1)
    assert exc.value.reason == "bad_length"


# --- fuzzing --------------------------------------------------------------------------------------------------


def _corpus() -> list[bytes]:
    out = []
    for i, (name, t) in enumerate([("a.example", "A"), ("www.example.com", "AAAA"), ("x.y.z.example.org", "MX")]):
        q = build_query(name, t, msg_id=i)
        out.append(q)
        out.append(build_response(q, [RR(name, "CNAME", 30, "target.example.net"),
                                      RR("target.example.net", "A", 20, "203.0.113.7"),
                                      RR("target.example.net", "AAAA", 10, "2001:db8::7"),
                                      RR("target.example.net", "TXT", 10, b"\x03abc")]))
        out.append(build_response(q, rcode=3))
    return out


def _check(data: bytes, wire_len: int | None = None) -> str:
    try:
        m = parse(data, wire_len)
    except ParseError as exc:
        assert exc.reason in REASONS
        return exc.reason
    assert isinstance(m, Message)
    DnsRecord.from_message(m)  # the record builder must cope with whatever the parser accepted
    return "ok"


def test_fuzz_random_bytes():
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    t0 = time.monotonic()
    for i in range(4000):
        n = rng.choice((rng.randint(0, 40), rng.randint(0, 600)))
        data = rng.randbytes(n)
        if i % 3 == 0 and n >= 12:  # plausible counts make the parser go deeper
            data = data[:4] + struct.pack("!HHHH", rng.randint(0, 3), rng.randint(0, 5), 0, 0) + data[12:]
        r = _check(data, rng.choice((None, n + rng.randint(0, 100))))
        outcomes[r] = outcomes.get(r, 0) + 1
    assert time.monotonic() - t0 < 10
    assert len(outcomes) >= 4, outcomes  # the cases reached several different checks


def test_fuzz_mutated_messages():
    rng = random.Random(99)
    corpus = _corpus()
    outcomes: dict[str, int] = {}
    t0 = time.monotonic()
    for _ in range(8000):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            op = rng.randrange(5)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[pos] = rng.choice((0x00, 0x3F, 0x40, 0x80, 0xC0, 0xFF, rng.randrange(256)))
            elif op == 2 and pos + 1 < len(data):  # plant a compression pointer
                target = rng.randrange(len(data) + 4)
                data[pos:pos + 2] = struct.pack("!H", 0xC000 | target)
            elif op == 3:
                del data[pos:]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        r = _check(bytes(data), rng.choice((None, len(data), len(data) + 50)))
        outcomes[r] = outcomes.get(r, 0) + 1
    assert time.monotonic() - t0 < 15
    assert outcomes.get("ok", 0) > 100 and len(outcomes) >= 5, outcomes


def _pointer_heavy(chain: int, size: int = 512) -> bytes:
    """As much work as ``size`` bytes can ask: questions that are each one (forward) pointer into a chain of
    ``chain`` pointers kept in a TXT answer's RDATA, which ends at a root label."""
    n_questions = (size - 12 - 11 - 1 - 2 * chain) // 6
    rdata_at = 12 + 6 * n_questions + 11  # answer: root name (1) + type/class/ttl/rdlength (10)
    rdata = bytearray(b"\x00")
    prev = rdata_at
    for _ in range(chain):
        here = rdata_at + len(rdata)
        rdata += struct.pack("!H", 0xC000 | prev)
        prev = here
    body = bytearray(header(qd=n_questions, an=1))
    for _ in range(n_questions):
        body += struct.pack("!H", 0xC000 | prev) + b"\x00\x01\x00\x01"
    body += b"\x00" + struct.pack("!HHIH", 16, 1, 0, len(rdata)) + rdata
    assert len(body) <= size
    return bytes(body)


def test_worst_case_work_is_bounded():
    # Every question follows MAX_POINTERS pointers (the question's own one plus the chain): valid, and slow-ish.
    data = _pointer_heavy(MAX_POINTERS - 1)
    m = parse(data)
    assert len(m.questions) > 20 and all(q.name == "." for q in m.questions)
    t0 = time.monotonic()
    for _ in range(10):
        parse(data)
    assert (time.monotonic() - t0) / 10 < 0.2
    # One pointer more: refused at the first question.
    assert reason(_pointer_heavy(MAX_POINTERS)) == "compression_loop"
