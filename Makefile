# A newcomer's two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are installed together (a lone torchvision can pick a torch it does not
# match); these releases resolve from the local wheel store on the development machines.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar off
DEMO_CONFIG := configs/models/sam2.1_hiera_micro.yaml
DEMO_CKPT := .cache/sam2.1_hiera_micro_random.pt
DEMO_OUT ?= demo-output
SCENES := samples/scenes

.PHONY: install demo test lint clean cluster-demo

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

# The demo model is a micro SAM 2 with RANDOM weights (official checkpoints cannot be
# downloaded offline): the pipeline runs for real, but its masks are noise.
demo: $(DEMO_CKPT)
	@echo "NOTE: demo model = micro SAM 2 with random weights; the masks are noise, not objects."
	$(BIN)/autolabel run --input $(SCENES)/images --output $(DEMO_OUT) --overwrite \
		model.config=$(DEMO_CONFIG) model.checkpoint=$(DEMO_CKPT) \
		amg.points_per_side=8 amg.pred_iou_thresh=0 amg.stability_score_thresh=0 \
		runtime.shard_size=4
	$(BIN)/autolabel show $(DEMO_OUT) --out $(DEMO_OUT)/overlays --sample 8
	$(BIN)/autolabel eval $(DEMO_OUT) --gt $(SCENES)/annotations.json --out $(DEMO_OUT)/eval

# The demo run submitted with `ray job submit` to a real two-node Ray cluster started on this
# machine (head + worker on loopback, token auth), which is stopped afterwards.
cluster-demo: $(DEMO_CKPT)
	bash jobs/cluster_demo.sh cluster-demo-output $(DEMO_CKPT)

test: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT)
