# The README's commands. `make demo` and `make test` set up .venv/ first (idempotent, seconds when done).
PY := .venv/bin/python
.PHONY: setup demo test bench-loader bench-shards bench-model info clean-demo

setup:
	@bash tools/setup_env.sh

demo: setup
	@bash tools/demo.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

info: setup
	@$(PY) -m pipeline.info

bench-loader: setup
	$(PY) benchmarks/loader.py

bench-shards: setup
	$(PY) benchmarks/make_shards.py

bench-model: setup
	$(PY) benchmarks/model_speed.py

clean-demo:
	rm -rf demo_data
