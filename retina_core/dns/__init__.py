"""DNS wire format: a defensive parser (:mod:`.parser`), a small encoder for tests and tools (:mod:`.encoder`),
type and response-code names (:mod:`.names`) and the compact L7 record that flows carry (:mod:`.record`)."""

from retina_core.dns.names import rcode_name, type_name
from retina_core.dns.parser import Message, ParseError, parse, split_tcp_stream
from retina_core.dns.record import DnsRecord

__all__ = ["DnsRecord", "Message", "ParseError", "parse", "rcode_name", "split_tcp_stream", "type_name"]
