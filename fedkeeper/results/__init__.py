"""What a run leaves behind: `Logs/` writers, the summary, the logs view, report tables, statistics and plots."""
