# The README's commands. `make demo` and `make test` set up .venv/ first (idempotent, seconds when done).
PY := .venv/bin/python
.PHONY: setup demo test test-fast bench-loader bench-shards bench-model info clean-demo

setup:
	@bash tools/setup_env.sh

demo: setup
	@bash tools/demo.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Every unit test in about two minutes on 2 cores: the tests not marked slow (setup.cfg). CI runs `make test`.
test-fast: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

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
