# `make demo` and `make test` set everything up on first use: .venv with the project installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test venv clean bench

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned to the releases our machines keep on local disk.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/mmit convert --format llava --input demo_data/llava_demo.json --media-root demo_data/images \
		--output $(DEMO_OUT)/shards
	$(BIN)/mmit train --config_path configs/llava/tiny_demo.yaml
	$(BIN)/mmit generate --checkpoint $(DEMO_OUT)/run --image demo_data/images/extreme_ironing.jpg \
		--prompt "What is unusual about this image?"
	$(BIN)/mmit generate --checkpoint $(DEMO_OUT)/run --image demo_data/images/statue_of_liberty.jpg \
		--prompt "Describe the image briefly."

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/convert.py

clean:
	rm -rf $(DEMO_OUT) runs .pytest_cache
