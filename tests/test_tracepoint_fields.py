"""Tracepoint record offsets for the programs' -D defines (``datapath.tracepoint.field_defines``), and the RTT
sampler's fallback when ``sock:inet_sock_set_state`` cannot be used: format files written by the test, no kernel."""

from __future__ import annotations

import logging

import pytest

from retina_exporter.datapath.tracepoint import field_defines, parse_format
from retina_exporter.errors import StartupError
from retina_exporter.plugins.packetparser.rtt import close_offsets

SET_STATE = """name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;

print fmt: "x"
"""


def test_offsets_of_the_named_fields():
    fmt = parse_format(SET_STATE, "sock", "inet_sock_set_state", "/t/format")
    assert field_defines(fmt, "TP_", (("SK", "skaddr", 8), ("NEW", "newstate", 4)), plugin="p") == {
        "TP_SK": 8, "TP_NEW": 20}


@pytest.mark.parametrize("field,size,found", [("protocol", 2, "it has none"), ("newstate", 2, "it is 4 bytes")])
def test_a_missing_or_resized_field_names_plugin_tracepoint_field_and_fix(field, size, found):
    fmt = parse_format(SET_STATE, "sock", "inet_sock_set_state", "/t/format")
    with pytest.raises(StartupError) as err:
        field_defines(fmt, "TP_", (("X", field, size),), plugin="tcpretrans", hint="upgrade the kernel")
    assert str(err.value) == (f"tcpretrans: tracepoint sock:inet_sock_set_state (/t/format) has no {size}-byte field "
                              f"{field!r} ({found}); upgrade the kernel")


def write_event(root, text: str | None) -> str:
    (root / "events").mkdir()
    if text is not None:
        d = root / "events" / "sock" / "inet_sock_set_state"
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return str(root)


def test_close_hook_offsets_from_the_format(tmp_path):
    assert close_offsets(write_event(tmp_path, SET_STATE)) == {"TP_CLOSE_OFF_SKADDR": 8, "TP_CLOSE_OFF_NEWSTATE": 20}


@pytest.mark.parametrize("text,why", [(None, "no tracepoint sock:inet_sock_set_state"),
                                      (SET_STATE.replace("int newstate;", "int state;"), "field 'newstate'")])
def test_without_a_usable_close_tracepoint_the_lru_bound_is_logged(tmp_path, caplog, text, why):
    with caplog.at_level(logging.WARNING):
        assert close_offsets(write_event(tmp_path, text)) is None
    (msg,) = [r.getMessage() for r in caplog.records]
    assert why in msg and msg.endswith("closed sockets' sample times are left to the LRU bound"), msg
