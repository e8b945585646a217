"""The big fuzz run of the packet-parsing kernel programs (``make fuzz``): packetparser, dns and packetforward fed
structure-aware hostile frames through BPF_PROG_TEST_RUN and compared with the reference parser of
tests/support/fuzzframes.py (tests/test_fuzz_kernel.py runs a fixed-seed subset in ``make test``).

    .venv/bin/python bench/fuzz_kernel.py [--cases N] [--seed S]

Exits 1 on any mismatch (the first ones printed with their frames in hex, ready for a directed test). Root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import fuzzframes as F  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=int(time.time()),
                    help="first seed (default: the time, printed); each chunk of 50k cases uses the next one")
    args = ap.parse_args()

    from retina_exporter.plugins.dns.loader import DnsProgram
    from retina_exporter.plugins.packetforward.loader import PacketForwardProgram
    from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram

    t0 = time.perf_counter()
    progs = [PacketParserProgram(LoadOptions(ct_map_size=4096, ring_buffer_bytes=1 << 20)),
             DnsProgram(ring_buffer_bytes=1 << 20), PacketForwardProgram()]
    try:
        rig = F.FuzzRig(*progs)
        print(f"compiled in {time.perf_counter() - t0:.1f} s; seed {args.seed}", flush=True)
        st = rig.run(F.truncations())
        print(f"truncations: {st.summary()}", flush=True)
        chunk, done, seed = 50_000, 0, args.seed
        while done < args.cases:
            n = min(chunk, args.cases - done)
            rig.run(F.random_cases(seed, n), st)
            done += n
            seed += 1
            print(f"  {done} random cases (seeds {args.seed}..{seed - 1}): {st.summary()}", flush=True)
    finally:
        for p in progs:
            p.close()
    print(f"total: {st.summary()}; wall {time.perf_counter() - t0:.1f} s")
    for m in st.mismatches[:rig.max_mismatches]:
        print(m)
    return 1 if st.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
