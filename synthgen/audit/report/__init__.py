"""The audit's outputs: `AuditLog` (audit_log.py) writes audit.parquet, summary.json (summary.py) and
report.html (html_report.py; the candidates with their evidence from gallery.py, charts from plots.py)."""
