# The two commands of the README. Both install what is missing first (scripts/setup.sh).
.PHONY: setup sandbox test lint

setup:
	@scripts/setup.sh

# Start the sandbox peers, run one night of every job, print a summary, serve the Dagster UI.
sandbox: setup
	.venv/bin/python -m dicom_backup_dagster.sandbox night

# The whole test suite (what CI runs).
test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
