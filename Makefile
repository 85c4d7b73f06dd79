# Set-up: `make demo` then `make test`. Both create .venv with the pinned requirements
# on first use (and again whenever requirements.txt changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv demo test bench clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(DEMO_DATA)/FSDnoisy18k.meta/test.csv: | venv
	$(PY) synthetic.py --out $(DEMO_DATA) --seed 0

demo: venv $(DEMO_DATA)/FSDnoisy18k.meta/test.csv
	$(PY) main.py -p config/demo.yaml -o ctrl.run_name=demo_$$(date +%Y%m%d-%H%M%S)
	@echo; echo "latest demo result:"; grep -h "ACCURACY - MICRO" $$(ls -t logs/demo_*.out | head -1)

# CCE vs Lq vs pruning on the demo data, 2 seeds (sweeps/demo.yaml): prints the summary.
.PHONY: demo-sweep
demo-sweep: venv $(DEMO_DATA)/FSDnoisy18k.meta/test.csv
	$(PY) sweep.py --spec sweeps/demo.yaml

test: venv
	$(PY) -m pytest -q

# Local work: the suite without the long end-to-end runs (marked slow); CI runs make test.
.PHONY: test-fast
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) bench/bench_pipeline.py --scale 0.05

clean-demo:
	rm -rf $(DEMO_DATA) features/demo logs/demo_*
