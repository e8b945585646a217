# retina-exporter: every target does the set-up it needs first (idempotent).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test bench clean-lab

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m retina_exporter.cli demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_packetparser.py
	$(PY) bench/bench_ring.py
	$(PY) bench/bench_convert.py
	$(PY) bench/bench_enricher.py
	$(PY) bench/bench_metrics.py
	taskset -c 0 $(PY) bench/bench_pipeline.py

clean-lab: setup
	$(PY) -m retina_exporter.cli lab down --all
