"""Stage 8, app: what the dashboard and the CLI share: the workspace folder, background jobs, end-to-end
recipes, the stakeholder report, the expert colours and the dashboard's chart specs."""
