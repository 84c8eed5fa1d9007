"""nbgrader's CSV export with one more column: which hints each student opened.

    cd assignments && nbgrader export          # → grades.csv, with hints_opened ("ex4_ring: 1 2")

Set in assignments/nbgrader_config.py (`c.ExportApp.plugin_class`). A student's
`labkit.hint(...)` calls append to hints_opened.json in the notebook's folder
(labkit/notebook/hints.py); nbgrader collects that folder, so the file lies at
submitted/<student>/<assignment>/hints_opened.json, read here.
"""

import csv
from pathlib import Path

from nbgrader.plugins.export import CsvExportPlugin
from traitlets import Unicode

from labkit.notebook.hints import opened


class HintsCsvExportPlugin(CsvExportPlugin):
    submitted = Unicode("submitted", help="the course's submitted/ folder (relative to the command's folder)").tag(
        config=True)

    def export(self, gradebook) -> None:
        super().export(gradebook)
        dest = Path(self.to or "grades.csv")
        with dest.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        fields = (list(rows[0].keys()) if rows else ["assignment", "student_id"]) + ["hints_opened"]
        for row in rows:
            tiers = opened(Path(self.submitted) / row["student_id"] / row["assignment"])
            row["hints_opened"] = "; ".join(f"{name}: {' '.join(map(str, t))}" for name, t in sorted(tiers.items()))
        with dest.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
