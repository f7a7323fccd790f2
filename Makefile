# Two commands matter: `make run` (the whole pipeline on the embedded phantom) and
# `make test` (the whole test suite). Both create .venv/ from pinned dependencies.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-fast bench clean image image-cpu image-mlflow image-push

$(STAMP): pyproject.toml requirements/constraints.txt requirements/templates.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(PYTHON) is Python " + sys.version.split()[0] + ": the pinned dependencies need Python >= 3.11 (make PYTHON=python3.11 ...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c requirements/constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet --no-compile --no-deps --require-hashes -r requirements/templates.txt
	@# byte-compile on every core (pip does it one file at a time: 84 s -> 57 s for the whole
	@# install on 2 cores), skipping the packages' own test suites (a fifth of the files, never
	@# imported: 44 s -> 31 s); like pip, files written for a newer Python are skipped
	$(BIN)/python -m compileall -qq -j 0 -x 'site-packages/.*/tests?/' $(VENV)/lib || true
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the embedded phantom (CPU demo profile in params.yaml). It registers no
# model unless params.yaml says register.enabled: true (reports/register/register.md then says
# "skipped"); an interrupted run resumes training from its checkpoints (docs/kubeflow.md, README).
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/sasan summary

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/inference.py --scales demo
	$(BIN)/python bench/inference.py --scales paper --repeats 0 --no-cli

# Container images, tagged with the commit (Kubeflow caches by image reference: never :latest).
REGISTRY  ?= localhost:5001
GIT_SHA   := $(shell git rev-parse HEAD 2>/dev/null)
IMAGE_TAG := $(shell git rev-parse --short HEAD 2>/dev/null)
DOCKER_BUILD = docker build --build-arg GIT_SHA=$(GIT_SHA) --build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ)

# `sasan pipeline compile/submit --image $(REGISTRY)/sasan:$(IMAGE_TAG)` names what these build.
CLEAN_TREE = @git diff --quiet HEAD || { echo "uncommitted changes: the tag would not name the image's commit" >&2; exit 1; }

image:
	$(CLEAN_TREE)
	$(DOCKER_BUILD) -f infra/docker/Dockerfile.cuda -t $(REGISTRY)/sasan:$(IMAGE_TAG) .

image-cpu:
	$(CLEAN_TREE)
	$(DOCKER_BUILD) -f infra/docker/Dockerfile.cpu -t $(REGISTRY)/sasan-cpu:$(IMAGE_TAG) .

image-mlflow:
	$(DOCKER_BUILD) -f infra/docker/Dockerfile.mlflow -t $(REGISTRY)/sasan-mlflow:3.17.2 .

image-push: image image-cpu image-mlflow
	docker push $(REGISTRY)/sasan:$(IMAGE_TAG)
	docker push $(REGISTRY)/sasan-cpu:$(IMAGE_TAG)
	docker push $(REGISTRY)/sasan-mlflow:3.17.2

clean:
	rm -rf $(VENV) .pytest_cache
