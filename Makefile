# The two commands of the README. Both install what is missing first (scripts/setup.sh).
.PHONY: setup sandbox test lint

setup:
	@scripts/setup.sh

# Start the sandbox peers, run one night of every job, print a summary, serve the Dagster UI.
sandbox: setup
	.venv/bin/python -m dicom_backup_dagster.sandbox night

# The whole test suite (what CI runs), one file per worker on the two cores: most tests wait on real
# peers (Orthanc, Dagster's run processes), so two workers take ~11 min where one takes ~15.
test: setup
	.venv/bin/python -m pytest -n 2 --dist loadfile

# ruff (style, imports, complexity <= 15), formatting, the type checker (mypy, [tool.mypy]) and the
# one-way package layers (scripts/import_graph.py: no cycle, no dagster in dicom/ mosaiq/ backup/ ...).
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/python scripts/import_graph.py
