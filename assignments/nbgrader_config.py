"""nbgrader's settings for the labkit course (this folder is the course directory).

Run every nbgrader command from this folder (or pass --CourseDirectory.root):
source/ holds the exercises with solutions and hidden tests, release/ the student
versions, submitted/ what was collected, autograded/ and feedback/ the results.
"""

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "labkit"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"  # relative to the folder a command runs in
# A check runs real torchrun jobs on 2, 3 and 4 ranks (plus hidden cases): give a cell minutes.
c.Execute.timeout = 600
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# grades.csv with a hints_opened column: the tiers each student opened with labkit.hint (their hints_opened.json)
c.ExportApp.plugin_class = "labkit.assignments.export.HintsCsvExportPlugin"
