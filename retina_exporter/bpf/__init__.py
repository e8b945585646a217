"""The kernel programs and their layouts, side by side (as libbpf-tools keeps ``x.h`` next to ``x.bpf.c``).

* ``<name>.bpf.c``: the program; ``<name>.h``: the one header with its event and map layouts; ``common.h``: the
  parsing and TC entry helpers and the constants the programs share (observation points, directions, TCP flags).
* ``<name>.py``: the Python mirror of ``<name>.h`` (ctypes structures, ``struct`` formats, constants), the only
  one; ``tests/test_bpf_layouts.py`` compiles the headers with bcc and pins every size, offset and constant of the
  mirrors (and ``common.h`` against :mod:`retina_core.record`).

The C files ship as package data; :mod:`retina_exporter.datapath.compiler` compiles them.
"""
