# Each target creates .venv and installs what it needs; see README.md.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
RUN_DIR ?= runs/mnist-cfg
TRAIN_MINUTES ?= 8
# accelerate launch sets OMP_NUM_THREADS=1 on machines without a GPU unless told otherwise.
THREADS ?= $(shell nproc)

.PHONY: venv demo test bench clean

$(PYTHON):
	python3 -m venv $(VENV)

$(VENV)/.installed: $(PYTHON) setup.cfg pyproject.toml scripts/install_torch.sh
	bash scripts/install_torch.sh $(VENV)
	$(PYTHON) -m pip install -e ".[data,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(THREADS) \
		-m diffusers_ext.train --dataset_name mnist-5k --resolution 28 --train_batch_size 64 \
		--max_train_minutes $(TRAIN_MINUTES) --use_ema --output_dir $(RUN_DIR)
	$(PYTHON) -m diffusers_ext.evaluation.class_grid --pipeline $(RUN_DIR) --guidance_scales 1 3

test: venv
	$(PYTHON) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs
