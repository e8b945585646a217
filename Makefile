# retina-exporter: every target does the set-up it needs first (idempotent).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test bench bench-parts fuzz soak clean-lab image test-image

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m retina_exporter.cli demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Issue 13's table in one run (each figure with its same-run baseline and target). BENCH_ARGS: e.g. --quick,
# --baseline-root /work/main (that checkout's agent as the "before"). bench-parts: the component benches.
bench: setup
	$(PY) bench/bench_all.py $(BENCH_ARGS)

bench-parts: setup
	$(PY) bench/bench_packetparser.py
	$(PY) bench/bench_tcpmetrics.py
	$(PY) bench/bench_ring.py
	$(PY) bench/bench_convert.py
	$(PY) bench/bench_enricher.py
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_issue14.py
	taskset -c 0 $(PY) bench/bench_pipeline.py

# Structure-aware fuzzing of the packet-parsing BPF programs through BPF_PROG_TEST_RUN (300k cases; make test runs a
# fixed-seed 20k subset). FUZZ_ARGS: e.g. --cases 1000000 --seed 42.
fuzz: setup
	$(PY) bench/fuzz_kernel.py $(FUZZ_ARGS)

# Soak (not part of `make test`): 20 minutes of lab traffic with every plugin, a Hubble follower and OTLP push;
# RSS, fds, threads, BPF map entries and series sampled every 30 s, slopes after a 20 % warm-up checked against
# the thresholds in bench/soak.py. SOAK_ARGS: e.g. --minutes 3 --interval 10.
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

clean-lab: setup
	$(PY) -m retina_exporter.cli lab down --all

# Container images (podman, no registry): localhost/retina-exporter:<version> and localhost/retina-operator:<version>.
# Not part of `make test` (minutes); scripts/image.sh installs podman/runc/mmdebstrap if missing.
image:
	@bash scripts/image.sh build

test-image: setup
	@PY=$(PY) bash scripts/image.sh test $(PYTEST_ARGS)
