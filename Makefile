# `make demo` and `make test` set everything up on first use: .venv with the project installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fixed: the demo configs (configs/llava/tiny_demo_heldout.yaml, configs/eval/procedural/*.yaml) name demo_out/.
DEMO_OUT := demo_out

.PHONY: demo test venv clean bench browser

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned to the releases our machines keep on local disk.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	# OpenFlamingo's reference code for the flamingo parity tests (MIT). It pins an old torch, so it is
	# installed without its dependencies; its model code runs on the torch/transformers above.
	$(BIN)/pip install -q --no-deps open-flamingo==2.0.1
	# ImageBind's model code for the imagebind-audio tests: CC BY-NC-SA 4.0 (non-commercial), an optional extra
	# that mmit never imports unless that encoder is built; its torchaudio/pytorchvideo deps are not needed.
	$(BIN)/pip install -q ftfy regex 'iopath>=0.1.10' portalocker 'einops>=0.6'
	$(BIN)/pip install -q --no-deps imagebind-unofficial==0.1.1
	# lmms-eval for the adapter test (its dependencies for the model/task API come with the [lmms-eval]
	# extra inside [test]); decord only because lmms-eval's llava_hf model imports it at the top.
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3 decord==0.6.0
	touch $(STAMP)

venv: $(STAMP)

# The demo: convert the bundled LLaVA records, write the procedural instruction suite (held-in tasks
# for training, mixed with the real records; all tasks for evaluation, another seed), train the tiny
# LLaVA from scratch, answer two prompts, then evaluate held-in vs held-out (table + demo_out/eval/).
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/mmit convert --format llava --input demo_data/llava_demo.json --media-root demo_data/images \
		--output $(DEMO_OUT)/shards
	$(BIN)/python -m mmit.evaluation.procedural --kind train --split held-in --n-per-task 1600 --seed 0 \
		--mix $(DEMO_OUT)/shards:5 --output $(DEMO_OUT)/procedural_train
	$(BIN)/python -m mmit.evaluation.procedural --kind eval --split all --n-per-task 100 --seed 1 \
		--output $(DEMO_OUT)/procedural_eval
	$(BIN)/mmit train --config_path configs/llava/tiny_demo_heldout.yaml
	$(BIN)/mmit generate --checkpoint $(DEMO_OUT)/run --image demo_data/images/extreme_ironing.jpg \
		--prompt "What is unusual about this image?"
	$(BIN)/mmit generate --checkpoint $(DEMO_OUT)/run --image demo_data/images/statue_of_liberty.jpg \
		--prompt "Describe the image briefly."
	$(BIN)/mmit eval --config_path configs/eval/procedural.yaml --checkpoint $(DEMO_OUT)/run \
		--output $(DEMO_OUT)/eval --quiet

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

# Debian's chromium for the web demo test (playwright drives it; playwright's own browser download is
# never used). Installed when missing and apt-get can run; otherwise that one test skips
# (.ci/run sets MMIT_REQUIRE_BROWSER=1, which turns the skip into a failure).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ; } \
		|| echo "chromium not installed: the web demo test will skip"

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/rank.py
	$(BIN)/python bench/video_decode.py

clean:
	rm -rf $(DEMO_OUT) runs .pytest_cache
