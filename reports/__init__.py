"""reports: audit reports a person reads instead of log files, and the end-to-end demo."""
