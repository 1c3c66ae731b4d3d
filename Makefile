.PHONY: install check lint typecheck format test bench app dataset default-artifacts default-model

install:
	pip install -r requirements.txt && pip install --no-deps -e .

PY_SOURCES = moe_reward tests pages app.py ui_common.py bench examples

lint:
	ruff check $(PY_SOURCES)
	ruff format --check $(PY_SOURCES)

# basedpyright, standard mode ([tool.basedpyright] in pyproject.toml): moe_reward, pages, app.py, ui_common.py
typecheck:
	basedpyright

format:
	ruff format $(PY_SOURCES)
	ruff check --fix $(PY_SOURCES)

test:
	pytest

check: lint typecheck test

bench:
	python bench/bench_embed.py && python bench/bench_decoder.py --tiny && python bench/bench_scale.py && python bench/bench_train.py && python bench/bench_personalize.py && python bench/bench_app.py && python bench/bench_map.py && python bench/bench_serve.py

app:
	streamlit run app.py --server.address 127.0.0.1 --browser.gatherUsageStats false

dataset:
	python -m moe_reward.data.controlled --out data/controlled/pairs.jsonl

# The shipped features of the default dataset (the default encoder's runtime, onnx-int8; stored int8, ids
# only: texts joined from pairs.jsonl.gz). Then `make default-model`: the model depends on them.
default-artifacts:
	python -m moe_reward.cli embed --data data/controlled/pairs.jsonl.gz --out data/controlled/features.safetensors --dtype int8 --no-records --runtime onnx-int8

# The default model the repository ships (data/controlled/default-model/): a fresh clone shows the Overview
# without training. Re-run after any change to training or to the features above
# (tests/integration/test_default_model.py says when).
default-model:
	python -m moe_reward.cli build-default --ship
