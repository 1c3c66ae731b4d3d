"""Test layout: ``unit/`` (one module's behaviour, no server), ``integration/`` (the CLI, the pages through
Streamlit's AppTest, training on whole datasets), ``browser/`` (a real `streamlit run` driven by Chromium).
Helpers shared across them live in ``support/`` (on the import path, see pyproject.toml)."""
