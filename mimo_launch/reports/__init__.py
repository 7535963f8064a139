"""The report: report.json, report.md, the console, the pictures, atomic files."""
