# A newcomer's two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are installed together (a lone torchvision can pick a torch it does not
# match); these releases resolve from the local wheel store on the development machines.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar off
# The cluster demo's model: a micro SAM 2 with random weights (it shows the cluster, not masks).
DEMO_CONFIG := configs/models/sam2.1_hiera_micro.yaml
DEMO_CKPT := .cache/sam2.1_hiera_micro_random.pt
DEMO_OUT ?= demo-output
SCENES := samples/scenes

.PHONY: install demo test test-fast lint clean cluster-demo browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) -q $(TORCH_PINS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) -q -e '.[s3,test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, torchvision, sam2, ray, pycocotools, cv2, pipeline"
	touch $@

$(DEMO_CKPT): $(VENV)/.installed $(DEMO_CONFIG)
	@mkdir -p $(dir $@)
	$(BIN)/autolabel random-checkpoint --model-config $(DEMO_CONFIG) --out $@ --seed 0

# The demo labels the shipped synthetic scenes with sam2-tiny-synthetic, the small SAM 2 trained
# here on such scenes (training/README.md), at sam2's default settings (configs/default.yaml):
# real object masks, then overlays and the eval against the scenes' exact ground truth.
demo: $(VENV)/.installed
	@echo "NOTE: demo model = sam2-tiny-synthetic, trained on synthetic scenes: it knows shapes, not photos."
	$(BIN)/autolabel run --input $(SCENES)/images --output $(DEMO_OUT) --overwrite \
		model.name=sam2-tiny-synthetic runtime.shard_size=4
	$(BIN)/autolabel show $(DEMO_OUT) --out $(DEMO_OUT)/overlays --sample 8
	$(BIN)/autolabel eval $(DEMO_OUT) --gt $(SCENES)/annotations.json --out $(DEMO_OUT)/eval
	@echo "Labelling the same scenes from boxes: their ground-truth boxes as a COCO detections file."
	$(BIN)/autolabel run --input $(SCENES)/images --prompts $(SCENES)/annotations.json \
		--output $(DEMO_OUT)-boxes --overwrite model.name=sam2-tiny-synthetic runtime.shard_size=4
	$(BIN)/autolabel show $(DEMO_OUT)-boxes --out $(DEMO_OUT)-boxes/overlays --sample 8
	$(BIN)/autolabel eval $(DEMO_OUT)-boxes --gt $(SCENES)/annotations.json

# The demo run submitted with `ray job submit` to a real two-node Ray cluster started on this
# machine (head + worker on loopback, token auth), which is stopped afterwards.
cluster-demo: $(DEMO_CKPT)
	bash jobs/cluster_demo.sh cluster-demo-output $(DEMO_CKPT)

# Debian's chromium for the page tests (tests/test_web.py), when this is a Debian machine and we
# may install packages; elsewhere those tests skip and say so. `.ci/run` makes them required.
browser:
	@if command -v chromium >/dev/null; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium; }; \
	else echo "no chromium, and no root to install it: the page tests will skip"; fi

test: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests training benchmarks docs
	$(BIN)/python -m pytest -q

# The fast lane while iterating: everything but the tests marked slow (the full suite is
# `make test`, which CI runs).
test-fast: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests training benchmarks docs
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests training benchmarks docs
	$(BIN)/ruff format --check pipeline tests training benchmarks docs

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT) $(DEMO_OUT)-boxes
